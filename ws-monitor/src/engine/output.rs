//! What the engine gives out: findings and their details, hints for the capture, its
//! totals, and its view of each connection for the dashboard and the report.

use super::*;

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
    /// went on (see [`crate::pipeline::monitor`]).
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
