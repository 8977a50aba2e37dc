//! `cargo xtask bench`: ws-monitor's cost, measured in one run on this machine, each
//! figure beside a reference measured in the same run.
//!
//! - Live bulk: one connection sending 64 KiB binary frames over a veth pair between two
//!   network namespaces, with nothing attached, with a TC program that returns at once
//!   (`ws-monitor null-program`), with ws-monitor `--full-payload`, and with ws-monitor
//!   (header-only, the default) on the server's end. Throughput ÷ nothing attached, ring
//!   drops and gaps, bytes through the ring ÷ payload, eBPF ns per packet
//!   (`kernel.bpf_stats_enabled`) ÷ the null program.
//! - Live small frames: 8 connections sending masked text frames of 20–200 bytes, with
//!   and without ws-monitor: frames/s, drops, ws-monitor's CPU.
//! - `ws-monitor replay` ÷ `tshark -Y websocket` on the same small-frame capture, with
//!   both tools' frame counts.
//! - Peak RSS of `ws-monitor replay` with 100,000 connections open at once, beside one.
//! - The userspace pipeline on in-memory streams (`cargo bench --bench pipeline`).
//!
//! Everything runs in namespaces this command creates and removes (`wsmb-s`, `wsmb-c`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::netns::{cpu_ticks, in_ns, Net, Pair, Proc, USER_HZ};

pub mod pcap;
pub mod peer;

const NS_SERVER: &str = "wsmb-s";
const NS_CLIENT: &str = "wsmb-c";
const VETH_SERVER: &str = "wsmb-s0";
const VETH_CLIENT: &str = "wsmb-c0";
const ADDR_SERVER: &str = "10.203.0.1";
const ADDR_CLIENT: &str = "10.203.0.2";

/// Most peak RSS `ws-monitor replay` may take with 100,000 connections open (the
/// default `--memory-limit`).
const RSS_TARGET_100K: u64 = 256 << 20;
const NET: Pair = Pair {
    ns_server: NS_SERVER,
    ns_client: NS_CLIENT,
    veth_server: VETH_SERVER,
    veth_client: VETH_CLIENT,
    addr_server: ADDR_SERVER,
    addr_client: ADDR_CLIENT,
};
const PORT: u16 = 8001;
const SMALL_CONNS: usize = 8;

pub struct Options {
    /// Seconds each live measurement sends for.
    pub secs: f64,
    /// Rounds of the bulk measurements (the median is reported).
    pub rounds: usize,
    /// The ws-monitor binary (default: built here, release).
    pub ws_monitor: Option<PathBuf>,
}

/// `kernel.bpf_stats_enabled` on for the run, restored on drop.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(path).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(path, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// What is attached to the server's veth during a live measurement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attached {
    Nothing,
    Null,
    Full,
    HeaderOnly,
}

impl Attached {
    fn label(self) -> &'static str {
        match self {
            Attached::Nothing => "nothing attached",
            Attached::Null => "null TC program",
            Attached::Full => "ws-monitor --full-payload",
            Attached::HeaderOnly => "ws-monitor (header-only)",
        }
    }
}

/// One live measurement.
#[derive(Default)]
struct Live {
    /// Payload bytes the receiving peer read, per second.
    bytes_per_s: f64,
    frames_per_s: f64,
    /// Frames the sending peer wrote.
    frames: f64,
    /// ws-monitor's report (with ws-monitor attached).
    report: Option<Value>,
    /// eBPF run time per packet, by hook (ns), from the entry programs' stats.
    ns_per_packet: [Option<f64>; 2],
    /// ws-monitor's CPU time ÷ wall time.
    cpu: Option<f64>,
}

/// (run_time_ns, run_cnt) of the loaded TC programs whose name starts with `prefix`, by
/// program id.
fn prog_stats(prefix: &str) -> anyhow::Result<Vec<(u64, String, u64, u64)>> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("running bpftool")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    Ok(progs
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let name = p["name"].as_str()?;
                    name.starts_with(prefix).then(|| {
                        (
                            p["id"].as_u64().unwrap_or(0),
                            name.to_string(),
                            p["run_time_ns"].as_u64().unwrap_or(0),
                            p["run_cnt"].as_u64().unwrap_or(0),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

fn live(ws_monitor: &Path, load: peer::Load, attached: Attached, secs: f64, rate: f64) -> anyhow::Result<Live> {
    let me = std::env::current_exe().context("locating xtask")?;
    let conns = match load {
        peer::Load::Bulk => 1,
        peer::Load::Small => SMALL_CONNS,
        peer::Load::Churn | peer::Load::Violate => bail!("bench measures the bulk and small loads only"),
    };
    let load_name = load.name();
    let secs_s = format!("{secs}");
    let conns_s = conns.to_string();
    let port_s = PORT.to_string();
    let mut server = Proc::spawn(
        in_ns(NS_SERVER, &me).args([
            "bench-peer",
            "server",
            "--port",
            &port_s,
            "--load",
            load_name,
            "--secs",
            &secs_s,
            "--conns",
            &conns_s,
        ]),
        "bench server",
    )?;
    server.wait_for("listening", false)?;
    let mut monitor = None;
    match attached {
        Attached::Nothing => {}
        Attached::Null => {
            let mut p = Proc::spawn(
                in_ns(NS_SERVER, ws_monitor).args(["null-program", "--iface", VETH_SERVER]),
                "ws-monitor null-program",
            )?;
            p.wait_for("null program attached", true)?;
            monitor = Some(p);
        }
        Attached::Full | Attached::HeaderOnly => {
            let mut cmd = in_ns(NS_SERVER, ws_monitor);
            cmd.args(["--iface", VETH_SERVER, "--port", &port_s, "--no-tui", "--json", "--log-interval", "0"]);
            if attached == Attached::Full {
                cmd.arg("--full-payload");
            }
            let mut p = Proc::spawn(&mut cmd, "ws-monitor")?;
            p.wait_for("capturing", true)?;
            monitor = Some(p);
        }
    }
    let prefix = if attached == Attached::Null { "ws_monitor_null" } else { "ws_monitor_" };
    let before = prog_stats(prefix)?;
    let ticks_before = monitor.as_ref().and_then(|m| cpu_ticks(m.pid()));
    let started = Instant::now();
    let client = Proc::spawn(
        in_ns(NS_CLIENT, &me)
            .args(["bench-peer", "client", "--addr", ADDR_SERVER, "--port", &port_s, "--load", load_name])
            .args(["--secs", &secs_s, "--conns", &conns_s, "--rate", &rate.to_string()]),
        "bench client",
    )?;
    let client_out = client.finish()?;
    let wall = started.elapsed().as_secs_f64();
    let server_out = server.finish()?;
    // Let the monitor drain what is still in flight before it is stopped.
    std::thread::sleep(Duration::from_millis(500));
    let after = prog_stats(prefix)?;
    let ticks_after = monitor.as_ref().and_then(|m| cpu_ticks(m.pid()));
    let mut out = Live::default();
    let c: Value = serde_json::from_str(client_out.trim()).context("the bench client's result")?;
    let frames = c["frames"].as_f64().unwrap_or(0.0);
    let client_secs = c["secs"].as_f64().unwrap_or(wall).max(1e-9);
    match load {
        peer::Load::Bulk => out.bytes_per_s = c["bytes"].as_f64().unwrap_or(0.0) / client_secs,
        peer::Load::Small | peer::Load::Churn | peer::Load::Violate => {
            let s: Value = serde_json::from_str(server_out.trim()).context("the bench server's result")?;
            out.bytes_per_s = s["bytes"].as_f64().unwrap_or(0.0) / client_secs;
        }
    }
    out.frames_per_s = frames / client_secs;
    out.frames = frames;
    // Per hook: entry programs only (the walk and emit programs they tail-call run
    // inside them and are counted in their time).
    for (i, hook) in ["ws_monitor_ingr", "ws_monitor_egre"].iter().enumerate() {
        let pick = |v: &[(u64, String, u64, u64)]| -> (u64, u64) {
            v.iter()
                .filter(|p| if attached == Attached::Null { true } else { p.1 == *hook })
                .fold((0, 0), |acc, p| (acc.0 + p.2, acc.1 + p.3))
        };
        let (t0, n0) = pick(&before);
        let (t1, n1) = pick(&after);
        if attached == Attached::Null {
            // One program on both hooks: the same figure for each.
            if n1 > n0 {
                out.ns_per_packet = [Some((t1 - t0) as f64 / (n1 - n0) as f64); 2];
            }
            break;
        }
        if n1 > n0 {
            out.ns_per_packet[i] = Some((t1 - t0) as f64 / (n1 - n0) as f64);
        }
    }
    out.cpu = ticks_before.zip(ticks_after).map(|(a, b)| (b - a) as f64 / USER_HZ / wall);
    if let Some(m) = monitor {
        m.signal("INT");
        let stdout = m.finish()?;
        if attached != Attached::Null {
            let line = stdout.lines().rev().find(|l| l.starts_with('{')).context("ws-monitor printed no report")?;
            out.report = Some(serde_json::from_str(line).context("ws-monitor's report")?);
        }
    }
    Ok(out)
}

/// A small-frames run the monitor kept up with: nothing dropped or lost, every frame the
/// peers sent counted.
fn small_ok(r: &Live) -> bool {
    let Some(rep) = r.report.as_ref() else { return false };
    let zero = |k: &str| rep["capture"][k].as_u64() == Some(0);
    let counted = rep["frames"]["client"]["text"].as_f64().unwrap_or(0.0);
    zero("ring_drops") && zero("gaps") && zero("bytes_lost") && counted == r.frames
}

fn replay_args() -> [&'static str; 4] {
    ["--json", "--log-interval", "0", "--no-tui"]
}

fn last_json(out: &str) -> Option<Value> {
    out.lines().rev().find(|l| l.starts_with('{')).and_then(|l| serde_json::from_str(l).ok())
}

/// Runs `cmd` to the end: wall seconds and stdout.
fn timed(cmd: &mut Command) -> anyhow::Result<(f64, String)> {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().context("starting a timed command")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let ws_monitor = crate::release_ws_monitor(opts.ws_monitor)?;
    let _net = Net::create(&NET)?;
    let _stats = BpfStats::enable()?;
    let secs = opts.secs;

    let rounds = opts.rounds.max(1);
    crate::step(&format!("live bulk: 64 KiB binary frames over veth, {secs} s per run, {rounds} rounds"));
    // Rounds of every setup in turn; each setup's median round is kept (by throughput),
    // so that a disturbance of the machine does not land on one setup only.
    let setups = [Attached::Nothing, Attached::Null, Attached::Full, Attached::HeaderOnly];
    let mut runs: Vec<Vec<Live>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, attached) in setups.iter().enumerate() {
            let r = live(&ws_monitor, peer::Load::Bulk, *attached, secs, 0.0)?;
            eprintln!("xtask:   round {}: {}: {:.0} MB/s", round + 1, attached.label(), r.bytes_per_s / 1e6);
            runs[i].push(r);
        }
    }
    let bulk: Vec<(Attached, Live)> = setups
        .iter()
        .zip(runs)
        .map(|(a, mut rs)| {
            rs.sort_by(|x, y| x.bytes_per_s.total_cmp(&y.bytes_per_s));
            let median = rs.swap_remove(rs.len() / 2);
            (*a, median)
        })
        .collect();
    crate::step(&format!(
        "live small frames: {SMALL_CONNS} connections of 20-200 byte masked text frames, {secs} s per run"
    ));
    let unlimited = live(&ws_monitor, peer::Load::Small, Attached::Nothing, secs, 0.0)?;
    eprintln!("xtask:   nothing attached, unlimited: {:.2} M frames/s", unlimited.frames_per_s / 1e6);
    // Doubling rates until the monitor drops or loses a frame.
    let mut small = Vec::new();
    let mut rate = 250_000.0;
    while rate < unlimited.frames_per_s * 2.0 {
        let r = live(&ws_monitor, peer::Load::Small, Attached::HeaderOnly, secs, rate)?;
        let ok = small_ok(&r);
        eprintln!(
            "xtask:   ws-monitor at {:.2} M frames/s: {}",
            r.frames_per_s / 1e6,
            if ok { "kept up" } else { "fell behind" }
        );
        small.push(r);
        if !ok {
            break;
        }
        rate *= 2.0;
    }

    let base = bulk[0].1.bytes_per_s;
    let null_ns = bulk[1].1.ns_per_packet;
    println!();
    println!("Live bulk (one connection, 64 KiB binary frames server→client, veth between two netns, {secs} s each, median of {rounds} rounds)");
    println!();
    println!("| attached | MB/s | ÷ nothing | ring drops | gaps | ring bytes ÷ payload | of which retransmissions | eBPF ns/packet egress (÷ null) | ingress (÷ null) | ws-monitor CPU |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (attached, r) in &bulk {
        let rep = r.report.as_ref();
        let k = |name: &str| rep.and_then(|v| v["kernel"][name].as_u64());
        let cap = |name: &str| rep.and_then(|v| v["capture"][name].as_u64());
        let payload = cap("bytes_server").zip(cap("skipped_server")).map(|(a, b)| a + b);
        let share = |n: Option<u64>| {
            n.zip(payload).map_or("—".into(), |(r, p)| format!("{:.2} %", 100.0 * r as f64 / p.max(1) as f64))
        };
        let ring = share(k("ring_bytes"));
        // Retransmitted segments are copied whole (and dropped as duplicates by reassembly).
        let retransmitted = share(rep.and_then(|v| v["reassembly"]["duplicate_bytes"].as_u64()));
        let ns = |i: usize| {
            r.ns_per_packet[i].map_or("—".into(), |v| match null_ns[i] {
                Some(n) if *attached != Attached::Null => format!("{v:.0} ({})", ratio(v, n)),
                _ => format!("{v:.0}"),
            })
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            attached.label(),
            r.bytes_per_s / 1e6,
            ratio(r.bytes_per_s, base),
            cap("ring_drops").map_or("—".into(), |v| v.to_string()),
            cap("gaps").map_or("—".into(), |v| v.to_string()),
            ring,
            retransmitted,
            ns(1),
            ns(0),
            r.cpu.map_or("—".into(), |c| format!("{:.0} %", c * 100.0)),
        );
    }
    println!();
    println!("Live small frames ({SMALL_CONNS} connections, masked text frames of 20–200 bytes client→server, {secs} s each, paced; nothing attached and unpaced: {:.2} M frames/s)", unlimited.frames_per_s / 1e6);
    println!();
    println!("| frames/s sent (M) | ÷ unpaced, nothing attached | frames counted ÷ sent | ring drops | gaps | ws-monitor CPU | kept up? |");
    println!("|---|---|---|---|---|---|---|");
    for r in &small {
        let rep = r.report.as_ref();
        let counted = rep.and_then(|v| v["frames"]["client"]["text"].as_f64());
        let cap = |name: &str| rep.and_then(|v| v["capture"][name].as_u64()).map_or("—".into(), |v| v.to_string());
        println!(
            "| {:.2} | {} | {} | {} | {} | {} | {} |",
            r.frames_per_s / 1e6,
            ratio(r.frames_per_s, unlimited.frames_per_s),
            counted.map_or("—".into(), |c| format!("{:.4}", c / r.frames.max(1.0))),
            cap("ring_drops"),
            cap("gaps"),
            r.cpu.map_or("—".into(), |c| format!("{:.0} %", c * 100.0)),
            if small_ok(r) { "yes" } else { "no" },
        );
    }
    let dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).context("creating target/bench")?;
    crate::step("replay of a small-frame capture: ws-monitor and tshark");
    let small_pcap = dir.join("small-frames.pcap");
    let written = pcap::small_frames(&small_pcap, 8, 80_000)?;
    let size = std::fs::metadata(&small_pcap).map(|m| m.len()).unwrap_or(0) as f64;
    let replay = |file: &Path, args: &[&str]| -> anyhow::Result<(f64, u64)> {
        let (secs, out) = timed(Command::new(&ws_monitor).arg("replay").arg(file).args(replay_args()).args(args))?;
        let report: Value = last_json(&out).context("ws-monitor replay's report")?;
        let frames = ["client", "server"]
            .iter()
            .map(|d| report["frames"][d].as_object().map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>()))
            .sum();
        Ok((secs, frames))
    };
    let port = pcap::PORT.to_string();
    let wm = replay(&small_pcap, &["--port", &port])?;
    let (ts_secs, ts_out) = timed(Command::new("tshark").arg("-r").arg(&small_pcap).args([
        "-d",
        &format!("tcp.port=={},http", pcap::PORT),
        "-Y",
        "websocket",
        "-T",
        "fields",
        "-e",
        "websocket.opcode",
    ]))?;
    let ts_frames: u64 = ts_out.lines().filter(|l| !l.trim().is_empty()).map(|l| l.split(',').count() as u64).sum();
    println!();
    println!(
        "Replay of a capture of small frames (8 connections, {written} frames of 20–200 bytes, {:.1} MB)",
        size / 1e6
    );
    println!();
    println!("| tool | seconds | MB/s | ÷ tshark | frames found |");
    println!("|---|---|---|---|---|");
    println!("| tshark -Y websocket | {ts_secs:.2} | {:.1} | 1.00× | {ts_frames} |", size / 1e6 / ts_secs);
    println!("| ws-monitor replay | {:.2} | {:.1} | {} | {} |", wm.0, size / 1e6 / wm.0, ratio(ts_secs, wm.0), wm.1);

    crate::step("replay with 1 worker and with one per CPU");
    let many_pcap = dir.join("small-frames-64.pcap");
    let written = pcap::small_frames(&many_pcap, 64, 30_000)?;
    let size = std::fs::metadata(&many_pcap).map(|m| m.len()).unwrap_or(0) as f64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The median of 5 runs each, in turn.
    let (cpus_text, one) = (cpus.to_string(), "1".to_string());
    let setups: [(&str, [&str; 4]); 3] = [
        (&one, ["--port", &port, "--workers", &one]),
        (&cpus_text, ["--port", &port, "--workers", &cpus_text]),
        // The driver's share alone: the file read and decoded, its port not watched, so
        // no segment reaches a worker.
        ("reading and decoding only (port not watched)", ["--port", "9", "--workers", &one]),
    ];
    let mut runs: Vec<Vec<(f64, u64)>> = setups.iter().map(|_| Vec::new()).collect();
    for _ in 0..5 {
        for ((_, args), r) in setups.iter().zip(&mut runs) {
            r.push(replay(&many_pcap, args)?);
        }
    }
    let medians: Vec<(f64, u64)> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            r[r.len() / 2]
        })
        .collect();
    println!();
    println!("Replay with workers (64 connections interleaved, {written} frames of 20–200 bytes, {:.1} MB, median of 5 runs)", size / 1e6);
    println!();
    println!("| workers | seconds | MB/s | M frames/s | ÷ 1 worker | frames found |");
    println!("|---|---|---|---|---|---|");
    for ((label, _), (secs, frames)) in setups.iter().zip(&medians) {
        println!(
            "| {label} | {secs:.3} | {:.0} | {:.2} | {} | {frames} |",
            size / 1e6 / secs,
            *frames as f64 / 1e6 / secs,
            ratio(medians[0].0, *secs)
        );
    }

    crate::step("peak RSS of ws-monitor replay with 100,000 connections open at once");
    let one = dir.join("one-connection.pcap");
    let many = dir.join("100k-connections.pcap");
    pcap::many_connections(&one, 1)?;
    pcap::many_connections(&many, 100_000)?;
    let rss = |file: &Path| -> anyhow::Result<(u64, Value)> {
        let (_, out) = timed(
            Command::new(&ws_monitor)
                .arg("replay")
                .arg(file)
                .args(["--port", "8001"])
                .args(replay_args())
                .args(["--max-flows", "200000"]),
        )?;
        let report = last_json(&out).context("ws-monitor replay's report")?;
        // Its own measure: wait4's ru_maxrss also counts this process's memory, which a
        // spawned child inherits as its high-water mark until it execs.
        let rss = report["peak_rss_bytes"].as_u64().context("ws-monitor's report has no peak_rss_bytes")?;
        Ok((rss, report))
    };
    let (rss_one, _) = rss(&one)?;
    let (rss_many, report) = rss(&many)?;
    println!();
    println!("Peak RSS of `ws-monitor replay` (upgraded connections, one text frame each way, none closed)");
    println!();
    println!("| connections open at the end | peak RSS (MiB) | ÷ one connection | per connection |");
    println!("|---|---|---|---|");
    println!("| 1 | {:.1} | 1.00× | — |", rss_one as f64 / 1048576.0);
    println!(
        "| {} | {:.1} | {} | {:.0} B |",
        report["connections"],
        rss_many as f64 / 1048576.0,
        ratio(rss_many as f64, rss_one as f64),
        rss_many.saturating_sub(rss_one) as f64 / 100_000.0
    );
    println!();
    // The target does not depend on how busy the machine is, so a miss fails the bench
    // (and CI, which runs it briefly): 100,000 open connections fit in the default
    // --memory-limit.
    if rss_many > RSS_TARGET_100K {
        bail!(
            "peak RSS with 100,000 open connections is {:.1} MiB, over the {} MiB target: something grew per connection (profile it with heaptrack: see the README's Benchmarks)",
            rss_many as f64 / 1048576.0,
            RSS_TARGET_100K >> 20
        );
    }
    println!("Within the target of {} MiB for 100,000 open connections.", RSS_TARGET_100K >> 20);
    println!();
    crate::step("the userspace pipeline on in-memory streams (cargo bench --bench pipeline)");
    let out = Command::new(crate::env_cargo())
        .args(["bench", "--locked", "-p", "ws-monitor", "--bench", "pipeline"])
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench")?;
    if !out.status.success() {
        bail!("cargo bench --bench pipeline failed");
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}
