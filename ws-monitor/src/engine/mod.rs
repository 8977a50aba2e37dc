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
mod opening;
mod output;
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
use opening::*;
pub use output::*;
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
    /// Boxed: the table holds a pointer per connection, so growing it moves pointers,
    /// and its spare capacity costs pointers, not whole connections.
    conns: HashMap<FlowId, Box<Conn>>,
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
    fn ended(&mut self, id: FlowId, conn: &mut Conn, closing: Closing, ts_ns: u64) {
        let v = &mut conn.view;
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
            // Moved, not copied: the connection is gone.
            handshake: v.handshake.take(),
            frames: Sides::of(&v.frames),
            tally: Sides::of(&v.tally),
            messages: Sides::of(&v.messages),
            bytes: Sides::of(&conn.dirs.each_ref().map(|d| d.end)),
            close: Sides::from(std::mem::take(&mut v.closes)),
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
            let Conn { view, once, hs, dirs, rate, .. } = &mut **conn;
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
        self.conns.insert(id, Box::new(conn));
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
        if let Some(mut conn) = self.conns.remove(&id) {
            self.ended(id, &mut conn, closing, ts_ns);
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
                self.remember_evicted(*conn);
            }
        }
    }
}
