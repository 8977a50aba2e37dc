//! The protocol engine: a pure, I/O-free consumer of rebuilt TCP byte streams
//! ([`StreamSink`]) that follows the HTTP/1.1 upgrade handshake and every RFC 6455 frame
//! header in both directions, and reports protocol violations as [`Finding`]s.
//!
//! The live capture and the pcap replay drive the same [`Engine`] byte for byte, so its
//! output depends only on the sequence of `open`/`data`/`gap`/`close` calls, never on how
//! the bytes were cut into `data` calls.
//!
//! Under header-only capture, binary payload arrives as [`StreamSink::skip`]: a direction
//! in sync passes over it exactly as over payload it does not read, so findings are the
//! same as with every byte. A skip where bytes are needed (a header, text, a compressed
//! or close payload, while scanning) counts in `skip_mismatches` and is taken for a gap.
//! With [`EngineConfig::steer`], the engine also says what the capture should copy
//! ([`Hint`]): everything in a direction that lost sync, and where the next frame header
//! is in a direction in sync that is sent bytes it does not read.
//!
//! # Per connection
//!
//! * [`Opening::Handshake`]: the connection is followed as a loop of HTTP/1.1 exchanges
//!   until a 101 switches it to frames. The client stream must start with an HTTP
//!   request; a TLS record instead → [`Kind::TlsOnPlainPort`]. A request without any
//!   WebSocket header is plain HTTP (counted in `http_requests`, not a violation); one
//!   with some but without both upgrade tokens → [`Kind::UpgradeMissing`]. Bodies are
//!   passed over by `Content-Length` or chunked framing ([`http`]) without being kept,
//!   interim 1xx responses are skipped, and the next request on a keep-alive connection
//!   is read the same way (a retry after a rejection is analysed). A head over 32 KiB or
//!   256 fields → [`Kind::HandshakeTooLarge`] and the handshake counts as lost; bytes
//!   that stop being HTTP end it silently (counted in `not_http`), and so, uncounted,
//!   does a response body that runs to the end of the connection. The response to an upgrade request is judged
//!   against it (accept key, extensions, subprotocol); a 101 switches both directions to
//!   frame parsing right after the head, anything else is [`Kind::HandshakeRejected`].
//!   Client bytes after an upgrade request that came before the server began to answer
//!   are [`Kind::FrameBeforeUpgrade`] (after a 101 they are parsed as frames). Bytes that
//!   arrive in one direction before the other side's head was parsed are held (up to
//!   64 KiB; beyond that they count as a gap, which a body being passed over absorbs).
//! * [`Opening::MidStream`], a gap during the handshake, or any loss of sync: see
//!   [`resync`] for the resynchronisation rule and what is (not) reported meanwhile.
//! * Frames: every header is checked ([`frame::check_header`]); fragmentation, close
//!   state and text messages are tracked per direction; a message's size over all its
//!   fragments is checked against `max_message_size`; text is validated as UTF-8
//!   incrementally; every compressed message is inflated ([`inflate`]) within a budget
//!   per message (`max_message_size`) and per second (`max_inflate_rate`, the excess
//!   counted in `inflate_skipped`), and data that does not inflate is
//!   [`Kind::InvalidCompressedData`]; close bodies (≤ 125 bytes) are buffered and checked.
//!
//! # Counting
//!
//! Frame kinds once per offending frame (one frame may raise several kinds);
//! `invalid_utf8_text`, `invalid_compressed_data` and `oversized_message` once per
//! message; handshake kinds, `http_in_stream` and `tls_on_plain_port` once per
//! connection. Counts are per direction of the bytes at fault (`upgrade_missing`, a bad
//! request, `handshake_too_large` of a request and `frame_before_upgrade` are the
//! client's; the response kinds are the server's).
//!
//! # Close analysis
//!
//! How a WebSocket connection ends is analysed too, with kinds that are not violations
//! ([`Category::Close`], apart in every total): [`Kind::PeerProtocolError`] for a first
//! close frame with 1002, 1003, 1007, 1008 or 1009 (with what the other side sent just
//! before, [`Before`]); [`Kind::AbnormalClosure`] for each direction in sync that sent no
//! close frame before TCP ended; [`Kind::IdleTimeoutCut`] when TCP ended without close
//! handshake after a second or more without data, on the side whose FIN or RST came
//! first. Every WebSocket connection that ends is counted by how ([`Ending`]) and, with
//! [`EngineConfig::connection_log`], described by a [`ConnectionRecord`].
//!
//! # What is deliberately not reported
//!
//! * Anything while a direction is unsynced, or on probation after a resync (except
//!   findings of a violation pattern that direction raised before, which are reported
//!   when probation ends cleanly: see [`resync`]).
//! * `rsv_without_extension` / `rsv1_invalid` for RSV1 when the negotiation is unknown
//!   (mid-stream, lost handshake) or an extension we do not understand was accepted.
//! * UTF-8 of a message whose start was not seen, that lost bytes in a gap, or that is
//!   compressed while we cannot decompress it (negotiation unknown, context lost).
//! * An orphan continuation with FIN = 0 opens an (unchecked) message, so the rest of
//!   that broken message does not raise one finding per fragment.

pub mod frame;
pub mod handshake;
pub mod http;
pub mod inflate;
pub mod kind;
pub mod record;
pub mod resync;
mod stream;
pub mod utf8;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, StreamSink, Unanalysed};

pub use frame::FrameHeaderBytes;
pub use kind::{Category, Kind, KindSet};
pub use record::{CloseSeen, ConnectionRecord, Ending, FrameTally, HandshakeSeen, Sides};

use frame::{OpClass, RsvPolicy, Rules};
use handshake::{head_end, judge_101, parse_request, parse_response, Head, Request, Response, HEAD_CAP};
use http::Framing;
use stream::{DirState, Mode, ModeKind, ResumePoint};

/// Evicted WebSocket sessions remembered so that they can be resumed.
const RESUMABLE: usize = 4096;

/// What is kept of an evicted WebSocket session ([`Opening::Resumed`]).
#[derive(Debug)]
struct Evicted {
    dirs: [ResumePoint; 2],
    deflate: bool,
    subprotocol: Option<String>,
}

/// Engine settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Frames with a larger payload are reported as [`Kind::OversizedFrame`].
    pub max_frame_size: u64,
    /// Messages larger than this (all fragments, or inflated) are
    /// [`Kind::OversizedMessage`]; inflating a message stops there.
    pub max_message_size: u64,
    /// Bytes the engine inflates per second at most, over all connections; a message
    /// that would go beyond is not inflated further (counted in
    /// [`EngineStats::inflate_skipped`]).
    pub max_inflate_rate: u64,
    /// Produce [`Hint`]s for a header-only capture ([`Engine::drain_hints`]).
    pub steer: bool,
    /// [`Finding`]s one connection produces per second at most; the rest are counted
    /// (in the violation counts, and in [`EngineStats::findings_suppressed`]) but not
    /// reported one by one.
    pub max_findings_per_second: u32,
    /// Keep a [`ConnectionRecord`] of every WebSocket connection that ends
    /// ([`Engine::drain_records`]).
    pub connection_log: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            max_inflate_rate: 256 << 20,
            steer: false,
            max_findings_per_second: 100,
            connection_log: false,
        }
    }
}

/// What was used of a per-second budget in the current second of stream time: bytes
/// inflated over all connections, findings of one connection.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PerSecond {
    second_start_ns: u64,
    used: u64,
}

impl PerSecond {
    /// What is left at `ts_ns` of `rate` per second.
    pub fn left(&mut self, ts_ns: u64, rate: u64) -> u64 {
        if ts_ns.saturating_sub(self.second_start_ns) >= 1_000_000_000 || ts_ns < self.second_start_ns {
            self.second_start_ns = ts_ns;
            self.used = 0;
        }
        rate.saturating_sub(self.used)
    }

    pub fn spend(&mut self, n: u64) {
        self.used = self.used.saturating_add(n);
    }
}

/// What a header-only capture should do in one direction of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    /// Copy every byte: the direction lost sync (or was sent a skip it could not take)
    /// and looking for frames needs them.
    FullCopy,
    /// In sync, and sent payload it does not read: the next frame header is at stream
    /// offset `offset`, where continuations belong to `open`.
    Anchor { offset: u64, open: OpenMessage },
}

/// The data message a continuation frame would belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMessage {
    None,
    /// Its payload is read (text, compressed, or not known).
    Read,
    /// Binary, uncompressed: its payload can be skipped.
    Skip,
}

/// A [`Steer`] for one direction of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint {
    pub id: FlowId,
    pub key: FlowKey,
    pub dir: Direction,
    pub steer: Steer,
}

/// Frames seen, by opcode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FrameCounts {
    pub text: u64,
    pub binary: u64,
    pub continuation: u64,
    pub close: u64,
    pub ping: u64,
    pub pong: u64,
    /// Reserved opcodes (3-7, 11-15).
    pub reserved: u64,
}

impl FrameCounts {
    pub fn total(&self) -> u64 {
        self.text + self.binary + self.continuation + self.close + self.ping + self.pong + self.reserved
    }

    pub(crate) fn bump(&mut self, class: OpClass) {
        let slot = match class {
            OpClass::Continuation => &mut self.continuation,
            OpClass::Text => &mut self.text,
            OpClass::Binary => &mut self.binary,
            OpClass::Close => &mut self.close,
            OpClass::Ping => &mut self.ping,
            OpClass::Pong => &mut self.pong,
            OpClass::Reserved => &mut self.reserved,
        };
        *slot += 1;
    }

    pub(crate) fn add(&mut self, o: &FrameCounts) {
        self.text += o.text;
        self.binary += o.binary;
        self.continuation += o.continuation;
        self.close += o.close;
        self.ping += o.ping;
        self.pong += o.pong;
        self.reserved += o.reserved;
    }
}

/// Totals since the engine was created (kept after connections are closed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Connections opened.
    pub connections: u64,
    /// 101 responses that passed every check.
    pub upgrades_ok: u64,
    /// Frames parsed in sync, indexed by [`Direction::index`].
    pub frames: [FrameCounts; 2],
    /// Findings, indexed by [`Direction::index`] then [`Kind::index`].
    pub violations: [[u64; Kind::COUNT]; 2],
    /// Close status codes seen in close frames (valid or not).
    pub close_codes: BTreeMap<u16, u64>,
    /// Plain HTTP requests (no WebSocket header at all) by server port: health checks,
    /// long-polling, pages served on the WebSocket port. Not violations.
    pub http_requests: BTreeMap<u16, u64>,
    /// Connections given up during the handshake because their bytes stopped being
    /// HTTP (no request or status line, broken body framing).
    pub not_http: u64,
    /// Times a direction lost sync it had (gap over a header, HTTP in the stream,
    /// unusable length, handshake that could not be followed).
    pub desyncs: u64,
    /// Times a direction regained sync (a resync that passed probation), including the
    /// first sync of a mid-stream connection.
    pub resyncs: u64,
    /// Bytes passed over while unsynced (not counting gaps).
    pub unsynced_bytes: u64,
    /// Payload bytes the capture left out (header-only) and the engine passed over in
    /// sync, as it passes over binary payload it has.
    pub skipped_bytes: u64,
    /// Skips that came where bytes were needed, taken for gaps (a header-only capture
    /// out of step with the engine; each also asks the capture to copy everything).
    pub skip_mismatches: u64,
    /// Compressed messages not inflated to their end because of an inflate budget
    /// (`max_message_size`, `max_inflate_rate`); their frames stay in sync. Under context
    /// takeover that direction's later compressed messages cannot be inflated either.
    pub inflate_skipped: u64,
    /// Bytes no check saw, by why (see [`ConnectionView::unanalysed`]).
    pub unanalysed: Unanalysed,
    /// Violations counted but not reported as [`Finding`]s, beyond
    /// [`EngineConfig::max_findings_per_second`] on their connection.
    pub findings_suppressed: u64,
    /// WebSocket connections (an upgrade request seen, or a session followed) that
    /// ended, by how ([`Ending::index`]).
    pub endings: [u64; Ending::COUNT],
    /// Connections cut after being idle ([`Kind::IdleTimeoutCut`]), by the side that
    /// cut them ([`Direction::index`]) and idle time in tenths of a second.
    pub idle_cuts: [BTreeMap<u64, u64>; 2],
    /// Times analysing a connection panicked: the connection was dropped, the monitor
    /// went on (see [`crate::monitor`]).
    pub panics: u64,
}

impl EngineStats {
    /// Adds another engine's totals (of other connections) to these.
    pub fn add(&mut self, o: &EngineStats) {
        let EngineStats {
            connections,
            upgrades_ok,
            frames,
            violations,
            close_codes,
            http_requests,
            not_http,
            desyncs,
            resyncs,
            unsynced_bytes,
            skipped_bytes,
            skip_mismatches,
            inflate_skipped,
            unanalysed,
            findings_suppressed,
            endings,
            idle_cuts,
            panics,
        } = o;
        self.panics += panics;
        self.connections += connections;
        self.upgrades_ok += upgrades_ok;
        for (mine, theirs) in self.frames.iter_mut().zip(frames) {
            mine.add(theirs);
        }
        for (mine, theirs) in self.violations.iter_mut().flatten().zip(violations.iter().flatten()) {
            *mine += theirs;
        }
        for (code, n) in close_codes {
            *self.close_codes.entry(*code).or_insert(0) += n;
        }
        for (port, n) in http_requests {
            *self.http_requests.entry(*port).or_insert(0) += n;
        }
        self.not_http += not_http;
        self.desyncs += desyncs;
        self.resyncs += resyncs;
        self.unsynced_bytes += unsynced_bytes;
        self.skipped_bytes += skipped_bytes;
        self.skip_mismatches += skip_mismatches;
        self.inflate_skipped += inflate_skipped;
        self.unanalysed.merge(unanalysed);
        self.findings_suppressed += findings_suppressed;
        for (mine, theirs) in self.endings.iter_mut().zip(endings) {
            *mine += theirs;
        }
        for (mine, theirs) in self.idle_cuts.iter_mut().zip(idle_cuts) {
            for (idle, n) in theirs {
                *mine.entry(*idle).or_insert(0) += n;
            }
        }
    }

    /// Findings of `kind` in both directions.
    pub fn violation_count(&self, kind: Kind) -> u64 {
        self.violations.iter().map(|d| d.get(kind.index()).copied().unwrap_or(0)).sum()
    }

    /// Findings of `kind` in `dir`.
    pub fn violation_count_dir(&self, dir: Direction, kind: Kind) -> u64 {
        self.violations.get(dir.index()).and_then(|d| d.get(kind.index())).copied().unwrap_or(0)
    }

    /// All violations (close-analysis findings not included).
    pub fn violations_total(&self) -> u64 {
        Kind::violations().map(|k| self.violation_count(k)).sum()
    }
}

/// What a close-analysis finding adds: what it is about, and what came before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detail {
    #[default]
    None,
    /// [`Kind::PeerProtocolError`]: the close code, and what the other side sent last.
    Close { code: u16, before: Before },
    /// [`Kind::AbnormalClosure`]: the connection ended with a RST (else FINs).
    Ended { rst: bool },
    /// [`Kind::IdleTimeoutCut`]: idle this long (milliseconds) before the cut.
    Idle { ms: u64 },
    /// [`Kind::ProxyAltered`]: what the proxy changed (on the front connection's key).
    Proxy(Alteration),
}

/// What a proxy changed between the front connection (client to proxy) and the back
/// one (proxy to backend) of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alteration {
    /// The request reached the backend without `Upgrade: websocket` / `Connection: Upgrade`.
    UpgradeRemoved,
    /// The client's `Sec-WebSocket-Extensions` offer reached the backend changed.
    OfferChanged,
    /// The backend's 101 accepted extensions that the client's 101 does not show.
    ExtensionsDropped,
    /// The client's 101 shows extensions the backend did not accept.
    ExtensionsAdded,
    /// The subprotocol accepted differs.
    SubprotocolChanged,
    /// The 101 reached the client without `Upgrade` / `Connection: Upgrade`.
    ResponseUpgradeRemoved,
    /// Frames with RSV1 differ in number between the hops (front, back).
    Rsv1Differs { front: u64, back: u64 },
    /// Frames differ in number (dropped or injected).
    FramesDiffer { front: u64, back: u64 },
    /// Payload bytes differ.
    PayloadDiffers { front: u64, back: u64 },
}

impl Alteration {
    /// Stable name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Alteration::UpgradeRemoved => "upgrade_removed",
            Alteration::OfferChanged => "offer_changed",
            Alteration::ExtensionsDropped => "extensions_dropped",
            Alteration::ExtensionsAdded => "extensions_added",
            Alteration::SubprotocolChanged => "subprotocol_changed",
            Alteration::ResponseUpgradeRemoved => "response_upgrade_removed",
            Alteration::Rsv1Differs { .. } => "rsv1_differs",
            Alteration::FramesDiffer { .. } => "frames_differ",
            Alteration::PayloadDiffers { .. } => "payload_differs",
        }
    }

    /// What it means, in a sentence's middle: "the proxy {this}".
    pub fn sentence(self) -> String {
        match self {
            Alteration::UpgradeRemoved => "removed Upgrade/Connection from the request it sent the backend".into(),
            Alteration::OfferChanged => "changed the Sec-WebSocket-Extensions offer on its way to the backend".into(),
            Alteration::ExtensionsDropped => {
                "dropped Sec-WebSocket-Extensions from the 101: the backend negotiated an extension the client was not told of".into()
            }
            Alteration::ExtensionsAdded => "added Sec-WebSocket-Extensions to the 101 that the backend did not accept".into(),
            Alteration::SubprotocolChanged => "changed the subprotocol of the 101".into(),
            Alteration::ResponseUpgradeRemoved => "removed Upgrade/Connection from the 101 it sent the client".into(),
            Alteration::Rsv1Differs { front, back } => {
                format!("changed RSV1 bits: {front} frames with RSV1 on the client's side, {back} on the backend's")
            }
            Alteration::FramesDiffer { front, back } => {
                format!("dropped or injected frames: {front} on the client's side, {back} on the backend's")
            }
            Alteration::PayloadDiffers { front, back } => {
                format!("changed frame payloads: {front} bytes on the client's side, {back} on the backend's")
            }
        }
    }
}

/// What the other side sent last before a close code that says it broke a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Before {
    /// Nothing it did was seen as a violation, and no message is known.
    #[default]
    Nothing,
    /// A violation the monitor reported.
    Violation(Kind),
    /// A data message (or its start), text or binary, of this many bytes.
    Message { text: bool, size: u64 },
}

impl Finding {
    /// A sentence on what a close-analysis finding means here (`None` for violations).
    pub fn explain(&self) -> Option<String> {
        let who = self.dir.name();
        let other = self.dir.reverse().name();
        Some(match self.detail {
            Detail::None => return None,
            Detail::Close { code, before: Before::Violation(k) } => {
                format!("the {who} closed {code} after the {other}'s {k}")
            }
            Detail::Close { code: 1009, before: Before::Message { size, text } } => format!(
                "the {who} closed 1009 after a {size}-byte {} message from the {other}: it enforces a message size limit",
                if text { "text" } else { "binary" }
            ),
            Detail::Close { code: 1003, before: Before::Message { text, .. } } => format!(
                "the {who} closed 1003 after a {} message from the {other}: it does not accept that data type",
                if text { "text" } else { "binary" }
            ),
            Detail::Close { code: 1008, .. } => format!("the {who} closed 1008: an application policy refused the {other}"),
            Detail::Close { code, .. } => {
                format!("the {who} closed {code} though no violation from the {other} was seen: it enforces something the wire does not show")
            }
            Detail::Ended { rst } => format!(
                "the TCP connection ended ({}) without a close frame from the {who}",
                if rst { "RST" } else { "FIN" }
            ),
            Detail::Idle { ms } => {
                format!("cut by the {who} side after {:.1} s idle, without a close handshake", ms as f64 / 1000.0)
            }
            Detail::Proxy(a) => format!("the proxy at {} {}", self.key.server, a.sentence()),
        })
    }
}

/// One reported violation, or close-analysis finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub ts_ns: u64,
    pub id: FlowId,
    pub key: FlowKey,
    /// Direction of the bytes at fault.
    pub dir: Direction,
    pub kind: Kind,
    /// Stream offset (in `dir`) of the frame header or HTTP line at fault.
    pub offset: u64,
    /// Raw header bytes (up to 14) of the frame at fault; empty for non-frame findings.
    pub header: FrameHeaderBytes,
    /// The first bytes at fault (unmasked frame payload, the HTTP line, the TLS record,
    /// the handshake head) as far as they were at hand. Payload: shown only on request
    /// (`--log-payload`).
    pub excerpt: Excerpt,
    /// For close analysis: what it is about (see [`Finding::explain`]).
    pub detail: Detail,
}

/// Up to [`Excerpt::CAP`] bytes kept inline with a finding (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Excerpt {
    buf: [u8; Excerpt::CAP],
    len: u8,
}

impl Excerpt {
    pub const CAP: usize = 64;
    pub const EMPTY: Excerpt = Excerpt { buf: [0; Excerpt::CAP], len: 0 };

    /// The first [`Excerpt::CAP`] bytes of `bytes`.
    pub fn new(bytes: &[u8]) -> Excerpt {
        let mut e = Excerpt::EMPTY;
        let n = bytes.len().min(Excerpt::CAP);
        if let (Some(dst), Some(src)) = (e.buf.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
            e.len = n as u8;
        }
        e
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Printable ASCII as is, everything else as `\xNN`.
    pub fn escaped(&self) -> String {
        self.as_slice().escape_ascii().to_string()
    }
}

impl std::fmt::Debug for Excerpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Excerpt(\"{}\")", self.escaped())
    }
}

/// Where a connection stands, for dashboards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Waiting for the request or the response head.
    Handshake,
    /// Frames flowing in sync in both directions.
    Open,
    /// One endpoint sent a close frame.
    Closing,
    /// Both endpoints sent close frames.
    Closed,
    /// At least one direction is unsynced (or on probation after a resync).
    Desync,
    /// Not a WebSocket connection (plain HTTP, rejected upgrade, TLS, garbage); a
    /// keep-alive connection between HTTP exchanges may still upgrade later.
    NotWebSocket,
}

/// A live connection as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    pub key: FlowKey,
    pub opening: Opening,
    /// Index of the interface its packets were captured on (0: not known).
    pub iface: u32,
    pub state: ConnState,
    /// Frames parsed in sync, indexed by [`Direction::index`].
    pub frames: [u64; 2],
    /// Findings on this connection.
    pub violations: u64,
    pub last_close_code: Option<u16>,
    /// permessage-deflate was negotiated.
    pub deflate: bool,
    pub subprotocol: Option<String>,
    pub opened_ns: u64,
    pub last_ns: u64,
    /// Bytes of this connection no check saw, by why: lost before they reached the
    /// engine (capture, eviction, buffer limits) or passed over out of sync.
    pub unanalysed: Unanalysed,
    /// Data messages completed in sync, indexed by [`Direction::index`].
    pub messages: [u64; 2],
    /// Frames by opcode, with RSV1 and payload, in sync, by [`Direction::index`].
    pub tally: [record::FrameTally; 2],
    /// The close frame each side sent, if any, and which side sent the first.
    pub closes: [Option<CloseSeen>; 2],
    pub first_close: Option<Direction>,
    /// When the last payload byte (either way) was seen.
    pub last_data_ns: u64,
    /// The last upgrade request and its answer (none on a connection never asked to
    /// upgrade, or picked up after its handshake).
    pub handshake: Option<Box<HandshakeSeen>>,
    /// The kinds found on it.
    pub kinds: KindSet,
    /// Analysis lost sync in some direction at some point.
    pub lost_sync: bool,
    /// Per direction: the last violation found, and the last data message begun
    /// (for close analysis).
    pub last_violation: [Option<Kind>; 2],
    pub last_message: [Option<(bool, u64)>; 2],
    /// The side whose FIN or RST ended TCP first, and when.
    pub ended_first: Option<(Direction, u64)>,
}

/// A connection that had bytes no check saw, as the report lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlindSpot {
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
    /// Bytes unanalysed in all, then by why.
    pub total: u64,
    pub unanalysed: Unanalysed,
}

/// The connections with the most unanalysed bytes, [`BlindSpots::CAP`] at most, and how
/// many others there were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlindSpots {
    pub worst: Vec<BlindSpot>,
    pub omitted: u64,
}

impl BlindSpots {
    pub const CAP: usize = 1000;

    /// Keeps `spot` if it is among the worst [`BlindSpots::CAP`] so far.
    pub fn add(&mut self, spot: BlindSpot) {
        if self.worst.len() < Self::CAP {
            self.worst.push(spot);
            return;
        }
        self.omitted += 1;
        let least = self.worst.iter().enumerate().min_by_key(|(_, s)| s.total).map(|(i, s)| (i, s.total));
        if let Some((i, _)) = least.filter(|&(_, total)| total < spot.total) {
            if let Some(slot) = self.worst.get_mut(i) {
                *slot = spot;
            }
        }
    }

    /// Adds another engine's (of other connections).
    pub fn merge(&mut self, o: &BlindSpots) {
        self.omitted += o.omitted;
        for s in &o.worst {
            self.add(s.clone());
        }
    }

    /// Worst first.
    pub fn sorted(&self) -> Vec<BlindSpot> {
        let mut v = self.worst.clone();
        v.sort_by_key(|s| std::cmp::Reverse(s.total));
        v
    }
}

/// What the per-direction code needs to report and count.
pub(crate) struct Cx<'a> {
    pub stats: &'a mut EngineStats,
    pub findings: &'a mut Vec<Finding>,
    pub id: FlowId,
    pub key: FlowKey,
    pub ts_ns: u64,
    pub once: &'a mut KindSet,
    pub view: &'a mut ConnectionView,
    /// Where hints go, when steering a header-only capture.
    pub hints: Option<&'a mut Vec<Hint>>,
    pub budget: &'a mut PerSecond,
    pub cfg: &'a EngineConfig,
    /// The connection's findings in the current second.
    pub rate: &'a mut PerSecond,
}

impl Cx<'_> {
    /// `n` bytes of this connection go unanalysed, for `loss`.
    pub fn lost(&mut self, loss: Loss, n: u64) {
        self.view.unanalysed.add(loss, n);
        self.stats.unanalysed.add(loss, n);
    }

    /// `n` bytes passed over while out of sync.
    pub fn unsynced(&mut self, n: u64) {
        self.stats.unsynced_bytes += n;
        self.lost(Loss::Resync, n);
    }

    pub fn steering(&self) -> bool {
        self.hints.is_some()
    }

    pub fn steer(&mut self, dir: Direction, steer: Steer) {
        let (id, key) = (self.id, self.key);
        if let Some(hints) = self.hints.as_deref_mut() {
            hints.push(Hint { id, key, dir, steer });
        }
    }

    /// Records a finding with the bytes at fault (see [`Finding::excerpt`]);
    /// once-per-connection kinds only the first time.
    pub fn emit_with(&mut self, dir: Direction, kind: Kind, offset: u64, header: FrameHeaderBytes, bytes: &[u8]) {
        self.emit_detail(dir, kind, offset, header, bytes, Detail::None);
    }

    /// [`Self::emit_with`] with a close-analysis [`Detail`].
    pub fn emit_detail(
        &mut self,
        dir: Direction,
        kind: Kind,
        offset: u64,
        header: FrameHeaderBytes,
        bytes: &[u8],
        detail: Detail,
    ) {
        if kind.once_per_connection() {
            if self.once.contains(kind) {
                return;
            }
            self.once.insert(kind);
        }
        if let Some(c) = self.stats.violations.get_mut(dir.index()).and_then(|d| d.get_mut(kind.index())) {
            *c += 1;
        }
        if kind.is_violation() {
            self.view.violations += 1;
        }
        self.view.kinds.insert(kind);
        if self.rate.left(self.ts_ns, u64::from(self.cfg.max_findings_per_second)) == 0 {
            self.stats.findings_suppressed += 1;
            return;
        }
        self.rate.spend(1);
        let excerpt = Excerpt::new(bytes);
        if kind.is_violation() {
            if let Some(last) = self.view.last_violation.get_mut(dir.index()) {
                *last = Some(kind);
            }
        }
        self.findings.push(Finding {
            ts_ns: self.ts_ns,
            id: self.id,
            key: self.key,
            dir,
            kind,
            offset,
            header,
            excerpt,
            detail,
        });
    }
}

/// Handshake progress of a connection: a loop over HTTP exchanges until an upgrade
/// succeeds.
#[derive(Debug)]
enum Hs {
    /// Waiting for the first request.
    AwaitRequest,
    /// Plain HTTP so far (or a rejected upgrade): waiting for the previous response's
    /// body to end and for a next request, which may be an upgrade.
    NextRequest,
    /// A request was read; waiting for its response.
    AwaitResponse(Box<Request>, Early),
    Done,
}

/// Client bytes held after an upgrade request that came before the server began to
/// answer it (RFC 6455 §4.1: the client waits for the 101).
#[derive(Clone, Copy, Debug)]
enum Early {
    /// No byte of the response yet: every client byte held so far came before it.
    Open,
    /// The response began when this many client bytes were held after the request.
    Closed(usize),
}

#[derive(Debug)]
struct Conn {
    view: ConnectionView,
    once: KindSet,
    hs: Hs,
    dirs: [DirState; 2],
    /// Reported in [`Engine::drain_sessions`] already.
    session: bool,
    rate: PerSecond,
}

/// The protocol engine. Feed it through [`StreamSink`]; collect findings with
/// [`Engine::drain_findings`].
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    stats: EngineStats,
    findings: Vec<Finding>,
    hints: Vec<Hint>,
    conns: HashMap<FlowId, Conn>,
    budget: PerSecond,
    /// Connections found to carry a WebSocket session since the last drain.
    sessions: Vec<(FlowId, FlowKey)>,
    /// Closed connections with unanalysed bytes.
    blind_spots: BlindSpots,
    /// Records of WebSocket connections that ended, since the last drain.
    records: Vec<ConnectionRecord>,
    /// Evicted WebSocket sessions by [`FlowKey::unordered`] key, and their keys oldest
    /// first (bounds the map).
    resumable: HashMap<FlowKey, Evicted>,
    resumable_order: std::collections::VecDeque<FlowKey>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(EngineConfig::default())
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            stats: EngineStats::default(),
            findings: Vec::new(),
            hints: Vec::new(),
            conns: HashMap::new(),
            budget: PerSecond::default(),
            sessions: Vec::new(),
            blind_spots: BlindSpots::default(),
            records: Vec::new(),
            resumable: HashMap::new(),
            resumable_order: std::collections::VecDeque::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Takes the findings reported since the last call, oldest first.
    pub fn drain_findings(&mut self) -> std::vec::Drain<'_, Finding> {
        self.findings.drain(..)
    }

    /// Connections found since the last call to carry a WebSocket session (upgraded, or
    /// in sync with frames when picked up mid-stream), each once: what reassembly keeps
    /// longest under pressure.
    pub fn drain_sessions(&mut self) -> std::vec::Drain<'_, (FlowId, FlowKey)> {
        self.sessions.drain(..)
    }

    /// Drops connection `id` without analysing what is left of it (its analysis
    /// panicked).
    pub fn forget(&mut self, id: FlowId) {
        self.conns.remove(&id);
    }

    /// Counts a panic the monitor caught.
    pub fn count_panic(&mut self) {
        self.stats.panics += 1;
    }

    /// Counts how a WebSocket connection ended and, with the connection log, keeps its
    /// record.
    fn ended(&mut self, id: FlowId, conn: &Conn, closing: Closing, ts_ns: u64) {
        let v = &conn.view;
        if v.handshake.is_none() && !conn.session {
            return; // not WebSocket: plain HTTP, TLS, a connection never understood
        }
        let ending = ConnectionRecord::ending(closing, &v.closes);
        if let Some(n) = self.stats.endings.get_mut(ending.index()) {
            *n += 1;
        }
        if !self.cfg.connection_log {
            return;
        }
        self.records.push(ConnectionRecord {
            id,
            client: v.key.client,
            server: v.key.server,
            iface: v.iface,
            opening: v.opening,
            start_ns: v.opened_ns,
            end_ns: ts_ns,
            last_data_ns: v.last_data_ns,
            handshake: v.handshake.as_deref().cloned(),
            frames: Sides::of(&v.frames),
            tally: Sides::of(&v.tally),
            messages: Sides::of(&v.messages),
            bytes: Sides::of(&conn.dirs.each_ref().map(|d| d.end)),
            close: Sides::of(&v.closes),
            closed_first: v.first_close.map(Direction::name),
            ending,
            violations: v.violations,
            kinds: v.kinds,
            lost_sync: v.lost_sync,
            unanalysed: v.unanalysed,
        });
    }

    /// Keeps what resuming the evicted session `conn` needs (the oldest such beyond
    /// [`RESUMABLE`] are forgotten).
    fn remember_evicted(&mut self, conn: Conn) {
        let key = conn.view.key.unordered();
        let [c, s] = &conn.dirs;
        let e = Evicted {
            dirs: [c.resume_point(), s.resume_point()],
            deflate: conn.view.deflate,
            subprotocol: conn.view.subprotocol,
        };
        if self.resumable.insert(key, e).is_none() {
            self.resumable_order.push_back(key);
        }
        while self.resumable_order.len() > RESUMABLE {
            if let Some(old) = self.resumable_order.pop_front() {
                self.resumable.remove(&old);
            }
        }
    }

    /// Records of the WebSocket connections that ended since the last call (with
    /// [`EngineConfig::connection_log`]).
    pub fn drain_records(&mut self) -> std::vec::Drain<'_, ConnectionRecord> {
        self.records.drain(..)
    }

    /// Closed connections that had unanalysed bytes (the worst of them).
    pub fn blind_spots(&self) -> &BlindSpots {
        &self.blind_spots
    }

    /// Hints for the capture since the last call, oldest first (with [`EngineConfig::steer`]).
    pub fn drain_hints(&mut self) -> std::vec::Drain<'_, Hint> {
        self.hints.drain(..)
    }

    pub fn connection(&self, id: FlowId) -> Option<&ConnectionView> {
        self.conns.get(&id).map(|c| &c.view)
    }

    /// Connections currently tracked (unordered).
    pub fn connections(&self) -> impl Iterator<Item = (FlowId, &ConnectionView)> + '_ {
        self.conns.iter().map(|(id, c)| (*id, &c.view))
    }
}

impl EngineConfig {
    fn rules(&self, dir: Direction, rsv: RsvPolicy) -> Rules {
        Rules {
            client_to_server: dir == Direction::ToServer,
            rsv,
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
        }
    }
}

impl Conn {
    fn refresh_state(&mut self) {
        let kinds = [self.dirs[0].mode_kind(), self.dirs[1].mode_kind()];
        self.view.state = if matches!(self.hs, Hs::NextRequest) {
            ConnState::NotWebSocket
        } else if !matches!(self.hs, Hs::Done) || kinds.contains(&ModeKind::Hold) {
            ConnState::Handshake
        } else if kinds.contains(&ModeKind::Ignore) {
            ConnState::NotWebSocket
        } else if !self.dirs.iter().all(DirState::trusted) {
            ConnState::Desync
        } else {
            match self.dirs.iter().filter(|d| d.closed).count() {
                0 => ConnState::Open,
                1 => ConnState::Closing,
                _ => ConnState::Closed,
            }
        };
    }
}

/// Drops the handshake: the connection is not WebSocket.
fn not_websocket(hs: &mut Hs, dirs: &mut [DirState; 2]) {
    *hs = Hs::Done;
    for d in dirs.iter_mut() {
        d.ignore();
    }
}

/// The handshake cannot be followed (bytes lost): look for frames in both directions.
fn handshake_lost(hs: &mut Hs, dirs: &mut [DirState; 2], cx: &mut Cx<'_>, cfg: &EngineConfig) {
    // If the request was read and offered no extension, none can be in force.
    let policy = match hs {
        Hs::AwaitResponse(req, _) if req.offers.is_empty() => RsvPolicy::Plain,
        _ => RsvPolicy::Unknown,
    };
    *hs = Hs::Done;
    for d in dirs.iter_mut() {
        if d.mode_kind() == ModeKind::Hold {
            let r = cfg.rules(d.dir, policy);
            d.start_scan(r, cx);
        }
    }
}

/// Whether `b` starts with a TLS handshake record header (`16 03 00..04`); `None` while
/// undecided.
fn tls_record(b: &[u8]) -> Option<bool> {
    match b {
        [0x16] | [0x16, 0x03] => None,
        [0x16, 0x03, v, ..] => Some(*v <= 0x04),
        _ => Some(false),
    }
}

/// Looks for a complete head in `d.held`, remembering how far it searched:
/// `Some(true)` found, `Some(false)` not yet, `None` the head is too large.
fn head_ready(d: &mut DirState) -> Option<bool> {
    match head_end(&d.held, d.head_scan) {
        Some(_) => Some(true),
        None => {
            d.head_scan = d.held.len();
            if d.held.len() >= HEAD_CAP {
                None
            } else {
                Some(false)
            }
        }
    }
}

/// What became of a direction's held bytes when looking for the next head.
enum NextHead<T> {
    /// Wait for more bytes.
    Wait,
    /// The handshake is over (not HTTP, too large): already dealt with.
    Stop,
    /// A complete head of this many bytes.
    Head(usize, T),
}

/// Finds the next head in `d.held` (parsed by `parse`); a head too large is reported as
/// [`Kind::HandshakeTooLarge`] by `dir` and the handshake is given up as lost, bytes
/// that are not HTTP end it as not WebSocket.
fn next_head<T>(
    hs: &mut Hs,
    dirs: &mut [DirState; 2],
    dir: Direction,
    cx: &mut Cx<'_>,
    cfg: &EngineConfig,
    parse: impl Fn(&[u8]) -> Head<T>,
) -> NextHead<T> {
    let Some(d) = dirs.get_mut(dir.index()) else {
        return NextHead::Stop;
    };
    if d.body_bad {
        cx.stats.not_http += 1;
        not_websocket(hs, dirs);
        return NextHead::Stop;
    }
    if d.held.is_empty() || d.body.active() {
        return NextHead::Wait;
    }
    let head = match head_ready(d) {
        None => Head::TooLarge,
        Some(false) => return NextHead::Wait,
        Some(true) => parse(&d.held),
    };
    match head {
        Head::Partial => {
            d.head_scan = d.held.len();
            NextHead::Wait
        }
        Head::Complete(n, t) => NextHead::Head(n, t),
        Head::Invalid => {
            cx.stats.not_http += 1;
            not_websocket(hs, dirs);
            NextHead::Stop
        }
        Head::TooLarge => {
            cx.emit_with(dir, Kind::HandshakeTooLarge, d.held_base, FrameHeaderBytes::EMPTY, &d.held);
            handshake_lost(hs, dirs, cx, cfg);
            NextHead::Stop
        }
    }
}

/// Advances the handshake as far as the held bytes allow: HTTP exchanges one after the
/// other (bodies passed over, interim responses skipped) until a 101 switches to frames.
fn advance(hs: &mut Hs, dirs: &mut [DirState; 2], cx: &mut Cx<'_>, cfg: &EngineConfig) {
    loop {
        match hs {
            Hs::Done => return,
            Hs::AwaitRequest | Hs::NextRequest => {
                let [c, s] = &mut *dirs;
                if s.body_bad {
                    cx.stats.not_http += 1;
                    return not_websocket(hs, dirs);
                }
                if s.body.active() || c.held.is_empty() {
                    return;
                }
                if c.held_base == 0 {
                    match tls_record(&c.held) {
                        None => return,
                        Some(true) => {
                            cx.emit_with(
                                Direction::ToServer,
                                Kind::TlsOnPlainPort,
                                c.held_base,
                                FrameHeaderBytes::EMPTY,
                                &c.held,
                            );
                            return not_websocket(hs, dirs);
                        }
                        Some(false) => {}
                    }
                }
                let (n, req) = match next_head(hs, dirs, Direction::ToServer, cx, cfg, parse_request) {
                    NextHead::Wait | NextHead::Stop => return,
                    NextHead::Head(n, req) => (n, req),
                };
                let [c, s] = &mut *dirs;
                let at = c.held_base;
                if req.body == Framing::Invalid {
                    cx.stats.not_http += 1;
                    return not_websocket(hs, dirs);
                }
                if req.upgrade {
                    if req.bad {
                        cx.emit_with(Direction::ToServer, Kind::BadHandshake, at, FrameHeaderBytes::EMPTY, &c.held);
                    }
                } else {
                    if req.intent {
                        cx.emit_with(Direction::ToServer, Kind::UpgradeMissing, at, FrameHeaderBytes::EMPTY, &c.held);
                    } else {
                        *cx.stats.http_requests.entry(cx.key.server.port()).or_insert(0) += 1;
                    }
                }
                if req.intent {
                    cx.view.handshake =
                        Some(Box::new(HandshakeSeen { request: req.seen.clone(), ..HandshakeSeen::default() }));
                }
                c.consume_head(n, req.body);
                // Server bytes already here: the response began before the client's bytes
                // after the request could have been sent early.
                let early = if s.held.is_empty() { Early::Open } else { Early::Closed(0) };
                *hs = Hs::AwaitResponse(Box::new(req), early);
            }
            Hs::AwaitResponse(..) => {
                let (n, resp) = match next_head(hs, dirs, Direction::ToClient, cx, cfg, parse_response) {
                    NextHead::Wait | NextHead::Stop => return,
                    NextHead::Head(n, resp) => (n, resp),
                };
                let Hs::AwaitResponse(req, _) = hs else {
                    return;
                };
                let [_, s] = &mut *dirs;
                let at = s.held_base;
                let head = Excerpt::new(&s.held);
                let body = resp.body_after(req);
                if let Some(seen) = cx
                    .view
                    .handshake
                    .as_deref_mut()
                    .filter(|_| req.intent && (resp.status == 101 || resp.status >= 200))
                {
                    seen.status = Some(resp.status);
                    seen.accepted_protocol = resp.protocols.first().cloned();
                    seen.accepted_extensions = resp.extensions_seen.clone();
                    seen.response_upgrade = resp.upgrade;
                }
                if resp.status == 101 && req.intent {
                    s.consume_head(n, Framing::Empty);
                    return upgraded(hs, dirs, cx, cfg, at, &resp, head);
                }
                if (100..200).contains(&resp.status) && resp.status != 101 {
                    // Interim response (100 Continue, 103 Early Hints): the final one follows.
                    s.consume_head(n, Framing::Empty);
                    continue;
                }
                if req.upgrade && resp.status != 101 {
                    early_bytes(hs, dirs, cx);
                    cx.emit_with(
                        Direction::ToClient,
                        Kind::HandshakeRejected,
                        at,
                        FrameHeaderBytes::EMPTY,
                        head.as_slice(),
                    );
                }
                if resp.status == 101 || matches!(body, Framing::UntilClose | Framing::Invalid) {
                    // Another protocol, a tunnel, or a body that runs to the end.
                    return not_websocket(hs, dirs);
                }
                let [_, s] = &mut *dirs;
                s.consume_head(n, body);
                *hs = Hs::NextRequest;
            }
        }
    }
}

/// RFC 6455 §4.1: the client sends nothing after its upgrade request until the 101.
/// Called when the response comes (or the connection ends without one): client bytes
/// held from before the response began were sent too early. After a 101 they are still
/// parsed as frames.
fn early_bytes(hs: &Hs, dirs: &[DirState; 2], cx: &mut Cx<'_>) {
    let [c, _] = dirs;
    let Hs::AwaitResponse(req, early) = hs else {
        return;
    };
    let n = match early {
        Early::Open => c.held.len(),
        Early::Closed(n) => (*n).min(c.held.len()),
    };
    if req.upgrade && n > 0 {
        let bytes = c.held.get(..n).unwrap_or(&[]);
        cx.emit_with(Direction::ToServer, Kind::FrameBeforeUpgrade, c.held_base, FrameHeaderBytes::EMPTY, bytes);
    }
}

/// Server bytes arrive: if they begin the response to an upgrade request, the client
/// bytes held by now are the ones that came before it.
fn response_begins(hs: &mut Hs, dirs: &[DirState; 2]) {
    if let Hs::AwaitResponse(_, early @ Early::Open) = hs {
        let [c, _] = dirs;
        *early = Early::Closed(c.held.len());
    }
}

/// A 101 answered a WebSocket request: judge it and switch both directions to frames.
fn upgraded(
    hs: &mut Hs,
    dirs: &mut [DirState; 2],
    cx: &mut Cx<'_>,
    cfg: &EngineConfig,
    at: u64,
    resp: &Response,
    head: Excerpt,
) {
    let Hs::AwaitResponse(req, _) = hs else {
        return;
    };
    let verdict = judge_101(req, resp);
    for k in verdict.kinds.iter() {
        cx.emit_with(Direction::ToClient, k, at, FrameHeaderBytes::EMPTY, head.as_slice());
    }
    if verdict.kinds.is_empty() {
        cx.stats.upgrades_ok += 1;
    }
    let neg = verdict.negotiated;
    let policy = if neg.unknown_extension {
        RsvPolicy::Unknown
    } else if neg.deflate.is_some() {
        RsvPolicy::Deflate
    } else {
        RsvPolicy::Plain
    };
    cx.view.deflate = neg.deflate.is_some();
    cx.view.subprotocol = neg.subprotocol.clone();
    early_bytes(hs, dirs, cx);
    *hs = Hs::Done;
    for d in dirs.iter_mut() {
        let reset = neg.deflate.map(|p| match d.dir {
            Direction::ToServer => p.client_no_context_takeover,
            Direction::ToClient => p.server_no_context_takeover,
        });
        d.start_frames(cfg.rules(d.dir, policy), reset, cx);
    }
}

impl Engine {
    /// Splits the engine into the connection `id` and a reporting context.
    fn with_conn(
        &mut self,
        id: FlowId,
        ts_ns: u64,
        f: impl FnOnce(&mut Hs, &mut [DirState; 2], &mut Cx<'_>, &EngineConfig),
    ) {
        let cfg = self.cfg;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.view.last_ns = ts_ns;
        {
            let Conn { view, once, hs, dirs, rate, .. } = &mut *conn;
            let key = view.key;
            let hints = cfg.steer.then_some(&mut self.hints);
            let budget = &mut self.budget;
            let mut cx = Cx {
                stats: &mut self.stats,
                findings: &mut self.findings,
                id,
                key,
                ts_ns,
                once,
                view,
                hints,
                budget,
                cfg: &cfg,
                rate,
            };
            f(hs, dirs, &mut cx, &cfg);
        }
        conn.refresh_state();
        if !conn.session && matches!(conn.hs, Hs::Done) && conn.dirs.iter().any(DirState::trusted) {
            conn.session = true;
            self.sessions.push((id, conn.view.key));
        }
    }
}

/// Idle time before a cut without close handshake from which it counts as
/// [`Kind::IdleTimeoutCut`].
const IDLE_CUT_NS: u64 = 1_000_000_000;

/// How a WebSocket session ended by TCP (FIN or RST) went: a direction in sync that sent
/// no close frame is [`Kind::AbnormalClosure`]; without a close handshake, after being
/// idle for [`IDLE_CUT_NS`] or more, the side that ended TCP first cut it
/// ([`Kind::IdleTimeoutCut`], counted in [`EngineStats::idle_cuts`]).
fn close_analysis(dirs: &[DirState; 2], cx: &mut Cx<'_>, closing: Closing) {
    let rst = match closing {
        Closing::Fin => false,
        Closing::Rst => true,
        Closing::Evicted | Closing::CaptureEnded => return,
    };
    if !dirs.iter().any(DirState::trusted) {
        return;
    }
    for d in dirs.iter().filter(|d| d.trusted()) {
        if cx.view.closes.get(d.dir.index()).is_some_and(Option::is_none) {
            cx.emit_detail(d.dir, Kind::AbnormalClosure, d.end, FrameHeaderBytes::EMPTY, &[], Detail::Ended { rst });
        }
    }
    let handshake = cx.view.closes.iter().flatten().count() == 2;
    let Some((side, at)) = cx.view.ended_first.filter(|_| !handshake) else { return };
    let idle = at.saturating_sub(cx.view.last_data_ns);
    if idle >= IDLE_CUT_NS {
        let ms = idle / 1_000_000;
        let offset = dirs.get(side.index()).map_or(0, |d| d.end);
        cx.emit_detail(side, Kind::IdleTimeoutCut, offset, FrameHeaderBytes::EMPTY, &[], Detail::Idle { ms });
        if let Some(cuts) = cx.stats.idle_cuts.get_mut(side.index()) {
            *cuts.entry((ms + 50) / 100).or_insert(0) += 1;
        }
    }
}

/// A gap in `dir`, wherever the handshake stands.
fn gap_in(hs: &mut Hs, dirs: &mut [DirState; 2], dir: Direction, offset: u64, len: u64, loss: Loss, cx: &mut Cx<'_>) {
    if len == 0 {
        return;
    }
    let cfg = *cx.cfg;
    cx.lost(loss, len);
    let Some(d) = dirs.get_mut(dir.index()) else {
        return;
    };
    if d.mode_kind() == ModeKind::Hold {
        if d.lose_in_body(len) {
            return; // inside an HTTP body being passed over: nothing else is affected
        }
        handshake_lost(hs, dirs, cx, &cfg);
    }
    if let Some(d) = dirs.get_mut(dir.index()) {
        d.gap(offset, len, cx);
    }
}

impl StreamSink for Engine {
    fn open(&mut self, id: FlowId, key: &FlowKey, opening: Opening, ts_ns: u64) {
        self.stats.connections += 1;
        let cfg = self.cfg;
        let evicted = self.resumable.remove(&key.unordered());
        let (opening, evicted) = match (opening, evicted) {
            (Opening::Resumed, Some(e)) => (Opening::Resumed, Some(e)),
            (Opening::Resumed, None) => (Opening::MidStream, None),
            (other, _) => (other, None),
        };
        let (hs, dirs) = match (opening, &evicted) {
            (Opening::Handshake, _) => (
                Hs::AwaitRequest,
                Direction::BOTH.map(|d| DirState::new(d, Mode::Hold, cfg.rules(d, RsvPolicy::Plain))),
            ),
            (_, Some(e)) => (Hs::Done, Direction::BOTH.map(|d| DirState::resumed(d, e.dirs[d.index()]))),
            _ => (Hs::Done, Direction::BOTH.map(|d| DirState::new_mid_stream(cfg.rules(d, RsvPolicy::Unknown)))),
        };
        let view = ConnectionView {
            key: *key,
            opening,
            iface: 0,
            state: ConnState::Handshake,
            frames: [0; 2],
            violations: 0,
            last_close_code: None,
            deflate: false,
            subprotocol: None,
            opened_ns: ts_ns,
            last_ns: ts_ns,
            unanalysed: Unanalysed::default(),
            messages: [0; 2],
            tally: Default::default(),
            closes: [None, None],
            first_close: None,
            last_data_ns: ts_ns,
            handshake: None,
            kinds: KindSet::EMPTY,
            lost_sync: false,
            last_violation: [None; 2],
            last_message: [None; 2],
            ended_first: None,
        };
        let mut conn = Conn { view, once: KindSet::EMPTY, hs, dirs, session: false, rate: PerSecond::default() };
        if let Some(e) = evicted {
            conn.view.deflate = e.deflate;
            conn.view.subprotocol = e.subprotocol;
            conn.session = true;
            self.sessions.push((id, *key));
        }
        conn.refresh_state();
        self.conns.insert(id, conn);
    }

    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], ts_ns: u64) {
        // The unit tests' injected fault: a bug in the analysis of one connection.
        #[cfg(test)]
        if data.windows(tests::FAULT.len()).any(|w| w == tests::FAULT) {
            panic!("injected fault");
        }
        self.with_conn(id, ts_ns, |hs, dirs, cx, cfg| {
            cx.view.last_data_ns = ts_ns;
            let end = dirs.get(dir.index()).map_or(offset, |d| d.end);
            if offset > end {
                gap_in(hs, dirs, dir, end, offset - end, Loss::Capture, cx);
            }
            let Some(d) = dirs.get_mut(dir.index()) else {
                return;
            };
            // Overlap with what was already delivered is dropped.
            let skip = usize::try_from(d.end.saturating_sub(offset)).unwrap_or(usize::MAX);
            let Some(fresh) = data.get(skip..).filter(|f| !f.is_empty()) else {
                return;
            };
            d.end = d.end.saturating_add(fresh.len() as u64);
            if dir == Direction::ToClient {
                response_begins(hs, dirs);
            }
            let Some(d) = dirs.get_mut(dir.index()) else {
                return;
            };
            d.feed(fresh, cx);
            if !matches!(hs, Hs::Done) {
                advance(hs, dirs, cx, cfg);
            }
        });
    }

    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, loss: Loss, ts_ns: u64) {
        self.with_conn(id, ts_ns, |hs, dirs, cx, _| {
            let end = dirs.get(dir.index()).map_or(offset, |d| d.end);
            // Treat anything between what we have and the gap's end as lost.
            let stop = offset.saturating_add(len);
            if stop > end {
                gap_in(hs, dirs, dir, end, stop - end, loss, cx);
            }
        });
    }

    fn skip(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, ts_ns: u64) {
        self.with_conn(id, ts_ns, |hs, dirs, cx, _| {
            cx.view.last_data_ns = ts_ns;
            let end = dirs.get(dir.index()).map_or(offset, |d| d.end);
            if offset > end {
                gap_in(hs, dirs, dir, end, offset - end, Loss::Capture, cx);
            }
            let stop = offset.saturating_add(len);
            let Some(d) = dirs.get_mut(dir.index()).filter(|_| stop > end) else {
                return;
            };
            let (at, len) = (offset.max(end), stop - offset.max(end));
            if d.takes_skip(at, len) {
                d.skip(at, len, cx);
            } else {
                d.skip_mismatch(cx);
                gap_in(hs, dirs, dir, at, len, Loss::Capture, cx);
            }
        });
    }

    fn end(&mut self, id: FlowId, dir: Direction, ts_ns: u64) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.view.ended_first.get_or_insert((dir, ts_ns));
        }
    }

    fn seen_on(&mut self, id: FlowId, ifindex: u32) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.view.iface = ifindex;
        }
    }

    fn close(&mut self, id: FlowId, closing: Closing, ts_ns: u64) {
        self.with_conn(id, ts_ns, |hs, dirs, cx, _| {
            early_bytes(hs, dirs, cx);
            for d in dirs.iter_mut() {
                d.finish(cx);
            }
            if matches!(hs, Hs::Done) {
                close_analysis(dirs, cx, closing);
            }
        });
        if let Some(conn) = self.conns.remove(&id) {
            self.ended(id, &conn, closing, ts_ns);
            let v = &conn.view;
            let total = v.unanalysed.total();
            if total > 0 {
                self.blind_spots.add(BlindSpot {
                    client: v.key.client,
                    server: v.key.server,
                    total,
                    unanalysed: v.unanalysed,
                });
            }
            if closing == Closing::Evicted && conn.session {
                self.remember_evicted(conn);
            }
        }
    }
}
