//! Violation kinds: stable snake_case names, a one-line meaning and a one-line hint of
//! what an operator should check.

use std::fmt;

use serde::{Serialize, Serializer};

/// One kind of protocol violation. The discriminant is the index into per-kind arrays
/// (`EngineStats::violations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    // --- handshake (at most once per connection) ---
    /// An upgrade request answered with a non-101 status.
    HandshakeRejected,
    /// An HTTP request without `Upgrade: websocket` / `Connection: Upgrade`.
    UpgradeMissing,
    /// `Sec-WebSocket-Accept` does not match the request key.
    AcceptMismatch,
    /// Malformed request or 101 response (headers, version, key).
    BadHandshake,
    /// The 101 accepts an extension/parameter/subprotocol the client did not offer.
    ExtensionNotOffered,
    /// An HTTP head over the size or header-count limit: the handshake is not read.
    HandshakeTooLarge,
    /// The client sent bytes (frames) after its upgrade request before the 101 came.
    FrameBeforeUpgrade,
    // --- frame header ---
    /// RSV1 without permessage-deflate (on any frame), or RSV2/RSV3 set.
    RsvWithoutExtension,
    /// RSV1 on a continuation or control frame under permessage-deflate.
    Rsv1Invalid,
    /// Opcode 3-7 or 11-15.
    ReservedOpcode,
    /// Client-to-server frame without a mask.
    UnmaskedClientFrame,
    /// Server-to-client frame with a mask.
    MaskedServerFrame,
    /// Control frame payload over 125 bytes.
    ControlTooLong,
    /// Control frame with FIN = 0.
    ControlFragmented,
    /// Continuation frame with no fragmented message open.
    OrphanContinuation,
    /// Text/binary frame while a fragmented message is open.
    InterleavedDataFrame,
    /// Length not in its shortest encoding.
    NonMinimalLength,
    /// 64-bit length with the most significant bit set.
    LengthMsbSet,
    /// Payload over `max_frame_size`.
    OversizedFrame,
    /// A message (all its fragments, or its inflated size) over `max_message_size`.
    OversizedMessage,
    // --- payload ---
    /// A complete text message that is not UTF-8.
    InvalidUtf8Text,
    /// A compressed message that does not inflate (corrupt DEFLATE data).
    InvalidCompressedData,
    /// A close frame with a 1-byte body.
    InvalidClosePayload,
    /// A close status code not allowed on the wire.
    InvalidCloseCode,
    /// A close reason that is not UTF-8.
    InvalidCloseReason,
    /// A data frame after the endpoint's own close frame.
    DataAfterClose,
    // --- stream (at most once per connection) ---
    /// An HTTP request/status line where a frame header was expected.
    HttpInStream,
    /// A TLS record as the first bytes of a connection.
    TlsOnPlainPort,
    // --- close analysis (not protocol violations: how connections end) ---
    /// An endpoint closed with 1002, 1003, 1007, 1008 or 1009: it saw something it
    /// refuses.
    PeerProtocolError,
    /// The TCP connection ended (FIN or RST) without a close frame from this side.
    AbnormalClosure,
    /// A connection ended without a close handshake after being idle: cut by a timeout.
    IdleTimeoutCut,
    // --- proxy hops ---
    /// A proxy changed the handshake or the frames between the two connections of one
    /// session (paired by `Sec-WebSocket-Key`).
    ProxyAltered,
}

/// Broad family of a [`Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Handshake,
    Frame,
    Payload,
    Stream,
    /// How connections end: not violations of the wire rules, findings about the peers.
    Close,
    /// What a proxy changed between the two connections of one session.
    Proxy,
}

impl Kind {
    /// Number of kinds.
    pub const COUNT: usize = 32;

    /// Every kind, in index order.
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::HandshakeRejected,
        Kind::UpgradeMissing,
        Kind::AcceptMismatch,
        Kind::BadHandshake,
        Kind::ExtensionNotOffered,
        Kind::HandshakeTooLarge,
        Kind::FrameBeforeUpgrade,
        Kind::RsvWithoutExtension,
        Kind::Rsv1Invalid,
        Kind::ReservedOpcode,
        Kind::UnmaskedClientFrame,
        Kind::MaskedServerFrame,
        Kind::ControlTooLong,
        Kind::ControlFragmented,
        Kind::OrphanContinuation,
        Kind::InterleavedDataFrame,
        Kind::NonMinimalLength,
        Kind::LengthMsbSet,
        Kind::OversizedFrame,
        Kind::OversizedMessage,
        Kind::InvalidUtf8Text,
        Kind::InvalidCompressedData,
        Kind::InvalidClosePayload,
        Kind::InvalidCloseCode,
        Kind::InvalidCloseReason,
        Kind::DataAfterClose,
        Kind::HttpInStream,
        Kind::TlsOnPlainPort,
        Kind::PeerProtocolError,
        Kind::AbnormalClosure,
        Kind::IdleTimeoutCut,
        Kind::ProxyAltered,
    ];

    /// The protocol violations: every kind but close analysis ([`Category::Close`]).
    pub fn violations() -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(|k| k.is_violation())
    }

    /// The close-analysis kinds.
    pub fn close_analysis() -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(|k| k.category() == Category::Close)
    }

    /// A violation of the wire rules (not close analysis, not a proxy's alteration).
    pub fn is_violation(self) -> bool {
        !matches!(self.category(), Category::Close | Category::Proxy)
    }

    /// Index into per-kind arrays (`Kind::ALL[k.index()] == k`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name used in JSON, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::HandshakeRejected => "handshake_rejected",
            Kind::UpgradeMissing => "upgrade_missing",
            Kind::AcceptMismatch => "accept_mismatch",
            Kind::BadHandshake => "bad_handshake",
            Kind::ExtensionNotOffered => "extension_not_offered",
            Kind::HandshakeTooLarge => "handshake_too_large",
            Kind::FrameBeforeUpgrade => "frame_before_upgrade",
            Kind::RsvWithoutExtension => "rsv_without_extension",
            Kind::Rsv1Invalid => "rsv1_invalid",
            Kind::ReservedOpcode => "reserved_opcode",
            Kind::UnmaskedClientFrame => "unmasked_client_frame",
            Kind::MaskedServerFrame => "masked_server_frame",
            Kind::ControlTooLong => "control_too_long",
            Kind::ControlFragmented => "control_fragmented",
            Kind::OrphanContinuation => "orphan_continuation",
            Kind::InterleavedDataFrame => "interleaved_data_frame",
            Kind::NonMinimalLength => "non_minimal_length",
            Kind::LengthMsbSet => "length_msb_set",
            Kind::OversizedFrame => "oversized_frame",
            Kind::OversizedMessage => "oversized_message",
            Kind::InvalidUtf8Text => "invalid_utf8_text",
            Kind::InvalidCompressedData => "invalid_compressed_data",
            Kind::InvalidClosePayload => "invalid_close_payload",
            Kind::InvalidCloseCode => "invalid_close_code",
            Kind::InvalidCloseReason => "invalid_close_reason",
            Kind::DataAfterClose => "data_after_close",
            Kind::HttpInStream => "http_in_stream",
            Kind::TlsOnPlainPort => "tls_on_plain_port",
            Kind::PeerProtocolError => "peer_protocol_error",
            Kind::AbnormalClosure => "abnormal_closure",
            Kind::IdleTimeoutCut => "idle_timeout_cut",
            Kind::ProxyAltered => "proxy_altered",
        }
    }

    /// The kind with this [`name`](Kind::name), if any.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// What the violation means, in one line.
    pub fn meaning(self) -> &'static str {
        match self {
            Kind::HandshakeRejected => {
                "the server answered a WebSocket upgrade request with a status other than 101"
            }
            Kind::UpgradeMissing => {
                "an HTTP request with WebSocket headers (Sec-WebSocket-Key/-Version or Upgrade: websocket) lacks `Upgrade: websocket` or `Connection: Upgrade`"
            }
            Kind::AcceptMismatch => {
                "Sec-WebSocket-Accept is not base64(SHA-1(Sec-WebSocket-Key + 258EAFA5-E914-47DA-95CA-C5AB0DC85B11))"
            }
            Kind::BadHandshake => {
                "malformed handshake: a 101 without Upgrade/Connection headers or with a duplicated or malformed Sec-WebSocket-Accept, or a request that is not GET HTTP/1.1, has a Sec-WebSocket-Version other than 13 or a key that is not 16 bytes of base64"
            }
            Kind::ExtensionNotOffered => {
                "the 101 accepts an extension, extension parameter or subprotocol the client did not offer"
            }
            Kind::HandshakeTooLarge => {
                "an HTTP head on the port is over 32 KiB or has more than 256 header fields; the monitor does not read it and scans for frames instead"
            }
            Kind::FrameBeforeUpgrade => {
                "the client sent data after its upgrade request before the server's 101 arrived"
            }
            Kind::RsvWithoutExtension => {
                "a frame sets RSV1 without negotiated permessage-deflate, or RSV2/RSV3 which no negotiated extension defines"
            }
            Kind::Rsv1Invalid => {
                "with permessage-deflate negotiated, RSV1 is set on a continuation or control frame (allowed only on the first frame of a data message)"
            }
            Kind::ReservedOpcode => "the frame opcode is reserved (3-7 or 11-15)",
            Kind::UnmaskedClientFrame => "a client-to-server frame is not masked",
            Kind::MaskedServerFrame => "a server-to-client frame is masked",
            Kind::ControlTooLong => {
                "a control frame (close, ping, pong) carries more than 125 payload bytes"
            }
            Kind::ControlFragmented => "a control frame has FIN = 0",
            Kind::OrphanContinuation => {
                "a continuation frame arrived while no fragmented message was open"
            }
            Kind::InterleavedDataFrame => {
                "a text or binary frame started while a fragmented message was still open"
            }
            Kind::NonMinimalLength => {
                "the payload length is not in its shortest form (16-bit form for < 126, 64-bit form for < 65536)"
            }
            Kind::LengthMsbSet => "the 64-bit payload length has its most significant bit set",
            Kind::OversizedFrame => "the frame payload exceeds the configured max_frame_size",
            Kind::OversizedMessage => {
                "a fragmented message, or a compressed message once inflated, exceeds the configured max_message_size"
            }
            Kind::InvalidUtf8Text => "a text message is not valid UTF-8",
            Kind::InvalidCompressedData => {
                "a permessage-deflate message does not inflate (corrupt DEFLATE data); RFC 7692 requires failing the connection"
            }
            Kind::InvalidClosePayload => {
                "a close frame has a 1-byte body (a status code takes 2 bytes)"
            }
            Kind::InvalidCloseCode => {
                "the close status code may not be sent (valid: 1000-1003, 1007-1014, 3000-4999)"
            }
            Kind::InvalidCloseReason => "the close reason is not valid UTF-8",
            Kind::DataAfterClose => "an endpoint sent a data frame after its own close frame",
            Kind::HttpInStream => {
                "an HTTP request or status line appeared where a WebSocket frame header was expected"
            }
            Kind::TlsOnPlainPort => {
                "the connection starts with a TLS record on a port monitored as plain WebSocket"
            }
            Kind::PeerProtocolError => {
                "an endpoint closed the connection with 1002 (protocol error), 1003 (unacceptable data type), 1007 (invalid data), 1008 (policy) or 1009 (message too big)"
            }
            Kind::AbnormalClosure => {
                "the TCP connection ended (FIN or RST) without a close frame from this side: the application sees close code 1006"
            }
            Kind::IdleTimeoutCut => {
                "the connection was cut without a close handshake after being idle: a timeout somewhere on the path"
            }
            Kind::ProxyAltered => {
                "a proxy changed the session between its two connections (client to proxy, proxy to backend): headers of the handshake, or frames"
            }
        }
    }

    /// What an operator should check first, in one line.
    pub fn likely_cause(self) -> &'static str {
        match self {
            Kind::HandshakeRejected => {
                "check the server or proxy logs for why: auth (401/403), wrong path (404), origin check, version (426), overload (503)"
            }
            Kind::UpgradeMissing => {
                "a proxy or load balancer strips hop-by-hop headers (nginx needs proxy_set_header Upgrade/Connection); plain HTTP requests without WebSocket headers are only counted (http_requests)"
            }
            Kind::AcceptMismatch => {
                "a proxy rewrote Sec-WebSocket-Key, or the server computes the accept value wrongly (wrong GUID, key not trimmed, hex instead of base64)"
            }
            Kind::BadHandshake => {
                "an outdated or hand-rolled client/server library, or a proxy dropping or rewriting the upgrade headers"
            }
            Kind::ExtensionNotOffered => {
                "server configured with a fixed extension/subprotocol regardless of the offer, or a proxy rewrote the client's offer"
            }
            Kind::HandshakeTooLarge => {
                "oversized cookies or many proxy-added headers; most servers refuse heads this large (nginx 4x8 KiB, Node 16 KiB) with 431/400"
            }
            Kind::FrameBeforeUpgrade => {
                "a client that does not wait for the 101 (optimistic sending); a server that rejects the upgrade would read those frames as HTTP"
            }
            Kind::RsvWithoutExtension => {
                "the peer compresses although the handshake did not negotiate it (proxy dropped Sec-WebSocket-Extensions?) or a buggy framing library"
            }
            Kind::Rsv1Invalid => {
                "the sender's permessage-deflate implementation flags every fragment or control frame as compressed"
            }
            Kind::ReservedOpcode => {
                "stream corruption, a sender that lost its own framing, or an unnegotiated experimental extension"
            }
            Kind::UnmaskedClientFrame => {
                "a non-browser client with masking disabled, or a server-side library used as a client"
            }
            Kind::MaskedServerFrame => {
                "a client library used on the server side, or a proxy forwarding client frames verbatim"
            }
            Kind::ControlTooLong => {
                "the application sends large pings or long close reasons; keep them within 125 bytes (reason within 123)"
            }
            Kind::ControlFragmented => "buggy framing code in the sender that fragments control frames",
            Kind::OrphanContinuation => {
                "the sender set FIN too early or lost its fragmentation state; several writers on one socket"
            }
            Kind::InterleavedDataFrame => {
                "several threads/tasks write to one connection without a lock, or FIN missing on the last fragment"
            }
            Kind::NonMinimalLength => {
                "a hand-rolled frame encoder that always uses the extended length form"
            }
            Kind::LengthMsbSet => {
                "an encoder bug (signed length) or stream corruption; the direction is resynchronised"
            }
            Kind::OversizedFrame => {
                "the application sends very large messages in one frame; check the peers' message size limits"
            }
            Kind::OversizedMessage => {
                "the application streams very large messages in many fragments or compresses huge payloads (a decompression bomb?); compare with the peers' limits"
            }
            Kind::InvalidCompressedData => {
                "a compressor that keeps its context although no_context_takeover was agreed, a proxy altering compressed payloads, or memory corruption in the sender"
            }
            Kind::InvalidUtf8Text => {
                "binary data sent as text, a string cut in the middle of a character, or a non-UTF-8 encoder"
            }
            Kind::InvalidClosePayload => "a buggy close-frame encoder",
            Kind::InvalidCloseCode => {
                "the application passes an internal code (1005/1006/1015, 0, >4999) to close(); use 1000/1011 or 4000-4999"
            }
            Kind::InvalidCloseReason => {
                "the close reason was truncated inside a multi-byte character or encoded as non-UTF-8"
            }
            Kind::DataAfterClose => {
                "the application keeps sending after calling close(); missing state check in the sender"
            }
            Kind::HttpInStream => {
                "a client or proxy reuses the upgraded connection for HTTP, or a proxy did not honour the upgrade"
            }
            Kind::TlsOnPlainPort => {
                "the client uses wss:// against a ws:// port, or TLS is expected to be terminated in front of it"
            }
            Kind::PeerProtocolError => {
                "if a violation from the other side came first, fix that sender; if not, the closing peer enforces a limit the wire does not show: 1009 a message size limit, 1003 text only or binary only, 1008 an application policy"
            }
            Kind::AbnormalClosure => {
                "a crash, a killed process, a network change, or a proxy or load balancer closing the TCP connection (an idle timeout?)"
            }
            Kind::IdleTimeoutCut => {
                "a proxy or load balancer idle timeout (nginx proxy_read_timeout defaults to 60 s, AWS ALB 60 s, HAProxy timeout tunnel): send pings more often than it, or raise it"
            }
            Kind::ProxyAltered => {
                "the proxy's configuration: nginx needs proxy_set_header Upgrade $http_upgrade and Connection \"upgrade\", and must not hide Sec-WebSocket-Extensions (proxy_hide_header) when the backend negotiates compression"
            }
        }
    }

    /// The family this kind belongs to.
    pub fn category(self) -> Category {
        match self {
            Kind::HandshakeRejected
            | Kind::UpgradeMissing
            | Kind::AcceptMismatch
            | Kind::BadHandshake
            | Kind::ExtensionNotOffered
            | Kind::HandshakeTooLarge
            | Kind::FrameBeforeUpgrade => Category::Handshake,
            Kind::InvalidUtf8Text
            | Kind::InvalidCompressedData
            | Kind::InvalidClosePayload
            | Kind::InvalidCloseCode
            | Kind::InvalidCloseReason
            | Kind::DataAfterClose => Category::Payload,
            Kind::HttpInStream | Kind::TlsOnPlainPort => Category::Stream,
            Kind::PeerProtocolError | Kind::AbnormalClosure | Kind::IdleTimeoutCut => Category::Close,
            Kind::ProxyAltered => Category::Proxy,
            _ => Category::Frame,
        }
    }

    /// Kinds reported at most once per connection (handshake and stream kinds).
    pub fn once_per_connection(self) -> bool {
        matches!(self.category(), Category::Handshake | Category::Stream)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A small set of [`Kind`]s (a bit set; no allocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSet(u64);

impl KindSet {
    pub const EMPTY: KindSet = KindSet(0);

    pub fn insert(&mut self, k: Kind) {
        self.0 |= 1 << k.index();
    }

    pub fn contains(self, k: Kind) -> bool {
        self.0 & (1 << k.index()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The kinds in index order.
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

const _: () = assert!(Kind::COUNT <= 64, "KindSet holds 64 kinds");

/// The kinds' names, in index order.
impl Serialize for KindSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl FromIterator<Kind> for KindSet {
    fn from_iter<I: IntoIterator<Item = Kind>>(iter: I) -> Self {
        let mut s = KindSet::EMPTY;
        for k in iter {
            s.insert(k);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(Kind::from_name(k.name()), Some(*k));
            assert!(!k.meaning().is_empty() && !k.likely_cause().is_empty());
            assert!(k.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
        }
        const { assert!(Kind::COUNT <= 32, "KindSet is a u32") };
    }

    #[test]
    fn kind_set() {
        let s: KindSet = [Kind::ReservedOpcode, Kind::TlsOnPlainPort].into_iter().collect();
        assert_eq!(s.len(), 2);
        assert!(s.contains(Kind::TlsOnPlainPort));
        assert!(!s.contains(Kind::BadHandshake));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![Kind::ReservedOpcode, Kind::TlsOnPlainPort]);
    }
}
