//! The HTTP/1.1 upgrade handshake (RFC 6455 §4, RFC 7692 §5-7): head parsing with
//! `httparse`, request checks, and judging a 101 response against the request.
//!
//! Everything here works on a complete HTTP head that the caller buffered (at most
//! [`HEAD_CAP`] bytes); allocation is fine at this point (once per HTTP exchange).

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::http::{framing, Framing};
use super::kind::{Kind, KindSet};

/// Longest HTTP head (request or response line plus headers) we buffer: twice what
/// nginx (`large_client_header_buffers 4 8k`) and Node (16 KiB) accept, so that a
/// browser's handshake with large cookies fits. A longer head is
/// [`Kind::HandshakeTooLarge`].
pub const HEAD_CAP: usize = 32 * 1024;

/// The GUID of RFC 6455 §1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most header fields in one head (beyond: [`Kind::HandshakeTooLarge`]).
pub const MAX_HEADERS: usize = 256;

/// Base64 that accepts non-zero trailing bits (a lenient reading of the client key).
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `Sec-WebSocket-Accept` for a client key (the key as sent, surrounding spaces removed).
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Whether `key` is the base64 encoding of exactly 16 bytes.
pub fn key_valid(key: &str) -> bool {
    let mut out = [0u8; 24];
    key.len() == 24 && matches!(LENIENT_B64.decode_slice(key, &mut out), Ok(16))
}

/// Whether `accept` is the base64 encoding of a 20-byte SHA-1 digest.
pub fn accept_valid(accept: &str) -> bool {
    let mut out = [0u8; 21];
    accept.len() == 28 && matches!(base64::engine::general_purpose::STANDARD.decode_slice(accept, &mut out), Ok(20))
}

/// Outcome of parsing a buffered HTTP head.
#[derive(Debug)]
pub enum Head<T> {
    /// The head is not complete yet.
    Partial,
    /// Not HTTP.
    Invalid,
    /// Longer than [`HEAD_CAP`] or more than [`MAX_HEADERS`] header fields.
    TooLarge,
    /// A complete head of this many bytes.
    Complete(usize, T),
}

/// Position just after the first blank line (`\n\n` or `\n\r\n`) of `buf`, searching from
/// `from` (the caller remembers how far it looked).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let tail = buf.get(start..)?;
    tail.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match tail.get(i + 1..) {
            Some([b'\n', ..]) => Some(start + i + 2),
            Some([b'\r', b'\n', ..]) => Some(start + i + 3),
            _ => None,
        }
    })
}

/// An extension with its parameters as written (names lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    pub params: Vec<(String, Option<String>)>,
}

/// What the engine needs to know about a request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Both `Upgrade: websocket` and `Connection: upgrade` are present.
    pub upgrade: bool,
    /// Some sign of WebSocket: `Upgrade: websocket`, or a `Sec-WebSocket-Key` or
    /// `Sec-WebSocket-Version` header.
    pub intent: bool,
    /// A HEAD request (its response has no body).
    pub head_method: bool,
    /// A CONNECT request (a 2xx answer turns the connection into a tunnel).
    pub connect: bool,
    /// How its body is delimited.
    pub body: Framing,
    /// Not GET HTTP/1.1, Version not 13, or a key that is not 16 bytes of base64.
    pub bad: bool,
    /// The key as sent (trimmed), when exactly one was sent.
    pub key: Option<String>,
    /// Offered extensions (every `Sec-WebSocket-Extensions` header, in order).
    pub offers: Vec<Extension>,
    /// Offered subprotocols.
    pub protocols: Vec<String>,
    /// What the connection log shows of it.
    pub seen: RequestSeen,
}

/// The parts of a request the connection log shows, each at most [`LOG_CAP`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestSeen {
    /// Method and target, e.g. `GET /chat`.
    pub line: Box<str>,
    pub host: Option<Box<str>>,
    pub origin: Option<Box<str>>,
    pub user_agent: Option<Box<str>>,
    /// `X-Forwarded-For`, else `Forwarded`: who the proxy says the client is.
    pub forwarded: Option<Box<str>>,
    /// `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` as offered.
    pub protocols: Option<Box<str>>,
    pub extensions: Option<Box<str>>,
    /// `Sec-WebSocket-Key`: the same on both sides of a proxy, which forwards it.
    pub key: Option<Box<str>>,
    /// Both `Upgrade: websocket` and `Connection: Upgrade` were sent.
    pub upgrade: bool,
}

/// Longest header value the connection log keeps.
pub const LOG_CAP: usize = 256;

/// Every `name` header's value joined by ", ", cut at [`LOG_CAP`] bytes (on a character
/// boundary).
fn logged(headers: &[httparse::Header<'_>], name: &str) -> Option<Box<str>> {
    let values: Vec<&str> = header_values(headers, name).map(str::trim).collect();
    (!values.is_empty()).then(|| cap(&values.join(", ")))
}

fn cap(s: &str) -> Box<str> {
    let mut end = s.len().min(LOG_CAP);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("").into()
}

impl Default for Request {
    fn default() -> Self {
        Request {
            upgrade: false,
            intent: false,
            head_method: false,
            connect: false,
            body: Framing::Empty,
            bad: false,
            key: None,
            offers: Vec::new(),
            protocols: Vec::new(),
            seen: RequestSeen::default(),
        }
    }
}

/// What the engine needs to know about a response head.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// How a body would be delimited, if the status and request allow one.
    pub body: Framing,
    /// Both `Upgrade: websocket` and `Connection: upgrade` are present.
    pub upgrade: bool,
    /// Every `Sec-WebSocket-Accept` value (trimmed).
    pub accepts: Vec<String>,
    /// Accepted extensions; `None` when the header does not parse.
    pub extensions: Option<Vec<Extension>>,
    /// Every subprotocol token of `Sec-WebSocket-Protocol`.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` as sent (for the connection log).
    pub extensions_seen: Option<Box<str>>,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            status: 0,
            body: Framing::Empty,
            upgrade: false,
            accepts: Vec::new(),
            extensions: None,
            protocols: Vec::new(),
            extensions_seen: None,
        }
    }
}

impl Response {
    /// How the body that follows this response to `req` is delimited (RFC 9112 §6.3).
    pub fn body_after(&self, req: &Request) -> Framing {
        if req.head_method || (100..200).contains(&self.status) || matches!(self.status, 204 | 304) {
            Framing::Empty
        } else if req.connect && (200..300).contains(&self.status) {
            Framing::UntilClose
        } else {
            self.body
        }
    }
}

fn header_values<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
}

/// Whether some `name` header lists `token` (comma list, case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    header_values(headers, name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn list_tokens(headers: &[httparse::Header<'_>], name: &str) -> Vec<String> {
    header_values(headers, name)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn body_framing(h: &[httparse::Header<'_>], request: bool) -> Framing {
    let te: Vec<&str> = header_values(h, "transfer-encoding").collect();
    let cl: Vec<&str> = header_values(h, "content-length").collect();
    framing(&te, &cl, request)
}

/// Maps an `httparse` outcome to a [`Head`] of the parsed length.
fn outcome(r: Result<httparse::Status<usize>, httparse::Error>, buffered: usize) -> Result<usize, Head<()>> {
    match r {
        Ok(httparse::Status::Complete(n)) if n > HEAD_CAP => Err(Head::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(n),
        Ok(httparse::Status::Partial) if buffered < HEAD_CAP => Err(Head::Partial),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => Err(Head::TooLarge),
        Err(_) => Err(Head::Invalid),
    }
}

impl<T> Head<T> {
    fn retag<U>(self) -> Head<U> {
        match self {
            Head::Partial => Head::Partial,
            Head::TooLarge => Head::TooLarge,
            Head::Invalid | Head::Complete(..) => Head::Invalid,
        }
    }
}

fn extensions(headers: &[httparse::Header<'_>]) -> Option<Vec<Extension>> {
    let mut all = Vec::new();
    for v in header_values(headers, "sec-websocket-extensions") {
        all.extend(parse_extensions(v)?);
    }
    Some(all)
}

/// Parses a request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Head<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let mut cfg = httparse::ParserConfig::default();
    cfg.allow_multiple_spaces_in_request_line_delimiters(true);
    let n = match outcome(cfg.parse_request(&mut req, buf), buf.len()) {
        Ok(n) => n,
        Err(h) => return h.retag(),
    };
    let h: &[httparse::Header<'_>] = req.headers;
    let ws_token = has_token(h, "upgrade", "websocket");
    let upgrade = ws_token && has_token(h, "connection", "upgrade");
    let keys: Vec<&str> = header_values(h, "sec-websocket-key").map(str::trim).collect();
    let versions: Vec<&str> = header_values(h, "sec-websocket-version").map(str::trim).collect();
    let key = match keys.as_slice() {
        [k] => Some((*k).to_owned()),
        _ => None,
    };
    let bad = req.method != Some("GET")
        || req.version != Some(1)
        || !key.as_deref().is_some_and(key_valid)
        || versions.as_slice() != ["13"];
    Head::Complete(
        n,
        Request {
            upgrade,
            intent: ws_token || !keys.is_empty() || !versions.is_empty(),
            head_method: req.method == Some("HEAD"),
            connect: req.method == Some("CONNECT"),
            body: body_framing(h, true),
            bad,
            key,
            // An unparsable offer list is kept empty: nothing counts as offered.
            offers: extensions(h).unwrap_or_default(),
            protocols: list_tokens(h, "sec-websocket-protocol"),
            seen: RequestSeen {
                line: cap(&format!("{} {}", req.method.unwrap_or("?"), req.path.unwrap_or("?"))),
                host: logged(h, "host"),
                origin: logged(h, "origin"),
                user_agent: logged(h, "user-agent"),
                forwarded: logged(h, "x-forwarded-for").or_else(|| logged(h, "forwarded")),
                protocols: logged(h, "sec-websocket-protocol"),
                extensions: logged(h, "sec-websocket-extensions"),
                key: logged(h, "sec-websocket-key"),
                upgrade,
            },
        },
    )
}

/// Parses a response head at the start of `buf`.
pub fn parse_response(buf: &[u8]) -> Head<Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let mut cfg = httparse::ParserConfig::default();
    cfg.allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true);
    let n = match outcome(cfg.parse_response(&mut resp, buf), buf.len()) {
        Ok(n) => n,
        Err(h) => return h.retag(),
    };
    let status = resp.code.unwrap_or(0);
    let h: &[httparse::Header<'_>] = resp.headers;
    Head::Complete(
        n,
        Response {
            status,
            body: body_framing(h, false),
            upgrade: has_token(h, "upgrade", "websocket") && has_token(h, "connection", "upgrade"),
            accepts: header_values(h, "sec-websocket-accept").map(|v| v.trim().to_owned()).collect(),
            extensions: extensions(h),
            protocols: list_tokens(h, "sec-websocket-protocol"),
            extensions_seen: logged(h, "sec-websocket-extensions"),
        },
    )
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Splits `s` on `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(s.get(start..i).unwrap_or(""));
            start = i + c.len_utf8();
        }
    }
    parts.push(s.get(start..).unwrap_or(""));
    parts
}

fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return v.chars().all(is_tchar).then(|| v.to_owned()).filter(|s| !s.is_empty());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// Parses a `Sec-WebSocket-Extensions` value (RFC 6455 §9.1). `None` on a syntax error.
pub fn parse_extensions(v: &str) -> Option<Vec<Extension>> {
    let mut out = Vec::new();
    for item in split_outside_quotes(v, ',') {
        if item.trim().is_empty() {
            continue;
        }
        let mut parts = split_outside_quotes(item, ';').into_iter();
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() || !name.chars().all(is_tchar) {
            return None;
        }
        let mut params = Vec::new();
        for p in parts {
            let (pn, pv) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
                None => (p.trim(), None),
            };
            if pn.is_empty() || !pn.chars().all(is_tchar) {
                return None;
            }
            params.push((pn.to_ascii_lowercase(), pv));
        }
        out.push(Extension { name: name.to_ascii_lowercase(), params });
    }
    Some(out)
}

/// permessage-deflate parameters as negotiated by a 101.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateParams {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    pub client_max_window_bits: Option<u8>,
}

const PMD: &str = "permessage-deflate";

fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || (v.len() > 1 && v.starts_with('0')) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// Strict reading of the parameters a server accepted (RFC 7692 §7.1): known names only,
/// each at most once, flags without value, window bits 8-15.
fn response_deflate(params: &[(String, Option<String>)]) -> Option<DeflateParams> {
    let mut d = DeflateParams::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let (slot, ok) = match (name.as_str(), value.as_deref()) {
            ("server_no_context_takeover", None) => {
                d.server_no_context_takeover = true;
                (0, true)
            }
            ("client_no_context_takeover", None) => {
                d.client_no_context_takeover = true;
                (1, true)
            }
            ("server_max_window_bits", Some(v)) => {
                d.server_max_window_bits = window_bits(v);
                (2, d.server_max_window_bits.is_some())
            }
            ("client_max_window_bits", Some(v)) => {
                d.client_max_window_bits = window_bits(v);
                (3, d.client_max_window_bits.is_some())
            }
            _ => return None,
        };
        let s = seen.get_mut(slot)?;
        if !ok || *s {
            return None;
        }
        *s = true;
    }
    Some(d)
}

/// Whether a (valid) accepted configuration fits one permessage-deflate offer.
fn fits_offer(r: &DeflateParams, offer: &[(String, Option<String>)]) -> bool {
    let find = |n: &str| offer.iter().find(|(pn, _)| pn == n);
    if let Some(rc) = r.client_max_window_bits {
        match find("client_max_window_bits") {
            None => return false,
            Some((_, Some(v))) => {
                if window_bits(v).is_some_and(|ov| rc > ov) {
                    return false;
                }
            }
            Some((_, None)) => {}
        }
    }
    if let Some((_, Some(v))) = find("server_max_window_bits") {
        if let Some(ov) = window_bits(v) {
            if r.server_max_window_bits.is_none_or(|rs| rs > ov) {
                return false;
            }
        }
    }
    if find("server_no_context_takeover").is_some() && !r.server_no_context_takeover {
        return false;
    }
    true
}

/// What a 101 established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// permessage-deflate is in force (with these parameters).
    pub deflate: Option<DeflateParams>,
    /// Some accepted extension is one we do not understand (or permessage-deflate with
    /// parameters we cannot read): RSV bits and payloads are not checked.
    pub unknown_extension: bool,
    pub subprotocol: Option<String>,
}

/// Checks of a 101 against its request: the (server-side) kinds raised and what was
/// negotiated.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub kinds: KindSet,
    pub negotiated: Negotiated,
}

/// Judges a 101 response to `req`.
pub fn judge_101(req: &Request, resp: &Response) -> Verdict {
    let mut v = Verdict::default();
    if !resp.upgrade {
        v.kinds.insert(Kind::BadHandshake);
    }
    match resp.accepts.as_slice() {
        // Missing, or a well-formed value that is not the one the key asks for.
        [] => {
            v.kinds.insert(Kind::AcceptMismatch);
        }
        [a] if accept_valid(a) => {
            if req.key.as_ref().is_some_and(|key| *a != accept_for(key)) {
                v.kinds.insert(Kind::AcceptMismatch);
            }
        }
        // Duplicated, or not base64 of a 20-byte digest: a malformed handshake.
        _ => v.kinds.insert(Kind::BadHandshake),
    }
    match &resp.extensions {
        None => {
            v.kinds.insert(Kind::BadHandshake);
            v.negotiated.unknown_extension = true;
        }
        Some(exts) => {
            for (i, ext) in exts.iter().enumerate() {
                if exts.iter().take(i).any(|e| e.name == ext.name) {
                    v.kinds.insert(Kind::BadHandshake);
                    continue;
                }
                let offers: Vec<&Extension> = req.offers.iter().filter(|o| o.name == ext.name).collect();
                if offers.is_empty() {
                    v.kinds.insert(Kind::ExtensionNotOffered);
                }
                if ext.name != PMD {
                    v.negotiated.unknown_extension = true;
                    continue;
                }
                match response_deflate(&ext.params) {
                    None => {
                        v.kinds.insert(Kind::BadHandshake);
                        v.negotiated.unknown_extension = true;
                    }
                    Some(d) => {
                        if !offers.is_empty() && !offers.iter().any(|o| fits_offer(&d, &o.params)) {
                            v.kinds.insert(Kind::ExtensionNotOffered);
                        }
                        v.negotiated.deflate = Some(d);
                    }
                }
            }
        }
    }
    match resp.protocols.as_slice() {
        [] => {}
        [p] if req.protocols.contains(p) => v.negotiated.subprotocol = Some(p.clone()),
        _ => v.kinds.insert(Kind::ExtensionNotOffered),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_sample_accept() {
        assert_eq!(accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(key_valid("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!key_valid("dGhlIHNhbXBsZQ=="));
        assert!(!key_valid("not base64 at all!!!!!!!"));
    }

    #[test]
    fn finds_head_end_incrementally() {
        let b = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        assert_eq!(head_end(b, 0), Some(b.len() - 4));
        for from in 0..b.len() - 4 {
            assert_eq!(head_end(b, from), Some(b.len() - 4));
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost", 0), None);
        assert_eq!(head_end(b"a\n\nb", 0), Some(3));
    }

    #[test]
    fn extension_syntax() {
        let e = parse_extensions("permessage-deflate; client_max_window_bits, x-foo; a=\"b,c\"; d").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].params, vec![("client_max_window_bits".to_owned(), None)]);
        assert_eq!(e[1].params[0], ("a".to_owned(), Some("b,c".to_owned())));
        assert!(parse_extensions("bad name; x").is_none());
        assert!(parse_extensions("").unwrap().is_empty());
    }

    fn req_with(offer: &str) -> Request {
        Request {
            upgrade: true,
            key: Some("dGhlIHNhbXBsZSBub25jZQ==".into()),
            offers: parse_extensions(offer).unwrap(),
            ..Request::default()
        }
    }

    fn resp_with(ext: &str) -> Response {
        Response {
            status: 101,
            upgrade: true,
            accepts: vec!["s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()],
            extensions: parse_extensions(ext),
            ..Response::default()
        }
    }

    #[test]
    fn deflate_negotiation() {
        let ok = |offer: &str, resp: &str| judge_101(&req_with(offer), &resp_with(resp)).kinds;
        assert!(ok("permessage-deflate; client_max_window_bits", "permessage-deflate").is_empty());
        assert!(ok(
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover"
        )
        .is_empty());
        assert!(ok("permessage-deflate", "permessage-deflate; client_max_window_bits=10")
            .contains(Kind::ExtensionNotOffered));
        assert!(ok("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=12")
            .contains(Kind::ExtensionNotOffered));
        // A second, fallback offer can match.
        assert!(
            ok("permessage-deflate; server_max_window_bits=10, permessage-deflate", "permessage-deflate").is_empty()
        );
        assert!(ok("permessage-deflate", "permessage-deflate; server_max_window_bits=16").contains(Kind::BadHandshake));
        assert!(ok("", "permessage-deflate").contains(Kind::ExtensionNotOffered));
        let v =
            judge_101(&req_with("permessage-deflate"), &resp_with("permessage-deflate; client_no_context_takeover"));
        assert!(v.negotiated.deflate.unwrap().client_no_context_takeover);
    }
}
