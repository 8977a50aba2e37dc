//! Flow reassembly: turns captured TCP [`Segment`]s into each connection's two ordered byte
//! streams and hands them to a [`StreamSink`], with explicit gaps for bytes never seen.
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
//! - Both FINs delivered → `close(Fin)`; RST → flush, `close(Rst)`; idle or pushed out by
//!   the table cap → flush, `close(Evicted)`; [`Reassembler::finish`] → flush,
//!   `close(CaptureEnded)`. A closed connection is forgotten at once; a segment without
//!   payload or SYN never opens one.
//!
//! On a segment carrying both SYN and payload (TCP Fast Open), `seq` is taken to be the
//! header's sequence number, i.e. the SYN's; the payload starts one further.

use std::collections::{BTreeMap, HashMap};

use crate::flow::{Closing, Direction, FlowId, FlowKey, Opening, Segment, StreamSink};

/// How far before a direction's first byte seen a peer ACK may lie and still become offset 0.
const ANCHOR_WINDOW: u32 = 1 << 20;
/// Most out-of-order pieces held per direction, however small (bounds per-piece overhead).
const MAX_PENDING_PIECES: usize = 8192;
/// "No slot" in the recency list.
const NIL: usize = usize::MAX;

/// Limits of a [`Reassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Most connections tracked at once; when full, the least recently active is evicted.
    pub max_flows: usize,
    /// Bytes of out-of-order data held per direction; past it the first hole becomes a gap.
    pub max_buffered_per_direction: usize,
    /// A connection without segments for longer than this is evicted by [`Reassembler::tick`].
    pub idle_timeout_ns: u64,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            max_buffered_per_direction: 4 << 20,
            idle_timeout_ns: 300_000_000_000,
        }
    }
}

/// Counters since the reassembler was created.
///
/// Every opened connection ends in exactly one of `flows_closed` (FIN, RST, end of
/// capture) or `flows_evicted` (idle, table cap, or replaced by a new SYN before both FINs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassemblyStats {
    /// Segments handed to [`Reassembler::segment`].
    pub segments: u64,
    /// Connections opened (`StreamSink::open` calls).
    pub flows_opened: u64,
    /// Connections closed by FIN, RST or end of capture.
    pub flows_closed: u64,
    /// Connections closed as `Closing::Evicted`.
    pub flows_evicted: u64,
    /// `StreamSink::gap` calls.
    pub gaps: u64,
    /// Bytes reported as gaps.
    pub bytes_lost: u64,
    /// Bytes delivered in order from client to server.
    pub bytes_client: u64,
    /// Bytes delivered in order from server to client.
    pub bytes_server: u64,
    /// Payload bytes dropped because they were already delivered or already buffered.
    pub duplicate_bytes: u64,
    /// Segments whose new data had to wait for a hole before it.
    pub out_of_order_segments: u64,
    /// Times the per-direction buffer cap forced a gap.
    pub buffer_overflows: u64,
    /// Connections evicted because the table was full.
    pub table_full_evictions: u64,
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

    fn gap(&mut self, dir: Direction, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        bump(&mut self.stats.gaps, 1);
        bump(&mut self.stats.bytes_lost, len);
        self.sink.gap(self.id, dir, offset, len, self.ts);
    }

    fn duplicate(&mut self, n: u64) {
        bump(&mut self.stats.duplicate_bytes, n);
    }
}

/// One direction of a connection.
struct Stream {
    dir: Direction,
    /// Sequence number of offset 0, once known.
    base: Option<u32>,
    /// Offset of the next byte to deliver: everything before it was delivered or gapped.
    next: u64,
    /// Out-of-order pieces past `next`, keyed by offset; they never overlap each other
    /// and never extend past `fin`.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Bytes held in `pending`.
    buffered: usize,
    /// Offset of the FIN once seen: the end of the stream.
    fin: Option<u64>,
    /// Highest offset the peer acknowledged (meaningful once `base` is known).
    acked: u64,
    /// Lowest and highest peer ACK seen while `base` was unknown.
    early_acks: Option<(u32, u32)>,
}

impl Stream {
    fn new(dir: Direction) -> Self {
        Self {
            dir,
            base: None,
            next: 0,
            pending: BTreeMap::new(),
            buffered: 0,
            fin: None,
            acked: 0,
            early_acks: None,
        }
    }

    /// Offset of `seq`: the one nearest the next expected offset (negative = before 0).
    fn offset(&self, seq: u32) -> Option<i64> {
        let rel = seq.wrapping_sub(self.base?);
        let diff = rel.wrapping_sub(self.next as u32) as i32;
        Some((self.next as i64).saturating_add(i64::from(diff)))
    }

    /// Fixes offset 0 at `base` and turns ACKs seen so far into an acknowledged offset.
    fn set_base(&mut self, base: u32) {
        self.base = Some(base);
        if let Some((_, highest)) = self.early_acks.take() {
            self.acked = self.offset(highest).map_or(0, |o| o.max(0) as u64);
        }
    }

    /// Fixes offset 0 for a direction first seen at `seq` (mid-stream start).
    fn anchor(&mut self, seq: u32) {
        match self.early_acks {
            Some((lowest, _)) if seq.wrapping_sub(lowest) <= ANCHOR_WINDOW => self.set_base(lowest),
            _ => self.set_base(seq),
        }
    }

    fn done(&self) -> bool {
        self.fin == Some(self.next)
    }

    /// The peer acknowledged everything before `ack`.
    fn on_ack(&mut self, ack: u32, out: &mut Out<'_>) {
        match self.offset(ack) {
            Some(off) if off > self.acked as i64 => {
                self.acked = off as u64;
                self.settle(out);
            }
            Some(_) => {}
            None => {
                let (mut lowest, mut highest) = self.early_acks.unwrap_or((ack, ack));
                if (ack.wrapping_sub(lowest) as i32) < 0 {
                    lowest = ack;
                }
                if (ack.wrapping_sub(highest) as i32) > 0 {
                    highest = ack;
                }
                self.early_acks = Some((lowest, highest));
            }
        }
    }

    /// Takes payload `data` found at offset `start`, followed by a FIN when `fin`.
    fn ingest(&mut self, start: i64, data: &[u8], fin: bool, cfg: &ReassemblyConfig, out: &mut Out<'_>) {
        let next = self.next as i64;
        let mut end = start.saturating_add(data.len() as i64);
        if fin && self.fin.is_none() {
            let at = end.max(next) as u64;
            self.fin = Some(at);
            self.truncate_pending(at);
        }
        if let Some(at) = self.fin {
            end = end.min(at as i64);
        }
        let from = start.max(next);
        out.duplicate((end.min(next) - start).max(0) as u64);
        if end > from {
            let (lo, hi) = ((from - start) as usize, (end - start) as usize);
            let Some(bytes) = data.get(lo..hi) else { return };
            if from == next {
                out.data(self.dir, self.next, bytes);
                self.next = end as u64;
            } else {
                bump(&mut out.stats.out_of_order_segments, 1);
                self.buffer(from as u64, bytes, out);
                self.relieve(cfg, out);
            }
        }
        self.settle(out);
    }

    /// Holds `bytes` found at `start` (past `next`), keeping only what no held piece covers.
    fn buffer(&mut self, start: u64, bytes: &[u8], out: &mut Out<'_>) {
        let end = start.saturating_add(bytes.len() as u64);
        let mut pos = start;
        while pos < end {
            if let Some((&at, piece)) = self.pending.range(..=pos).next_back() {
                let covered = at.saturating_add(piece.len() as u64);
                if covered > pos {
                    out.duplicate(covered.min(end) - pos);
                    pos = covered;
                    continue;
                }
            }
            let stop = self.pending.range(pos..end).next().map_or(end, |(&at, _)| at);
            let range = (pos - start) as usize..(stop - start) as usize;
            if let Some(piece) = bytes.get(range) {
                self.buffered += piece.len();
                self.pending.insert(pos, piece.to_vec());
            }
            pos = stop;
        }
    }

    /// Drops held data at or past the FIN offset `fin`.
    fn truncate_pending(&mut self, fin: u64) {
        let beyond = self.pending.split_off(&fin);
        self.buffered -= beyond.values().map(Vec::len).sum::<usize>();
        if let Some(mut last) = self.pending.last_entry() {
            let keep = usize::try_from(fin - *last.key()).unwrap_or(usize::MAX);
            if last.get().len() > keep {
                self.buffered -= last.get().len() - keep;
                last.get_mut().truncate(keep);
            }
        }
    }

    /// Delivers held pieces that now start at or before `next`.
    fn drain(&mut self, out: &mut Out<'_>) {
        while let Some(entry) = self.pending.first_entry() {
            let at = *entry.key();
            if at > self.next {
                break;
            }
            let piece = entry.remove();
            self.buffered -= piece.len();
            let skip = usize::try_from(self.next - at).unwrap_or(usize::MAX).min(piece.len());
            out.duplicate(skip as u64);
            if let Some(rest) = piece.get(skip..) {
                out.data(self.dir, self.next, rest);
                self.next += rest.len() as u64;
            }
        }
    }

    /// While the hole at `next` is acknowledged by the peer, reports it as a gap (up to the
    /// ACK or the data after the hole) and delivers what follows.
    fn settle(&mut self, out: &mut Out<'_>) {
        self.drain(out);
        while self.acked > self.next {
            let hole_end = match (self.pending.keys().next(), self.fin) {
                (Some(&at), _) => at,
                (None, Some(at)) => at,
                (None, None) => break,
            };
            let upto = hole_end.min(self.acked);
            if upto <= self.next {
                break;
            }
            out.gap(self.dir, self.next, upto - self.next);
            self.next = upto;
            self.drain(out);
        }
    }

    /// Keeps the buffer under its caps by giving up on the first hole, as often as needed.
    fn relieve(&mut self, cfg: &ReassemblyConfig, out: &mut Out<'_>) {
        while self.buffered > cfg.max_buffered_per_direction || self.pending.len() > MAX_PENDING_PIECES {
            let Some(&at) = self.pending.keys().next() else { break };
            bump(&mut out.stats.buffer_overflows, 1);
            out.gap(self.dir, self.next, at.saturating_sub(self.next));
            self.next = self.next.max(at);
            self.drain(out);
        }
    }

    /// Gives up on every hole: delivers all held data, with gaps between, then a gap up to
    /// the known end of the stream (FIN, or else the peer's highest ACK).
    fn flush(&mut self, out: &mut Out<'_>) {
        self.drain(out);
        while let Some(&at) = self.pending.keys().next() {
            out.gap(self.dir, self.next, at.saturating_sub(self.next));
            self.next = self.next.max(at);
            self.drain(out);
        }
        let end = self.fin.unwrap_or(self.acked);
        if end > self.next {
            out.gap(self.dir, self.next, end - self.next);
            self.next = end;
        }
    }
}

/// One tracked connection.
struct Flow {
    id: FlowId,
    /// `[ToServer, ToClient]`.
    streams: [Stream; 2],
    /// Latest segment timestamp seen.
    last_ts: u64,
}

impl Flow {
    fn new(id: FlowId, ts: u64) -> Self {
        Self {
            id,
            streams: [Stream::new(Direction::ToServer), Stream::new(Direction::ToClient)],
            last_ts: ts,
        }
    }

    /// The stream travelling in `dir`, and the other one.
    fn pair(&mut self, dir: Direction) -> (&mut Stream, &mut Stream) {
        let [to_server, to_client] = &mut self.streams;
        match dir {
            Direction::ToServer => (to_server, to_client),
            Direction::ToClient => (to_client, to_server),
        }
    }

    fn both_fins_seen(&self) -> bool {
        self.streams.iter().all(|s| s.fin.is_some())
    }

    /// Whether `seg` is a client SYN starting a new connection on this 4-tuple: its ISN
    /// differs from this one's, or this one is already closing.
    fn restarted_by(&self, seg: &Segment<'_>) -> bool {
        let [to_server, _] = &self.streams;
        seg.flags.syn
            && !seg.flags.ack
            && seg.dir == Direction::ToServer
            && (to_server.base != Some(seg.seq.wrapping_add(1)) || self.streams.iter().any(|s| s.fin.is_some()))
    }

    /// Applies one segment; returns how the flow ends, if it does.
    fn apply(&mut self, seg: &Segment<'_>, cfg: &ReassemblyConfig, out: &mut Out<'_>) -> Option<Closing> {
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
        if !seg.data.is_empty() || flags.fin {
            if own.base.is_none() {
                own.anchor(seg.seq);
            }
            if let Some(start) = own.offset(seg.seq) {
                own.ingest(start.saturating_add(i64::from(flags.syn)), seg.data, flags.fin, cfg, out);
            }
        }
        if flags.rst {
            Some(Closing::Rst)
        } else if own.done() && peer.done() {
            Some(Closing::Fin)
        } else {
            None
        }
    }
}

/// A slot of the flow table: a flow and its neighbours in the recency list.
struct Slot {
    key: FlowKey,
    flow: Option<Flow>,
    prev: usize,
    next: usize,
}

/// Flows by key, threaded on a recency list (most recent at `head`) over a slab, so that
/// touching a flow and finding the least recently active one are O(1) and allocation-free.
struct FlowTable {
    index: HashMap<FlowKey, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

impl FlowTable {
    fn new() -> Self {
        Self { index: HashMap::new(), slots: Vec::new(), free: Vec::new(), head: NIL, tail: NIL }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn find(&self, key: &FlowKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    fn get(&self, slot: usize) -> Option<&Flow> {
        self.slots.get(slot)?.flow.as_ref()
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Flow> {
        self.slots.get_mut(slot)?.flow.as_mut()
    }

    /// The least recently active flow.
    fn oldest(&self) -> Option<usize> {
        (self.tail != NIL).then_some(self.tail)
    }

    fn insert(&mut self, key: FlowKey, flow: Flow) -> usize {
        let slot = Slot { key, flow: Some(flow), prev: NIL, next: NIL };
        let at = match self.free.pop() {
            Some(at) if at < self.slots.len() => at,
            _ => self.slots.len(),
        };
        match self.slots.get_mut(at) {
            Some(existing) => *existing = slot,
            None => self.slots.push(slot),
        }
        self.index.insert(key, at);
        self.link_front(at);
        at
    }

    fn remove(&mut self, at: usize) -> Option<Flow> {
        let slot = self.slots.get_mut(at)?;
        let flow = slot.flow.take()?;
        let key = slot.key;
        self.index.remove(&key);
        self.unlink(at);
        self.free.push(at);
        Some(flow)
    }

    /// Marks the flow in `slot` as the most recently active.
    fn touch(&mut self, slot: usize) {
        if self.head != slot {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    fn unlink(&mut self, at: usize) {
        let Some(slot) = self.slots.get_mut(at) else { return };
        let (prev, next) = (slot.prev, slot.next);
        (slot.prev, slot.next) = (NIL, NIL);
        match self.slots.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn link_front(&mut self, at: usize) {
        let old = self.head;
        if let Some(slot) = self.slots.get_mut(at) {
            (slot.prev, slot.next) = (NIL, old);
        }
        match self.slots.get_mut(old) {
            Some(o) => o.prev = at,
            None => self.tail = at,
        }
        self.head = at;
    }
}

/// Rebuilds the byte streams of many TCP connections from captured segments.
pub struct Reassembler {
    config: ReassemblyConfig,
    stats: ReassemblyStats,
    table: FlowTable,
    next_id: u64,
}

impl Reassembler {
    /// An empty reassembler with the given limits.
    pub fn new(config: ReassemblyConfig) -> Self {
        Self { config, stats: ReassemblyStats::default(), table: FlowTable::new(), next_id: 1 }
    }

    /// Takes one captured segment, reporting resulting events to `sink`.
    pub fn segment(&mut self, seg: &Segment<'_>, sink: &mut impl StreamSink) {
        let sink: &mut dyn StreamSink = sink;
        bump(&mut self.stats.segments, 1);
        let slot = match self.table.find(&seg.key) {
            Some(slot) => match self.table.get(slot) {
                Some(old) if old.restarted_by(seg) => {
                    let closing = if old.both_fins_seen() { Closing::Fin } else { Closing::Evicted };
                    self.close(slot, closing, seg.ts_ns, sink);
                    self.open(seg, sink)
                }
                _ => slot,
            },
            None if seg.data.is_empty() && !seg.flags.syn => return,
            None => self.open(seg, sink),
        };
        self.table.touch(slot);
        let Some(flow) = self.table.get_mut(slot) else { return };
        flow.last_ts = flow.last_ts.max(seg.ts_ns);
        let mut out = Out { sink, stats: &mut self.stats, id: flow.id, ts: seg.ts_ns };
        if let Some(closing) = flow.apply(seg, &self.config, &mut out) {
            self.close(slot, closing, seg.ts_ns, sink);
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
        while let Some(slot) = self.table.oldest() {
            let idle = self.table.get(slot).is_some_and(|f| now_ns.saturating_sub(f.last_ts) > self.config.idle_timeout_ns);
            if !idle || !self.close(slot, Closing::Evicted, now_ns, sink) {
                break;
            }
        }
    }

    /// End of capture: flushes every open flow (delivers what can be, gaps for the rest up
    /// to the known end) and closes each with `Closing::CaptureEnded`.
    pub fn finish(&mut self, now_ns: u64, sink: &mut impl StreamSink) {
        while let Some(slot) = self.table.oldest() {
            if !self.close(slot, Closing::CaptureEnded, now_ns, sink) {
                break;
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Connections currently tracked.
    pub fn open_flows(&self) -> usize {
        self.table.len()
    }

    /// Starts tracking the connection `seg` belongs to, making room first if needed.
    fn open(&mut self, seg: &Segment<'_>, sink: &mut dyn StreamSink) -> usize {
        if self.table.len() >= self.config.max_flows.max(1) {
            if let Some(oldest) = self.table.oldest() {
                bump(&mut self.stats.table_full_evictions, 1);
                self.close(oldest, Closing::Evicted, seg.ts_ns, sink);
            }
        }
        let id = FlowId(self.next_id);
        self.next_id += 1;
        // Both ISNs are known from a client SYN or a server SYN-ACK.
        let handshake = seg.flags.syn && seg.flags.ack == (seg.dir == Direction::ToClient);
        let opening = if handshake { Opening::Handshake } else { Opening::MidStream };
        sink.open(id, &seg.key, opening, seg.ts_ns);
        bump(&mut self.stats.flows_opened, 1);
        self.table.insert(seg.key, Flow::new(id, seg.ts_ns))
    }

    /// Flushes the flow in `slot`, closes it with `closing` and forgets it; false if there
    /// was no flow there.
    fn close(&mut self, slot: usize, closing: Closing, ts: u64, sink: &mut dyn StreamSink) -> bool {
        let Some(mut flow) = self.table.remove(slot) else { return false };
        let mut out = Out { sink, stats: &mut self.stats, id: flow.id, ts };
        for stream in &mut flow.streams {
            stream.flush(&mut out);
        }
        sink.close(flow.id, closing, ts);
        match closing {
            Closing::Evicted => bump(&mut self.stats.flows_evicted, 1),
            _ => bump(&mut self.stats.flows_closed, 1),
        }
        true
    }
}
