//! Flow reassembly: turns captured TCP [`Segment`]s into each connection's two ordered byte
//! streams and hands them to a [`StreamSink`], with explicit gaps for bytes never seen.
//!
//! Who is the client: the capture labels each segment by ports alone (destination port
//! monitored → towards the server, else source port monitored → towards the client), so a
//! client whose own port is also monitored gets both directions labelled "towards the
//! server". A connection is tracked under one key for both orientations of its 4-tuple
//! and oriented once, when it opens: by its SYN (the sender of a SYN without ACK is the
//! client, of a SYN-ACK the server), or for a connection picked up mid-stream by the
//! capture's port rule as it labelled the first segment. Every later segment is turned
//! to that orientation.
//!
//! Model, per connection and direction:
//! - Sequence numbers map to 64-bit stream offsets. Offset 0 is the byte after the SYN
//!   (ISN + 1) when the SYN or SYN-ACK was seen; for a connection already open when capture
//!   started it is the first sequence number seen, or the peer's ACK when that ACK lies at
//!   most 1 MiB before it. A `u32` sequence number is extended to 64 bits by its signed
//!   wrapping distance from the next expected offset, so streams can run past 2^32 bytes.
//! - Data at the next expected offset is delivered at once, straight from the segment.
//!   Data past it waits in a per-direction buffer; data before it is a duplicate and is
//!   dropped (bytes delivered never change, first copy wins).
//! - A hole becomes a gap (see [`StreamSink::gap`]) when the peer ACKs past its start
//!   (the receiver has the bytes, no retransmission will come), when the out-of-order
//!   buffer exceeds its cap, or when the connection is flushed (RST, eviction, end of
//!   capture). A flush also reports a final gap up to the stream's known end: its FIN, or
//!   else the highest byte the peer acknowledged.
//! - A RST is believed only inside its sender's window (RFC 5961 style: from the next
//!   expected byte to 16 MiB past the furthest seen or acknowledged); others are counted
//!   (`rst_ignored`). A SYN that repeats the ISN of a connection just closed on the same
//!   4-tuple is a retransmission and opens nothing (`phantom_syns`).
//! - Both FINs delivered → `close(Fin)`; RST → flush, `close(Rst)`; idle or pushed out by
//!   the table cap → flush, `close(Evicted)`; [`Reassembler::finish`] → flush,
//!   `close(CaptureEnded)`. A closed connection is forgotten at once; a segment without
//!   payload or SYN never opens one.
//!
//! A segment may end in a known-length skip (header-only capture): those bytes take their
//! place in the stream like data, are buffered out of order like data (without memory),
//! and reach the sink as [`StreamSink::skip`], never as a gap.
//!
//! On a segment carrying both SYN and payload (TCP Fast Open), `seq` is taken to be the
//! header's sequence number, i.e. the SYN's; the payload starts one further.

use std::collections::{BTreeMap, HashMap};

use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, Segment, StreamSink};

mod stream;
mod table;
use stream::*;
use table::*;

/// How far before a direction's first byte seen a peer ACK may lie and still become offset 0.
const ANCHOR_WINDOW: u32 = 1 << 20;
/// Most out-of-order pieces held per direction, however small (bounds per-piece overhead).
const MAX_PENDING_PIECES: usize = 8192;
/// Memory a held piece costs beyond its bytes (its map entry and allocation), counted
/// against the buffer limits so that many small pieces cannot hide behind few bytes.
const PIECE_OVERHEAD: usize = 64;
/// "No slot" in the recency list.
const NIL: usize = usize::MAX;
/// A RST is believed only if its sequence number lies this far at most past what its
/// sender is known to have sent (RFC 5961 §3: inside the receive window; 16 MiB is more
/// than any common window).
const RST_WINDOW: i64 = 16 << 20;
/// Connections closed by FIN or RST remembered (with their ISNs), so that a SYN
/// retransmitted after the close does not open a phantom connection.
const RECENT_CLOSED: usize = 4096;
/// Evicted WebSocket sessions remembered (with where each stream stopped), so that one
/// that goes on is taken up again where it was left ([`Opening::Resumed`]).
const RECENT_EVICTED: usize = 4096;

/// Limits of a [`Reassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Most connections tracked at once; when full, the least recently active is evicted.
    pub max_flows: usize,
    /// Bytes of out-of-order data held per direction; past it the first hole becomes a gap.
    pub max_buffered_per_direction: usize,
    /// A connection without segments for longer than this is evicted by [`Reassembler::tick`].
    pub idle_timeout_ns: u64,
    /// Most connections tracked at once that have shown only a SYN (no payload yet):
    /// beyond it the oldest of them is evicted, whatever the room in the table.
    pub max_half_open: usize,
    /// Bytes of out-of-order data held over all connections; past it the connection
    /// being added to gives up its holes until the total is back under.
    pub memory_limit: usize,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            max_buffered_per_direction: 4 << 20,
            idle_timeout_ns: 300_000_000_000,
            max_half_open: 4096,
            memory_limit: 256 << 20,
        }
    }
}

/// What a connection is worth keeping, lowest first: under pressure the flow table
/// evicts from the lowest class that has any, least recently active first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Only a SYN (or SYN-ACK) so far: a half-open connection, or a SYN flood.
    HalfOpen = 0,
    /// Carried payload, but no WebSocket session was recognised on it (yet): plain
    /// HTTP, a handshake in progress, an unsynced mid-stream connection.
    Plain = 1,
    /// The engine follows a WebSocket session on it ([`Reassembler::promote`]).
    Upgraded = 2,
}

impl Class {
    const ALL: [Class; 3] = [Class::HalfOpen, Class::Plain, Class::Upgraded];

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters since the reassembler was created.
///
/// Every opened connection ends in exactly one of `flows_closed` (FIN, RST),
/// `flows_evicted` (idle, table cap, or replaced by a new SYN before both FINs) or
/// `flows_open_at_end` (still open when capture ended).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassemblyStats {
    /// Segments handed to [`Reassembler::segment`].
    pub segments: u64,
    /// Connections opened (`StreamSink::open` calls).
    pub flows_opened: u64,
    /// Connections closed by FIN or RST.
    pub flows_closed: u64,
    /// Connections closed as `Closing::Evicted`.
    pub flows_evicted: u64,
    /// Dropped because their analysis panicked (see [`crate::pipeline::monitor`]).
    pub flows_dropped: u64,
    /// Connections still open when capture ended (closed with `Closing::CaptureEnded`).
    pub flows_open_at_end: u64,
    /// `StreamSink::gap` calls.
    pub gaps: u64,
    /// Bytes reported as gaps.
    pub bytes_lost: u64,
    /// Bytes delivered in order from client to server.
    pub bytes_client: u64,
    /// Bytes delivered in order from server to client.
    pub bytes_server: u64,
    /// Bytes delivered as known-length skips (left out by header-only capture) from
    /// client to server, and from server to client.
    pub skipped_client: u64,
    pub skipped_server: u64,
    /// Payload bytes dropped as already delivered, already buffered, or from before the
    /// point where tracking of the stream began.
    pub duplicate_bytes: u64,
    /// Segments whose new data had to wait for a hole before it.
    pub out_of_order_segments: u64,
    /// Times the per-direction buffer cap forced a gap.
    pub buffer_overflows: u64,
    /// Connections evicted because the table was full.
    pub table_full_evictions: u64,
    /// RSTs ignored because their sequence number is outside the window (stale, spoofed
    /// or from an older incarnation of the 4-tuple).
    pub rst_ignored: u64,
    /// SYNs ignored because they repeat the ISN of a connection just closed (a
    /// retransmission, not a new connection).
    pub phantom_syns: u64,
    /// Loss notes taken ([`Reassembler::lost`]).
    pub loss_notes: u64,
    /// Half-open connections evicted because `max_half_open` of them were tracked.
    pub half_open_evictions: u64,
    /// WebSocket sessions evicted to make room in a full table (nothing of a lower class
    /// was left to evict): a sign that `--max-flows` is too small.
    pub upgraded_evictions: u64,
    /// Times the memory limit over all connections made a connection give up a hole.
    pub memory_limit_hits: u64,
    /// Out-of-order bytes held now (pieces' overhead included).
    pub buffered_bytes: u64,
    /// The most ever held at once (summed over reassemblers side by side, an upper bound).
    pub peak_buffered_bytes: u64,
}

impl ReassemblyStats {
    /// Adds another reassembler's counters (of other connections) to these.
    pub fn add(&mut self, o: &ReassemblyStats) {
        let ReassemblyStats {
            segments,
            flows_opened,
            flows_closed,
            flows_evicted,
            flows_dropped,
            flows_open_at_end,
            gaps,
            bytes_lost,
            bytes_client,
            bytes_server,
            skipped_client,
            skipped_server,
            duplicate_bytes,
            out_of_order_segments,
            buffer_overflows,
            table_full_evictions,
            rst_ignored,
            phantom_syns,
            loss_notes,
            half_open_evictions,
            upgraded_evictions,
            memory_limit_hits,
            buffered_bytes,
            peak_buffered_bytes,
        } = o;
        for (mine, theirs) in [
            (&mut self.segments, segments),
            (&mut self.flows_opened, flows_opened),
            (&mut self.flows_closed, flows_closed),
            (&mut self.flows_evicted, flows_evicted),
            (&mut self.flows_dropped, flows_dropped),
            (&mut self.flows_open_at_end, flows_open_at_end),
            (&mut self.gaps, gaps),
            (&mut self.bytes_lost, bytes_lost),
            (&mut self.bytes_client, bytes_client),
            (&mut self.bytes_server, bytes_server),
            (&mut self.skipped_client, skipped_client),
            (&mut self.skipped_server, skipped_server),
            (&mut self.duplicate_bytes, duplicate_bytes),
            (&mut self.out_of_order_segments, out_of_order_segments),
            (&mut self.buffer_overflows, buffer_overflows),
            (&mut self.table_full_evictions, table_full_evictions),
            (&mut self.rst_ignored, rst_ignored),
            (&mut self.phantom_syns, phantom_syns),
            (&mut self.loss_notes, loss_notes),
            (&mut self.half_open_evictions, half_open_evictions),
            (&mut self.upgraded_evictions, upgraded_evictions),
            (&mut self.memory_limit_hits, memory_limit_hits),
            (&mut self.buffered_bytes, buffered_bytes),
            (&mut self.peak_buffered_bytes, peak_buffered_bytes),
        ] {
            bump(mine, *theirs);
        }
    }
}

/// Adds without ever overflowing (counters fed by arbitrary input).
fn bump(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

/// Where a stream's events go: the sink and the counters, for one flow at one moment.
struct Out<'a> {
    sink: &'a mut dyn StreamSink,
    stats: &'a mut ReassemblyStats,
    id: FlowId,
    ts: u64,
}

impl Out<'_> {
    fn data(&mut self, dir: Direction, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let counter = match dir {
            Direction::ToServer => &mut self.stats.bytes_client,
            Direction::ToClient => &mut self.stats.bytes_server,
        };
        bump(counter, bytes.len() as u64);
        self.sink.data(self.id, dir, offset, bytes, self.ts);
    }

    fn run(&mut self, dir: Direction, offset: u64, run: Run<'_>) {
        match run {
            Run::Bytes(bytes) => self.data(dir, offset, bytes),
            Run::Skip(0) => {}
            Run::Skip(len) => {
                let counter = match dir {
                    Direction::ToServer => &mut self.stats.skipped_client,
                    Direction::ToClient => &mut self.stats.skipped_server,
                };
                bump(counter, len);
                self.sink.skip(self.id, dir, offset, len, self.ts);
            }
            Run::Lost(len) => self.gap(dir, offset, len, Loss::Capture),
        }
    }

    fn gap(&mut self, dir: Direction, offset: u64, len: u64, loss: Loss) {
        if len == 0 {
            return;
        }
        bump(&mut self.stats.gaps, 1);
        bump(&mut self.stats.bytes_lost, len);
        self.sink.gap(self.id, dir, offset, len, loss, self.ts);
    }

    fn duplicate(&mut self, n: u64) {
        bump(&mut self.stats.duplicate_bytes, n);
    }

    fn end(&mut self, dir: Direction) {
        self.sink.end(self.id, dir, self.ts);
    }
}

/// `seg` as its SYN orients it: the sender of a SYN without ACK is the client, the sender
/// of a SYN-ACK the server. Any other segment keeps the capture's label (the side whose
/// port is monitored is the server; the destination's, when both are).
fn syn_oriented<'a>(seg: &Segment<'a>) -> Segment<'a> {
    let sender_is_client = match (seg.flags.syn, seg.flags.ack) {
        (true, false) => true,
        (true, true) => false,
        (false, _) => return *seg,
    };
    if sender_is_client == (seg.dir == Direction::ToServer) {
        *seg
    } else {
        seg.reversed()
    }
}

/// One tracked connection.
struct Flow {
    id: FlowId,
    /// Its orientation: who is the client (see [`Reassembler`]).
    key: FlowKey,
    /// `[ToServer, ToClient]`.
    streams: [Stream; 2],
    /// Latest segment timestamp seen.
    last_ts: u64,
}

impl Flow {
    fn new(id: FlowId, key: FlowKey, ts: u64) -> Self {
        Self { id, key, streams: [Stream::new(Direction::ToServer), Stream::new(Direction::ToClient)], last_ts: ts }
    }

    /// The stream travelling in `dir`, and the other one.
    fn pair(&mut self, dir: Direction) -> (&mut Stream, &mut Stream) {
        let [to_server, to_client] = &mut self.streams;
        match dir {
            Direction::ToServer => (to_server, to_client),
            Direction::ToClient => (to_client, to_server),
        }
    }

    /// `seg` (of this connection, labelled either way) as this flow is oriented.
    fn orient<'a>(&self, seg: &Segment<'a>) -> Segment<'a> {
        if seg.key == self.key {
            *seg
        } else {
            seg.reversed()
        }
    }

    /// Memory its out-of-order buffers hold: bytes, and each piece's own overhead.
    fn memory(&self) -> usize {
        self.streams.iter().map(|s| s.buffered + s.pending.len() * PIECE_OVERHEAD).sum()
    }

    /// Gives up holes, the larger buffer's first, until `excess` bytes are freed or
    /// nothing is held; returns the bytes freed.
    fn shed(&mut self, excess: usize, out: &mut Out<'_>) -> usize {
        let before = self.memory();
        while before - self.memory() < excess {
            let [a, b] = &mut self.streams;
            let fuller =
                if a.pending.len() * PIECE_OVERHEAD + a.buffered >= b.pending.len() * PIECE_OVERHEAD + b.buffered {
                    a
                } else {
                    b
                };
            if !fuller.give_up_hole(Loss::BufferLimit, out) {
                break;
            }
            bump(&mut out.stats.memory_limit_hits, 1);
        }
        before - self.memory()
    }

    fn both_fins_seen(&self) -> bool {
        self.streams.iter().all(|s| s.fin.is_some())
    }

    /// Whether `seg` (as this flow is oriented) is a SYN without ACK starting a new
    /// connection on this 4-tuple: this one is already closing, or the SYN's ISN is not
    /// its sender's here. From the server side (a new connection the other way round) an
    /// unknown ISN counts only once this flow carried data, so that a simultaneous open
    /// stays one connection.
    fn restarted_by(&self, seg: &Segment<'_>) -> bool {
        let Some(own) = self.streams.get(seg.dir.index()) else { return false };
        let new_isn = match (own.base, seg.dir) {
            (Some(base), _) => base != seg.seq.wrapping_add(1),
            (None, Direction::ToServer) => true,
            (None, Direction::ToClient) => self.streams.iter().any(|s| s.next > 0 || !s.pending.is_empty()),
        };
        seg.flags.syn && !seg.flags.ack && (new_isn || self.streams.iter().any(|s| s.fin.is_some()))
    }

    /// Applies one segment; returns how the flow ends, if it does.
    /// `lost`: `seg` is a loss note (`seg.skip` bytes the capture lost).
    fn apply(&mut self, seg: &Segment<'_>, lost: bool, cfg: &ReassemblyConfig, out: &mut Out<'_>) -> Option<Closing> {
        let flags = seg.flags;
        let (own, peer) = self.pair(seg.dir);
        if flags.syn {
            if own.base.is_none() {
                own.set_base(seg.seq.wrapping_add(1));
            }
            if flags.ack && peer.base.is_none() {
                peer.set_base(seg.ack);
            }
        }
        if flags.ack {
            peer.on_ack(seg.ack, out);
        }
        if !seg.data.is_empty() || seg.skip > 0 || flags.fin {
            if own.base.is_none() {
                own.anchor(seg.seq);
            }
            if let Some(start) = own.offset(seg.seq) {
                let start = start.saturating_add(i64::from(flags.syn));
                let skip = u64::from(seg.skip);
                if lost {
                    own.ingest(start, Run::Lost(skip), flags.fin, cfg, out);
                } else {
                    own.ingest(start, Run::Bytes(seg.data), flags.fin && skip == 0, cfg, out);
                    if skip > 0 {
                        let after = start.saturating_add(seg.data.len() as i64);
                        own.ingest(after, Run::Skip(skip), flags.fin, cfg, out);
                    }
                }
            }
        }
        if flags.rst && !own.rst_acceptable(seg.seq) {
            bump(&mut out.stats.rst_ignored, 1);
            None
        } else if flags.rst {
            out.end(seg.dir);
            Some(Closing::Rst)
        } else if own.done() && peer.done() {
            Some(Closing::Fin)
        } else {
            None
        }
    }
}

/// Rebuilds the byte streams of many TCP connections from captured segments.
pub struct Reassembler {
    config: ReassemblyConfig,
    stats: ReassemblyStats,
    table: FlowTable,
    next_id: u64,
    /// Ids go up by this much (reassemblers side by side hand out distinct ids).
    id_step: u64,
    /// Recently closed connections: key → offset-0 sequence numbers `[to_server, to_client]`.
    closed: HashMap<FlowKey, [Option<u32>; 2]>,
    /// Their keys, oldest first (bounds `closed`).
    closed_order: std::collections::VecDeque<FlowKey>,
    /// Evicted WebSocket sessions: unordered key → the session's orientation and, per
    /// stream `[to_server, to_client]`, the sequence number of the byte after its end.
    evicted: HashMap<FlowKey, (FlowKey, [Option<u32>; 2])>,
    evicted_order: std::collections::VecDeque<FlowKey>,
    /// Memory held in out-of-order buffers over all flows.
    held: usize,
}

impl Reassembler {
    /// An empty reassembler with the given limits.
    pub fn new(config: ReassemblyConfig) -> Self {
        Self::with_ids(config, 1, 1)
    }

    /// A reassembler whose flow ids are `first`, `first + step`, `first + 2 * step`, ...
    pub fn with_ids(config: ReassemblyConfig, first: u64, step: u64) -> Self {
        Self {
            config,
            stats: ReassemblyStats::default(),
            table: FlowTable::new(),
            next_id: first,
            id_step: step.max(1),
            closed: HashMap::new(),
            closed_order: std::collections::VecDeque::new(),
            evicted: HashMap::new(),
            evicted_order: std::collections::VecDeque::new(),
            held: 0,
        }
    }

    /// Takes one captured segment, reporting resulting events to `sink`.
    ///
    /// The capture labels a segment by ports alone; here it takes the orientation of the
    /// connection it belongs to, or for a new connection that of its SYN (see the module
    /// documentation).
    pub fn segment(&mut self, seg: &Segment<'_>, sink: &mut impl StreamSink) {
        self.take(seg, false, sink);
    }

    /// Takes a loss note: a segment the capture lost, `seg.skip` payload bytes at
    /// `seg.seq` (with its flags; `seg.data` is empty). Those bytes take their place in
    /// the stream like a skip and reach the sink as a gap ([`Loss::Capture`]), so a loss
    /// is placed exactly, a lost FIN still ends its stream, and a connection whose every
    /// record was lost is still accounted. A note for a connection already closed is
    /// dropped (its holes were accounted then).
    pub fn lost(&mut self, seg: &Segment<'_>, sink: &mut impl StreamSink) {
        bump(&mut self.stats.loss_notes, 1);
        let tracked = self.table.find(&seg.key.unordered()).is_some();
        if tracked || !(self.closed.contains_key(&seg.key) || self.closed.contains_key(&seg.key.reversed())) {
            self.take(seg, true, sink);
        }
    }

    fn take(&mut self, seg: &Segment<'_>, lost: bool, sink: &mut impl StreamSink) {
        let sink: &mut dyn StreamSink = sink;
        bump(&mut self.stats.segments, 1);
        let slot = match self.table.find(&seg.key.unordered()) {
            Some(slot) => match self.table.get(slot) {
                Some(old) if old.restarted_by(&old.orient(seg)) => {
                    let closing = if old.both_fins_seen() { Closing::Fin } else { Closing::Evicted };
                    self.close(slot, closing, seg.ts_ns, sink);
                    self.open(&syn_oriented(seg), sink)
                }
                _ => slot,
            },
            None if seg.data.is_empty() && seg.skip == 0 && !seg.flags.syn => return,
            None if self.phantom_syn(&syn_oriented(seg)) => {
                bump(&mut self.stats.phantom_syns, 1);
                return;
            }
            None => match self.resumption(seg) {
                Some((seg, ends)) => self.open_resumed(&seg, ends, sink),
                None => self.open(&syn_oriented(seg), sink),
            },
        };
        if self.table.class(slot) == Some(Class::HalfOpen) && (!seg.data.is_empty() || seg.skip > 0) {
            self.table.set_class(slot, Class::Plain);
        }
        self.table.touch(slot);
        let Some(flow) = self.table.get_mut(slot) else { return };
        let seg = &flow.orient(seg);
        flow.last_ts = flow.last_ts.max(seg.ts_ns);
        let mut out = Out { sink, stats: &mut self.stats, id: flow.id, ts: seg.ts_ns };
        let before = flow.memory();
        let closing = flow.apply(seg, lost, &self.config, &mut out);
        let mut held = self.held.saturating_sub(before).saturating_add(flow.memory());
        // The total was under the limit before this segment, and only this flow grew:
        // giving up its own holes is always enough to be under again.
        if let Some(excess) = held.checked_sub(self.config.memory_limit).filter(|&e| e > 0) {
            held = held.saturating_sub(flow.shed(excess, &mut out));
        }
        self.held = held;
        self.stats.buffered_bytes = held as u64;
        self.stats.peak_buffered_bytes = self.stats.peak_buffered_bytes.max(held as u64);
        if let Some(closing) = closing {
            self.close(slot, closing, seg.ts_ns, sink);
        }
    }

    /// The engine follows a WebSocket session on connection `id` (`key` either way
    /// round): it is evicted last from now on.
    pub fn promote(&mut self, id: FlowId, key: &FlowKey) {
        if let Some(slot) = self.table.find(&key.unordered()) {
            if self.table.get(slot).is_some_and(|f| f.id == id) {
                self.table.set_class(slot, Class::Upgraded);
            }
        }
    }

    /// Periodic housekeeping at monotonic time `now_ns` (same clock as [`Segment::ts_ns`]):
    /// evicts flows idle for longer than the idle timeout (flush them: gaps for known holes,
    /// then `close(Evicted)`).
    ///
    /// Flows are visited from the least recently active and the walk stops at the first one
    /// still active, so with timestamps slightly out of order an idle flow may wait for the
    /// next tick.
    pub fn tick(&mut self, now_ns: u64, sink: &mut impl StreamSink) {
        for class in Class::ALL {
            while let Some(slot) = self.table.oldest_of(class) {
                let idle = self
                    .table
                    .get(slot)
                    .is_some_and(|f| now_ns.saturating_sub(f.last_ts) > self.config.idle_timeout_ns);
                if !idle || !self.close(slot, Closing::Evicted, now_ns, sink) {
                    break;
                }
            }
        }
    }

    /// End of capture: flushes every open flow (delivers what can be, gaps for the rest up
    /// to the known end) and closes each with `Closing::CaptureEnded`.
    pub fn finish(&mut self, now_ns: u64, sink: &mut impl StreamSink) {
        while !self.finish_some(now_ns, sink, usize::MAX) {}
    }

    /// Like [`Reassembler::finish`], closing at most `max` connections; true once none
    /// is left open.
    pub fn finish_some(&mut self, now_ns: u64, sink: &mut impl StreamSink, max: usize) -> bool {
        for _ in 0..max {
            let Some(slot) = self.table.victim() else { return true };
            if !self.close(slot, Closing::CaptureEnded, now_ns, sink) {
                return true;
            }
        }
        false
    }

    /// Counters so far.
    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Connections currently tracked.
    pub fn open_flows(&self) -> usize {
        self.table.len()
    }

    /// The TCP sequence number of stream offset `offset` of `key` in `dir`, while that
    /// connection is tracked and the stream's start is known.
    pub fn seq_at(&self, key: &FlowKey, dir: Direction, offset: u64) -> Option<u32> {
        let flow = self.table.get(self.table.find(&key.unordered())?)?;
        let dir = if flow.key == *key { dir } else { dir.reverse() };
        let base = flow.streams.get(dir.index())?.base?;
        Some(base.wrapping_add(offset as u32))
    }

    /// Whether `seg` (oriented by its SYN) is a SYN (or SYN-ACK) repeating the ISN of the
    /// connection just closed on its 4-tuple.
    fn phantom_syn(&self, seg: &Segment<'_>) -> bool {
        seg.flags.syn
            && seg.data.is_empty()
            && seg.skip == 0
            && self
                .closed
                .get(&seg.key)
                .is_some_and(|bases| bases.get(seg.dir.index()).copied().flatten() == Some(seg.seq.wrapping_add(1)))
    }

    /// `seg` (opening a connection without a SYN) as the evicted session it goes on
    /// with, if one was evicted on its 4-tuple and `seg` lies where that session's stream
    /// stopped (from 1 MiB before to 16 MiB after): oriented as that session was, with
    /// where each of its streams stopped.
    fn resumption<'a>(&mut self, seg: &Segment<'a>) -> Option<(Segment<'a>, [Option<u32>; 2])> {
        let (key, ends) = self.evicted.remove(&seg.key.unordered())?;
        if seg.flags.syn {
            return None; // a new connection on the 4-tuple
        }
        let seg = if seg.key == key { *seg } else { seg.reversed() };
        let end = ends.get(seg.dir.index()).copied().flatten()?;
        let distance = i64::from(seg.seq.wrapping_sub(end) as i32);
        (-i64::from(ANCHOR_WINDOW)..=RST_WINDOW).contains(&distance).then_some((seg, ends))
    }

    /// Opens `seg`'s connection as a resumed session whose streams start at `ends`.
    fn open_resumed(&mut self, seg: &Segment<'_>, ends: [Option<u32>; 2], sink: &mut dyn StreamSink) -> usize {
        let slot = self.open_as(seg, true, sink);
        if let Some(flow) = self.table.get_mut(slot) {
            for (stream, end) in flow.streams.iter_mut().zip(ends) {
                if let Some(end) = end {
                    stream.set_base(end);
                }
            }
        }
        slot
    }

    fn remember_evicted(&mut self, flow: &Flow) {
        let ends = flow.streams.each_ref().map(|s| s.base.map(|b| b.wrapping_add(s.next as u32)));
        let key = flow.key.unordered();
        if self.evicted.insert(key, (flow.key, ends)).is_none() {
            self.evicted_order.push_back(key);
        }
        while self.evicted_order.len() > RECENT_EVICTED {
            if let Some(old) = self.evicted_order.pop_front() {
                self.evicted.remove(&old);
            }
        }
    }

    fn remember_closed(&mut self, key: FlowKey, bases: [Option<u32>; 2]) {
        if self.closed.insert(key, bases).is_none() {
            self.closed_order.push_back(key);
        }
        while self.closed_order.len() > RECENT_CLOSED {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
    }

    /// Starts tracking the connection `seg` belongs to, making room first if needed:
    /// a SYN beyond the half-open budget evicts the oldest half-open connection; a full
    /// table evicts the least recently active connection of the lowest [`Class`].
    fn open(&mut self, seg: &Segment<'_>, sink: &mut dyn StreamSink) -> usize {
        self.open_as(seg, false, sink)
    }

    /// [`Self::open`], as a resumed session if `resumed`.
    fn open_as(&mut self, seg: &Segment<'_>, resumed: bool, sink: &mut dyn StreamSink) -> usize {
        let class = if seg.data.is_empty() && seg.skip == 0 { Class::HalfOpen } else { Class::Plain };
        if class == Class::HalfOpen && self.table.count(Class::HalfOpen) >= self.config.max_half_open.max(1) {
            if let Some(oldest) = self.table.oldest_of(Class::HalfOpen) {
                bump(&mut self.stats.half_open_evictions, 1);
                self.close(oldest, Closing::Evicted, seg.ts_ns, sink);
            }
        }
        if self.table.len() >= self.config.max_flows.max(1) {
            if let Some(victim) = self.table.victim() {
                bump(&mut self.stats.table_full_evictions, 1);
                if self.table.class(victim) == Some(Class::Upgraded) {
                    bump(&mut self.stats.upgraded_evictions, 1);
                }
                self.close(victim, Closing::Evicted, seg.ts_ns, sink);
            }
        }
        let id = FlowId(self.next_id);
        self.next_id += self.id_step;
        // Both ISNs are known from a client SYN or a server SYN-ACK.
        let handshake = seg.flags.syn && seg.flags.ack == (seg.dir == Direction::ToClient);
        let opening = match (handshake, resumed) {
            (true, _) => Opening::Handshake,
            (false, true) => Opening::Resumed,
            (false, false) => Opening::MidStream,
        };
        sink.open(id, &seg.key, opening, seg.ts_ns);
        if seg.iface != 0 {
            sink.seen_on(id, seg.iface);
        }
        bump(&mut self.stats.flows_opened, 1);
        self.table.insert(seg.key.unordered(), Flow::new(id, seg.key, seg.ts_ns), class)
    }

    /// Drops the connection `key` without telling the sinks (its analysis panicked, see
    /// [`crate::pipeline::monitor`]); its id, if it was tracked.
    pub fn forget(&mut self, key: &FlowKey) -> Option<FlowId> {
        let slot = self.table.find(&key.unordered())?;
        let flow = self.table.remove(slot)?;
        self.held = self.held.saturating_sub(flow.memory());
        self.stats.buffered_bytes = self.held as u64;
        bump(&mut self.stats.flows_dropped, 1);
        Some(flow.id)
    }

    /// Flushes the flow in `slot`, closes it with `closing` and forgets it; false if there
    /// was no flow there.
    fn close(&mut self, slot: usize, closing: Closing, ts: u64, sink: &mut dyn StreamSink) -> bool {
        let class = self.table.class(slot);
        let Some(mut flow) = self.table.remove(slot) else { return false };
        if let Closing::Fin | Closing::Rst = closing {
            self.remember_closed(flow.key, flow.streams.each_ref().map(|s| s.base));
        }
        self.held = self.held.saturating_sub(flow.memory());
        self.stats.buffered_bytes = self.held as u64;
        let loss = if closing == Closing::Evicted { Loss::Eviction } else { Loss::Capture };
        let mut out = Out { sink, stats: &mut self.stats, id: flow.id, ts };
        for stream in &mut flow.streams {
            stream.flush(loss, &mut out);
        }
        sink.close(flow.id, closing, ts);
        if closing == Closing::Evicted && class == Some(Class::Upgraded) {
            self.remember_evicted(&flow);
        }
        match closing {
            Closing::Evicted => bump(&mut self.stats.flows_evicted, 1),
            // Still open on the wire: neither closed nor evicted, so that
            // opened - closed - evicted = connections open when capture ended.
            Closing::CaptureEnded => bump(&mut self.stats.flows_open_at_end, 1),
            Closing::Fin | Closing::Rst => bump(&mut self.stats.flows_closed, 1),
        }
        true
    }
}

#[cfg(test)]
mod tests;
