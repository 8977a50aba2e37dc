//! The multi-core pipeline shared by live capture and replay: segments are sharded by
//! connection onto `N` worker threads, each with its own [`Monitor`] (reassembly +
//! engine); findings come back through a bounded channel that counts what it drops, and
//! the driver (one thread: capture or pcap reading, then dashboard, logs, metrics,
//! events) reads merged totals from the snapshot the workers send at every tick.
//!
//! A connection's segments always go to the same worker, in order, so each worker sees
//! exactly what a single monitor would see of its connections; totals are sums, so the
//! report does not depend on the number of workers. The channels to the workers are
//! bounded. In replay (`lossless`) a driver that outruns them waits. Live, it never
//! waits (ticks, keys and redraws share its thread): work a worker has no room for is
//! held back, [`Pipeline::congested`] says so, and the driver leaves the records in the
//! kernel's ring until [`Pipeline::pump`] has handed the backlog on. Workers run a
//! little nicer than the driver, which keeps the dashboard, the counter lines and the
//! ring going when CPUs are short. Live, a worker whose findings the driver does not take in time drops them and counts
//! them; in replay (`lossless`) nothing is dropped (the driver takes findings as it goes).

pub mod monitor;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;

use crate::diagnosis::proxy::{Hops, ProxyStats};
use crate::engine::{BlindSpots, ConnectionRecord, ConnectionView, EngineConfig, EngineStats, Finding, Hint};
use crate::flow::{Direction, FlowId, FlowKey, Segment, TcpFlags};
use crate::outputs::streams::StreamDump;
use crate::pipeline::monitor::Monitor;
use crate::reassembly::{ReassemblyConfig, ReassemblyStats};
use crate::sources::Source;

/// Segments per batch sent to a worker.
const BATCH_SEGMENTS: usize = 1024;
/// Payload bytes per batch sent to a worker.
const BATCH_BYTES: usize = 1 << 20;
/// Batches queued per worker; beyond it the driver waits (replay) or holds work back
/// (live).
const QUEUE: usize = 16;
/// Batches of findings waiting for the driver before workers drop (and count) new ones.
const FINDINGS_QUEUE: usize = 1024;
/// Hints waiting for the driver before workers drop (and count) new ones.
const HINTS_QUEUE: usize = 4096;
/// Snapshots waiting for the driver; a worker skips sending one that does not fit (a
/// newer one follows at the next tick), except its last, which it waits to send.
const SNAPSHOTS_QUEUE: usize = 4;
/// Connections a worker closes at a time at the end of capture before sending their
/// findings and records on.
const FINISH_BATCH: usize = 1024;
/// How long the driver waits for a worker's records at a time while the workers finish.
const FINISH_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// One segment of a batch, its payload in the batch's arena.
#[derive(Clone, Copy)]
struct Meta {
    key: FlowKey,
    dir: Direction,
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    skip: u32,
    ts_ns: u64,
    iface: u32,
    start: usize,
    len: usize,
    /// A loss note ([`Monitor::lost`]), not a segment.
    lost: bool,
}

struct Batch {
    metas: Vec<Meta>,
    data: Vec<u8>,
}

enum Work {
    Segments(Batch),
    /// Housekeeping at this time; answer with a snapshot (with connections if asked).
    Tick {
        now_ns: u64,
        connections: bool,
    },
    /// Capture ended: flush everything, answer with a last snapshot, and stop.
    Finish {
        now_ns: u64,
    },
}

/// What a worker reports at a tick.
#[derive(Default)]
struct Snapshot {
    engine: EngineStats,
    reassembly: ReassemblyStats,
    open_flows: usize,
    stream_errors: u64,
    connections: Vec<(FlowId, ConnectionView)>,
    /// In the last snapshot only.
    blind_spots: BlindSpots,
}

struct Worker {
    tx: SyncSender<Work>,
    snapshots: Receiver<Snapshot>,
    /// Batches the worker is done with, to be filled again (no allocation per batch).
    spent: Receiver<Batch>,
    /// Work held back because the worker's queue was full (live only).
    backlog: std::collections::VecDeque<Work>,
    /// The latest snapshot it sent.
    last: Snapshot,
    handle: Option<JoinHandle<()>>,
    batch: Batch,
}

impl Batch {
    fn new() -> Batch {
        Batch { metas: Vec::with_capacity(BATCH_SEGMENTS), data: Vec::with_capacity(BATCH_BYTES + (64 << 10)) }
    }
}

/// Everything the workers report, merged.
#[derive(Default)]
pub struct Totals {
    pub engine: EngineStats,
    pub reassembly: ReassemblyStats,
    pub open_flows: usize,
    /// Failed writes of `--streams-dir`.
    pub stream_errors: u64,
    pub connections: Vec<(FlowId, ConnectionView)>,
    /// Closed connections with unanalysed bytes, the worst of them (once capture ended).
    pub blind_spots: BlindSpots,
    /// The limits the pipeline runs with (over all workers).
    pub limits: Limits,
    /// Sessions seen through a proxy, and what the proxy changed.
    pub proxy: ProxyStats,
}

/// The limits of a pipeline over all its workers, for the report.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Limits {
    pub memory_limit: usize,
    pub max_flows: usize,
    pub max_half_open: usize,
    pub max_buffered_per_direction: usize,
    pub max_findings_per_second: u32,
}

pub struct Pipeline {
    workers: Vec<Worker>,
    hasher: std::collections::hash_map::RandomState,
    findings: Receiver<Vec<Finding>>,
    records: Receiver<Vec<ConnectionRecord>>,
    /// Pairs the two connections of a session through a proxy, from the records.
    hops: Hops,
    /// Findings not yet drained: what the proxies changed (found while pairing), and
    /// what `finish` took off the channel for a driver that did not drain it.
    held_findings: Vec<Finding>,
    /// Records `finish` took off the channel for a driver that did not drain them.
    held_records: Vec<ConnectionRecord>,
    records_dropped: Arc<AtomicU64>,
    hints: Receiver<(Hint, Option<u32>)>,
    findings_dropped: Arc<AtomicU64>,
    hints_dropped: Arc<AtomicU64>,
    totals: Totals,
    limits: Limits,
    finished: bool,
    lossless: bool,
}

/// Most workers `--workers` takes (each holds a 1 MiB batch and a queue of them).
pub const MAX_WORKERS: usize = 256;

/// How many workers by default: the CPUs this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS)
}

impl Pipeline {
    /// Starts `workers` threads (at least one). Each gets its own stream dump in
    /// `dump_dir` (connections, and so files, are distinct).
    pub fn start(
        workers: usize,
        reassembly: ReassemblyConfig,
        engine: EngineConfig,
        dump_dir: Option<&std::path::Path>,
        lossless: bool,
    ) -> anyhow::Result<Pipeline> {
        let n = workers.max(1);
        let (findings_tx, findings) = Tx::new(lossless);
        let (records_tx, records) = Tx::new(lossless);
        let records_dropped = Arc::new(AtomicU64::new(0));
        let (hints_tx, hints) = mpsc::sync_channel(HINTS_QUEUE);
        let limits = Limits {
            memory_limit: reassembly.memory_limit,
            max_flows: reassembly.max_flows,
            max_half_open: reassembly.max_half_open,
            max_buffered_per_direction: reassembly.max_buffered_per_direction,
            max_findings_per_second: engine.max_findings_per_second,
        };
        let findings_dropped = Arc::new(AtomicU64::new(0));
        let hints_dropped = Arc::new(AtomicU64::new(0));
        // Reassembly's limits are the whole monitor's: each shard holds its part.
        let reassembly = ReassemblyConfig {
            max_flows: reassembly.max_flows.div_ceil(n).max(1),
            max_half_open: reassembly.max_half_open.div_ceil(n).max(1),
            memory_limit: reassembly.memory_limit / n,
            ..reassembly
        };
        // So is the engine's inflate rate: each worker inflates its share per second.
        let engine = EngineConfig { max_inflate_rate: engine.max_inflate_rate.div_ceil(n as u64).max(1), ..engine };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let dump = dump_dir.map(StreamDump::new).transpose()?;
            let monitor = Monitor::with_ids(reassembly, engine, dump, i as u64 + 1, n as u64);
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let (snap_tx, snapshots) = mpsc::sync_channel(SNAPSHOTS_QUEUE);
            let (spent_tx, spent) = mpsc::sync_channel(QUEUE + 1);
            let ctx = WorkerCtx {
                findings: findings_tx.clone(),
                records: records_tx.clone(),
                records_dropped: records_dropped.clone(),
                hints: hints_tx.clone(),
                findings_dropped: findings_dropped.clone(),
                hints_dropped: hints_dropped.clone(),
                snapshots: snap_tx,
                spent: spent_tx,
            };
            let handle = std::thread::Builder::new()
                .name(format!("ws-monitor-worker-{i}"))
                .spawn(move || work(monitor, rx, ctx))
                .context("starting a worker thread")?;
            out.push(Worker {
                tx,
                snapshots,
                spent,
                backlog: Default::default(),
                last: Snapshot::default(),
                handle: Some(handle),
                batch: Batch::new(),
            });
        }
        Ok(Pipeline {
            workers: out,
            hasher: Default::default(),
            findings,
            records,
            hops: Hops::default(),
            held_findings: Vec::new(),
            held_records: Vec::new(),
            records_dropped,
            hints,
            findings_dropped,
            hints_dropped,
            totals: Totals { limits, ..Totals::default() },
            limits,
            finished: false,
            lossless,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Queues one segment for its connection's worker.
    pub fn segment(&mut self, seg: &Segment<'_>) {
        self.push(seg, false);
    }

    /// A segment the capture lost: `seg.skip` payload bytes at `seg.seq`, no data (see
    /// [`crate::reassembly::Reassembler::lost`]).
    pub fn lost(&mut self, seg: &Segment<'_>) {
        self.push(seg, true);
    }

    fn push(&mut self, seg: &Segment<'_>, lost: bool) {
        let shard = if self.workers.len() == 1 {
            0
        } else {
            // Both orientations of a 4-tuple go to one worker: the capture may label the
            // two directions of a connection with keys the other way round.
            (self.hasher.hash_one(seg.key.unordered()) % self.workers.len() as u64) as usize
        };
        let Some(worker) = self.workers.get_mut(shard) else { return };
        let b = &mut worker.batch;
        b.metas.push(Meta {
            key: seg.key,
            dir: seg.dir,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            skip: seg.skip,
            ts_ns: seg.ts_ns,
            iface: seg.iface,
            start: b.data.len(),
            len: seg.data.len(),
            lost,
        });
        b.data.extend_from_slice(seg.data);
        if b.metas.len() >= BATCH_SEGMENTS || b.data.len() >= BATCH_BYTES {
            let next = worker.spent.try_recv().unwrap_or_else(|_| Batch::new());
            let batch = std::mem::replace(&mut worker.batch, next);
            self.send(shard, Work::Segments(batch));
        }
    }

    /// Hands every partly filled batch to its worker.
    pub fn flush(&mut self) {
        for i in 0..self.workers.len() {
            if let Some(w) = self.workers.get_mut(i).filter(|w| !w.batch.metas.is_empty()) {
                let next = w.spent.try_recv().unwrap_or_else(|_| Batch::new());
                let batch = std::mem::replace(&mut w.batch, next);
                self.send(i, Work::Segments(batch));
            }
        }
    }

    /// Gives worker `i` its work: waiting while its queue is full (lossless), or
    /// holding it back (live).
    fn send(&mut self, i: usize, work: Work) {
        let lossless = self.lossless;
        let Some(w) = self.workers.get_mut(i) else { return };
        if lossless {
            // Workers never wait for the driver, so this ends.
            let _ = w.tx.send(work);
            return;
        }
        w.backlog.push_back(work);
        pump_one(w);
    }

    /// Hands held-back work to the workers that have room again.
    pub fn pump(&mut self) {
        for w in &mut self.workers {
            pump_one(w);
        }
    }

    /// Some work is held back: stop feeding the pipeline until [`Pipeline::pump`] clears it.
    pub fn congested(&self) -> bool {
        self.workers.iter().any(|w| !w.backlog.is_empty())
    }

    /// Asks every worker for housekeeping at `now_ns` (idle eviction) and a snapshot
    /// (`connections`: with the view of every open connection, for the dashboard), and
    /// merges the latest snapshots that have come. Never waits: a worker that is behind
    /// answers later, and its previous snapshot counts meanwhile.
    pub fn tick(&mut self, now_ns: u64, connections: bool) {
        self.flush();
        for i in 0..self.workers.len() {
            self.send(i, Work::Tick { now_ns, connections });
        }
        for w in &mut self.workers {
            while let Ok(s) = w.snapshots.try_recv() {
                w.last = s;
            }
        }
        self.merge();
    }

    fn merge(&mut self) {
        let mut totals = Totals { limits: self.limits, proxy: self.hops.stats.clone(), ..Totals::default() };
        for w in &self.workers {
            totals.blind_spots.merge(&w.last.blind_spots);
            totals.engine.add(&w.last.engine);
            totals.reassembly.add(&w.last.reassembly);
            totals.open_flows += w.last.open_flows;
            totals.stream_errors += w.last.stream_errors;
            totals.connections.extend(w.last.connections.iter().cloned());
        }
        totals.connections.sort_unstable_by_key(|(id, _)| *id);
        self.totals = totals;
    }

    /// End of capture: every worker flushes its connections and stops.
    pub fn finish(&mut self, now_ns: u64, mut drain: impl FnMut(&mut Pipeline)) {
        if self.finished {
            return;
        }
        self.flush();
        // The backlog first, then the last word, waiting for room.
        for w in &mut self.workers {
            for held in w.backlog.drain(..) {
                let _ = w.tx.send(held);
            }
            let _ = w.tx.send(Work::Finish { now_ns });
        }
        // Workers close what is still open in batches, each sent on as it is made: the
        // records of every open connection need not all be in memory at once, so they
        // go to the driver (`drain`) while the workers are still at it.
        loop {
            let mut running = false;
            for w in &mut self.workers {
                if w.handle.is_none() {
                    continue;
                }
                // Until the worker is gone (its sender with it): the one sent after
                // Finish is its last snapshot.
                loop {
                    match w.snapshots.try_recv() {
                        Ok(s) => w.last = s,
                        Err(TryRecvError::Empty) => {
                            running = true;
                            break;
                        }
                        Err(TryRecvError::Disconnected) => {
                            if let Some(h) = w.handle.take() {
                                let _ = h.join();
                            }
                            break;
                        }
                    }
                }
            }
            drain(self);
            // Whatever the driver left: held here, so that no worker waits on a full
            // channel while we wait for it.
            let findings: Vec<Finding> = self.findings.try_iter().flatten().collect();
            self.held_findings.extend(findings);
            if !running {
                break;
            }
            if let Ok(records) = self.records.recv_timeout(FINISH_POLL) {
                self.held_records.extend(records);
            }
        }
        self.merge();
        self.finished = true;
    }

    /// Findings since the last call, as the workers sent them.
    pub fn drain_findings(&mut self) -> impl Iterator<Item = Finding> + '_ {
        self.held_findings.drain(..).chain(self.findings.try_iter().flatten())
    }

    /// Records of connections that ended (with `EngineConfig::connection_log`) that the
    /// workers have sent so far; each is also paired with its other hop through a proxy
    /// (what the proxy changed comes with the next findings).
    pub fn drain_records(&mut self) -> Vec<ConnectionRecord> {
        let mut records = std::mem::take(&mut self.held_records);
        records.extend(self.records.try_iter().flatten());
        for r in &records {
            let found = self.hops.record(r);
            self.held_findings.extend(found);
        }
        if !records.is_empty() {
            self.totals.proxy = self.hops.stats.clone();
        }
        records
    }

    /// Connection records the driver did not take in time (live only).
    pub fn records_dropped(&self) -> u64 {
        self.records_dropped.load(Ordering::Relaxed)
    }

    /// Passes the engines' hints to a header-only capture.
    pub fn steer(&mut self, source: &mut impl Source) {
        for (hint, seq) in self.hints.try_iter() {
            source.steer(&hint, seq);
        }
    }

    /// Totals as of the last tick (or the end).
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Findings the workers could not queue (the driver fell behind).
    pub fn findings_dropped(&self) -> u64 {
        self.findings_dropped.load(Ordering::Relaxed)
    }

    /// Hints the workers could not queue.
    pub fn hints_dropped(&self) -> u64 {
        self.hints_dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Dropping a worker's sender ends its loop.
        for Worker { tx, handle, .. } in std::mem::take(&mut self.workers) {
            drop(tx);
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }
}

/// Where a worker sends what the driver writes out (findings, connection records):
/// a bounded channel (live: what does not fit is dropped and counted) or an unbounded
/// one (replay: nothing is dropped).
enum Tx<T> {
    Bounded(SyncSender<Vec<T>>),
    All(mpsc::Sender<Vec<T>>),
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        match self {
            Tx::Bounded(tx) => Tx::Bounded(tx.clone()),
            Tx::All(tx) => Tx::All(tx.clone()),
        }
    }
}

impl<T> Tx<T> {
    /// A channel, unbounded if `lossless`.
    fn new(lossless: bool) -> (Tx<T>, Receiver<Vec<T>>) {
        if lossless {
            let (tx, rx) = mpsc::channel();
            (Tx::All(tx), rx)
        } else {
            let (tx, rx) = mpsc::sync_channel(FINDINGS_QUEUE);
            (Tx::Bounded(tx), rx)
        }
    }

    /// Sends `items` (if any), adding their number to `dropped` if they do not fit; with
    /// `wait`, waits for room in a bounded channel instead.
    fn send(&self, items: Vec<T>, dropped: &AtomicU64, wait: bool) {
        if items.is_empty() {
            return;
        }
        let n = items.len() as u64;
        let sent = match self {
            Tx::Bounded(tx) if wait => tx.send(items).is_ok(),
            Tx::Bounded(tx) => tx.try_send(items).is_ok(),
            Tx::All(tx) => tx.send(items).is_ok(),
        };
        if !sent {
            dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Sends the worker's held-back work while its queue has room.
fn pump_one(w: &mut Worker) {
    while let Some(work) = w.backlog.pop_front() {
        match w.tx.try_send(work) {
            Ok(()) => {}
            Err(TrySendError::Full(back)) => {
                w.backlog.push_front(back);
                return;
            }
            Err(TrySendError::Disconnected(_)) => {
                w.backlog.clear();
                return;
            }
        }
    }
}

struct WorkerCtx {
    findings: Tx<Finding>,
    records: Tx<ConnectionRecord>,
    records_dropped: Arc<AtomicU64>,
    hints: SyncSender<(Hint, Option<u32>)>,
    findings_dropped: Arc<AtomicU64>,
    hints_dropped: Arc<AtomicU64>,
    snapshots: SyncSender<Snapshot>,
    spent: SyncSender<Batch>,
}

impl WorkerCtx {
    /// Sends the monitor's findings, records and hints to the driver, counting what does
    /// not fit; with `wait`, waits for room for findings and records instead (at the end,
    /// while the driver drains in [`Pipeline::finish`]).
    fn forward(&self, monitor: &mut Monitor, wait: bool) {
        self.findings.send(monitor.drain_findings().collect(), &self.findings_dropped, wait);
        self.records.send(monitor.drain_records().collect(), &self.records_dropped, wait);
        for (hint, seq) in monitor.drain_hints() {
            if self.hints.try_send((hint, seq)).is_err() {
                self.hints_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self, monitor: &Monitor, connections: bool, last: bool) {
        let s = Snapshot {
            engine: monitor.engine_stats().clone(),
            reassembly: *monitor.reassembly(),
            open_flows: monitor.open_flows(),
            stream_errors: monitor.stream_errors(),
            connections: if connections {
                monitor.engine().connections().map(|(id, v)| (id, v.clone())).collect()
            } else {
                Vec::new()
            },
            blind_spots: if last { monitor.engine().blind_spots().clone() } else { BlindSpots::default() },
        };
        let _ = if last { self.snapshots.send(s).is_ok() } else { self.snapshots.try_send(s).is_ok() };
    }
}

/// How much nicer than the driver workers run: under a CPU shortage the driver (ticks,
/// keys, redraws, the ring) comes first, and the kernel ring absorbs the difference.
const WORKER_NICENESS: libc::c_int = 3;

fn work(mut monitor: Monitor, rx: Receiver<Work>, ctx: WorkerCtx) {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only lowers
    // this thread's priority (failure leaves it as it is).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, current + WORKER_NICENESS);
    }
    while let Ok(work) = rx.recv() {
        match work {
            Work::Segments(mut batch) => {
                for m in &batch.metas {
                    let data = batch.data.get(m.start..m.start + m.len).unwrap_or(&[]);
                    let seg = Segment {
                        key: m.key,
                        dir: m.dir,
                        seq: m.seq,
                        ack: m.ack,
                        flags: m.flags,
                        data,
                        skip: m.skip,
                        ts_ns: m.ts_ns,
                        iface: m.iface,
                    };
                    if m.lost {
                        monitor.lost(&seg);
                    } else {
                        monitor.segment(&seg);
                    }
                }
                ctx.forward(&mut monitor, false);
                batch.metas.clear();
                batch.data.clear();
                let _ = ctx.spent.try_send(batch);
            }
            Work::Tick { now_ns, connections } => {
                monitor.tick(now_ns);
                ctx.forward(&mut monitor, false);
                ctx.snapshot(&monitor, connections, false);
            }
            Work::Finish { now_ns } => {
                // In batches, each sent on at once (waiting for room: the driver drains
                // while it waits for us), so that the records of every connection still
                // open are never all in memory together.
                while !monitor.finish_some(now_ns, FINISH_BATCH) {
                    ctx.forward(&mut monitor, true);
                }
                ctx.forward(&mut monitor, true);
                ctx.snapshot(&monitor, false, true);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::engine::{Ending, Kind};
    use crate::flow::key_for;
    use crate::testkit::scenario::Tcp;
    use crate::testkit::{Frame, Head, RFC_KEY};

    /// Connection `i`: an upgrade, then `frames` unmasked client frames (a protocol
    /// violation each: clients must mask) and a close each way.
    fn connection(i: u16, frames: usize, f: &mut dyn FnMut(&Segment<'_>)) {
        session(i, &Frame::text("hi").encode(), frames, f);
    }

    /// Connection `i`: an upgrade, then `frames` copies of the client frame `frame`.
    fn session(i: u16, frame: &[u8], frames: usize, f: &mut dyn FnMut(&Segment<'_>)) {
        let client = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000 + i));
        let server = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 8001));
        let mut tcp = Tcp::new(client, server, 100, 900);
        let resp = Head::switching_protocols(RFC_KEY).encode();
        let mut c = Head::upgrade_request("/", "x", RFC_KEY).encode();
        for _ in 0..frames {
            c.extend(frame);
        }
        tcp.open(f);
        tcp.send(Direction::ToClient, &resp, f);
        tcp.send(Direction::ToServer, &c, f);
    }

    fn run(workers: usize, lossless: bool, conns: u16, frames: usize) -> (Pipeline, Vec<Finding>) {
        let mut p = Pipeline::start(workers, ReassemblyConfig::default(), EngineConfig::default(), None, lossless)
            .expect("workers start");
        let mut found = Vec::new();
        for i in 0..conns {
            connection(i, frames, &mut |s| p.segment(s));
            found.extend(p.drain_findings());
        }
        // Snapshots come when the workers get to them.
        for _ in 0..500 {
            p.tick(2, true);
            if p.totals().connections.len() == usize::from(conns) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(p.totals().connections.len(), usize::from(conns), "every connection in the snapshot");
        p.finish(3, |_| {});
        found.extend(p.drain_findings());
        (p, found)
    }

    #[test]
    fn a_panic_analysing_one_connection_drops_it_and_the_others_go_on() {
        let mut p =
            Pipeline::start(2, ReassemblyConfig::default(), EngineConfig::default(), None, true).expect("start");
        let fault = crate::engine::tests::FAULT;
        let faulty = Frame::text(fault).encode();
        for i in 0..20 {
            if i == 7 {
                session(i, &faulty, 1, &mut |s| p.segment(s));
            } else {
                connection(i, 3, &mut |s| p.segment(s));
            }
        }
        p.finish(3, |_| {});
        let t = p.totals();
        assert_eq!(t.engine.panics, 1, "the injected fault was hit once");
        assert_eq!(t.reassembly.flows_dropped, 1, "its connection was dropped");
        assert_eq!(t.engine.violation_count(Kind::UnmaskedClientFrame), 19 * 3, "every other connection analysed");
        assert_eq!(t.reassembly.flows_opened, 20);
    }

    /// At the end, the records of the connections still open reach the driver in
    /// batches while the workers close them (not all at once after), and none is dropped
    /// even on a live pipeline's bounded channels.
    #[test]
    fn finish_streams_the_records_of_open_connections_to_the_driver() {
        let engine = EngineConfig { connection_log: true, ..EngineConfig::default() };
        let mut p = Pipeline::start(1, ReassemblyConfig::default(), engine, None, false).expect("workers start");
        let conns = 5000u16;
        for i in 0..conns {
            connection(i, 0, &mut |s| p.segment(s));
            p.pump();
            while p.congested() {
                std::thread::sleep(std::time::Duration::from_millis(1));
                p.pump();
            }
        }
        let mut drains = Vec::new();
        p.finish(3, |p| {
            let n = p.drain_records().len();
            if n > 0 {
                drains.push(n);
            }
        });
        let rest = p.drain_records().len();
        assert_eq!(drains.iter().sum::<usize>() + rest, usize::from(conns), "every record, drained: {drains:?}");
        assert!(drains.len() > 1, "in batches, while the workers finish: {drains:?}");
        assert!(drains.iter().all(|&n| n < usize::from(conns)), "{drains:?}");
        assert_eq!(p.records_dropped(), 0);
        assert_eq!(p.totals().engine.endings[Ending::OpenAtExit.index()], u64::from(conns));
    }

    #[test]
    fn workers_count_and_find_what_one_monitor_does() {
        let mut one = Monitor::new(ReassemblyConfig::default(), EngineConfig::default(), None);
        for i in 0..40 {
            connection(i, 3, &mut |s| one.segment(s));
        }
        one.finish(3);
        let want: Vec<Finding> = one.drain_findings().collect();
        assert_eq!(want.len(), 120);
        for workers in [1, 3] {
            let (p, found) = run(workers, true, 40, 3);
            assert_eq!(p.totals().engine, *one.engine_stats(), "{workers} worker(s)");
            assert_eq!(p.totals().reassembly, *one.reassembly(), "{workers} worker(s)");
            let key = |f: &Finding| (f.key, f.dir, f.kind, f.offset);
            let (mut a, mut b): (Vec<_>, Vec<_>) = (found.iter().map(key).collect(), want.iter().map(key).collect());
            a.sort();
            b.sort();
            assert_eq!(a, b, "{workers} worker(s)");
            // Flow ids stay distinct across workers.
            let mut ids: Vec<FlowId> = found.iter().map(|f| f.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 40);
            assert_eq!(p.findings_dropped(), 0);
        }
    }

    /// Clients on a monitored port: the capture labels both directions "towards the
    /// server", with keys the other way round. They still meet in one worker, each
    /// connection one flow that closes cleanly.
    #[test]
    fn both_labellings_of_a_connection_meet_in_one_worker() {
        let mut p =
            Pipeline::start(3, ReassemblyConfig::default(), EngineConfig::default(), None, true).expect("start");
        let n = 24u16;
        for i in 0..n {
            let a = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 8002 + i));
            let b = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 8001));
            let up = key_for((a.ip(), a.port()), (b.ip(), b.port()), Direction::ToServer);
            let down = key_for((b.ip(), b.port()), (a.ip(), a.port()), Direction::ToServer);
            let seg = |key, seq: u32, ack: u32, syn: bool, fin: bool, data: &[u8], p: &mut Pipeline| {
                let flags = TcpFlags { syn, ack: ack != 0, fin, rst: false };
                p.segment(&Segment {
                    key,
                    dir: Direction::ToServer,
                    seq,
                    ack,
                    flags,
                    data,
                    skip: 0,
                    ts_ns: 1,
                    iface: 0,
                });
            };
            seg(up, 100, 0, true, false, &[], &mut p);
            seg(down, 900, 101, true, false, &[], &mut p);
            seg(up, 101, 901, false, false, b"ping", &mut p);
            seg(down, 901, 105, false, false, b"pong!", &mut p);
            seg(up, 105, 906, false, true, &[], &mut p);
            seg(down, 906, 106, false, true, &[], &mut p);
            seg(up, 106, 907, false, false, &[], &mut p);
        }
        p.finish(3, |_| {});
        let (r, n) = (p.totals().reassembly, u64::from(n));
        assert_eq!((r.flows_opened, r.flows_closed, r.flows_evicted, r.flows_open_at_end), (n, n, 0, 0));
        assert_eq!((r.gaps, r.bytes_lost, r.bytes_client, r.bytes_server), (0, 0, 4 * n, 5 * n));
    }

    #[test]
    fn findings_the_driver_does_not_take_are_dropped_and_counted_live() {
        // 1,500 connections of 300 findings each, never drained until the end: the bounded
        // channel holds FINDINGS_QUEUE batches of findings (no rate limit on findings).
        let engine = EngineConfig { max_findings_per_second: u32::MAX, ..EngineConfig::default() };
        let mut p = Pipeline::start(2, ReassemblyConfig::default(), engine, None, false).expect("start");
        for i in 0..1500 {
            connection(i, 300, &mut |s| p.segment(s));
            p.flush(); // one batch, and so one batch of findings, per connection
        }
        p.finish(3, |_| {});
        let taken = p.drain_findings().count() as u64;
        let total = p.totals().engine.violation_count(Kind::UnmaskedClientFrame);
        assert_eq!(total, 1500 * 300, "totals count every finding");
        assert!(p.findings_dropped() > 0, "the queue overflowed");
        assert_eq!(taken + p.findings_dropped(), total, "every finding is delivered or counted as dropped");
    }
}
