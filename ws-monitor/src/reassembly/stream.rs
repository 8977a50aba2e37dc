//! One direction's byte stream: in-order delivery, out-of-order pieces held under the
//! budgets, holes given up as gaps with their cause.

use super::*;

/// A run of stream bytes: payload at hand, a known-length skip, or bytes the capture
/// lost (a loss note).
#[derive(Clone, Copy, Debug)]
pub(super) enum Run<'a> {
    Bytes(&'a [u8]),
    Skip(u64),
    Lost(u64),
}

impl<'a> Run<'a> {
    pub(super) fn len(&self) -> u64 {
        match self {
            Run::Bytes(b) => b.len() as u64,
            Run::Skip(n) | Run::Lost(n) => *n,
        }
    }

    /// Bytes `from..to` of the run (clamped to it).
    pub(super) fn slice(&self, from: u64, to: u64) -> Run<'a> {
        let to = to.min(self.len());
        let from = from.min(to);
        match self {
            Run::Bytes(b) => Run::Bytes(b.get(from as usize..to as usize).unwrap_or(&[])),
            Run::Skip(_) => Run::Skip(to - from),
            Run::Lost(_) => Run::Lost(to - from),
        }
    }
}

/// An out-of-order run held until the stream reaches it.
#[derive(Debug)]
pub(super) enum Held {
    Bytes(Vec<u8>),
    Skip(u64),
    Lost(u64),
}

impl Held {
    pub(super) fn of(run: Run<'_>) -> Held {
        match run {
            Run::Bytes(b) => Held::Bytes(b.to_vec()),
            Run::Skip(n) => Held::Skip(n),
            Run::Lost(n) => Held::Lost(n),
        }
    }

    pub(super) fn run(&self) -> Run<'_> {
        match self {
            Held::Bytes(b) => Run::Bytes(b),
            Held::Skip(n) => Run::Skip(*n),
            Held::Lost(n) => Run::Lost(*n),
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.run().len()
    }

    /// Bytes held (skips and losses hold none).
    pub(super) fn memory(&self) -> usize {
        match self {
            Held::Bytes(b) => b.len(),
            Held::Skip(_) | Held::Lost(_) => 0,
        }
    }

    pub(super) fn truncate(&mut self, keep: u64) {
        match self {
            Held::Bytes(b) => b.truncate(usize::try_from(keep).unwrap_or(usize::MAX)),
            Held::Skip(n) | Held::Lost(n) => *n = (*n).min(keep),
        }
    }
}

/// One direction of a connection.
pub(super) struct Stream {
    pub(super) dir: Direction,
    /// Sequence number of offset 0, once known.
    pub(super) base: Option<u32>,
    /// Offset of the next byte to deliver: everything before it was delivered or gapped.
    pub(super) next: u64,
    /// Out-of-order pieces past `next`, keyed by offset; they never overlap each other
    /// and never extend past `fin`.
    pub(super) pending: BTreeMap<u64, Held>,
    /// Bytes held in `pending` (skips hold none).
    pub(super) buffered: usize,
    /// Offset of the FIN once seen: the end of the stream.
    pub(super) fin: Option<u64>,
    /// Highest offset the peer acknowledged (meaningful once `base` is known).
    pub(super) acked: u64,
    /// Lowest and highest peer ACK seen while `base` was unknown.
    pub(super) early_acks: Option<(u32, u32)>,
}

impl Stream {
    pub(super) fn new(dir: Direction) -> Self {
        Self { dir, base: None, next: 0, pending: BTreeMap::new(), buffered: 0, fin: None, acked: 0, early_acks: None }
    }

    /// Offset of `seq`: the one nearest the next expected offset (negative = before 0).
    pub(super) fn offset(&self, seq: u32) -> Option<i64> {
        let rel = seq.wrapping_sub(self.base?);
        let diff = rel.wrapping_sub(self.next as u32) as i32;
        Some((self.next as i64).saturating_add(i64::from(diff)))
    }

    /// Fixes offset 0 at `base` and turns ACKs seen so far into an acknowledged offset.
    pub(super) fn set_base(&mut self, base: u32) {
        self.base = Some(base);
        if let Some((_, highest)) = self.early_acks.take() {
            self.acked = self.offset(highest).map_or(0, |o| o.max(0) as u64);
        }
    }

    /// Fixes offset 0 for a direction first seen at `seq` (mid-stream start).
    pub(super) fn anchor(&mut self, seq: u32) {
        match self.early_acks {
            Some((lowest, _)) if seq.wrapping_sub(lowest) <= ANCHOR_WINDOW => self.set_base(lowest),
            _ => self.set_base(seq),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.fin == Some(self.next)
    }

    /// Whether a RST from this stream's sender at `seq` lies in the window: from the
    /// next byte expected up to [`RST_WINDOW`] past the furthest byte seen or acked.
    /// Unknown base (nothing seen from that side): believed.
    pub(super) fn rst_acceptable(&self, seq: u32) -> bool {
        let Some(off) = self.offset(seq) else {
            return true;
        };
        let seen = self.pending.last_key_value().map_or(self.next, |(&at, p)| at + p.len());
        let far = seen.max(self.acked).max(self.fin.unwrap_or(0)) as i64;
        off >= (self.next as i64).min(far) && off <= far.saturating_add(RST_WINDOW)
    }

    /// The peer acknowledged everything before `ack`.
    pub(super) fn on_ack(&mut self, ack: u32, out: &mut Out<'_>) {
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

    /// Takes the run `data` found at offset `start`, followed by a FIN when `fin`.
    pub(super) fn ingest(&mut self, start: i64, data: Run<'_>, fin: bool, cfg: &ReassemblyConfig, out: &mut Out<'_>) {
        let next = self.next as i64;
        let mut end = start.saturating_add(data.len() as i64);
        if fin && self.fin.is_none() {
            let at = end.max(next) as u64;
            self.fin = Some(at);
            self.truncate_pending(at);
            out.end(self.dir);
        }
        if let Some(at) = self.fin {
            end = end.min(at as i64);
        }
        let mut pos = start.max(next);
        out.duplicate((end.min(next) - start).max(0) as u64);
        if pos > next && end > pos {
            bump(&mut out.stats.out_of_order_segments, 1);
            self.buffer(pos as u64, data.slice((pos - start) as u64, (end - start) as u64), out);
            self.relieve(cfg, out);
        }
        // At `next`: deliver from the segment itself up to the first held piece (held
        // bytes came first and win), let that piece through, and carry on after it.
        while pos == self.next as i64 && pos < end {
            let stop = self.pending.keys().next().map_or(end, |&at| end.min(at as i64));
            out.run(self.dir, self.next, data.slice((pos - start) as u64, (stop - start) as u64));
            self.next = stop as u64;
            self.drain(out);
            pos = (self.next as i64).min(end);
            out.duplicate((pos - stop) as u64);
        }
        self.settle(out);
    }

    /// Holds `bytes` found at `start` (past `next`), keeping only what no held piece covers.
    pub(super) fn buffer(&mut self, start: u64, bytes: Run<'_>, out: &mut Out<'_>) {
        let end = start.saturating_add(bytes.len());
        let mut pos = start;
        while pos < end {
            if let Some((&at, piece)) = self.pending.range(..=pos).next_back() {
                let covered = at.saturating_add(piece.len());
                if covered > pos {
                    out.duplicate(covered.min(end) - pos);
                    pos = covered;
                    continue;
                }
            }
            let stop = self.pending.range(pos..end).next().map_or(end, |(&at, _)| at);
            let piece = Held::of(bytes.slice(pos - start, stop - start));
            self.buffered += piece.memory();
            self.pending.insert(pos, piece);
            pos = stop;
        }
    }

    /// Drops held data at or past the FIN offset `fin`.
    pub(super) fn truncate_pending(&mut self, fin: u64) {
        let beyond = self.pending.split_off(&fin);
        self.buffered = self.buffered.saturating_sub(beyond.values().map(Held::memory).sum());
        if let Some(mut last) = self.pending.last_entry() {
            let keep = fin - *last.key();
            let before = last.get().memory();
            last.get_mut().truncate(keep);
            self.buffered = self.buffered.saturating_sub(before - last.get().memory());
        }
    }

    /// Delivers held pieces that now start at or before `next`.
    pub(super) fn drain(&mut self, out: &mut Out<'_>) {
        while let Some(entry) = self.pending.first_entry() {
            let at = *entry.key();
            if at > self.next {
                break;
            }
            let piece = entry.remove();
            self.buffered = self.buffered.saturating_sub(piece.memory());
            let seen = (self.next - at).min(piece.len());
            out.duplicate(seen);
            let rest = piece.run().slice(seen, u64::MAX);
            out.run(self.dir, self.next, rest);
            self.next += rest.len();
        }
    }

    /// While the hole at `next` is acknowledged by the peer, reports it as a gap (up to the
    /// ACK or the data after the hole) and delivers what follows.
    pub(super) fn settle(&mut self, out: &mut Out<'_>) {
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
            out.gap(self.dir, self.next, upto - self.next, Loss::Capture);
            self.next = upto;
            self.drain(out);
        }
    }

    /// Keeps the buffer under its caps by giving up on the first hole, as often as needed.
    pub(super) fn relieve(&mut self, cfg: &ReassemblyConfig, out: &mut Out<'_>) {
        while self.buffered > cfg.max_buffered_per_direction || self.pending.len() > MAX_PENDING_PIECES {
            if !self.give_up_hole(Loss::BufferLimit, out) {
                break;
            }
            bump(&mut out.stats.buffer_overflows, 1);
        }
    }

    /// Reports the first hole as a gap for `loss` and delivers the held data after it;
    /// false if nothing is held.
    pub(super) fn give_up_hole(&mut self, loss: Loss, out: &mut Out<'_>) -> bool {
        let Some(&at) = self.pending.keys().next() else { return false };
        out.gap(self.dir, self.next, at.saturating_sub(self.next), loss);
        self.next = self.next.max(at);
        self.drain(out);
        true
    }

    /// Gives up on every hole (for `loss`): delivers all held data, with gaps between,
    /// then a gap up to the known end of the stream (FIN, or else the peer's highest ACK).
    pub(super) fn flush(&mut self, loss: Loss, out: &mut Out<'_>) {
        self.drain(out);
        while self.give_up_hole(loss, out) {}
        let end = self.fin.unwrap_or(self.acked);
        if end > self.next {
            out.gap(self.dir, self.next, end - self.next, loss);
            self.next = end;
        }
    }
}
