//! The opening handshake (RFC 6455 §4): the client's upgrade request and the server's
//! `101 Switching Protocols`, as HTTP heads whose lines can be replaced, added or
//! removed, and the `Sec-WebSocket-Accept` value for the key.
//!
//! ```
//! use ws_monitor::testkit::{accept, Head, RFC_ACCEPT, RFC_KEY};
//! assert_eq!(accept(RFC_KEY), RFC_ACCEPT);
//! let request = Head::upgrade_request("/chat", "example.com", RFC_KEY).remove("upgrade").encode();
//! assert!(request.starts_with(b"GET /chat HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n"));
//! ```

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID the accept value is computed with (RFC 6455 §1.3), and
/// `base64(SHA-1(key + GUID))`: the `Sec-WebSocket-Accept` value for a key. The engine's
/// own: the kit's tests check it against RFC 6455's example ([`RFC_KEY`], [`RFC_ACCEPT`]).
pub use crate::engine::handshake::{accept_for as accept, GUID};

/// The example key of RFC 6455 §1.3.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Its accept value.
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// `base64(SHA-1(key))`: the accept value of a server that forgot the GUID.
pub fn accept_without_guid(key: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(key.as_bytes()))
}

/// An HTTP/1.1 head: a start line, header fields in order, then raw lines, then the
/// blank line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    start: String,
    fields: Vec<(String, String)>,
    raw: String,
}

impl Head {
    /// A head with this start line and no fields.
    pub fn new(start: impl Into<String>) -> Head {
        Head { start: start.into(), fields: Vec::new(), raw: String::new() }
    }

    /// A client's upgrade request: `GET target HTTP/1.1`, `Host`, `Upgrade: websocket`,
    /// `Connection: Upgrade`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`.
    pub fn upgrade_request(target: &str, host: &str, key: &str) -> Head {
        Head::new(format!("GET {target} HTTP/1.1"))
            .set("Host", host)
            .set("Upgrade", "websocket")
            .set("Connection", "Upgrade")
            .set("Sec-WebSocket-Key", key)
            .set("Sec-WebSocket-Version", "13")
    }

    /// The server's answer to the request with `key`: `HTTP/1.1 101 Switching Protocols`,
    /// `Upgrade: websocket`, `Connection: Upgrade` and the right `Sec-WebSocket-Accept`.
    pub fn switching_protocols(key: &str) -> Head {
        Head::new("HTTP/1.1 101 Switching Protocols")
            .set("Upgrade", "websocket")
            .set("Connection", "Upgrade")
            .set("Sec-WebSocket-Accept", &accept(key))
    }

    /// A response `HTTP/1.1 {code} {reason}` without fields.
    pub fn status(code: u16, reason: &str) -> Head {
        Head::new(format!("HTTP/1.1 {code} {reason}"))
    }

    /// Replaces the value of the first field called `name` (any case), or adds the field
    /// at the end.
    pub fn set(mut self, name: &str, value: &str) -> Head {
        match self.fields.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(field) => field.1 = value.to_owned(),
            None => self.fields.push((name.to_owned(), value.to_owned())),
        }
        self
    }

    /// Adds the field in front of the first field called `before` (at the end if there
    /// is none), even if one of that name is there already.
    pub fn insert_before(mut self, before: &str, name: &str, value: &str) -> Head {
        let at = self.fields.iter().position(|(n, _)| n.eq_ignore_ascii_case(before)).unwrap_or(self.fields.len());
        self.fields.insert(at, (name.to_owned(), value.to_owned()));
        self
    }

    /// Removes every field called `name` (any case).
    pub fn remove(mut self, name: &str) -> Head {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Appends `lines` as they are after the fields (each line ending in CR LF, or not:
    /// for malformed heads).
    pub fn raw(mut self, lines: &str) -> Head {
        self.raw.push_str(lines);
        self
    }

    /// The head's bytes, up to and including the blank line.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        out.push_str(&self.start);
        out.push_str("\r\n");
        for (name, value) in &self.fields {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str(&self.raw);
        out.push_str("\r\n");
        out.into_bytes()
    }
}
