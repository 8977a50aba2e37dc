use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser as _};
use futures_util::StreamExt as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use ws_monitor::cli::{Cli, Command, DemoArgs, PrivilegeArgs, ReplayArgs, RunArgs};
use ws_monitor::demo::{Demo, DemoConfig};
use ws_monitor::engine::EngineConfig;
use ws_monitor::outputs::connections::ConnectionLog;
use ws_monitor::outputs::dashboard::{CaptureHealth, Control, Dashboard, TerminalSession};
use ws_monitor::outputs::events::EventLog;
use ws_monitor::outputs::logs::{self, HeadlessLog, Totals};
use ws_monitor::outputs::metrics::Exporter;
use ws_monitor::outputs::report::{self, CaptureReport};
use ws_monitor::pipeline::{self, Pipeline};
use ws_monitor::reassembly::ReassemblyConfig;
use ws_monitor::sources::capture::liveness::monotonic_ns;
use ws_monitor::sources::capture::{self, Capture, CaptureConfig, Interfaces, LinkEvent, LinkState};
use ws_monitor::sources::replay;
use ws_monitor_common::Counter;

fn main() -> ExitCode {
    // A panic analysing one connection is caught and logged by the monitor; the hook
    // stays quiet for those.
    ws_monitor::pipeline::monitor::quiet_contained_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Some(Command::Replay(args)) => replay_file(&args),
        Some(Command::Demo(args)) => runtime().and_then(|rt| rt.block_on(run_demo(&args))),
        Some(Command::Detach { iface }) => capture::detach(&iface).map(|said| eprintln!("ws-monitor: {said}")),
        Some(Command::Man) => print_man(),
        Some(Command::NullProgram { iface }) => runtime().and_then(|rt| rt.block_on(null_program(&iface))),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "ws-monitor", &mut std::io::stdout());
            Ok(())
        }
        None => Interfaces::from_args(&cli.iface).and_then(|interfaces| {
            let config = CaptureConfig {
                interfaces,
                ports: cli.ports,
                ring_size: cli.ring_size,
                attach: cli.attach,
                header_only: !cli.full_payload && cli.run.streams_dir.is_none(),
            };
            runtime().and_then(|rt| rt.block_on(live(&config, &cli.run, &cli.privileges, Live::default())))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws-monitor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

fn print_man() -> anyhow::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).context("writing the man page")
}

/// Help and version go to stdout as usual; a usage error becomes one line on stderr.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("ws-monitor: error: {message} (see ws-monitor --help)");
    ExitCode::from(2)
}

/// The pipeline's settings from the command line, checked (before anything is attached).
struct PipelineSetup {
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

impl PipelineSetup {
    fn new(args: &RunArgs, steer: bool, lossless: bool) -> anyhow::Result<PipelineSetup> {
        if args.workers > pipeline::MAX_WORKERS {
            bail!("--workers {}: at most {} (0 = one per CPU)", args.workers, pipeline::MAX_WORKERS);
        }
        Ok(PipelineSetup {
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
    fn start(&self) -> anyhow::Result<Pipeline> {
        Pipeline::start(self.workers, self.reassembly, self.engine, self.streams_dir.as_deref(), self.lossless)
    }
}

fn secs_to_ns(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9) as u64
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Where findings and counters go besides the final report.
#[derive(Default)]
struct Outputs {
    events: Option<EventLog>,
    connections: Option<ConnectionLog>,
    log: Option<HeadlessLog>,
    metrics: Option<Exporter>,
    /// The live dashboard and the terminal it owns (restored when dropped).
    dashboard: Option<(Dashboard, TerminalSession)>,
}

impl Outputs {
    fn new(args: &RunArgs, epoch_offset_ns: i128, headless: bool) -> anyhow::Result<Outputs> {
        Ok(Outputs {
            events: args
                .events
                .as_deref()
                .map(|p| EventLog::create(p, epoch_offset_ns, args.log_payload))
                .transpose()?,
            connections: args
                .connections
                .as_deref()
                .map(|p| ConnectionLog::create(p, epoch_offset_ns, args.log_payload))
                .transpose()?,
            log: headless.then(|| HeadlessLog::new(args.log_interval, args.log_payload)),
            metrics: None,
            dashboard: None,
        })
    }

    /// Sends the findings and connection records the workers have produced since the
    /// last call.
    fn findings(&mut self, pipeline: &mut Pipeline) {
        for record in pipeline.drain_records() {
            if let Some(log) = self.connections.as_mut() {
                log.write(&record);
            }
        }
        for finding in pipeline.drain_findings() {
            if let Some(events) = self.events.as_mut() {
                events.write(&finding);
            }
            if let Some(log) = self.log.as_mut() {
                log.finding(&finding);
            }
            if let Some((dashboard, _)) = self.dashboard.as_mut() {
                dashboard.on_finding(&finding);
            }
        }
    }

    /// Waits for a key on the dashboard's terminal (forever without a dashboard).
    async fn next_key(&mut self) -> Control {
        let Some((dashboard, session)) = self.dashboard.as_mut() else {
            return std::future::pending().await;
        };
        match session.events().next().await {
            // Keys act; a resize and the like only need the redraw that follows.
            Some(Ok(event)) => dashboard.on_event(&event),
            // The terminal went away: stop rather than spin.
            Some(Err(_)) | None => Control::Quit,
        }
    }

    fn draw(&mut self) -> anyhow::Result<()> {
        match self.dashboard.as_mut() {
            Some((dashboard, session)) => session.draw(dashboard),
            None => Ok(()),
        }
    }

    /// About once a second: periodic log line, metrics.
    fn tick(&mut self, now_ns: u64, totals: &pipeline::Totals, capture: &CaptureReport) {
        if let Some(log) = self.log.as_mut() {
            log.tick(now_ns, || Totals::new(capture, &totals.engine, totals.open_flows));
        }
        if let Some(metrics) = &self.metrics {
            metrics.update(&totals.engine, &totals.reassembly, capture, totals.open_flows);
        }
        if let Some((dashboard, _)) = self.dashboard.as_mut() {
            let health = CaptureHealth {
                packets: capture.packets,
                bytes_delivered: capture.bytes_client + capture.bytes_server,
                bytes_lost: capture.bytes_lost,
                gaps: capture.gaps,
                ring_drops: capture.ring_drops,
            };
            dashboard.on_proxy(&totals.proxy);
            // Sessions open on both hops of a proxy count as soon as both handshakes are in.
            let open = ws_monitor::diagnosis::proxy::live_pairs(totals.connections.iter().map(|(id, v)| (*id, v)));
            dashboard.on_diagnosis(ws_monitor::diagnosis::diagnose(
                &totals.engine,
                &totals.reassembly,
                &totals.proxy.with_open(&open),
                capture.ring_drops,
            ));
            dashboard.on_tick(now_ns, health, &totals.engine, totals.connections.iter().map(|(id, v)| (*id, v)));
        }
        if let Some(events) = self.events.as_mut() {
            events.flush();
        }
        if let Some(log) = self.connections.as_mut() {
            log.flush();
        }
    }
}

/// Hooks for a live run started by `demo`.
#[derive(Default)]
struct Live<'a> {
    /// Traffic to start once the program is attached, and to stop at the end.
    demo: Option<&'a Demo>,
}

async fn live(
    config: &CaptureConfig,
    args: &RunArgs,
    privileges: &PrivilegeArgs,
    hooks: Live<'_>,
) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once we are attached must detach cleanly.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let setup = PipelineSetup::new(args, config.header_only, false)?;
    let epoch_offset = clock_ns(libc::CLOCK_REALTIME) as i128 - monotonic_ns() as i128;
    // The dashboard is the default on a terminal; otherwise log lines.
    let tui = !args.no_tui && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if !tui {
        logs::init(args.log_format)?;
    }
    let mut outputs = Outputs::new(args, epoch_offset, !tui)?;
    if let Some(addr) = args.metrics_addr {
        outputs.metrics = Some(Exporter::bind(addr)?);
    }

    // Everything that needs privileges, then nothing more: no other thread may exist
    // before the capture gives them up (threads inherit them).
    let mut capture = Capture::start(config)?;
    let privileges = capture.release(privileges.user.clone(), !privileges.no_seccomp)?;
    tracing::info!(
        "privileges dropped: keeping {}{}{}",
        if privileges.kept.is_empty() { "no capability".to_string() } else { privileges.kept.join(", ") },
        privileges.user.as_ref().map(|u| format!(", running as {u}")).unwrap_or_default(),
        if privileges.seccomp { ", system calls filtered" } else { "" }
    );
    let mut pipeline = setup.start()?;
    if let Some(metrics) = outputs.metrics.as_mut() {
        metrics.serve()?;
        if let Some(addr) = args.metrics_addr {
            tracing::info!("serving Prometheus metrics at http://{addr}/metrics");
        }
    }
    let mut notes = Vec::new();
    for iface in &capture.attachment.interfaces {
        if iface.stale_filters_removed > 0 {
            notes.push(format!(
                "removed {} stale ws-monitor filter(s) from {}, left by an instance that is no longer running",
                iface.stale_filters_removed, iface.name
            ));
        }
        if !iface.others_running.is_empty() {
            notes.push(format!(
                "another ws-monitor (pid {:?}) is attached to {} too; each sees its own ports",
                iface.others_running, iface.name
            ));
        }
        if iface.state == LinkState::Down {
            notes.push(format!(
                "{} is down: nothing passes it, so nothing is captured until it is up (ip link set {} up)",
                iface.name, iface.name
            ));
        }
    }
    for (name, why) in &capture.attachment.skipped {
        notes.push(format!("left {name} out: {why}"));
    }
    for note in &notes {
        warn_or_print(tui, note);
    }
    if let Some(log) = outputs.connections.as_mut() {
        log.name_interfaces(capture.interface_names());
    }
    let ports: Vec<String> = config.ports.iter().map(u16::to_string).collect();
    let attached: Vec<String> =
        capture.attachment.interfaces.iter().map(|i| format!("{} {}", i.name, i.hooks.join("+"))).collect();
    tracing::info!(
        "capturing TCP port {} on {} ({}; {}); Ctrl-C to stop",
        ports.join(","),
        config.interfaces.label(),
        attached.join(", "),
        capture.attachment.mode.name()
    );
    if tui {
        let session = TerminalSession::enter()?;
        let mut dashboard = Dashboard::new(&config.interfaces.label(), &config.ports, monotonic_ns());
        dashboard.set_epoch_offset(epoch_offset);
        outputs.dashboard = Some((dashboard, session));
    }
    if let Some(demo) = hooks.demo {
        demo.go();
    }

    let mut bad_records = 0u64;
    let mut handle = |pipeline: &mut Pipeline, record: &[u8]| match capture::decode(record) {
        Ok((header, payload)) if header.lost != 0 => pipeline.lost(&capture::segment(&header, payload)),
        Ok((header, payload)) => pipeline.segment(&capture::segment(&header, payload)),
        Err(_) => bad_records += 1,
    };

    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    // The kernel wakes us only once enough is waiting (see capture::DRAIN_INTERVAL).
    let mut poll = tokio::time::interval(capture::DRAIN_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    // Set when a drain stopped at DRAIN_BATCH: the next batch competes with the other
    // branches instead of running ahead of them. While the workers are congested, the
    // records wait in the ring and a short timer tries again.
    let mut more = false;
    let result: anyhow::Result<Stop> = loop {
        tokio::select! {
            ready = capture.readable(), if !more => {
                if let Err(e) = ready {
                    break Err(anyhow::Error::new(e).context("waiting on the ring buffer"));
                }
                more = drain_into(&mut capture, &mut pipeline, &mut outputs, &mut handle);
            }
            // Through the runtime (not `ready()`): its timers and I/O are polled meanwhile.
            _ = tokio::task::yield_now(), if more => {
                more = drain_into(&mut capture, &mut pipeline, &mut outputs, &mut handle);
            }
            _ = poll.tick() => {
                more = drain_into(&mut capture, &mut pipeline, &mut outputs, &mut handle);
            }
            // The workers were full: try again soon (they free up within a millisecond or
            // so), without spinning on the CPU they need.
            _ = tokio::time::sleep(Duration::from_millis(1)), if pipeline.congested() => {
                more = drain_into(&mut capture, &mut pipeline, &mut outputs, &mut handle);
            }
            _ = sigint.recv() => break Ok(Stop::Asked),
            _ = sigterm.recv() => break Ok(Stop::Asked),
            _ = sleep_until(deadline) => break Ok(Stop::Asked),
            key = outputs.next_key() => {
                if matches!(key, Control::Quit) {
                    break Ok(Stop::Asked);
                }
                if let Err(e) = outputs.draw() {
                    break Err(e);
                }
            }
            _ = redraw.tick() => {
                if let Err(e) = outputs.draw() {
                    break Err(e);
                }
            }
            _ = tick.tick() => {
                capture.forward_kernel_log();
                let events = capture.watch();
                if let Some(LinkEvent::Gone(name)) = events.iter().find(|e| matches!(e, LinkEvent::Gone(_))) {
                    break Ok(Stop::LinkGone(name.clone()));
                }
                for event in &events {
                    match event {
                        LinkEvent::Down(name) => tracing::warn!("{name} went down: nothing is captured there until it is up again"),
                        LinkEvent::Up(name) => tracing::info!("{name} is up again"),
                        LinkEvent::Left(name) => tracing::info!("{name} disappeared; capture goes on on the others"),
                        LinkEvent::Added(name) => tracing::info!("{name} came up: capturing on it too"),
                        LinkEvent::Skipped(name, why) => tracing::warn!("left {name} out: {why}"),
                        LinkEvent::Gone(_) => {}
                    }
                }
                if events.iter().any(|e| matches!(e, LinkEvent::Added(_))) {
                    if let Some(log) = outputs.connections.as_mut() {
                        log.name_interfaces(capture.interface_names());
                    }
                }
                let now = monotonic_ns();
                pipeline.tick(now, outputs.dashboard.is_some());
                outputs.findings(&mut pipeline);
                match capture.counters() {
                    Ok(counters) => outputs.tick(now, pipeline.totals(), &live_report(&counters, pipeline.totals())),
                    Err(e) => break Err(e),
                }
            }
        }
    };
    // Restore the terminal before anything else is printed.
    outputs.dashboard = None;
    let stop = result?;

    // Read what is still in the ring (at most what a full ring holds, so that traffic
    // going on cannot keep us here), then detach before the final accounting.
    let most = (config.ring_size as usize / ws_monitor_common::HEADER_SIZE).div_ceil(capture::DRAIN_BATCH);
    for _ in 0..most {
        if !capture.drain(capture::DRAIN_BATCH, |r| handle(&mut pipeline, r)) {
            break;
        }
        pipeline.flush();
        pipeline.pump();
    }
    capture.forward_kernel_log();
    let counters = capture.counters()?;
    let not_logged = counters.get(Counter::LogLinesSuppressed) + counters.get(Counter::LogLinesLost);
    if not_logged > 0 {
        tracing::debug!(
            target: capture::kernel_log::TARGET,
            "kernel: {not_logged} log lines not written ({} over the per-CPU rate, {} with their ring full)",
            counters.get(Counter::LogLinesSuppressed),
            counters.get(Counter::LogLinesLost)
        );
    }
    let steer_stats = capture.steer_stats;
    let attachment = capture.attachment.clone();
    drop(capture);
    pipeline.finish(monotonic_ns());
    outputs.findings(&mut pipeline);
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
    let capture_report = live_report(&counters, totals);
    outputs.tick(monotonic_ns(), totals, &capture_report);
    if let Some(log) = outputs.log.as_mut() {
        log.summary(&capture_report, &totals.engine, &totals.reassembly, &totals.proxy);
    } else {
        // After the dashboard: a plain summary on stderr.
        eprintln!("ws-monitor: {}", report::stats_line(totals, capture_report.packets, capture_report.ring_drops));
        for line in report::violation_lines(&totals.engine) {
            eprintln!("ws-monitor:   {line}");
        }
    }
    let demo_committed = hooks.demo.map(|d| d.committed());
    finish_report(totals, args, &config.ports, &capture_report, |out| {
        out.insert("kernel".into(), report::kernel_json(&counters));
        out.insert(
            "pipeline".into(),
            serde_json::json!({"workers": pipeline.workers(), "findings_dropped": findings_dropped, "hints_dropped": pipeline.hints_dropped()}),
        );
        out.insert("attach".into(), serde_json::to_value(&attachment).unwrap_or_default());
        out.insert("privileges".into(), serde_json::to_value(&privileges).unwrap_or_default());
        out.insert("header_only".into(), serde_json::to_value(steer_stats).unwrap_or_default());
        out.insert("bad_records".into(), bad_records.into());
        if let Some(committed) = demo_committed {
            let map: serde_json::Map<String, serde_json::Value> =
                committed.into_iter().map(|((kind, dir), n)| (format!("{kind}.{dir}"), n.into())).collect();
            out.insert("demo_committed".into(), map.into());
        }
    })?;
    if let Stop::LinkGone(name) = stop {
        bail!(
            "{name} disappeared during the capture (deleted, renamed or moved to another network namespace); the report above covers what came before: restart ws-monitor once the interface is back (or use --iface any to follow interfaces that come and go)"
        );
    }
    Ok(())
}

/// Why the live loop ended.
#[derive(Clone, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C, SIGTERM, `q`, or `--duration` over.
    Asked,
    /// An interface named on the command line went away, and the programs with it.
    LinkGone(String),
}

/// A warning before the dashboard starts: on stderr under the dashboard (the log
/// subscriber is off then), as a log line otherwise.
fn warn_or_print(tui: bool, note: &str) {
    if tui {
        eprintln!("ws-monitor: {note}");
    } else {
        tracing::warn!("{note}");
    }
}

/// One batch from the ring to the workers (none while they are congested), then hints
/// and findings; true if the ring may hold more and the workers can take it.
fn drain_into(
    capture: &mut Capture,
    pipeline: &mut Pipeline,
    outputs: &mut Outputs,
    handle: &mut impl FnMut(&mut Pipeline, &[u8]),
) -> bool {
    pipeline.pump();
    let more = !pipeline.congested() && capture.drain(capture::DRAIN_BATCH, |r| handle(pipeline, r));
    pipeline.flush();
    pipeline.steer(capture);
    outputs.findings(pipeline);
    more && !pipeline.congested()
}

async fn run_demo(args: &DemoArgs) -> anyhow::Result<()> {
    let demo = Demo::start(DemoConfig { clients: args.clients.max(1), seed: 1 }).await?;
    let config = CaptureConfig {
        interfaces: Interfaces::Named(vec!["lo".into()]),
        ports: vec![demo.server_port, demo.proxy_port],
        ring_size: args.ring_size,
        attach: capture::AttachMode::Auto,
        header_only: !args.full_payload && args.run.streams_dir.is_none(),
    };
    let result = live(&config, &args.run, &args.privileges, Live { demo: Some(&demo) }).await;
    demo.stop().await;
    result
}

fn live_report(counters: &capture::KernelCounters, totals: &pipeline::Totals) -> CaptureReport {
    CaptureReport::new(
        counters.get(Counter::PacketsMatched),
        counters.get(Counter::RingFullRecords),
        &totals.reassembly,
    )
}

fn replay_file(args: &ReplayArgs) -> anyhow::Result<()> {
    let ports = if args.ports.is_empty() {
        let found = replay::detect_ports(&args.file)?;
        if found.is_empty() {
            bail!("no WebSocket upgrade found in {}: name the server port with --port PORT", args.file.display());
        }
        eprintln!(
            "ws-monitor: WebSocket server port(s) found by handshake: {}",
            found.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
        );
        found
    } else {
        args.ports.clone()
    };
    let run = &args.run;
    let mut pipeline = PipelineSetup::new(run, false, true)?.start()?;
    logs::init(run.log_format)?;
    let mut outputs = Outputs::new(run, 0, true)?;
    const TICK_NS: u64 = 1_000_000_000;
    let (mut last_tick, mut last_ts) = (0u64, 0u64);
    let mut since_findings = 0u32;
    let stats = replay::replay(&args.file, &ports, |seg| {
        pipeline.segment(seg);
        last_ts = last_ts.max(seg.ts_ns);
        if last_ts >= last_tick.saturating_add(TICK_NS) {
            pipeline.tick(last_ts, false);
            last_tick = last_ts;
        }
        since_findings += 1;
        if since_findings >= 1024 {
            since_findings = 0;
            outputs.findings(&mut pipeline);
        }
    })?;
    pipeline.finish(last_ts);
    outputs.findings(&mut pipeline);
    if stats.truncated_file {
        tracing::warn!("{} ends in the middle of a record; the rest was not read", args.file.display());
    }
    let totals = pipeline.totals();
    let capture_report = CaptureReport::new(stats.matched, 0, &totals.reassembly);
    if let Some(log) = outputs.log.as_mut() {
        log.summary(&capture_report, &totals.engine, &totals.reassembly, &totals.proxy);
    }
    finish_report(totals, run, &ports, &capture_report, |out| {
        out.insert("replay".into(), serde_json::to_value(&stats).unwrap_or_default());
    })
}

/// The summary on stderr, and the JSON report on stdout with `--json`.
/// Fails (after the report) when `--streams-dir` could not write everything.
fn finish_report(
    totals: &pipeline::Totals,
    run: &RunArgs,
    ports: &[u16],
    capture: &CaptureReport,
    extra: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> anyhow::Result<()> {
    if run.json {
        let mut out = report::report_json(ports, &totals.engine, capture);
        if let Some(map) = out.as_object_mut() {
            extra(map);
            map.insert("reassembly".into(), serde_json::to_value(totals.reassembly)?);
            map.insert("budgets".into(), report::budgets_json(&totals.limits, &totals.reassembly, &totals.engine));
            map.insert("proxy".into(), serde_json::to_value(&totals.proxy)?);
            let diagnosis =
                ws_monitor::diagnosis::diagnose(&totals.engine, &totals.reassembly, &totals.proxy, capture.ring_drops);
            map.insert("diagnosis".into(), serde_json::to_value(diagnosis)?);
            map.insert(
                "blind_spots".into(),
                serde_json::json!({
                    "connections": totals.blind_spots.sorted(),
                    "omitted": totals.blind_spots.omitted,
                }),
            );
            map.insert("peak_rss_bytes".into(), report::peak_rss_bytes().into());
            if run.streams_dir.is_some() {
                map.insert("streams".into(), serde_json::json!({"errors": totals.stream_errors}));
            }
        }
        println!("{out}");
    }
    if totals.stream_errors > 0 {
        bail!(
            "--streams-dir: {} writes failed, so its files are incomplete: free disk space, or raise the open-file limit (ulimit -n; two files per open connection)",
            totals.stream_errors
        );
    }
    Ok(())
}

/// `ws-monitor null-program`: the bench's reference TC program, attached until a signal.
async fn null_program(iface: &str) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let _attached = capture::attach_null(iface)?;
    eprintln!("ws-monitor: null program attached to {iface} (ingress+egress); Ctrl-C to stop");
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
