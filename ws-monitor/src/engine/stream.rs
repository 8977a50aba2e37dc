//! One direction of one connection: the byte-level state machine.
//!
//! Bytes are handed to the handler of the current [`Mode`]. The fast path parses frame
//! headers straight out of the delivered slice and skips payloads without touching them
//! unless they must be checked (text being validated, a close body, a compressed message
//! whose context must be kept). Only three things are ever copied aside: a header split
//! across deliveries (at most [`MAX_HEADER_LEN`] bytes plus a small top-up), the scan
//! window while unsynced, and the HTTP head while the handshake is pending.

use crate::flow::{Direction, Loss};

use super::frame::{
    check_header, close_code_valid, http_line_start, unmask_into, Frag, FrameHeader, FrameHeaderBytes, HttpLine,
    OpClass, RsvPolicy, Rules, Status, MAX_CONTROL_PAYLOAD,
};
use super::http::{Framing, Skip};
use super::inflate::{Inflater, Stop, SCRATCH, TAIL};
use super::kind::{Kind, KindSet};
use super::resync::{Chain, Known, Scan, Search, PROBATION_FRAMES};
use super::utf8::Utf8Stream;
use super::{Before, CloseSeen, Cx, Detail, FrameCounts, OpenMessage, Steer};

mod payload;

/// Bytes of new input appended to a stashed partial header before parsing again.
const TOPUP: usize = 64;

/// Bytes held per direction while the handshake is pending (beyond this: a gap).
pub(crate) const HOLD_CAP: usize = 64 * 1024;

/// Unmasking is done through a stack buffer of this size.
const UNMASK_CHUNK: usize = 1024;

/// Payload bytes a header-only capture copies at the start of a frame it otherwise skips:
/// reading them is no reason to re-anchor it.
const EXCERPT: u64 = ws_monitor_common::EXCERPT_LEN as u64;
// What a finding quotes of a skipped frame's payload must be in what the capture copies.
const _: () = assert!(EXCERPT as usize >= super::Excerpt::CAP);
/// A direction in sync that reads payload it does not need tells the capture where the
/// next header is at most once per this many stream bytes.
const ANCHOR_EVERY: u64 = 1 << 20;

/// What a direction does with its bytes.
#[derive(Debug)]
pub(crate) enum Mode {
    /// Handshake pending: bytes are kept for the connection to parse.
    Hold,
    /// Not a WebSocket stream (plain HTTP, TLS, garbage): bytes are dropped.
    Ignore,
    /// In sync: parsing frames (trusted, or on probation after a resync).
    Frames,
    /// Unsynced: looking for a frame boundary in a window.
    Scan(Box<Scan>),
    /// Unsynced: following one candidate chain past the window, header by header.
    Track(Track),
}

/// Copy of [`Mode`]'s discriminant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModeKind {
    Hold,
    Ignore,
    Frames,
    Scan,
    Track,
}

/// A candidate chain followed outside the scan window.
#[derive(Debug)]
pub(crate) struct Track {
    /// Stream offset of the next header of the chain.
    next_at: u64,
    chain: Chain,
}

/// What an evicted direction keeps (see [`DirState::resume_point`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResumePoint {
    rules: Rules,
    deflate: Option<bool>,
    at_boundary: bool,
    between_messages: bool,
    closed: bool,
    known: Known,
}

/// What a handler did with the bytes it was given.
enum Step {
    /// Consumed this many bytes (possibly 0 after a mode change).
    Used(usize),
    /// Consumed this many and needs more bytes before it can go on (a split header).
    NeedMore(usize),
}

/// The frame being parsed.
#[derive(Clone, Copy, Debug)]
struct Cur {
    hdr: FrameHeaderBytes,
    offset: u64,
    class: OpClass,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Payload bytes seen (or lost in gaps) so far.
    seen: u64,
    /// Payload bytes still to come.
    left: u64,
    /// Part of the payload fell in a gap.
    gap: bool,
    /// A header-only capture skips this payload (binary, uncompressed): so may we.
    skippable: bool,
}

impl Default for Cur {
    fn default() -> Self {
        Cur {
            hdr: FrameHeaderBytes::EMPTY,
            offset: 0,
            class: OpClass::Continuation,
            fin: true,
            mask: None,
            len: 0,
            seen: 0,
            left: 0,
            gap: false,
            skippable: false,
        }
    }
}

/// The data message being received.
#[derive(Clone, Copy, Debug, Default)]
struct Msg {
    /// We saw its first frame (so its continuations belong to it).
    active: bool,
    /// Header offset and bytes of its first frame (where UTF-8 findings point).
    offset: u64,
    hdr: FrameHeaderBytes,
    /// UTF-8 is being checked (text, start seen, nothing lost, payload readable).
    validate: bool,
    /// RSV1 under negotiated permessage-deflate.
    compressed: bool,
    /// A text message (else binary).
    text: bool,
    /// Binary without RSV1: its continuations' payload may be skipped.
    skippable: bool,
    /// Payload goes through the inflater (to check it, or to keep the context).
    inflate: bool,
    /// Compressed text turned out invalid; reported at the end of the message if the
    /// whole message inflated cleanly (so the outcome never depends on delivery cuts).
    bad: bool,
    /// Payload bytes of all its frames so far.
    size: u64,
    /// Bytes inflated from it so far.
    inflated: u64,
    /// Already reported as oversized (message or frame).
    oversized: bool,
}

/// Findings are held back for the first frames after a resync.
#[derive(Debug)]
struct Probation {
    left: u32,
    counts: FrameCounts,
    codes: [u16; 4],
    ncodes: usize,
    /// Stream offset of the candidate the sync started at.
    start: u64,
    /// Findings of known violation patterns, reported if probation ends cleanly.
    held: Vec<(Kind, u64, FrameHeaderBytes, super::Excerpt)>,
}

/// Findings held back during one probation at most (beyond: the sync is discarded).
const PROBATION_HELD: usize = 64;

/// Everything the engine keeps for one direction of one connection.
#[derive(Debug)]
pub(crate) struct DirState {
    pub dir: Direction,
    pub mode: Mode,
    rules: Rules,
    /// permessage-deflate in force for what this direction sends:
    /// `Some(no_context_takeover)`.
    deflate: Option<bool>,
    /// Stream offset of the next byte to process (of `pending[0]` if any).
    pos: u64,
    /// Stream offset just past the last byte delivered (data or gap).
    pub end: u64,
    /// Bytes to process before new input: a split header, or a replay after resync.
    pending: Vec<u8>,
    /// Set by the scanner: bytes to process again from this offset.
    replay: Option<(u64, Vec<u8>)>,
    cur: Cur,
    frag: Frag,
    msg: Msg,
    utf8: Utf8Stream,
    /// This endpoint sent a close frame (seen in sync).
    pub closed: bool,
    /// The close frame being read (at most [`MAX_CONTROL_PAYLOAD`] bytes; allocated only
    /// once a close frame comes, so that a connection costs less until then).
    close_body: Vec<u8>,
    inflater: Option<Box<Inflater>>,
    /// The deflate context is gone (gap, resync, corrupt data).
    ctx_lost: bool,
    /// Boxed: only after a resync, so that a connection costs less the rest of the time.
    probation: Option<Box<Probation>>,
    /// A would-be finding during probation.
    abort: bool,
    /// Header patterns that raised findings in sync (see [`super::resync`]).
    known: Known,
    /// Handshake phase: bytes kept from `held_base` on.
    pub held: Vec<u8>,
    pub held_base: u64,
    /// How far `held` was searched for the end of the HTTP head.
    pub head_scan: usize,
    /// Bytes dropped after `held` filled up.
    held_dropped: u64,
    /// A header-only capture may be skipping payload in this direction (so a loss of
    /// sync must ask it to copy everything again).
    capture_walks: bool,
    /// Stream offset at which the capture was last told where a header is.
    anchored_at: Option<u64>,
    /// Handshake phase: the body of an HTTP message being passed over.
    pub body: Skip,
    /// That body's framing broke: the stream is not HTTP.
    pub body_bad: bool,
}

impl DirState {
    pub fn new(dir: Direction, mode: Mode, rules: Rules) -> Self {
        DirState {
            dir,
            mode,
            rules,
            deflate: None,
            pos: 0,
            end: 0,
            pending: Vec::new(),
            replay: None,
            cur: Cur::default(),
            frag: Frag::Idle,
            msg: Msg::default(),
            utf8: Utf8Stream::new(),
            closed: false,
            close_body: Vec::new(),
            inflater: None,
            ctx_lost: false,
            probation: None,
            abort: false,
            known: Known::default(),
            held: Vec::new(),
            held_base: 0,
            head_scan: 0,
            held_dropped: 0,
            capture_walks: false,
            anchored_at: None,
            body: Skip::Idle,
            body_bad: false,
        }
    }

    /// A direction of a connection first seen mid-stream: unsynced, negotiation unknown
    /// (`rules` with [`RsvPolicy::Unknown`]).
    pub fn new_mid_stream(rules: Rules) -> Self {
        let dir = if rules.client_to_server { Direction::ToServer } else { Direction::ToClient };
        let mut d = DirState::new(dir, Mode::Scan(Box::new(Scan::new(0, 0))), rules);
        d.frag = Frag::Unknown;
        d
    }

    /// Where this direction stands if its connection is evicted now: in sync right at a
    /// frame boundary (`at_boundary`), and what a resumed connection must know.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            rules: self.rules,
            deflate: self.deflate,
            at_boundary: self.trusted() && self.pending.is_empty() && self.replay.is_none() && self.cur.left == 0,
            between_messages: matches!(self.frag, Frag::Idle),
            closed: self.closed,
            known: self.known,
        }
    }

    /// A direction of a resumed connection, from where it was left ([`Self::resume_point`]):
    /// in sync at offset 0 when that was a frame boundary, else unsynced with the
    /// negotiation known. The deflate context of a message stream with context takeover
    /// did not survive.
    pub fn resumed(dir: Direction, at: ResumePoint) -> Self {
        if !at.at_boundary {
            let mut d = DirState::new_mid_stream(at.rules);
            d.deflate = at.deflate;
            d.ctx_lost = true;
            d.known = at.known;
            return d;
        }
        let mut d = DirState::new(dir, Mode::Frames, at.rules);
        d.known = at.known;
        d.deflate = at.deflate;
        d.ctx_lost = at.deflate == Some(false);
        d.frag = if at.between_messages { Frag::Idle } else { Frag::Unknown };
        d.closed = at.closed;
        // A header-only capture may be walking this direction: a loss of sync must say so.
        d.capture_walks = true;
        d
    }

    pub fn mode_kind(&self) -> ModeKind {
        match self.mode {
            Mode::Hold => ModeKind::Hold,
            Mode::Ignore => ModeKind::Ignore,
            Mode::Frames => ModeKind::Frames,
            Mode::Scan(_) => ModeKind::Scan,
            Mode::Track(_) => ModeKind::Track,
        }
    }

    /// In sync and out of probation.
    pub fn trusted(&self) -> bool {
        self.mode_kind() == ModeKind::Frames && self.probation.is_none()
    }

    // ----- delivery -------------------------------------------------------------------

    /// Processes bytes that follow everything delivered so far.
    pub fn feed(&mut self, mut input: &[u8], cx: &mut Cx<'_>) {
        loop {
            if !self.pending.is_empty() {
                let k = TOPUP.min(input.len());
                self.pending.extend_from_slice(input.get(..k).unwrap_or(&[]));
                input = input.get(k..).unwrap_or(&[]);
                let mut buf = std::mem::take(&mut self.pending);
                let used = self.run(&buf, cx);
                buf.drain(..used.min(buf.len()));
                if let Some((start, mut r)) = self.replay.take() {
                    r.extend_from_slice(&buf);
                    self.pending = r;
                    self.pos = start;
                    continue;
                }
                let stuck = !buf.is_empty() && input.is_empty();
                self.pending = buf;
                if stuck {
                    break;
                }
                continue;
            }
            if input.is_empty() {
                break;
            }
            let used = self.run(input, cx);
            let rest = input.get(used..).unwrap_or(&[]);
            if let Some((start, r)) = self.replay.take() {
                self.pending = r;
                self.pos = start;
                input = rest;
                continue;
            }
            self.pending.extend_from_slice(rest);
            break;
        }
        if self.pending.is_empty() && self.pending.capacity() > 1024 {
            self.pending = Vec::new();
        }
    }

    /// Runs the mode handlers over `s` until it is used up, more bytes are needed, or
    /// a replay must be processed first. Returns the bytes consumed.
    fn run(&mut self, s: &[u8], cx: &mut Cx<'_>) -> usize {
        let mut i = 0;
        while let Some(rest) = s.get(i..).filter(|r| !r.is_empty()) {
            let step = match self.mode_kind() {
                ModeKind::Hold => self.hold(rest),
                ModeKind::Ignore => Step::Used(rest.len()),
                ModeKind::Frames => self.frames(rest, cx),
                ModeKind::Scan => self.scan(rest, cx),
                ModeKind::Track => self.track(rest, cx),
            };
            match step {
                Step::Used(n) => {
                    i += n;
                    self.pos = self.pos.saturating_add(n as u64);
                }
                Step::NeedMore(n) => {
                    i += n;
                    self.pos = self.pos.saturating_add(n as u64);
                    break;
                }
            }
            if self.replay.is_some() {
                break;
            }
        }
        i
    }

    /// `len` bytes at `offset` (= everything delivered so far) were lost.
    pub fn gap(&mut self, offset: u64, len: u64, cx: &mut Cx<'_>) {
        if len == 0 {
            return;
        }
        let stash = !self.pending.is_empty();
        self.pending.clear();
        let after = offset.saturating_add(len);
        match self.mode_kind() {
            ModeKind::Hold | ModeKind::Ignore => {}
            ModeKind::Frames => {
                if stash || self.cur.left == 0 {
                    // The next header (or the rest of a split one) is in the gap.
                    self.lose_sync(after, cx);
                } else {
                    self.payload_gap();
                    let lost = len.min(self.cur.left);
                    self.cur.left -= lost;
                    self.cur.seen += lost;
                    if len > lost {
                        self.lose_sync(after, cx);
                    } else if self.cur.left == 0 {
                        self.end_frame(cx);
                        if self.abort {
                            self.abort_probation(after);
                        }
                    }
                }
            }
            ModeKind::Scan => {
                let min_start = match &self.mode {
                    Mode::Scan(s) => s.min_start(),
                    _ => 0,
                };
                self.mode = Mode::Scan(Box::new(Scan::new(after, min_start)));
            }
            ModeKind::Track => {
                let broken = match &self.mode {
                    Mode::Track(t) => stash || after > t.next_at,
                    _ => true,
                };
                if broken {
                    self.mode = Mode::Scan(Box::new(Scan::new(after, 0)));
                }
            }
        }
        self.pos = after;
        self.end = self.end.max(after);
    }

    /// Whether `len` bytes at `offset` (= everything delivered so far) that the capture
    /// left out can be passed over: in sync inside payload that is not read, while
    /// following a resync candidate short of its next header, or in an ignored stream.
    /// Never during the handshake: the capture walks only from a 101 on, so a skip there
    /// means it is out of step, even inside an HTTP body being passed over (the gap it
    /// becomes is then absorbed by that body, see [`Self::lose_in_body`]).
    pub fn takes_skip(&self, offset: u64, len: u64) -> bool {
        self.pending.is_empty()
            && match &self.mode {
                Mode::Ignore => true,
                Mode::Frames => self.cur.skippable && self.cur.left >= len,
                Mode::Track(t) => offset.saturating_add(len) <= t.next_at,
                Mode::Hold | Mode::Scan(_) => false,
            }
    }

    /// Passes over `len` skipped bytes at `offset`, as over payload that is not read
    /// (only where [`Self::takes_skip`]).
    pub fn skip(&mut self, offset: u64, len: u64, cx: &mut Cx<'_>) {
        self.capture_walks = true;
        let after = offset.saturating_add(len);
        self.pos = after;
        self.end = self.end.max(after);
        match self.mode_kind() {
            ModeKind::Frames => {
                cx.stats.skipped_bytes += len;
                self.cur.left -= len;
                self.cur.seen += len;
                if self.cur.left == 0 {
                    self.end_frame(cx);
                    if self.abort {
                        self.abort_probation(after);
                    }
                }
            }
            ModeKind::Track => cx.stats.unsynced_bytes += len,
            _ => {}
        }
    }

    /// A skip came where bytes were needed: counted, and the capture (evidently
    /// skipping here) is asked to copy everything. The caller reports the bytes as a gap.
    pub fn skip_mismatch(&mut self, cx: &mut Cx<'_>) {
        cx.stats.skip_mismatches += 1;
        self.capture_walks = true;
        self.release_capture(cx);
    }

    /// Asks a capture that may be skipping in this direction to copy everything again.
    fn release_capture(&mut self, cx: &mut Cx<'_>) {
        if self.capture_walks {
            self.capture_walks = false;
            self.anchored_at = None;
            cx.steer(self.dir, Steer::FullCopy);
        }
    }

    /// Bytes of payload the capture could have skipped were read: tell it where the
    /// next header is (at most every [`ANCHOR_EVERY`] bytes).
    fn anchor_capture(&mut self, cx: &mut Cx<'_>) {
        let next = self.cur.offset + self.cur.hdr.as_slice().len() as u64 + self.cur.len;
        if !cx.steering() || self.anchored_at.is_some_and(|at| next < at.saturating_add(ANCHOR_EVERY)) {
            return;
        }
        let open = match self.frag {
            Frag::Idle => OpenMessage::None,
            Frag::Open if self.msg.active && self.msg.skippable => OpenMessage::Skip,
            _ => OpenMessage::Read,
        };
        self.anchored_at = Some(next);
        self.capture_walks = true;
        cx.steer(self.dir, Steer::Anchor { offset: next, open });
    }

    /// The connection ends: a clean probation is committed.
    pub fn finish(&mut self, cx: &mut Cx<'_>) {
        if !self.abort {
            self.commit(cx);
        }
    }

    // ----- transitions ----------------------------------------------------------------

    /// Handshake done: parse frames, in sync, from the held bytes on.
    pub fn start_frames(&mut self, rules: Rules, deflate: Option<bool>, cx: &mut Cx<'_>) {
        self.rules = rules;
        self.deflate = deflate;
        self.mode = Mode::Frames;
        // A header-only capture starts walking at the 101 it sees.
        self.capture_walks = true;
        self.reset_frame_state();
        self.frag = Frag::Idle;
        self.ctx_lost = false;
        self.release_held(cx);
    }

    /// Handshake could not be followed: look for frames in the held bytes and after.
    pub fn start_scan(&mut self, rules: Rules, cx: &mut Cx<'_>) {
        self.rules = rules;
        self.deflate = None;
        cx.stats.desyncs += 1;
        cx.view.lost_sync = true;
        self.release_capture(cx);
        self.enter_scan(self.held_base, 0);
        self.release_held(cx);
    }

    /// Not WebSocket: drop everything from now on.
    pub fn ignore(&mut self) {
        self.mode = Mode::Ignore;
        self.held = Vec::new();
        self.pending = Vec::new();
        self.replay = None;
        self.inflater = None;
        self.probation = None;
    }

    /// Handshake phase: the head of `n` bytes at the start of `held` was parsed; its
    /// body (`framing`) is passed over, from the held bytes and then as it arrives.
    pub fn consume_head(&mut self, n: usize, framing: Framing) {
        let n = n.min(self.held.len());
        self.held.drain(..n);
        self.held_base += n as u64;
        self.head_scan = 0;
        self.body = Skip::start(framing);
        if !self.body.active() {
            return;
        }
        match self.body.skip(&self.held) {
            Ok(k) => {
                self.held.drain(..k);
                self.held_base += k as u64;
                if self.body.active() && self.held_dropped > 0 {
                    // What overflowed the hold buffer was body too, as far as it goes.
                    let lost = self.held_dropped;
                    if self.body.lose(lost) {
                        self.held_base += lost;
                        self.held_dropped = 0;
                    }
                }
            }
            Err(_) => {
                self.body = Skip::Idle;
                self.body_bad = true;
            }
        }
    }

    /// Handshake phase: `len` bytes lost at the end of the stream; `true` when they fell
    /// inside a body being passed over (the handshake can still be followed).
    pub fn lose_in_body(&mut self, len: u64) -> bool {
        if self.held.is_empty() && self.held_dropped == 0 && self.body.lose(len) {
            self.held_base += len;
            self.pos = self.pos.saturating_add(len);
            self.end = self.end.max(self.pos);
            return true;
        }
        false
    }

    fn release_held(&mut self, cx: &mut Cx<'_>) {
        let held = std::mem::take(&mut self.held);
        let dropped = std::mem::take(&mut self.held_dropped);
        self.pos = self.held_base;
        self.feed(&held, cx);
        if dropped > 0 {
            let at = self.held_base + held.len() as u64;
            cx.lost(Loss::BufferLimit, dropped);
            self.gap(at, dropped, cx);
        }
    }

    fn reset_frame_state(&mut self) {
        self.cur = Cur::default();
        self.frag = Frag::Unknown;
        self.msg = Msg::default();
        self.utf8.reset();
        self.closed = false;
        self.close_body.clear();
        self.probation = None;
        self.abort = false;
        if self.deflate == Some(false) {
            self.ctx_lost = true;
        }
    }

    fn enter_scan(&mut self, base: u64, min_start: u64) {
        self.reset_frame_state();
        self.mode = Mode::Scan(Box::new(Scan::new(base, min_start)));
    }

    fn enter_probation(&mut self, start: u64) {
        self.reset_frame_state();
        self.mode = Mode::Frames;
        self.probation = Some(Box::new(Probation {
            left: PROBATION_FRAMES,
            counts: FrameCounts::default(),
            codes: [0; 4],
            ncodes: 0,
            start,
            held: Vec::new(),
        }));
    }

    /// Trusted sync is lost (gap over a header, HTTP, unusable length); during probation
    /// the tentative sync is dropped silently.
    fn lose_sync(&mut self, at: u64, cx: &mut Cx<'_>) {
        let (was_probation, start) = match &self.probation {
            Some(p) => (true, p.start + 1),
            None => (false, 0),
        };
        if !was_probation {
            cx.stats.desyncs += 1;
            cx.view.lost_sync = true;
        }
        self.release_capture(cx);
        self.enter_scan(at, start.min(at));
    }

    /// A would-be finding during probation: back to scanning at `at`, never accepting
    /// the same candidate again.
    fn abort_probation(&mut self, at: u64) {
        let min_start = self.probation.as_ref().map_or(0, |p| p.start + 1);
        self.enter_scan(at, min_start);
    }

    fn commit(&mut self, cx: &mut Cx<'_>) {
        let Some(p) = self.probation.take() else {
            return;
        };
        let i = self.dir.index();
        if let Some(f) = cx.stats.frames.get_mut(i) {
            f.add(&p.counts);
        }
        if let Some(f) = cx.view.frames.get_mut(i) {
            *f += p.counts.total();
        }
        for &code in p.codes.iter().take(p.ncodes) {
            *cx.stats.close_codes.entry(code).or_insert(0) += 1;
            cx.view.last_close_code = Some(code);
        }
        for (kind, offset, hdr, excerpt) in p.held {
            cx.emit_with(self.dir, kind, offset, hdr, excerpt.as_slice());
        }
        cx.stats.resyncs += 1;
    }

    // ----- handlers ---------------------------------------------------------------------

    fn hold(&mut self, s: &[u8]) -> Step {
        if self.held.is_empty() && self.held_dropped == 0 && self.body.active() {
            // Body bytes of a plain HTTP message are passed over, not held.
            let n = match self.body.skip(s) {
                Ok(n) => n,
                Err(_) => {
                    self.body = Skip::Idle;
                    self.body_bad = true;
                    0
                }
            };
            self.held_base += n as u64;
            if n > 0 {
                return Step::Used(n);
            }
        }
        let room = HOLD_CAP.saturating_sub(self.held.len());
        let keep = if self.held_dropped > 0 { 0 } else { room.min(s.len()) };
        self.held.extend_from_slice(s.get(..keep).unwrap_or(&[]));
        self.held_dropped += (s.len() - keep) as u64;
        Step::Used(s.len())
    }

    fn frames(&mut self, s: &[u8], cx: &mut Cx<'_>) -> Step {
        let mut i = 0usize;
        loop {
            let rest = s.get(i..).unwrap_or(&[]);
            if rest.is_empty() {
                return Step::Used(i);
            }
            let here = self.pos.saturating_add(i as u64);
            if self.cur.left > 0 {
                let n = usize::try_from(self.cur.left).map_or(rest.len(), |l| l.min(rest.len()));
                self.payload(rest.get(..n).unwrap_or(&[]), cx);
                i += n;
                self.cur.left -= n as u64;
                if self.cur.left == 0 {
                    self.end_frame(cx);
                }
                if self.abort {
                    self.abort_probation(here + n as u64);
                    return Step::Used(i);
                }
                continue;
            }
            match http_line_start(rest) {
                HttpLine::Maybe => return Step::NeedMore(i),
                HttpLine::Yes => {
                    self.report_with(cx, Kind::HttpInStream, here, FrameHeaderBytes::EMPTY, rest);
                    if self.abort {
                        self.abort_probation(here);
                    } else {
                        self.lose_sync(here, cx);
                    }
                    return Step::Used(i);
                }
                HttpLine::No => {}
            }
            let h = match FrameHeader::parse(rest) {
                Status::Partial(_) => return Step::NeedMore(i),
                Status::Complete(h) => h,
            };
            let hl = usize::from(h.header_len);
            let hdr = FrameHeaderBytes::new(rest.get(..hl).unwrap_or(&[]));
            let unusable_len = self.begin_frame(&h, hdr, here, rest.get(hl..).unwrap_or(&[]), cx);
            if self.abort {
                self.abort_probation(here);
                return Step::Used(i);
            }
            i += hl;
            if unusable_len {
                self.lose_sync(here + hl as u64, cx);
                return Step::Used(i);
            }
            if h.len == 0 {
                self.end_frame(cx);
                if self.abort {
                    self.abort_probation(here + hl as u64);
                    return Step::Used(i);
                }
            }
        }
    }

    fn scan(&mut self, s: &[u8], cx: &mut Cx<'_>) -> Step {
        let Mode::Scan(sc) = &mut self.mode else {
            return Step::Used(s.len());
        };
        let take = sc.room().min(s.len());
        if take == 0 {
            // Progress guard; a waiting candidate always leaves room.
            sc.skip_one();
        }
        sc.push(s.get(..take).unwrap_or(&[]));
        let (decision, dropped) = sc.search(&self.rules, &self.known);
        cx.unsynced(dropped as u64);
        match decision {
            Search::Wait => {}
            Search::Found(p) => {
                let start = sc.base() + p as u64;
                let win = sc.bytes_from(p).to_vec();
                self.enter_probation(start);
                self.replay = Some((start, win));
            }
            Search::Follow { p, next, chain } => {
                let next_at = sc.base().saturating_add(next);
                let from = usize::try_from(next).unwrap_or(usize::MAX);
                let tail = sc.bytes_from(from);
                if !tail.is_empty() {
                    self.replay = Some((next_at, tail.to_vec()));
                }
                cx.unsynced((sc.bytes_from(p).len() - tail.len()) as u64);
                self.mode = Mode::Track(Track { next_at, chain });
            }
        }
        Step::Used(take)
    }

    fn track(&mut self, s: &[u8], cx: &mut Cx<'_>) -> Step {
        let pos = self.pos;
        let Mode::Track(t) = &mut self.mode else {
            return Step::Used(s.len());
        };
        if pos < t.next_at {
            let n = usize::try_from(t.next_at - pos).map_or(s.len(), |d| d.min(s.len()));
            cx.unsynced(n as u64);
            return Step::Used(n);
        }
        let h = match FrameHeader::parse(s) {
            Status::Partial(_) => return Step::NeedMore(0),
            Status::Complete(h) => h,
        };
        let after = s.get(usize::from(h.header_len)..).unwrap_or(&[]);
        if !t.chain.accept(&h, after, &self.rules, &self.known) {
            cx.unsynced(1);
            self.mode = Mode::Scan(Box::new(Scan::new(pos.saturating_add(1), 0)));
            return Step::Used(1);
        }
        if t.chain.confirmed() {
            self.enter_probation(pos);
        } else {
            t.next_at = pos.saturating_add(u64::from(h.header_len)).saturating_add(h.len);
        }
        Step::Used(0)
    }

    // ----- frames -----------------------------------------------------------------------

    fn report(&mut self, cx: &mut Cx<'_>, kind: Kind, offset: u64, hdr: FrameHeaderBytes) {
        self.report_with(cx, kind, offset, hdr, &[]);
    }

    /// [`Self::report`] with the (unmasked) bytes at fault.
    /// During probation, a finding of a known violation pattern is held back (see
    /// [`super::resync`]); any other one discards the sync.
    fn report_with(&mut self, cx: &mut Cx<'_>, kind: Kind, offset: u64, hdr: FrameHeaderBytes, bytes: &[u8]) {
        let mut one = KindSet::EMPTY;
        one.insert(kind);
        let known = self.known.covers(hdr.as_slice(), one);
        match &mut self.probation {
            Some(p) if known && p.held.len() < PROBATION_HELD => {
                p.held.push((kind, offset, hdr, super::Excerpt::new(bytes)));
            }
            Some(_) => self.abort = true,
            None => cx.emit_with(self.dir, kind, offset, hdr, bytes),
        }
    }

    fn count(&mut self, h: &FrameHeader, cx: &mut Cx<'_>) {
        let class = h.class();
        match &mut self.probation {
            Some(p) => p.counts.bump(class),
            None => {
                let i = self.dir.index();
                if let Some(f) = cx.stats.frames.get_mut(i) {
                    f.bump(class);
                }
                if let Some(f) = cx.view.frames.get_mut(i) {
                    *f += 1;
                }
                if let Some(t) = cx.view.tally.get_mut(i) {
                    t.add(h);
                }
            }
        }
    }
}
