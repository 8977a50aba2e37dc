//! The driver: the loop that moves segments from a source through the pipeline to the
//! outputs, for live capture ([`live`]) and for a file ([`replay`]).
//!
//! All of a live run's I/O is passed in ([`LiveIo`]): the source of segments (the
//! kernel's ring buffer, or a test's script), the clock, the screen (a terminal backend
//! and its key stream; none when headless), what stops the run (signals), and the output
//! sinks. The binary wires the real ones; tests drive pause, quit, reset, log rate
//! limiting and metrics with fakes, without root.

mod outputs;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use crossterm::event::Event;
use futures_util::Stream;
use ratatui::backend::Backend;
use serde_json::{Map, Value};
use tokio::time::Instant;
use ws_monitor_common::Counter;

pub use outputs::{check_streams, Outputs};
use outputs::{report, Live};

use crate::cli::RunArgs;
use crate::engine::EngineConfig;
use crate::outputs::dashboard::{Control, Dashboard, Screen};
use crate::outputs::report::CaptureReport;
use crate::pipeline::{self, Pipeline};
use crate::reassembly::ReassemblyConfig;
use crate::sources::capture::{self, KernelCounters, LinkEvent};
use crate::sources::{replay as pcap, Delivery, Source};

/// The pipeline's settings from the command line, checked (before anything is attached).
pub struct Setup {
    workers: usize,
    reassembly: ReassemblyConfig,
    engine: EngineConfig,
    streams_dir: Option<std::path::PathBuf>,
    lossless: bool,
}

/// `--memory-limit` when not given: 256 MiB, or an eighth of the machine's memory if
/// that is less (`/proc/meminfo`; 256 MiB where it cannot be read).
fn default_memory_limit() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim().parse::<usize>().ok()
    });
    let eighth = total_kib.map_or(usize::MAX, |kib| kib.saturating_mul(1024) / 8);
    eighth.min(256 << 20)
}

impl Setup {
    /// `steer`: the capture copies frame headers only and takes hints; `lossless`: the
    /// driver waits for the workers instead of dropping (replay).
    pub fn new(args: &RunArgs, steer: bool, lossless: bool) -> anyhow::Result<Setup> {
        if args.workers > pipeline::MAX_WORKERS {
            bail!("--workers {}: at most {} (0 = one per CPU)", args.workers, pipeline::MAX_WORKERS);
        }
        Ok(Setup {
            workers: if args.workers == 0 { pipeline::default_workers() } else { args.workers },
            reassembly: ReassemblyConfig {
                max_flows: args.max_flows.max(1),
                max_buffered_per_direction: usize::try_from(args.flow_buffer).unwrap_or(usize::MAX),
                idle_timeout_ns: secs_to_ns(args.idle_timeout),
                max_half_open: args.max_half_open.max(1),
                memory_limit: args
                    .memory_limit
                    .map_or_else(default_memory_limit, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            },
            engine: EngineConfig {
                max_frame_size: args.max_frame_size,
                max_message_size: args.max_message_size,
                max_inflate_rate: args.max_inflate_rate,
                steer,
                max_findings_per_second: args.max_findings_per_second,
                // Records pair the two hops of a session through a proxy, log or not.
                connection_log: true,
            },
            streams_dir: args.streams_dir.clone(),
            lossless,
        })
    }

    /// Starts the worker threads.
    pub fn start(&self) -> anyhow::Result<Pipeline> {
        Pipeline::start(self.workers, self.reassembly, self.engine, self.streams_dir.as_deref(), self.lossless)
    }
}

fn secs_to_ns(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9) as u64
}

/// The capture's clock.
pub trait Clock {
    /// Now, on the clock the source stamps its records with (live: CLOCK_MONOTONIC).
    fn now_ns(&self) -> u64;
    /// Add to a time of that clock for nanoseconds since the Unix epoch.
    fn epoch_offset_ns(&self) -> i128;
}

/// CLOCK_MONOTONIC, which the kernel program stamps records with.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        crate::sources::capture::liveness::monotonic_ns()
    }

    fn epoch_offset_ns(&self) -> i128 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        let realtime = (ts.tv_sec as i128) * 1_000_000_000 + ts.tv_nsec as i128;
        realtime - self.now_ns() as i128
    }
}

/// Why the live loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C, SIGTERM, `q`, or `--duration` over.
    Asked,
    /// An interface named on the command line went away, and the programs with it.
    LinkGone(String),
}

/// Everything a live run reads from and writes to, besides the command line.
pub struct LiveIo<S, C, B: Backend, K, F> {
    /// Where segments come from.
    pub source: S,
    pub clock: C,
    /// The dashboard's screen; none: headless (log lines).
    pub screen: Option<Screen<B, K>>,
    /// Resolves when the run must stop (Ctrl-C, SIGTERM).
    pub stop: F,
    pub outputs: Outputs,
}

/// What a live run is of: for the dashboard's header and the report.
pub struct Watched<'a> {
    /// The interfaces, as the dashboard's header names them.
    pub label: &'a str,
    pub ports: &'a [u16],
}

/// How a run ended.
pub struct Ended {
    pub stop: Stop,
    /// The JSON report, with `--json`.
    pub report: Option<Value>,
    /// Writes `--streams-dir` could not make ([`check_streams`]: an error after the
    /// report).
    pub stream_errors: u64,
}

/// Runs `pipeline` (started with [`Setup::start`]) live until `io.stop`, `q`,
/// `--duration`, or a named interface going away; then reads what is left in the source,
/// drops it (detaching a real capture), finishes the pipeline and makes the report.
/// `extra` adds to the report at the end.
pub async fn live<S, C, B, K, F>(
    io: LiveIo<S, C, B, K, F>,
    mut pipeline: Pipeline,
    run: &RunArgs,
    watched: Watched<'_>,
    extra: impl FnOnce(&mut Map<String, Value>),
) -> anyhow::Result<Ended>
where
    S: Source,
    C: Clock,
    B: Backend,
    K: Stream<Item = std::io::Result<Event>> + Unpin,
    F: Future<Output = ()>,
{
    let LiveIo { mut source, clock, screen, stop, mut outputs } = io;
    if let Some(metrics) = outputs.metrics.as_mut() {
        metrics.serve()?;
    }
    if let Some(log) = outputs.connections.as_mut() {
        log.name_interfaces(source.interface_names());
    }
    let mut live = match screen {
        Some(screen) => {
            let mut dashboard = Dashboard::new(watched.label, watched.ports, clock.now_ns());
            dashboard.set_epoch_offset(clock.epoch_offset_ns());
            Some(Live { dashboard, screen })
        }
        None => None,
    };

    let mut bad_records = 0u64;
    let deadline = run.duration.map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    // The kernel wakes us only once enough is waiting (see capture::DRAIN_INTERVAL).
    let mut poll = tokio::time::interval(capture::DRAIN_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);

    // Set when a drain stopped at DRAIN_BATCH: the next batch competes with the other
    // branches instead of running ahead of them. While the workers are congested, the
    // records wait in the ring and a short timer tries again.
    let mut more = false;
    let result: anyhow::Result<Stop> = loop {
        let mut drain =
            |source: &mut S, pipeline: &mut Pipeline, outputs: &mut Outputs, live: &mut Option<Live<B, K>>| {
                let dashboard = live.as_mut().map(|l| &mut l.dashboard);
                drain_into(source, pipeline, outputs, dashboard, &mut bad_records)
            };
        tokio::select! {
            ready = source.readable(), if !more => {
                if let Err(e) = ready {
                    break Err(anyhow::Error::new(e).context("waiting on the ring buffer"));
                }
                more = drain(&mut source, &mut pipeline, &mut outputs, &mut live);
            }
            // Through the runtime (not `ready()`): its timers and I/O are polled meanwhile.
            _ = tokio::task::yield_now(), if more => {
                more = drain(&mut source, &mut pipeline, &mut outputs, &mut live);
            }
            _ = poll.tick() => {
                more = drain(&mut source, &mut pipeline, &mut outputs, &mut live);
            }
            // The workers were full: try again soon (they free up within a millisecond or
            // so), without spinning on the CPU they need.
            _ = tokio::time::sleep(Duration::from_millis(1)), if pipeline.congested() => {
                more = drain(&mut source, &mut pipeline, &mut outputs, &mut live);
            }
            _ = &mut stop => break Ok(Stop::Asked),
            _ = sleep_until(deadline) => break Ok(Stop::Asked),
            key = next_key(&mut live) => {
                if matches!(key, Control::Quit) {
                    break Ok(Stop::Asked);
                }
                if let Some(Err(e)) = live.as_mut().map(Live::draw) {
                    break Err(e);
                }
            }
            _ = redraw.tick() => {
                if let Some(Err(e)) = live.as_mut().map(Live::draw) {
                    break Err(e);
                }
            }
            _ = tick.tick() => {
                if let Some(gone) = links(&mut source, &mut outputs) {
                    break Ok(Stop::LinkGone(gone));
                }
                let now = clock.now_ns();
                pipeline.tick(now, live.is_some());
                outputs.findings(&mut pipeline, live.as_mut().map(|l| &mut l.dashboard));
                match source.counters() {
                    Ok(counters) => {
                        let capture = capture_report(&counters, pipeline.totals());
                        outputs.tick(now, pipeline.totals(), &capture, live.as_mut().map(|l| &mut l.dashboard));
                    }
                    Err(e) => break Err(e),
                }
            }
        }
    };
    // Give the terminal back before anything else is printed.
    drop(live);
    let stop = result?;

    // Read what is still in the source (at most what it holds, so that traffic going on
    // cannot keep us here), then drop it (a real capture detaches) before the final
    // accounting.
    for _ in 0..source.capacity().div_ceil(capture::DRAIN_BATCH) {
        if !source.drain(capture::DRAIN_BATCH, |d| deliver(&mut pipeline, d, &mut bad_records)) {
            break;
        }
        pipeline.flush();
        pipeline.pump();
    }
    let counters = source.counters()?;
    let mut out = source.report(&counters);
    drop(source);
    pipeline.finish(clock.now_ns(), |p| outputs.findings(p, None));
    outputs.findings(&mut pipeline, None);
    let findings_dropped = pipeline.findings_dropped();
    if findings_dropped > 0 {
        tracing::warn!(
            "{findings_dropped} findings were dropped: the outputs fell behind the workers (counted in every total)"
        );
    }
    if bad_records > 0 {
        tracing::warn!("{bad_records} malformed ring-buffer records were dropped");
    }

    let totals = pipeline.totals();
    let capture = capture_report(&counters, totals);
    outputs.tick(clock.now_ns(), totals, &capture, None);
    outputs.summary(totals, &capture);
    out.insert(
        "pipeline".into(),
        serde_json::json!({"workers": pipeline.workers(), "findings_dropped": findings_dropped, "hints_dropped": pipeline.hints_dropped()}),
    );
    out.insert("bad_records".into(), bad_records.into());
    extra(&mut out);
    let report = report(totals, run, watched.ports, &capture, out)?;
    Ok(Ended { stop, report, stream_errors: totals.stream_errors })
}

/// Waits for a key on the dashboard's screen (forever without one).
async fn next_key<B: Backend, K: Stream<Item = std::io::Result<Event>> + Unpin>(
    live: &mut Option<Live<B, K>>,
) -> Control {
    match live.as_mut() {
        Some(live) => live.next_key().await,
        None => std::future::pending().await,
    }
}

/// Logs what changed on the interfaces; the name of one named on the command line that
/// went away, if any.
fn links(source: &mut impl Source, outputs: &mut Outputs) -> Option<String> {
    let events = source.watch();
    if let Some(LinkEvent::Gone(name)) = events.iter().find(|e| matches!(e, LinkEvent::Gone(_))) {
        return Some(name.clone());
    }
    for event in &events {
        match event {
            LinkEvent::Down(name) => {
                tracing::warn!("{name} went down: nothing is captured there until it is up again")
            }
            LinkEvent::Up(name) => tracing::info!("{name} is up again"),
            LinkEvent::Left(name) => tracing::info!("{name} disappeared; capture goes on on the others"),
            LinkEvent::Added(name) => tracing::info!("{name} came up: capturing on it too"),
            LinkEvent::Skipped(name, why) => tracing::warn!("left {name} out: {why}"),
            LinkEvent::Gone(_) => {}
        }
    }
    if events.iter().any(|e| matches!(e, LinkEvent::Added(_))) {
        if let Some(log) = outputs.connections.as_mut() {
            log.name_interfaces(source.interface_names());
        }
    }
    None
}

fn deliver(pipeline: &mut Pipeline, delivery: Delivery<'_>, bad_records: &mut u64) {
    match delivery {
        Delivery::Segment(seg) => pipeline.segment(&seg),
        Delivery::Lost(seg) => pipeline.lost(&seg),
        Delivery::Bad => *bad_records += 1,
    }
}

/// One batch from the source to the workers (none while they are congested), then hints
/// and findings; true if the source may hold more and the workers can take it.
fn drain_into(
    source: &mut impl Source,
    pipeline: &mut Pipeline,
    outputs: &mut Outputs,
    dashboard: Option<&mut Dashboard>,
    bad_records: &mut u64,
) -> bool {
    pipeline.pump();
    let more = !pipeline.congested() && source.drain(capture::DRAIN_BATCH, |d| deliver(pipeline, d, bad_records));
    pipeline.flush();
    pipeline.steer(source);
    outputs.findings(pipeline, dashboard);
    more && !pipeline.congested()
}

fn capture_report(counters: &KernelCounters, totals: &pipeline::Totals) -> CaptureReport {
    CaptureReport::new(
        counters.get(Counter::PacketsMatched),
        counters.get(Counter::RingFullRecords),
        &totals.reassembly,
    )
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Replays `file` for the server `ports` through the pipeline to `outputs`; the report
/// (with `--json`) at the end.
pub fn replay(file: &std::path::Path, ports: &[u16], run: &RunArgs, mut outputs: Outputs) -> anyhow::Result<Ended> {
    let mut pipeline = Setup::new(run, false, true)?.start()?;
    const TICK_NS: u64 = 1_000_000_000;
    let (mut last_tick, mut last_ts) = (0u64, 0u64);
    let mut since_findings = 0u32;
    let stats = pcap::replay(file, ports, |seg| {
        pipeline.segment(seg);
        last_ts = last_ts.max(seg.ts_ns);
        if last_ts >= last_tick.saturating_add(TICK_NS) {
            pipeline.tick(last_ts, false);
            last_tick = last_ts;
        }
        since_findings += 1;
        if since_findings >= 1024 {
            since_findings = 0;
            outputs.findings(&mut pipeline, None);
        }
    })?;
    pipeline.finish(last_ts, |p| outputs.findings(p, None));
    outputs.findings(&mut pipeline, None);
    if stats.truncated_file {
        tracing::warn!("{} ends in the middle of a record; the rest was not read", file.display());
    }
    let totals = pipeline.totals();
    let capture = CaptureReport::new(stats.matched, 0, &totals.reassembly);
    outputs.summary(totals, &capture);
    let mut extra = Map::new();
    extra.insert("replay".into(), serde_json::to_value(&stats)?);
    let report = report(totals, run, ports, &capture, extra)?;
    Ok(Ended { stop: Stop::Asked, report, stream_errors: totals.stream_errors })
}
