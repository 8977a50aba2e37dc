//! `cargo xtask soak`: ws-monitor under mixed live load for N minutes, one table row a
//! minute, and a verdict on its memory, its losses and its findings.
//!
//! Two network namespaces joined by a veth pair (`wsms-s`, `wsms-c`; removed again on
//! every path, Ctrl-C included). ws-monitor runs headless on the server's end (`--json`,
//! a counter line every minute, `--metrics-addr` on the namespace's loopback), and four
//! loads of `xtask bench-peer` run side by side for the whole time, each on a port of its
//! own: see [`LOADS`]. Each minute: ws-monitor's RSS (`VmRSS`) and its CPU over the
//! minute (`/proc/PID/stat`), and from its `/metrics` the ring drops, gaps, bytes lost,
//! findings so far and open flows. At the end ws-monitor is stopped with SIGINT (its
//! report: target/soak/report.json; its log: target/soak/ws-monitor.log), and the run
//! fails when:
//!
//! - ws-monitor exited early, or a load failed;
//! - its RSS kept growing: the median of the last three minutes is more than
//!   10 % + 8 MiB above minute 2's (minute 1 is warm-up: the ring buffer and the flow
//!   table fill); fewer than three minutes are too short to judge, and are not judged;
//! - it lost anything (ring drops, gaps, bytes lost): the load is paced far below what
//!   `cargo xtask bench` shows it keeping up with, so no load explains a loss;
//! - its findings are not exactly the violations sent (one `unmasked_client_frame` per
//!   violator connection), or it counted other connections than the loads opened.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::bench::peer::Load;
use crate::netns::{cpu_ticks, in_ns, Net, Pair, Proc, USER_HZ};

const NET: Pair = Pair {
    ns_server: "wsms-s",
    ns_client: "wsms-c",
    veth_server: "wsms-s0",
    veth_client: "wsms-c0",
    addr_server: "10.204.0.1",
    addr_client: "10.204.0.2",
};
/// ws-monitor's Prometheus listener, on the server namespace's loopback.
const METRICS_ADDR: &str = "127.0.0.1:9640";
/// RSS growth allowed from minute 2 to the last minutes: this share of minute 2's ...
const RSS_GROWTH_SHARE: f64 = 0.10;
/// ... plus this (KiB): allocator slack that a short run cannot tell from a leak.
const RSS_GROWTH_FLOOR_KIB: u64 = 8 * 1024;
/// How long a load or ws-monitor may take to end once its time is up.
const END_PATIENCE: Duration = Duration::from_secs(60);

pub struct Options {
    /// Minutes of load; the first is warm-up.
    pub minutes: u32,
    /// Seconds in a minute (shorter for a quick run).
    pub minute_secs: u64,
    /// The ws-monitor binary (default: built here, release).
    pub ws_monitor: Option<PathBuf>,
}

/// One of the loads that run for the whole soak (`xtask bench-peer`).
struct LoadSpec {
    name: &'static str,
    load: Load,
    port: u16,
    conns: usize,
    /// `--rate`: bulk frames (server), small frames, short connections (client) a second.
    rate: f64,
    /// Whether the server gets the rate (bulk: the server sends).
    server_paced: bool,
    what: &'static str,
}

/// The mixed load, each kind on its own port.
const LOADS: [LoadSpec; 4] = [
    LoadSpec {
        name: "bulk",
        load: Load::Bulk,
        port: 8001,
        conns: 1,
        rate: 400.0,
        server_paced: true,
        what: "1 connection, 400 binary frames of 64 KiB a second server→client (26 MB/s)",
    },
    LoadSpec {
        name: "small",
        load: Load::Small,
        port: 8002,
        conns: 8,
        rate: 50_000.0,
        server_paced: false,
        what: "8 connections, 50,000 masked text frames of 20-200 bytes a second client→server",
    },
    LoadSpec {
        name: "churn",
        load: Load::Churn,
        port: 8003,
        conns: 4,
        rate: 100.0,
        server_paced: false,
        what: "100 short connections a second: upgrade, text, binary, closing handshake",
    },
    LoadSpec {
        name: "violate",
        load: Load::Violate,
        port: 8004,
        conns: 1,
        rate: 5.0,
        server_paced: false,
        what: "5 short connections a second, each with one unmasked client frame",
    },
];

// ---------------------------------------------------------------------------------------
// Ctrl-C

/// Set by SIGINT or SIGTERM: the soak stops at its next look and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM, so that the guards (processes, namespaces) run on Ctrl-C.
fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// A child of the soak: in a process group of its own (a Ctrl-C reaches the soak alone,
/// which then stops ws-monitor with SIGINT and the loads), and sent SIGTERM should the
/// soak die without cleaning up (SIGKILL).
fn child(mut cmd: Command) -> Command {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

// ---------------------------------------------------------------------------------------
// ws-monitor

/// ws-monitor running on the server's veth; stopped with SIGINT on drop (it detaches and
/// writes its report), killed if it does not end within [`END_PATIENCE`].
struct Monitor {
    proc: Option<Proc>,
    report: PathBuf,
    log: PathBuf,
}

impl Monitor {
    fn start(ws_monitor: &Path, dir: &Path, minute_secs: u64) -> anyhow::Result<Monitor> {
        let (report, log) = (dir.join("report.json"), dir.join("ws-monitor.log"));
        let mut cmd = child(in_ns(NET.ns_server, ws_monitor));
        cmd.args(["--iface", NET.veth_server]);
        for l in &LOADS {
            cmd.args(["--port", &l.port.to_string()]);
        }
        cmd.args(["--no-tui", "--json", "--log-interval", &minute_secs.to_string(), "--metrics-addr", METRICS_ADDR]);
        let proc = Proc::spawn_to_files(&mut cmd, "ws-monitor", &report, &log)?;
        let mut monitor = Monitor { proc: Some(proc), report, log };
        monitor.wait_for_log("capturing")?;
        Ok(monitor)
    }

    fn proc(&mut self) -> anyhow::Result<&mut Proc> {
        self.proc.as_mut().context("ws-monitor was stopped")
    }

    /// Waits for a line of its log that contains `what`.
    fn wait_for_log(&mut self, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::fs::read_to_string(&self.log).unwrap_or_default().contains(what) {
                return Ok(());
            }
            if let Some(status) = self.proc()?.exited()? {
                bail!("ws-monitor exited ({status}) before it said {what:?}: {}", self.log_tail());
            }
            if Instant::now() >= deadline {
                bail!("ws-monitor did not say {what:?} within 30 s: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of its log (each cut short), for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(|l| l.chars().take(240).collect()).collect();
        format!("{} (log: {})", lines[lines.len().saturating_sub(3)..].join(" | "), self.log.display())
    }

    /// Stops it with SIGINT and returns its `--json` report.
    fn stop(&mut self) -> anyhow::Result<Value> {
        let mut proc = self.proc.take().context("ws-monitor was stopped already")?;
        proc.signal("INT");
        let status = proc.wait_within(END_PATIENCE)?.context("ws-monitor did not exit within 60 s of SIGINT")?;
        if !status.success() {
            bail!("ws-monitor failed ({status}): {}", self.log_tail());
        }
        let text =
            std::fs::read_to_string(&self.report).with_context(|| format!("reading {}", self.report.display()))?;
        let line = text.lines().rev().find(|l| l.starts_with('{')).context("ws-monitor printed no report")?;
        serde_json::from_str(line).context("ws-monitor's report")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal("INT");
            let _ = proc.wait_within(Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loads

/// Starts the servers of every load in the server namespace, each listening when this
/// returns.
fn start_servers(me: &Path, secs: f64) -> anyhow::Result<Vec<Proc>> {
    LOADS
        .iter()
        .map(|l| {
            let mut cmd = child(in_ns(NET.ns_server, me));
            cmd.args(peer_args("server", l, secs));
            if l.server_paced {
                cmd.args(["--rate", &l.rate.to_string()]);
            }
            let mut p = Proc::spawn(&mut cmd, l.name)?;
            p.wait_for("listening", false).with_context(|| format!("starting the {} server", l.name))?;
            Ok(p)
        })
        .collect()
}

/// Starts the clients of every load in the client namespace.
fn start_clients(me: &Path, secs: f64) -> anyhow::Result<Vec<Proc>> {
    LOADS
        .iter()
        .map(|l| {
            let mut cmd = child(in_ns(NET.ns_client, me));
            cmd.args(peer_args("client", l, secs)).args(["--addr", NET.addr_server]);
            if !l.server_paced {
                cmd.args(["--rate", &l.rate.to_string()]);
            }
            Proc::spawn(&mut cmd, l.name)
        })
        .collect()
}

fn peer_args(role: &str, l: &LoadSpec, secs: f64) -> Vec<String> {
    [
        "bench-peer",
        role,
        "--port",
        &l.port.to_string(),
        "--load",
        l.load.name(),
        "--secs",
        &secs.to_string(),
        "--conns",
        &l.conns.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Fails if a load has ended with an error (with what it said).
fn check_loads(procs: &mut Vec<Proc>) -> anyhow::Result<()> {
    for i in 0..procs.len() {
        if procs[i].exited()?.is_some_and(|s| !s.success()) {
            let p = procs.remove(i);
            let name = p.name();
            let err = p.finish().err().unwrap_or_else(|| anyhow::anyhow!("{name} failed"));
            return Err(err).context(format!("the {name} load failed"));
        }
    }
    Ok(())
}

/// Waits for every load to end and parses the JSON line each printed (null if none).
fn finish_loads(procs: Vec<Proc>) -> anyhow::Result<Vec<Value>> {
    procs
        .into_iter()
        .map(|mut p| {
            let name = p.name();
            p.wait_within(END_PATIENCE)?.with_context(|| format!("the {name} load did not end"))?;
            let out = p.finish().with_context(|| format!("the {name} load"))?;
            let line = out.lines().rev().find(|l| l.starts_with('{'));
            Ok(line.and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Samples

/// One row of the table.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    minute: u32,
    rss_kib: u64,
    /// CPU over the minute, in % of one core.
    cpu: f64,
    ring_drops: u64,
    gaps: u64,
    bytes_lost: u64,
    findings: u64,
    open_flows: u64,
    connections: u64,
}

const HEADER: &str = "| minute | RSS (MiB) | CPU (% of a core) | ring drops | gaps | bytes lost | findings | open flows | connections |\n|---|---|---|---|---|---|---|---|---|";

impl Sample {
    fn row(&self) -> String {
        format!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            self.minute,
            self.rss_kib as f64 / 1024.0,
            self.cpu,
            self.ring_drops,
            self.gaps,
            self.bytes_lost,
            self.findings,
            self.open_flows,
            self.connections
        )
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// The body of `http://addr/metrics` (run inside ws-monitor's namespace, as
/// `xtask soak-scrape`).
pub fn scrape(addr: &str) -> anyhow::Result<String> {
    let target = addr.parse().with_context(|| format!("{addr} is not an address"))?;
    let mut s =
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).context("reading the metrics")?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP head in the answer")?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        bail!("GET /metrics: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Scrapes ws-monitor's /metrics from inside its namespace.
fn scrape_in_ns(me: &Path) -> anyhow::Result<String> {
    let out = in_ns(NET.ns_server, me)
        .args(["soak-scrape", "--addr", METRICS_ADDR])
        .output()
        .context("running xtask soak-scrape")?;
    if !out.status.success() {
        bail!("scraping /metrics failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The sum of every series of `name` in a Prometheus text exposition (0 if none).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// CPU ticks and when they were read, for the CPU share of the next minute.
struct CpuMark(u64, Instant);

fn sample(me: &Path, pid: u32, minute: u32, mark: &mut CpuMark) -> anyhow::Result<Sample> {
    let ticks = cpu_ticks(pid).context("reading ws-monitor's /proc/PID/stat")?;
    let now = Instant::now();
    let cpu = (ticks - mark.0) as f64 / USER_HZ / now.duration_since(mark.1).as_secs_f64().max(1e-3) * 100.0;
    *mark = CpuMark(ticks, now);
    let m = scrape_in_ns(me)?;
    Ok(Sample {
        minute,
        rss_kib: rss_kib(pid)?,
        cpu,
        ring_drops: metric(&m, "ws_monitor_capture_ring_drops_total"),
        gaps: metric(&m, "ws_monitor_capture_gaps_total"),
        bytes_lost: metric(&m, "ws_monitor_capture_bytes_lost_total"),
        findings: metric(&m, "ws_monitor_violations_total"),
        open_flows: metric(&m, "ws_monitor_connections_open"),
        connections: metric(&m, "ws_monitor_connections_total"),
    })
}

/// Runs the minutes: one row each, stopping early (with an error) on Ctrl-C, on
/// ws-monitor's exit or on a failed load.
fn watch(
    me: &Path,
    monitor: &mut Monitor,
    loads: &mut Vec<Proc>,
    opts: &Options,
    start: Instant,
) -> anyhow::Result<Vec<Sample>> {
    let pid = monitor.proc()?.pid();
    let mut mark = CpuMark(cpu_ticks(pid).context("reading ws-monitor's /proc/PID/stat")?, Instant::now());
    let mut samples = Vec::new();
    println!("{HEADER}");
    for minute in 1..=opts.minutes {
        let due = start + Duration::from_secs(opts.minute_secs * u64::from(minute));
        while let Some(left) = due.checked_duration_since(Instant::now()) {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted in minute {minute}");
            }
            if let Some(status) = monitor.proc()?.exited()? {
                bail!("ws-monitor exited early, in minute {minute} ({status}): {}", monitor.log_tail());
            }
            check_loads(loads)?;
            std::thread::sleep(left.min(Duration::from_millis(250)));
        }
        let s = sample(me, pid, minute, &mut mark)?;
        println!("{}", s.row());
        std::io::stdout().flush()?;
        samples.push(s);
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------
// Verdicts

/// Whether RSS stayed flat, and the line that says so.
#[derive(Debug, PartialEq)]
struct RssVerdict {
    ok: bool,
    line: String,
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Judges RSS (KiB, minute 1 first): the median of the last three minutes (fewer when
/// the run is shorter) against minute 2, after a minute of warm-up.
fn rss_verdict(rss: &[u64]) -> RssVerdict {
    let mib = |kib: f64| kib / 1024.0;
    if rss.len() < 3 {
        return RssVerdict {
            ok: true,
            line: format!("RSS not judged: {} minute(s) are too few (minute 1 is warm-up; needs 3 or more)", rss.len()),
        };
    }
    let base = rss[1];
    let first_tail = (rss.len() - 3).max(2);
    let mut tail = rss[first_tail..].to_vec();
    let last = median(&mut tail);
    let growth = last as f64 - base as f64;
    let limit = base as f64 * RSS_GROWTH_SHARE + RSS_GROWTH_FLOOR_KIB as f64;
    let minutes = if first_tail + 1 == rss.len() {
        format!("minute {}", rss.len())
    } else {
        format!("minutes {}-{}", first_tail + 1, rss.len())
    };
    let ok = growth <= limit;
    let line = format!(
        "RSS {}: {:+.1} MiB from minute 2 ({:.1} MiB) to {} (median {:.1} MiB); limit {:+.1} MiB ({:.0} % of minute 2 + {} MiB)",
        if ok { "flat" } else { "GROWS" },
        mib(growth),
        mib(base as f64),
        minutes,
        mib(last as f64),
        mib(limit),
        RSS_GROWTH_SHARE * 100.0,
        RSS_GROWTH_FLOOR_KIB / 1024,
    );
    RssVerdict { ok, line }
}

/// What the loads did, from the JSON lines of the clients (in [`LOADS`] order).
struct Sent {
    connections: u64,
    violations: u64,
}

fn sent(clients: &[Value]) -> Sent {
    let mut s = Sent { connections: 0, violations: 0 };
    for (l, out) in LOADS.iter().zip(clients) {
        s.connections += match l.load {
            Load::Bulk | Load::Small => l.conns as u64,
            Load::Churn | Load::Violate => out["conns"].as_u64().unwrap_or(0),
        };
        s.violations += out["violations"].as_u64().unwrap_or(0);
    }
    s
}

/// What one load achieved, from its client's JSON line.
fn achieved(l: &LoadSpec, out: &Value) -> String {
    let secs = out["secs"].as_f64().unwrap_or(0.0).max(1e-3);
    let per_s = |key: &str| out[key].as_f64().unwrap_or(0.0) / secs;
    match l.load {
        Load::Bulk => format!("{} {:.1} MB/s", l.name, per_s("bytes") / 1e6),
        Load::Small => format!("{} {:.0} frames/s", l.name, per_s("frames")),
        Load::Churn | Load::Violate => format!("{} {:.1} connections/s", l.name, per_s("conns")),
    }
}

/// Checks ws-monitor's final report against what was sent; each problem as one line.
fn report_problems(report: &Value, sent: &Sent) -> Vec<String> {
    let mut problems = Vec::new();
    let cap = |k: &str| report["capture"][k].as_u64().unwrap_or(0);
    let (drops, gaps, lost) = (cap("ring_drops"), cap("gaps"), cap("bytes_lost"));
    if drops + gaps + lost > 0 {
        problems.push(format!(
            "unexplained loss: {drops} ring drops, {gaps} gaps, {lost} bytes lost at a load paced far below what ws-monitor keeps up with (cargo xtask bench)"
        ));
    }
    let unmasked = report["violations"]["unmasked_client_frame"].as_u64().unwrap_or(0);
    let others: Vec<String> = report["violations"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| *k != "unmasked_client_frame" && v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect()
        })
        .unwrap_or_default();
    if unmasked != sent.violations || !others.is_empty() {
        problems.push(format!(
            "findings differ from the violations sent: unmasked_client_frame {unmasked} of {} sent{}",
            sent.violations,
            if others.is_empty() { String::new() } else { format!("; others: {}", others.join(", ")) }
        ));
    }
    let seen = report["connections"].as_u64().unwrap_or(0);
    if seen != sent.connections {
        problems.push(format!("ws-monitor counted {seen} connections, the loads opened {}", sent.connections));
    }
    problems
}

// ---------------------------------------------------------------------------------------

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.minutes == 0 || opts.minute_secs < 5 {
        bail!("--minutes must be 1 or more and --minute-secs 5 or more");
    }
    if !crate::is_root() {
        bail!("cargo xtask soak needs root (network namespaces, BPF): run it with sudo");
    }
    let ws_monitor = crate::release_ws_monitor(opts.ws_monitor.clone())?;
    let me = std::env::current_exe().context("locating xtask (the load peers)")?;
    let dir = crate::workspace_root().join("target/soak");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    catch_interrupts();
    let secs = (u64::from(opts.minutes) * opts.minute_secs) as f64;

    // Dropped in reverse order: the loads, ws-monitor (SIGINT), the namespaces.
    let _net = Net::create(&NET)?;
    let mut monitor = Monitor::start(&ws_monitor, &dir, opts.minute_secs)?;
    // Servers first (listening once started), then clients: servers, then clients, in
    // LOADS order.
    let mut loads = start_servers(&me, secs)?;
    crate::step(&format!(
        "soak: {} minute(s) of {} s, ws-monitor (PID {}) on {} in netns {}; loads:",
        opts.minutes,
        opts.minute_secs,
        monitor.proc()?.pid(),
        NET.veth_server,
        NET.ns_server
    ));
    for l in &LOADS {
        eprintln!("xtask:   {} (port {}): {}", l.name, l.port, l.what);
    }
    let start = Instant::now();
    loads.extend(start_clients(&me, secs)?);
    let samples = watch(&me, &mut monitor, &mut loads, &opts, start)?;
    let outputs = finish_loads(loads)?;
    let clients = &outputs[LOADS.len()..];
    // What is still in flight reaches the monitor before it stops.
    std::thread::sleep(Duration::from_secs(1));
    let report = monitor.stop()?;

    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let verdict = rss_verdict(&rss);
    let sent = sent(clients);
    let mut problems = report_problems(&report, &sent);
    println!();
    println!("{}", verdict.line);
    println!(
        "loads: {} connections, {} violations sent; ws-monitor: {} connections, {} findings, peak RSS {:.1} MiB (report: {})",
        sent.connections,
        sent.violations,
        report["connections"],
        report["violations"].as_object().map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>()),
        report["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        dir.join("report.json").display()
    );
    let rates: Vec<String> = LOADS.iter().zip(clients).map(|(l, out)| achieved(l, out)).collect();
    println!("achieved: {}", rates.join(", "));
    if !verdict.ok {
        problems.insert(0, verdict.line);
    }
    if problems.is_empty() {
        crate::step("soak: passed");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("FAIL {p}");
        }
        bail!("the soak failed {} check(s)", problems.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_a_metric() {
        let text = "# HELP ws_monitor_violations_total x\n# TYPE ws_monitor_violations_total counter\n\
            ws_monitor_violations_total{kind=\"a\",direction=\"client\"} 3\n\
            ws_monitor_violations_total{kind=\"b\",direction=\"server\"} 4\n\
            ws_monitor_violations_total_other 100\nws_monitor_connections_open 7\n";
        assert_eq!(metric(text, "ws_monitor_violations_total"), 7);
        assert_eq!(metric(text, "ws_monitor_connections_open"), 7);
        assert_eq!(metric(text, "ws_monitor_missing"), 0);
    }

    #[test]
    fn judges_rss_against_minute_two() {
        let mib = |m: u64| m * 1024;
        // Warm-up growth in minute 1 does not count; +1 MiB after it is flat.
        let flat = rss_verdict(&[mib(20), mib(40), mib(40), mib(41), mib(41), mib(40)]);
        assert!(flat.ok, "{}", flat.line);
        assert!(flat.line.starts_with("RSS flat: +1.0 MiB from minute 2 (40.0 MiB) to minutes 4-6"), "{}", flat.line);
        // 40 MiB at minute 2: the limit is 4 + 8 MiB.
        let grows = rss_verdict(&[mib(20), mib(40), mib(45), mib(50), mib(53), mib(56)]);
        assert!(!grows.ok, "{}", grows.line);
        assert!(grows.line.contains("GROWS: +13.0 MiB"), "{}", grows.line);
        // Short runs: three minutes judge minute 3 alone; fewer are not judged.
        assert!(rss_verdict(&[mib(20), mib(40), mib(41)]).line.contains("to minute 3 "));
        assert!(rss_verdict(&[mib(20), mib(40)]).line.starts_with("RSS not judged"));
    }

    #[test]
    fn report_problems_name_loss_and_wrong_findings() {
        let sent = Sent { connections: 12, violations: 2 };
        let good: Value = serde_json::json!({
            "connections": 12,
            "violations": {"unmasked_client_frame": 2, "bad_handshake": 0},
            "capture": {"ring_drops": 0, "gaps": 0, "bytes_lost": 0}
        });
        assert!(report_problems(&good, &sent).is_empty());
        let bad: Value = serde_json::json!({
            "connections": 11,
            "violations": {"unmasked_client_frame": 1, "bad_handshake": 3},
            "capture": {"ring_drops": 5, "gaps": 1, "bytes_lost": 100}
        });
        let p = report_problems(&bad, &sent);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("5 ring drops, 1 gaps, 100 bytes lost"));
        assert!(p[1].contains("unmasked_client_frame 1 of 2 sent; others: bad_handshake 3"));
        assert!(p[2].contains("counted 11 connections, the loads opened 12"));
    }
}
