use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser as _};
use tokio::signal::unix::{signal, SignalKind};
use ws_monitor::cli::{Cli, Command, DemoArgs, PrivilegeArgs, ReplayArgs, RunArgs};
use ws_monitor::demo::{Demo, DemoConfig};
use ws_monitor::driver::{self, Clock as _, Ended, LiveIo, Outputs, Setup, Stop, SystemClock, Watched};
use ws_monitor::outputs::dashboard::TerminalSession;
use ws_monitor::outputs::logs;
use ws_monitor::outputs::metrics::Exporter;
use ws_monitor::sources::capture::{self, Capture, CaptureConfig, Interfaces, LinkState};
use ws_monitor::sources::replay;

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

/// Hooks for a live run started by `demo`.
#[derive(Default)]
struct Live<'a> {
    /// Traffic to start once the program is attached, and to stop at the end.
    demo: Option<&'a Demo>,
}

/// A live capture: attaches, gives up privileges, then hands the real ring buffer,
/// clock, terminal, signals and output files to the driver.
async fn live(
    config: &CaptureConfig,
    args: &RunArgs,
    privileges: &PrivilegeArgs,
    hooks: Live<'_>,
) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once we are attached must detach cleanly.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let setup = Setup::new(args, config.header_only, false)?;
    let clock = SystemClock;
    // The dashboard is the default on a terminal; otherwise log lines.
    let tui = !args.no_tui && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if !tui {
        logs::init(args.log_format)?;
    }
    let mut outputs = Outputs::new(args, clock.epoch_offset_ns(), !tui)?;
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
    let pipeline = setup.start()?;
    if let Some(addr) = args.metrics_addr {
        tracing::info!("serving Prometheus metrics at http://{addr}/metrics");
    }
    for note in attach_notes(&capture) {
        warn_or_print(tui, &note);
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
    let screen = if tui { Some(TerminalSession::enter()?) } else { None };
    if let Some(demo) = hooks.demo {
        demo.go();
    }
    let stop = async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    let io = LiveIo { source: capture, clock, screen, stop, outputs };
    let label = config.interfaces.label();
    let watched = Watched { label: &label, ports: &config.ports };
    let ended = driver::live(io, pipeline, args, watched, |out| {
        out.insert("privileges".into(), serde_json::to_value(&privileges).unwrap_or_default());
        if let Some(demo) = hooks.demo {
            let map: serde_json::Map<String, serde_json::Value> =
                demo.committed().into_iter().map(|((kind, dir), n)| (format!("{kind}.{dir}"), n.into())).collect();
            out.insert("demo_committed".into(), map.into());
        }
    })
    .await?;
    print_report(&ended)?;
    if let Stop::LinkGone(name) = ended.stop {
        bail!(
            "{name} disappeared during the capture (deleted, renamed or moved to another network namespace); the report above covers what came before: restart ws-monitor once the interface is back (or use --iface any to follow interfaces that come and go)"
        );
    }
    Ok(())
}

/// What attaching found worth saying: filters removed, other instances, interfaces down,
/// interfaces left out.
fn attach_notes(capture: &Capture) -> Vec<String> {
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
    notes
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

/// The JSON report on stdout (with `--json`); then an error if `--streams-dir` could not
/// write everything.
fn print_report(ended: &Ended) -> anyhow::Result<()> {
    if let Some(report) = &ended.report {
        println!("{report}");
    }
    driver::check_streams(ended.stream_errors)
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
    logs::init(args.run.log_format)?;
    let outputs = Outputs::new(&args.run, 0, true)?;
    print_report(&driver::replay(&args.file, &ports, &args.run, outputs)?)
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
