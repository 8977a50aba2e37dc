//! The multi-core pipeline shared by live capture and replay: segments are sharded by
//! connection onto `N` worker threads, each with its own [`Monitor`] (reassembly +
//! engine); findings come back through a bounded channel that counts what it drops, and
//! the driver (one thread: capture or pcap reading, then dashboard, logs, metrics,
//! events) reads merged totals from the snapshot the workers send at every tick.
//!
//! A connection's segments always go to the same worker, in order, so each worker sees
//! exactly what a single monitor would see of its connections; totals are sums, so the
//! report does not depend on the number of workers. The channels to the workers are
//! bounded: a driver that outruns them waits (and the kernel ring, not memory, fills).
//! Live, a worker whose findings the driver does not take in time drops them and counts
//! them; in replay (`lossless`) nothing is dropped (the driver takes findings as it goes).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;

use crate::capture::Capture;
use crate::engine::{ConnectionView, EngineConfig, EngineStats, Finding, Hint};
use crate::flow::{Direction, FlowId, FlowKey, Segment, TcpFlags};
use crate::monitor::Monitor;
use crate::reassembly::{ReassemblyConfig, ReassemblyStats};
use crate::streams::StreamDump;

/// Segments per batch sent to a worker.
const BATCH_SEGMENTS: usize = 1024;
/// Payload bytes per batch sent to a worker.
const BATCH_BYTES: usize = 1 << 20;
/// Batches waiting per worker before the driver blocks.
const QUEUE: usize = 8;
/// Batches of findings waiting for the driver before workers drop (and count) new ones.
const FINDINGS_QUEUE: usize = 1024;
/// Hints waiting for the driver before workers drop (and count) new ones.
const HINTS_QUEUE: usize = 4096;

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
    start: usize,
    len: usize,
}

#[derive(Default)]
struct Batch {
    metas: Vec<Meta>,
    data: Vec<u8>,
}

enum Work {
    Segments(Batch),
    /// Housekeeping at this time; answer with a snapshot (with connections if asked).
    Tick { now_ns: u64, connections: bool },
    /// Capture ended: flush everything, answer with a last snapshot, and stop.
    Finish { now_ns: u64 },
}

/// What a worker reports at a tick.
#[derive(Default)]
struct Snapshot {
    engine: EngineStats,
    reassembly: ReassemblyStats,
    open_flows: usize,
    connections: Vec<(FlowId, ConnectionView)>,
}

struct Worker {
    tx: SyncSender<Work>,
    snapshots: Receiver<Snapshot>,
    /// Batches the worker is done with, to be filled again (no allocation per batch).
    spent: Receiver<Batch>,
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
    pub connections: Vec<(FlowId, ConnectionView)>,
}

pub struct Pipeline {
    workers: Vec<Worker>,
    hasher: std::collections::hash_map::RandomState,
    findings: Receiver<Vec<Finding>>,
    hints: Receiver<(Hint, Option<u32>)>,
    findings_dropped: Arc<AtomicU64>,
    hints_dropped: Arc<AtomicU64>,
    totals: Totals,
    finished: bool,
}

/// How many workers by default: the CPUs this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        let (findings_tx, findings) = if lossless {
            let (tx, rx) = mpsc::channel();
            (FindingsTx::All(tx), rx)
        } else {
            let (tx, rx) = mpsc::sync_channel(FINDINGS_QUEUE);
            (FindingsTx::Bounded(tx), rx)
        };
        let (hints_tx, hints) = mpsc::sync_channel(HINTS_QUEUE);
        let findings_dropped = Arc::new(AtomicU64::new(0));
        let hints_dropped = Arc::new(AtomicU64::new(0));
        // Reassembly's flow-table cap is the whole monitor's: each shard holds its part.
        let reassembly = ReassemblyConfig { max_flows: reassembly.max_flows.div_ceil(n).max(1), ..reassembly };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let dump = dump_dir.map(StreamDump::new).transpose()?;
            let monitor = Monitor::with_ids(reassembly, engine, dump, i as u64 + 1, n as u64);
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let (snap_tx, snapshots) = mpsc::sync_channel(1);
            let (spent_tx, spent) = mpsc::sync_channel(QUEUE + 1);
            let ctx = WorkerCtx {
                findings: findings_tx.clone(),
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
            out.push(Worker { tx, snapshots, spent, handle: Some(handle), batch: Batch::new() });
        }
        Ok(Pipeline {
            workers: out,
            hasher: Default::default(),
            findings,
            hints,
            findings_dropped,
            hints_dropped,
            totals: Totals::default(),
            finished: false,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Queues one segment for its connection's worker.
    pub fn segment(&mut self, seg: &Segment<'_>) {
        let shard = if self.workers.len() == 1 {
            0
        } else {
            let mut h = self.hasher.build_hasher();
            seg.key.hash(&mut h);
            (h.finish() % self.workers.len() as u64) as usize
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
            start: b.data.len(),
            len: seg.data.len(),
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

    /// Gives worker `i` its work, waiting while its queue is full (workers never wait
    /// for the driver, so this ends).
    fn send(&mut self, i: usize, work: Work) {
        if let Some(w) = self.workers.get(i) {
            // A worker only goes away when the pipeline does.
            let _ = w.tx.send(work);
        }
    }

    /// Housekeeping at `now_ns` (idle eviction), then fresh totals; `connections`: also
    /// the view of every open connection (for the dashboard).
    pub fn tick(&mut self, now_ns: u64, connections: bool) {
        self.round(|| Work::Tick { now_ns, connections }, |_| {});
    }

    /// End of capture: every worker flushes its connections and stops.
    pub fn finish(&mut self, now_ns: u64) {
        if self.finished {
            return;
        }
        self.round(|| Work::Finish { now_ns }, |w| {
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        });
        self.finished = true;
    }

    /// Sends `work` to every worker (after what is queued), and merges their answers.
    fn round(&mut self, work: impl Fn() -> Work, mut after: impl FnMut(&mut Worker)) {
        self.flush();
        for i in 0..self.workers.len() {
            self.send(i, work());
        }
        let mut totals = Totals::default();
        for w in &mut self.workers {
            if let Ok(s) = w.snapshots.recv() {
                totals.engine.add(&s.engine);
                totals.reassembly.add(&s.reassembly);
                totals.open_flows += s.open_flows;
                totals.connections.extend(s.connections);
            }
            after(w);
        }
        totals.connections.sort_unstable_by_key(|(id, _)| *id);
        self.totals = totals;
    }

    /// Findings since the last call, as the workers sent them.
    pub fn drain_findings(&mut self) -> impl Iterator<Item = Finding> + '_ {
        self.findings.try_iter().flatten()
    }

    /// Passes the engines' hints to a header-only capture.
    pub fn steer(&mut self, capture: &mut Capture) {
        for (hint, seq) in self.hints.try_iter() {
            capture.steer(&hint, seq);
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
        // Dropping the senders ends the workers' loops.
        for w in &mut self.workers {
            let (tx, _) = mpsc::sync_channel(0);
            drop(std::mem::replace(&mut w.tx, tx));
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// Where a worker's findings go: a bounded channel that drops what does not fit (live),
/// or one that takes everything (replay).
#[derive(Clone)]
enum FindingsTx {
    Bounded(SyncSender<Vec<Finding>>),
    All(mpsc::Sender<Vec<Finding>>),
}

struct WorkerCtx {
    findings: FindingsTx,
    hints: SyncSender<(Hint, Option<u32>)>,
    findings_dropped: Arc<AtomicU64>,
    hints_dropped: Arc<AtomicU64>,
    snapshots: SyncSender<Snapshot>,
    spent: SyncSender<Batch>,
}

impl WorkerCtx {
    /// Sends the monitor's findings and hints to the driver, counting what does not fit.
    fn forward(&self, monitor: &mut Monitor) {
        let found: Vec<Finding> = monitor.drain_findings().collect();
        if !found.is_empty() {
            let n = found.len() as u64;
            let sent = match &self.findings {
                FindingsTx::Bounded(tx) => tx.try_send(found).is_ok(),
                FindingsTx::All(tx) => tx.send(found).is_ok(),
            };
            if !sent {
                self.findings_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        for (hint, seq) in monitor.drain_hints() {
            if self.hints.try_send((hint, seq)).is_err() {
                self.hints_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self, monitor: &Monitor, connections: bool) {
        let s = Snapshot {
            engine: monitor.engine_stats().clone(),
            reassembly: *monitor.reassembly(),
            open_flows: monitor.open_flows(),
            connections: if connections {
                monitor.engine().connections().map(|(id, v)| (id, v.clone())).collect()
            } else {
                Vec::new()
            },
        };
        let _ = self.snapshots.send(s);
    }
}

fn work(mut monitor: Monitor, rx: Receiver<Work>, ctx: WorkerCtx) {
    while let Ok(work) = rx.recv() {
        match work {
            Work::Segments(mut batch) => {
                for m in &batch.metas {
                    let data = batch.data.get(m.start..m.start + m.len).unwrap_or(&[]);
                    monitor.segment(&Segment {
                        key: m.key,
                        dir: m.dir,
                        seq: m.seq,
                        ack: m.ack,
                        flags: m.flags,
                        data,
                        skip: m.skip,
                        ts_ns: m.ts_ns,
                    });
                }
                ctx.forward(&mut monitor);
                batch.metas.clear();
                batch.data.clear();
                let _ = ctx.spent.try_send(batch);
            }
            Work::Tick { now_ns, connections } => {
                monitor.tick(now_ns);
                ctx.forward(&mut monitor);
                ctx.snapshot(&monitor, connections);
            }
            Work::Finish { now_ns } => {
                monitor.finish(now_ns);
                ctx.forward(&mut monitor);
                ctx.snapshot(&monitor, false);
                return;
            }
        }
    }
}
