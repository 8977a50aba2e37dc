use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::error::ErrorKind;
use clap::Parser as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use ws_monitor::capture::{self, Capture, CaptureConfig};
use ws_monitor::cli::{Cli, RunArgs};
use ws_monitor::monitor::{Monitor, Sinks};
use ws_monitor::reassembly::ReassemblyConfig;
use ws_monitor::report::{self, CaptureReport};
use ws_monitor::streams::StreamDump;
use ws_monitor_common::Counter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ws-monitor: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws-monitor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as usual; a usage error becomes one line on stderr.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let config = CaptureConfig {
                iface: cli.iface.unwrap_or_default(),
                ports: cli.ports,
                ring_size: cli.ring_size,
            };
            live(&config, &cli.run).await
        }
        Some(command) => match command {},
    }
}

fn reassembly_config(args: &RunArgs) -> ReassemblyConfig {
    ReassemblyConfig {
        max_flows: args.max_flows.max(1),
        max_buffered_per_direction: usize::try_from(args.flow_buffer).unwrap_or(usize::MAX),
        idle_timeout_ns: secs_to_ns(args.idle_timeout),
    }
}

fn secs_to_ns(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9) as u64
}

fn sinks(args: &RunArgs) -> anyhow::Result<Sinks> {
    Ok(Sinks { dump: args.streams_dir.as_deref().map(StreamDump::new).transpose()? })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

async fn live(config: &CaptureConfig, args: &RunArgs) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once we are attached must detach cleanly.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut capture = Capture::start(config)?;
    let ports: Vec<String> = config.ports.iter().map(u16::to_string).collect();
    eprintln!(
        "ws-monitor: capturing TCP port {} on {} ({}); Ctrl-C to stop",
        ports.join(","),
        config.iface,
        capture.hooks.join("+")
    );

    let mut monitor = Monitor::new(reassembly_config(args), sinks(args)?);
    let mut bad_records = 0u64;
    let mut handle = |monitor: &mut Monitor, record: &[u8]| match capture::decode(record) {
        Ok((header, payload)) => {
            if header.offset == 0 {
                monitor.packets += 1;
            }
            monitor.segment(&capture::segment(&header, payload));
        }
        Err(_) => bad_records += 1,
    };

    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stats_every = (args.stats_interval > 0.0).then(|| Duration::from_secs_f64(args.stats_interval));
    let mut last_stats = Instant::now();

    loop {
        tokio::select! {
            ready = capture.readable() => {
                ready.context("waiting on the ring buffer")?;
                capture.drain(|r| handle(&mut monitor, r));
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(deadline) => break,
            _ = tick.tick() => {
                monitor.tick(monotonic_ns());
                if let Some(every) = stats_every {
                    if last_stats.elapsed() >= every {
                        last_stats = Instant::now();
                        let counters = capture.counters()?;
                        eprintln!("ws-monitor: {}", stats_line(&monitor, counters.get(Counter::PacketsMatched), counters.get(Counter::RingFullRecords)));
                    }
                }
            }
        }
    }

    // Read what is still in the ring, then detach before the final accounting.
    capture.drain(|r| handle(&mut monitor, r));
    let counters = capture.counters()?;
    drop(capture);
    monitor.finish(monotonic_ns());
    if bad_records > 0 {
        eprintln!("ws-monitor: warning: {bad_records} malformed ring-buffer records were dropped");
    }

    let capture_report = CaptureReport::new(
        counters.get(Counter::PacketsMatched),
        counters.get(Counter::RingFullRecords),
        monitor.reassembly(),
    );
    eprintln!(
        "ws-monitor: done: {}",
        stats_line(&monitor, capture_report.packets, capture_report.ring_drops)
    );
    if args.json {
        let out = serde_json::json!({
            "ports": config.ports,
            "capture": capture_report,
            "kernel": report::kernel_json(&counters),
            "reassembly": monitor.reassembly(),
            "bad_records": bad_records,
        });
        println!("{out}");
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn stats_line(monitor: &Monitor, packets: u64, drops: u64) -> String {
    let r = monitor.reassembly();
    format!(
        "{packets} packets, {} flows open ({} opened, {} closed, {} evicted), {} B client->server, {} B server->client, ring drops {drops}, gaps {} ({} B lost)",
        monitor.open_flows(),
        r.flows_opened,
        r.flows_closed,
        r.flows_evicted,
        r.bytes_client,
        r.bytes_server,
        r.gaps,
        r.bytes_lost
    )
}
