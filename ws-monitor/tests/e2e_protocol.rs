//! End to end, as root: real WebSocket peers in two network namespaces joined by a veth
//! pair, `ws-monitor` capturing live on the server-side veth (both hooks) and, at the same
//! time, tcpdump writing a pcap there that `ws-monitor replay` reads afterwards.
//!
//! * Conformant traffic (Python `websockets` and Node `ws`, each with and without
//!   permessage-deflate, and against each other, over IPv4 and IPv6; nginx correctly
//!   configured as a reverse proxy) raises no violation at all, every upgrade is counted,
//!   and the frame counts are the ones the peers' script makes.
//! * nginx without the Upgrade/Connection headers: upgrade_missing on the upstream
//!   connection, handshake_rejected on the front connection, exactly.
//! * A raw-socket violator commits every kind a known number of times; the report must
//!   equal its expectations exactly (every kind, both directions, zeros included).
//! * What production ports carry besides upgrades, exact and free of false alarms: nginx
//!   with an upstream keep-alive pool (plain requests, a 403 and a session over one
//!   upstream connection; the backend port reports what the front port does), HAProxy
//!   health checks on the WebSocket port (counted as HTTP requests), socket.io's
//!   polling-then-upgrade transport, a retry after a 401 on the same connection, and a
//!   handshake with a 20 KB Cookie (aiohttp peers in http_peers.py).
//! * In every test the replay of the pcap reports the same protocol counters (and the
//!   same findings) as the live capture.
//!
//! The peers and the nginx and HAProxy configuration templates are in tests/peers/; `cargo
//! xtask setup --tests` installs what they need (nginx, haproxy, tcpdump, websockets,
//! aiohttp, ws, socket.io).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use common::Netns;

/// Every violation kind the report lists, in ws-monitor's order.
const KINDS: [&str; 28] = [
    "handshake_rejected",
    "upgrade_missing",
    "accept_mismatch",
    "bad_handshake",
    "extension_not_offered",
    "handshake_too_large",
    "frame_before_upgrade",
    "rsv_without_extension",
    "rsv1_invalid",
    "reserved_opcode",
    "unmasked_client_frame",
    "masked_server_frame",
    "control_too_long",
    "control_fragmented",
    "orphan_continuation",
    "interleaved_data_frame",
    "non_minimal_length",
    "length_msb_set",
    "oversized_frame",
    "oversized_message",
    "invalid_utf8_text",
    "invalid_compressed_data",
    "invalid_close_payload",
    "invalid_close_code",
    "invalid_close_reason",
    "data_after_close",
    "http_in_stream",
    "tls_on_plain_port",
];

/// The report keys that live capture and replay must agree on (capture counters differ:
/// live counts kernel packets).
const PROTOCOL_KEYS: [&str; 9] = [
    "connections",
    "endings",
    "upgrades_ok",
    "frames",
    "violations",
    "violations_by_direction",
    "close_codes",
    "http_requests",
    "not_http",
];

const SERVER_V4: &str = "10.201.0.2";
const SERVER_V6: &str = "fd00:201::2";
const CLIENT_V4: &str = "10.201.0.1";

/// A process announcing it is ready (listening, capturing).
const READY: Duration = Duration::from_secs(30);
/// A peer script running to its end.
const PEER_RUN: Duration = Duration::from_secs(120);
/// A process stopping after SIGINT (or ending on its own once its work is done).
const STOP: Duration = Duration::from_secs(30);

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

fn peer(name: &str) -> PathBuf {
    peers_dir().join(name)
}

// ----- child processes ------------------------------------------------------------------

/// The lines a child writes on one pipe, read on a thread (so waiting is bounded).
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    eof: bool,
}

impl Lines {
    fn new(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            loop {
                let mut buf = Vec::new();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Lines { rx, seen: Vec::new(), eof: false }
    }

    /// Reads lines until one contains `needle`, and returns it.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(format!("no {needle:?} within {timeout:?}")),
                Err(RecvTimeoutError::Disconnected) => {
                    self.eof = true;
                    return Err(format!("output closed before {needle:?}"));
                }
            }
        }
    }

    /// Everything written so far and until EOF (waiting at most `timeout` for it).
    fn text(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        self.seen.concat()
    }
}

/// A child process that is killed (and reaped) when dropped, whatever happened.
struct Proc {
    what: String,
    child: std::process::Child,
    out: Lines,
    err: Lines,
}

/// How a child ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let out = Lines::new(child.stdout.take().expect("stdout"));
        let err = Lines::new(child.stderr.take().expect("stderr"));
        Proc { what: what.to_string(), child, out, err }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for a line on stdout (`on_stderr` = false) or stderr, and returns it.
    fn wait_line(&mut self, needle: &str, on_stderr: bool) -> String {
        let r = if on_stderr { self.err.wait_for(needle, READY) } else { self.out.wait_for(needle, READY) };
        match r {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                panic!(
                    "{}: {e}\n--- stdout:\n{}\n--- stderr:\n{}",
                    self.what,
                    self.out.text(Duration::from_secs(2)),
                    self.err.text(Duration::from_secs(2))
                );
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid (not yet reaped: we hold its Child).
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the child to end (killing it after `timeout`).
    fn finish(&mut self, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(s) => break s,
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} did not end within {timeout:?}\n--- stdout:\n{}\n--- stderr:\n{}",
                        self.what,
                        self.out.text(Duration::from_secs(2)),
                        self.err.text(Duration::from_secs(2))
                    );
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Ended { status, stdout: self.out.text(STOP), stderr: self.err.text(STOP) }
    }

    /// Waits for the child to end and requires success.
    fn finish_ok(&mut self, timeout: Duration) -> Ended {
        let e = self.finish(timeout);
        assert!(
            e.status.success(),
            "{} failed ({})\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what,
            e.status,
            e.stdout,
            e.stderr
        );
        e
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last line of `stdout` that is a JSON object.
fn last_json(stdout: &str, what: &str) -> Value {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{what} printed no JSON object:\n{stdout}"))
}

/// What a test runs besides ws-monitor and tcpdump.
#[derive(Clone, Copy, PartialEq)]
enum Dep {
    /// Python `websockets` (>= 13, asyncio API).
    Websockets,
    /// Python `aiohttp` (http_peers.py).
    Aiohttp,
    /// Node with `ws` in tests/peers/node_modules.
    NodeWs,
    /// Node with socket.io and its client in tests/peers/node_modules.
    SocketIo,
    Nginx,
    Haproxy,
}

/// Fails with a pointer to the setup task when a test dependency is missing.
fn require_deps(deps: &[Dep]) {
    let ok = |program: &str, args: &[&str]| {
        Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    let node = |packages: &[&str]| {
        ok("node", &["--version"]) && packages.iter().all(|p| peer(&format!("node_modules/{p}/package.json")).is_file())
    };
    let mut missing = Vec::new();
    if !ok("tcpdump", &["--version"]) {
        missing.push("tcpdump");
    }
    for dep in deps {
        let (there, what) = match dep {
            Dep::Websockets => {
                (ok("python3", &["-c", "import websockets.asyncio.client"]), "python3 websockets (>= 13)")
            }
            Dep::Aiohttp => (ok("python3", &["-c", "import aiohttp.web"]), "python3 aiohttp"),
            Dep::NodeWs => (node(&["ws"]), "node with ws in tests/peers/node_modules"),
            Dep::SocketIo => {
                (node(&["socket.io", "socket.io-client"]), "node with socket.io in tests/peers/node_modules")
            }
            Dep::Nginx => (ok("nginx", &["-v"]), "nginx"),
            Dep::Haproxy => (ok("haproxy", &["-v"]), "haproxy"),
        };
        if !there {
            missing.push(what);
        }
    }
    assert!(missing.is_empty(), "missing test dependencies: {}; run `cargo xtask setup --tests`", missing.join(", "));
}

// ----- capture: live monitor and tcpdump side by side ---------------------------------------

/// ws-monitor and tcpdump running on the server-side veth.
struct Capture {
    tcpdump: Proc,
    /// Header-only capture (the default) and, on the same hooks at the same time, a
    /// full-payload one: both must report what the replay of the pcap reports.
    monitor: Proc,
    full: Proc,
    pcap: PathBuf,
    live_events: PathBuf,
    full_events: PathBuf,
    replay_events: PathBuf,
    ports: Vec<u16>,
    engine_args: Vec<String>,
}

/// The two reports and their findings.
struct Reports {
    live: Value,
    replay: Value,
    live_events: Vec<Value>,
}

fn start_capture(ns: &Netns, veth: &str, ports: &[u16], engine_args: &[&str], dir: &Path) -> Capture {
    let pcap = dir.join("capture.pcap");
    let filter = ports.iter().map(|p| format!("port {p}")).collect::<Vec<_>>().join(" or ");
    let mut tcpdump = ns.command("tcpdump");
    // --immediate-mode: every packet is handed to tcpdump (and, with -U, written) at once,
    // not held in a kernel block that a SIGINT would leave unread. In that mode each
    // packet takes a full snaplen slot of the kernel buffer, and veth carries 64 KiB GSO
    // packets: -B 65536 (KiB) leaves room for a few hundred. -Z root: keep the rights to
    // write into our private temp dir.
    tcpdump.args(["-i", veth, "-n", "-U", "--immediate-mode", "-B", "65536", "-Z", "root", "-s", "0", "-w"]);
    tcpdump.arg(&pcap).arg(&filter);
    let mut tcpdump = Proc::spawn(tcpdump, "tcpdump");
    tcpdump.wait_line("listening on", true);

    let live = |events: &Path, extra: &[&str], name: &str| {
        let mut monitor = ns.command(common::ws_monitor_bin());
        monitor.args(["--iface", veth, "--json", "--stats-interval", "0"]).args(extra);
        for p in ports {
            monitor.args(["--port", &p.to_string()]);
        }
        monitor.args(engine_args).arg("--events").arg(events);
        let mut monitor = Proc::spawn(monitor, name);
        let line = monitor.wait_line("capturing", true);
        assert!(line.contains("ingress") && line.contains("egress"), "both hooks on a veth: {line}");
        monitor
    };
    let live_events = dir.join("live-events.jsonl");
    let full_events = dir.join("full-events.jsonl");
    let monitor = live(&live_events, &[], "ws-monitor (live)");
    let full = live(&full_events, &["--full-payload"], "ws-monitor (live, --full-payload)");
    Capture {
        tcpdump,
        monitor,
        full,
        pcap,
        live_events,
        full_events,
        replay_events: dir.join("replay-events.jsonl"),
        ports: ports.to_vec(),
        engine_args: engine_args.iter().map(|s| s.to_string()).collect(),
    }
}

/// Complete records in a classic pcap file (0 while it has no header yet).
fn pcap_records(path: &Path) -> u64 {
    let Ok(b) = std::fs::read(path) else { return 0 };
    let Some(magic) = b.get(..4) else { return 0 };
    let little = matches!(magic, [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]);
    let (mut at, mut n) = (24usize, 0u64);
    while let Some(h) = b.get(at..at + 16) {
        let len: [u8; 4] = h[8..12].try_into().unwrap();
        let len = if little { u32::from_le_bytes(len) } else { u32::from_be_bytes(len) } as usize;
        if b.len() < at + 16 + len {
            break;
        }
        at += 16 + len;
        n += 1;
    }
    n
}

fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

/// A finding without what may differ between live capture and replay (time, flow id).
fn event_key(e: &Value) -> (String, String, String, String, u64, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&e["connection"]["client"]),
        s(&e["connection"]["server"]),
        s(&e["direction"]),
        s(&e["kind"]),
        e["offset"].as_u64().unwrap_or(u64::MAX),
        s(&e["header"]),
    )
}

fn protocol_view(report: &Value) -> Value {
    let mut view: serde_json::Map<String, Value> =
        PROTOCOL_KEYS.iter().map(|k| (k.to_string(), report[*k].clone())).collect();
    // How connections ended, by kind and side (the idle times of the patterns differ by
    // the clocks: kernel time live, file time in replay).
    let mut close = report["close_analysis"].clone();
    if let Some(c) = close.as_object_mut() {
        c.remove("idle_cut_patterns");
    }
    view.insert("close_analysis".into(), close);
    Value::Object(view)
}

/// Findings counted in `report`: violations, close analysis, and what proxies changed.
fn findings_counted(report: &Value) -> u64 {
    let violations: u64 = report["violations"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    let close: u64 = report["close_analysis"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_object)
        .flat_map(|sides| sides.values().filter_map(Value::as_u64))
        .sum();
    let proxy: u64 =
        report["proxy"]["alterations"].as_object().map_or(0, |a| a.values().filter_map(Value::as_u64).sum());
    violations + close + proxy
}

/// Stops tcpdump and the monitor, replays the pcap, and checks that both reports agree.
fn stop_capture(mut cap: Capture, tag: &str) -> Reports {
    // Let the last segments (FINs, ACKs) through both.
    std::thread::sleep(Duration::from_millis(500));
    cap.monitor.signal(libc::SIGINT);
    cap.full.signal(libc::SIGINT);
    let mon = cap.monitor.finish_ok(STOP);
    let live = last_json(&mon.stdout, "ws-monitor (live)");
    let full = last_json(&cap.full.finish_ok(STOP).stdout, "ws-monitor (live, --full-payload)");
    eprintln!("{tag} live: {}", protocol_view(&live));
    eprintln!("{tag} live header-only: {}", live["header_only"]);

    // tcpdump drops what it has not read yet when interrupted: first let it write as many
    // packets as the monitor saw on the same hooks (the same packets; if it never gets
    // there, the checks below say what is missing).
    let seen = live["capture"]["packets"].as_u64().expect("capture.packets");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pcap_records(&cap.pcap) < seen && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    cap.tcpdump.signal(libc::SIGINT);
    let td = cap.tcpdump.finish_ok(STOP);
    // "N packets captured", "N packets received by filter", "N packets dropped by kernel".
    let count = |what: &str| -> Option<u64> {
        td.stderr.lines().find_map(|l| l.trim().strip_suffix(what).and_then(|n| n.trim().parse().ok()))
    };
    let (captured, received, dropped) =
        (count("packets captured"), count("packets received by filter"), count("packets dropped by kernel"));
    assert!(
        dropped == Some(0) && captured.is_some() && captured == received,
        "{tag}: tcpdump did not write every packet it matched (the monitor saw {seen}), the pcap is incomplete:\n{}",
        td.stderr
    );
    eprintln!("{tag}: tcpdump wrote {} packets, the monitor saw {seen}", captured.unwrap_or(0));

    let mut replay = Command::new(common::ws_monitor_bin());
    replay.arg("replay").arg(&cap.pcap);
    for p in &cap.ports {
        replay.args(["--port", &p.to_string()]);
    }
    replay.args(["--json", "--stats-interval", "0"]).args(&cap.engine_args).arg("--events").arg(&cap.replay_events);
    let rep = Proc::spawn(replay, "ws-monitor replay").finish_ok(STOP);
    let replay = last_json(&rep.stdout, "ws-monitor replay");
    // Its own peak memory: more than the binary's code, far less than a GiB.
    let rss = replay["peak_rss_bytes"].as_u64().unwrap_or(0);
    assert!((1 << 20..1 << 30).contains(&rss), "{tag}: peak_rss_bytes {rss}");
    // However many workers share the connections, the report and the findings are the same.
    for workers in ["1", "3"] {
        let events = cap.replay_events.with_extension(format!("{workers}.jsonl"));
        let mut again = Command::new(common::ws_monitor_bin());
        again.arg("replay").arg(&cap.pcap).args(["--workers", workers]);
        for p in &cap.ports {
            again.args(["--port", &p.to_string()]);
        }
        again.args(["--json", "--stats-interval", "0"]).args(&cap.engine_args).arg("--events").arg(&events);
        let out = last_json(
            &Proc::spawn(again, "ws-monitor replay --workers").finish_ok(STOP).stdout,
            "ws-monitor replay --workers",
        );
        for key in PROTOCOL_KEYS.iter().chain(&["capture", "sync"]) {
            assert_eq!(out[*key], replay[*key], "{tag}: replay with {workers} worker(s) differs in {key}");
        }
        let mut a: Vec<_> = read_events(&events).iter().map(event_key).collect();
        let mut b: Vec<_> = read_events(&cap.replay_events).iter().map(event_key).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{tag}: findings of a replay with {workers} worker(s) differ");
    }
    // WSM_E2E_KEEP=DIR keeps the pcap, the reports and the findings for a look afterwards.
    if let Some(keep) = std::env::var_os("WSM_E2E_KEEP") {
        let keep = Path::new(&keep).join(tag);
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&cap.pcap, keep.join("capture.pcap")).unwrap();
        std::fs::copy(&cap.live_events, keep.join("live-events.jsonl")).unwrap();
        std::fs::copy(&cap.replay_events, keep.join("replay-events.jsonl")).unwrap();
        std::fs::write(keep.join("live.json"), live.to_string()).unwrap();
        std::fs::write(keep.join("replay.json"), replay.to_string()).unwrap();
        eprintln!("{tag}: kept the capture in {}", keep.display());
    }

    for (name, r) in [("live", &live), ("full", &full), ("replay", &replay)] {
        let mut want = KINDS.to_vec();
        want.sort_unstable();
        for counts in
            [&r["violations"], &r["violations_by_direction"]["client"], &r["violations_by_direction"]["server"]]
        {
            let mut kinds: Vec<&str> = counts.as_object().expect("kind counts").keys().map(String::as_str).collect();
            kinds.sort_unstable();
            assert_eq!(kinds, want, "{tag} {name}: every kind is listed");
        }
        let counters = &r["capture"];
        for k in ["ring_drops", "gaps", "bytes_lost"] {
            assert_eq!(counters[k], 0, "{tag} {name}: capture.{k} must be 0 (nothing lost): {counters}");
        }
    }
    for side in ["client", "server"] {
        let n = |r: &Value, what: &str| r["capture"][format!("{what}_{side}")].as_u64().expect("capture byte counts");
        assert_eq!(n(&full, "bytes"), n(&replay, "bytes"), "{tag}: delivered {side} bytes, --full-payload");
        assert_eq!(n(&full, "skipped"), 0, "{tag}: --full-payload skips nothing");
        assert_eq!(
            n(&live, "bytes") + n(&live, "skipped"),
            n(&replay, "bytes"),
            "{tag}: {side} bytes delivered or skipped under header-only capture"
        );
        assert_eq!(
            live["sync"]["skipped_bytes"].as_u64(),
            live["capture"]["skipped_client"]
                .as_u64()
                .zip(live["capture"]["skipped_server"].as_u64())
                .map(|(a, b)| a + b),
            "{tag}: the engine passed over every skipped byte in sync"
        );
    }
    assert_eq!(live["sync"]["skip_mismatches"], 0, "{tag}: no skip came where bytes were needed");
    assert_eq!(protocol_view(&full), protocol_view(&live), "{tag}: header-only and full-payload capture disagree");
    assert_eq!(
        protocol_view(&replay),
        protocol_view(&live),
        "{tag}: the replay of the pcap must report what the live capture reported\nlive:   {}\nreplay: {}",
        protocol_view(&live),
        protocol_view(&replay)
    );

    let live_events = read_events(&cap.live_events);
    let mut a: Vec<_> = live_events.iter().map(event_key).collect();
    let mut b: Vec<_> = read_events(&cap.replay_events).iter().map(event_key).collect();
    let mut c: Vec<_> = read_events(&cap.full_events).iter().map(event_key).collect();
    a.sort();
    b.sort();
    c.sort();
    assert_eq!(a, b, "{tag}: live and replay findings differ");
    assert_eq!(c, b, "{tag}: live --full-payload and replay findings differ");
    assert_eq!(live_events.len() as u64, findings_counted(&live), "{tag}: one event line per counted finding");
    Reports { live, replay, live_events }
}

// ----- expectations -----------------------------------------------------------------------

fn zero_kinds() -> Value {
    Value::Object(KINDS.iter().map(|k| (k.to_string(), json!(0))).collect())
}

/// `frames` scaled by `n`.
fn times(frames: &Value, n: u64) -> Value {
    Value::Object(
        frames
            .as_object()
            .expect("frame counts")
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.as_u64().unwrap() * n)))
            .collect(),
    )
}

/// Conformant traffic: nothing reported, every upgrade counted, frames as scripted.
fn assert_conformant(tag: &str, reports: &Reports, summary: &Value, connections: u64, hops: u64) {
    let per_conn = &summary["frames_per_connection"];
    let closes: Vec<u64> = summary["close_codes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    assert_eq!(closes, vec![1000; summary["connections"].as_u64().unwrap() as usize], "{tag}: the peers' close codes");
    let monitored = connections * hops;
    for (name, r) in [("live", &reports.live), ("replay", &reports.replay)] {
        let ctx = format!("{tag} {name}: {}", protocol_view(r));
        assert_eq!(r["violations"], zero_kinds(), "{ctx}\nconformant traffic must raise no violation");
        assert_eq!(r["violations_by_direction"]["client"], zero_kinds(), "{ctx}");
        assert_eq!(r["violations_by_direction"]["server"], zero_kinds(), "{ctx}");
        assert_eq!(r["connections"], monitored, "{ctx}\nconnections");
        assert_eq!(r["upgrades_ok"], monitored, "{ctx}\nevery upgrade is a good one");
        assert_eq!(r["frames"]["client"], times(&per_conn["client"], monitored), "{ctx}\nclient frames");
        assert_eq!(r["frames"]["server"], times(&per_conn["server"], monitored), "{ctx}\nserver frames");
        assert_eq!(r["close_codes"], json!({"1000": 2 * monitored}), "{ctx}\nclose codes");
    }
    assert!(reports.live_events.is_empty(), "{tag}: findings on conformant traffic: {:?}", reports.live_events);
}

// ----- the tests ----------------------------------------------------------------------------

const WS_PORT: u16 = 9000;

/// A WebSocket library peer: program and script in tests/peers/.
type Peer = (&'static str, &'static str);
const PYTHON: Peer = ("python3", "ws_python.py");
const NODE: Peer = ("node", "ws_node.js");

/// An echo server and a client (each `PYTHON` or `NODE`) talking over IPv4 and IPv6.
fn library_pair(tag: &str, server_peer: Peer, client_peer: Peer, compression: &str) {
    let deps: Vec<Dep> = [(PYTHON, Dep::Websockets), (NODE, Dep::NodeWs)]
        .into_iter()
        .filter(|(p, _)| [server_peer, client_peer].contains(p))
        .map(|(_, d)| d)
        .collect();
    require_deps(&deps);
    let (client_ns, server_ns, veth) = common::veth_pair(tag);
    let dir = tempfile::tempdir().unwrap();
    let port = WS_PORT.to_string();
    let hosts = [SERVER_V4, SERVER_V6];

    let mut server = server_ns.command(server_peer.0);
    server.arg(peer(server_peer.1)).args(["server", "--port", &port, "--compression", compression]);
    server.args(["--expect", &hosts.len().to_string()]);
    let mut server = Proc::spawn(server, &format!("{} server", server_peer.1));
    server.wait_line("listening", false);

    let cap = start_capture(&server_ns, &veth, &[WS_PORT], &[], dir.path());

    let mut client = client_ns.command(client_peer.0);
    client.arg(peer(client_peer.1)).args(["client", "--port", &port, "--compression", compression]);
    client.args(["--hosts", &hosts.join(",")]);
    let out = Proc::spawn(client, &format!("{} client", client_peer.1)).finish_ok(PEER_RUN);
    let summary = last_json(&out.stdout, "client peer");
    server.finish_ok(STOP);

    let reports = stop_capture(cap, tag);
    eprintln!("{tag}: {} client: {summary}", summary["library"]);
    // The echo servers answer the same way, so the client's script fixes both sides.
    assert_conformant(tag, &reports, &summary, hosts.len() as u64, 1);
    assert_eq!(
        reports.live["capture"]["flows_closed"],
        hosts.len() as u64,
        "{tag}: every connection ended with FIN in the capture"
    );
}

#[test]
fn python_websockets_plain_is_conformant() {
    if common::require_root("python_websockets_plain_is_conformant") {
        library_pair("pyp", PYTHON, PYTHON, "none");
    }
}

#[test]
fn python_websockets_deflate_is_conformant() {
    if common::require_root("python_websockets_deflate_is_conformant") {
        library_pair("pyd", PYTHON, PYTHON, "deflate");
    }
}

#[test]
fn python_websockets_deflate_without_context_takeover_is_conformant() {
    if common::require_root("python_websockets_deflate_without_context_takeover_is_conformant") {
        library_pair("pyn", PYTHON, PYTHON, "deflate-nct");
    }
}

#[test]
fn node_ws_plain_is_conformant() {
    if common::require_root("node_ws_plain_is_conformant") {
        library_pair("ndp", NODE, NODE, "none");
    }
}

#[test]
fn node_ws_deflate_is_conformant() {
    if common::require_root("node_ws_deflate_is_conformant") {
        library_pair("ndd", NODE, NODE, "deflate");
    }
}

#[test]
fn node_client_python_server_deflate_is_conformant() {
    if common::require_root("node_client_python_server_deflate_is_conformant") {
        library_pair("xnp", PYTHON, NODE, "deflate");
    }
}

#[test]
fn python_client_node_server_deflate_is_conformant() {
    if common::require_root("python_client_node_server_deflate_is_conformant") {
        library_pair("xpn", NODE, PYTHON, "deflate");
    }
}

const FRONT_PORT: u16 = 8080;
const UPSTREAM_PORT: u16 = 9001;

/// How nginx is set up in front of the upstream.
#[derive(Clone, Copy, PartialEq)]
enum Nginx {
    /// `proxy_set_header Upgrade/Connection "upgrade"`: the usual WebSocket proxy.
    Upgrade,
    /// No Upgrade/Connection headers: the broken configuration.
    NoUpgrade,
    /// nginx's documented configuration for an upstream keep-alive pool: `map
    /// $http_upgrade $connection_upgrade` (empty for plain requests, so their upstream
    /// connection stays pooled) and `keepalive 4`.
    KeepalivePool,
    /// The usual WebSocket proxy with `proxy_read_timeout 3s`: idle sessions are cut.
    ShortReadTimeout,
    /// The usual WebSocket proxy with `proxy_hide_header Sec-WebSocket-Extensions`: the
    /// client is not told what the backend negotiated.
    HideExtensions,
}

/// Writes the nginx configuration for a proxy on SERVER_V4:FRONT_PORT in front of the
/// upstream at CLIENT_V4:UPSTREAM_PORT (in the client namespace, so that both the front
/// and the upstream connection cross the monitored veth).
fn nginx_config(prefix: &Path, setup: Nginx, upstream: &str) -> PathBuf {
    let template = std::fs::read_to_string(peer("nginx.conf.template")).expect("nginx template");
    let headers = match setup {
        Nginx::Upgrade | Nginx::ShortReadTimeout | Nginx::HideExtensions => {
            "            proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection \"upgrade\";"
        }
        Nginx::NoUpgrade => "            # (no Upgrade / Connection headers: the broken configuration)",
        Nginx::KeepalivePool => {
            "            proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection $connection_upgrade;"
        }
    };
    let (keepalive, map) = if setup == Nginx::KeepalivePool {
        (
            "        keepalive 4;",
            "    map $http_upgrade $connection_upgrade {\n        default upgrade;\n        '' '';\n    }",
        )
    } else {
        ("", "")
    };
    let conf = template
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@LISTEN@", &format!("{SERVER_V4}:{FRONT_PORT}"))
        .replace("@UPSTREAM@", upstream)
        .replace("@UPGRADE_HEADERS@", headers)
        .replace("@KEEPALIVE@", keepalive)
        .replace("@MAP@", map)
        .replace("@READ_TIMEOUT@", if setup == Nginx::ShortReadTimeout { "3s" } else { "30s" })
        .replace(
            "@EXTRA@",
            if setup == Nginx::HideExtensions { "            proxy_hide_header Sec-WebSocket-Extensions;" } else { "" },
        );
    for p in
        ["@PREFIX@", "@LISTEN@", "@UPSTREAM@", "@UPGRADE_HEADERS@", "@KEEPALIVE@", "@MAP@", "@READ_TIMEOUT@", "@EXTRA@"]
    {
        assert!(template.contains(p) && !conf.contains(p), "nginx template: placeholder {p}");
    }
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// nginx as a child process in the server namespace, its files in its own prefix.
struct NginxProc {
    proc_: Proc,
    prefix: PathBuf,
}

/// Starts nginx set up as `setup` in `ns`, with its prefix under `dir`, and waits until
/// it listens on FRONT_PORT.
fn start_nginx(ns: &Netns, dir: &Path, setup: Nginx) -> NginxProc {
    start_nginx_to(ns, dir, setup, &format!("{CLIENT_V4}:{UPSTREAM_PORT}"))
}

/// nginx as `setup`, proxying to `upstream`.
fn start_nginx_to(ns: &Netns, dir: &Path, setup: Nginx, upstream: &str) -> NginxProc {
    let prefix = dir.join("nginx");
    std::fs::create_dir(&prefix).unwrap();
    let conf = nginx_config(&prefix, setup, upstream);
    let mut nginx = ns.command("nginx");
    nginx.arg("-p").arg(&prefix).arg("-c").arg(&conf).arg("-e").arg(prefix.join("error.log"));
    nginx.args(["-g", "daemon off;"]);
    let mut proc_ = Proc::spawn(nginx, "nginx");
    wait_listening(ns, FRONT_PORT, &mut proc_);
    NginxProc { proc_, prefix }
}

impl NginxProc {
    fn assert_running(&mut self) {
        assert!(
            self.proc_.running(),
            "nginx died during the test: {}",
            std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
        );
    }
}

/// Writes the HAProxy configuration: SERVER_V4:FRONT_PORT in front of CLIENT_V4:UPSTREAM_PORT,
/// health-checked with `GET /health` every 100 ms.
fn haproxy_config(dir: &Path) -> PathBuf {
    let template = std::fs::read_to_string(peer("haproxy.cfg.template")).expect("haproxy template");
    let conf = template
        .replace("@PREFIX@", &dir.display().to_string())
        .replace("@LISTEN@", &format!("{SERVER_V4}:{FRONT_PORT}"))
        .replace("@UPSTREAM@", &format!("{CLIENT_V4}:{UPSTREAM_PORT}"))
        .replace("@INTER@", "100ms");
    for p in ["@PREFIX@", "@LISTEN@", "@UPSTREAM@", "@INTER@"] {
        assert!(template.contains(p) && !conf.contains(p), "haproxy template: placeholder {p}");
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    path
}

/// Waits until something listens on `port` in `ns` (without connecting to it).
fn wait_listening(ns: &Netns, port: u16, proc_: &mut Proc) {
    let deadline = Instant::now() + READY;
    loop {
        let out = ns.command("ss").args(["-Hltn", &format!("sport = :{port}")]).output().expect("ss");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        if !proc_.running() || Instant::now() >= deadline {
            let e = proc_.finish(Duration::from_secs(1));
            panic!("{} is not listening on {port}: {}\n{}", proc_.what, e.status, e.stderr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct ProxyRun {
    reports: Reports,
    summary: Value,
}

/// Python websockets behind nginx: the client (client namespace) connects to nginx (server
/// namespace), which proxies to the upstream echo server (client namespace).
fn through_nginx(tag: &str, upgrade_headers: bool, connections: u64) -> ProxyRun {
    require_deps(&[Dep::Websockets, Dep::Nginx]);
    let (client_ns, server_ns, veth) = common::veth_pair(tag);
    let dir = tempfile::tempdir().unwrap();

    let mut upstream = client_ns.command("python3");
    upstream.arg(peer("ws_python.py")).args([
        "server",
        "--port",
        &UPSTREAM_PORT.to_string(),
        "--compression",
        "deflate",
    ]);
    if upgrade_headers {
        // Refused handshakes never become connections the library reports closed.
        upstream.args(["--expect", &connections.to_string()]);
    }
    let mut upstream = Proc::spawn(upstream, "upstream ws_python.py server");
    upstream.wait_line("listening", false);

    let mut nginx =
        start_nginx(&server_ns, dir.path(), if upgrade_headers { Nginx::Upgrade } else { Nginx::NoUpgrade });

    let cap = start_capture(&server_ns, &veth, &[FRONT_PORT, UPSTREAM_PORT], &[], dir.path());

    let mut client = client_ns.command("python3");
    client.arg(peer("ws_python.py")).args(["client", "--port", &FRONT_PORT.to_string(), "--compression", "deflate"]);
    client.args(["--hosts", &vec![SERVER_V4; connections as usize].join(",")]);
    if !upgrade_headers {
        client.arg("--expect-reject");
    }
    let out = Proc::spawn(client, "ws_python.py client via nginx").finish_ok(PEER_RUN);
    let summary = last_json(&out.stdout, "client peer");
    if upgrade_headers {
        upstream.finish_ok(STOP);
    }
    let reports = stop_capture(cap, tag);
    nginx.assert_running();
    // nginx and the upstream are killed here, before their namespaces go.
    drop(nginx);
    drop(upstream);
    ProxyRun { reports, summary }
}

#[test]
fn nginx_proxy_with_upgrade_headers_is_conformant() {
    if !common::require_root("nginx_proxy_with_upgrade_headers_is_conformant") {
        return;
    }
    let run = through_nginx("ngx", true, 2);
    // Each client connection is seen twice: client -> nginx and nginx -> upstream, with
    // the same frames (nginx relays the upgraded bytes as they are).
    assert_conformant("ngx", &run.reports, &run.summary, 2, 2);
}

#[test]
fn nginx_proxy_without_upgrade_headers_breaks_the_upgrade() {
    if !common::require_root("nginx_proxy_without_upgrade_headers_breaks_the_upgrade") {
        return;
    }
    let connections = 2u64;
    let run = through_nginx("ngb", false, connections);
    assert_eq!(
        run.summary["reject_statuses"],
        json!([426, 426]),
        "the upstream refuses the plain GET (426), nginx relays it"
    );
    let mut client = zero_kinds();
    client["upgrade_missing"] = json!(connections);
    let mut server = zero_kinds();
    server["handshake_rejected"] = json!(connections);
    let mut total = zero_kinds();
    total["upgrade_missing"] = json!(connections);
    total["handshake_rejected"] = json!(connections);
    let no_frames = json!({"text": 0, "binary": 0, "continuation": 0, "close": 0, "ping": 0, "pong": 0, "reserved": 0});
    for (name, r) in [("live", &run.reports.live), ("replay", &run.reports.replay)] {
        let ctx = format!("ngb {name}: {}", protocol_view(r));
        assert_eq!(r["connections"], 2 * connections, "{ctx}\nfront and upstream connections");
        assert_eq!(r["upgrades_ok"], 0, "{ctx}");
        assert_eq!(r["violations_by_direction"]["client"], client, "{ctx}\nclient side");
        assert_eq!(r["violations_by_direction"]["server"], server, "{ctx}\nserver side");
        assert_eq!(r["violations"], total, "{ctx}");
        assert_eq!(r["frames"]["client"], no_frames, "{ctx}");
        assert_eq!(r["frames"]["server"], no_frames, "{ctx}");
        assert_eq!(r["close_codes"], json!({}), "{ctx}");
    }
    // Where each finding is: upgrade_missing on nginx -> upstream, handshake_rejected on
    // client -> nginx, and what nginx changed (the two hops of each attempt paired by
    // their key) on client -> nginx.
    for e in &run.reports.live_events {
        let (server, kind) = (e["connection"]["server"].as_str().unwrap(), e["kind"].as_str().unwrap());
        match kind {
            "upgrade_missing" => assert_eq!(server, format!("{CLIENT_V4}:{UPSTREAM_PORT}"), "{e}"),
            "handshake_rejected" | "proxy_altered" => assert_eq!(server, format!("{SERVER_V4}:{FRONT_PORT}"), "{e}"),
            _ => panic!("unexpected finding {e}"),
        }
    }
    for (name, r) in [("live", &run.reports.live), ("replay", &run.reports.replay)] {
        assert_eq!(r["proxy"]["pairs"], connections, "{name}: {}", r["proxy"]);
        assert_eq!(r["proxy"]["alterations"], json!({"upgrade_removed": connections}), "{name}: {}", r["proxy"]);
    }
}

/// Findings per connection, by client port: {port: {direction: {kind: n}}}.
fn findings_by_client_port(events: &[Value]) -> BTreeMap<u64, BTreeMap<String, BTreeMap<String, u64>>> {
    let mut out: BTreeMap<u64, BTreeMap<String, BTreeMap<String, u64>>> = BTreeMap::new();
    for e in events {
        let client = e["connection"]["client"].as_str().unwrap();
        let port: u64 = client.rsplit(':').next().unwrap().parse().unwrap();
        let dir = e["direction"].as_str().unwrap().to_string();
        let kind = e["kind"].as_str().unwrap().to_string();
        *out.entry(port).or_default().entry(dir).or_default().entry(kind).or_default() += 1;
    }
    out
}

#[test]
fn violator_commits_every_kind_and_is_counted_exactly() {
    if !common::require_root("violator_commits_every_kind_and_is_counted_exactly") {
        return;
    }
    require_deps(&[]);
    let (client_ns, server_ns, veth) = common::veth_pair("vio");
    let dir = tempfile::tempdir().unwrap();
    let port = WS_PORT.to_string();

    let mut server = server_ns.command("python3");
    server.arg(peer("violator.py")).args(["server", "--port", &port]);
    let mut server = Proc::spawn(server, "violator server");
    server.wait_line("listening", false);

    // The violator's oversized frames are beyond 64 KiB (its MAX_FRAME), its oversized
    // messages beyond 128 KiB (MAX_MESSAGE).
    let limits = ["--max-frame-size", "64K", "--max-message-size", "128K"];
    let cap = start_capture(&server_ns, &veth, &[WS_PORT], &limits, dir.path());

    let mut client = client_ns.command("python3");
    client.arg(peer("violator.py")).args(["client", "--host", SERVER_V4, "--port", &port]);
    let out = Proc::spawn(client, "violator client").finish_ok(PEER_RUN);
    let expected = last_json(&out.stdout, "violator client");
    server.finish_ok(STOP);
    let reports = stop_capture(cap, "vio");

    // Every kind is committed at least once, in the direction it belongs to.
    let exp_dir = &expected["violations_by_direction"];
    for k in KINDS {
        let n = exp_dir["client"][k].as_u64().unwrap() + exp_dir["server"][k].as_u64().unwrap();
        assert!(n > 0, "the violator does not commit {k}");
    }

    // Per connection first, for a readable failure: which scenario got what.
    let found = findings_by_client_port(&reports.live_events);
    let mut mismatches = Vec::new();
    for (name, sc) in expected["scenarios"].as_object().unwrap() {
        let port = sc["client_port"].as_u64().unwrap();
        let want: BTreeMap<String, BTreeMap<String, u64>> = serde_json::from_value(sc["expect"].clone()).unwrap();
        let want: BTreeMap<_, _> = want.into_iter().filter(|(_, kinds)| !kinds.is_empty()).collect();
        let got = found.get(&port).cloned().unwrap_or_default();
        if got != want {
            mismatches.push(format!("  {name} (client port {port}): expected {want:?}, found {got:?}"));
        }
    }
    let known_ports: Vec<u64> =
        expected["scenarios"].as_object().unwrap().values().map(|s| s["client_port"].as_u64().unwrap()).collect();
    for (port, got) in &found {
        if !known_ports.contains(port) {
            mismatches.push(format!("  unknown connection from port {port}: {got:?}"));
        }
    }
    assert!(mismatches.is_empty(), "findings differ from the violator's script:\n{}", mismatches.join("\n"));

    let mut total = Map::new();
    for k in KINDS {
        let n = exp_dir["client"][k].as_u64().unwrap() + exp_dir["server"][k].as_u64().unwrap();
        total.insert(k.to_string(), json!(n));
    }
    for (name, r) in [("live", &reports.live), ("replay", &reports.replay)] {
        let ctx = format!("vio {name}");
        assert_eq!(r["violations_by_direction"], expected["violations_by_direction"], "{ctx}: violations by direction");
        assert_eq!(r["violations"], Value::Object(total.clone()), "{ctx}: violations");
        assert_eq!(r["connections"], expected["connections"], "{ctx}: connections");
        assert_eq!(r["upgrades_ok"], expected["upgrades_ok"], "{ctx}: upgrades_ok");
        assert_eq!(r["frames"], expected["frames"], "{ctx}: frames");
        assert_eq!(r["close_codes"], expected["close_codes"], "{ctx}: close codes");
        assert_eq!(r["http_requests"], expected["http_requests"], "{ctx}: plain HTTP requests");
        assert_eq!(r["not_http"], 0, "{ctx}: not_http");
    }
}

// ----- production traffic: plain HTTP beside WebSocket on one port ----------------------------

/// What a run must report, live and in replay: findings by direction (every other kind
/// 0), and `sessions` good upgrades, each with the frames of the peers' script and a
/// close with 1000 each way.
struct Expected<'a> {
    client: &'a [(&'a str, u64)],
    server: &'a [(&'a str, u64)],
    frames_per_session: &'a Value,
    sessions: u64,
}

impl<'a> Expected<'a> {
    /// `sessions` sessions of the script `summary` describes, and no finding.
    fn sessions(summary: &'a Value, sessions: u64) -> Expected<'a> {
        Expected { client: &[], server: &[], frames_per_session: &summary["frames_per_session"], sessions }
    }
}

fn assert_exact(tag: &str, reports: &Reports, want: &Expected<'_>) {
    let kinds = |list: &[(&str, u64)]| {
        let mut v = zero_kinds();
        for (k, n) in list {
            assert!(v.get(*k).is_some(), "{tag}: {k} is not a kind");
            v[*k] = json!(n);
        }
        v
    };
    let (client, server) = (kinds(want.client), kinds(want.server));
    let mut total = zero_kinds();
    for k in KINDS {
        total[k] = json!(client[k].as_u64().unwrap_or(0) + server[k].as_u64().unwrap_or(0));
    }
    for (name, r) in [("live", &reports.live), ("replay", &reports.replay)] {
        let ctx = format!("{tag} {name}: {}", protocol_view(r));
        assert_eq!(r["violations_by_direction"]["client"], client, "{ctx}\nclient side");
        assert_eq!(r["violations_by_direction"]["server"], server, "{ctx}\nserver side");
        assert_eq!(r["violations"], total, "{ctx}");
        assert_eq!(r["upgrades_ok"], want.sessions, "{ctx}\nupgrades");
        for side in ["client", "server"] {
            assert_eq!(r["frames"][side], times(&want.frames_per_session[side], want.sessions), "{ctx}\n{side} frames");
        }
        assert_eq!(r["close_codes"], json!({"1000": 2 * want.sessions}), "{ctx}\nclose codes");
    }
}

/// A test's two hosts (network namespaces joined by a veth pair, see `common::veth_pair`)
/// and a temp dir.
struct Hosts {
    client_ns: Netns,
    server_ns: Netns,
    /// The server-side veth, where the monitor and tcpdump capture.
    veth: String,
    dir: tempfile::TempDir,
}

/// The hosts of `test`, once it runs as root with `deps` there (None without root).
fn hosts(test: &str, tag: &str, deps: &[Dep]) -> Option<Hosts> {
    if !common::require_root(test) {
        return None;
    }
    require_deps(deps);
    let (client_ns, server_ns, veth) = common::veth_pair(tag);
    Some(Hosts { client_ns, server_ns, veth, dir: tempfile::tempdir().unwrap() })
}

/// Plain HTTP requests counted on `port` (live; the replay reports the same).
fn http_requests(reports: &Reports, port: u16) -> u64 {
    reports.live["http_requests"][port.to_string()].as_u64().unwrap_or(0)
}

/// The aiohttp server of tests/peers/http_peers.py on `port` in `ns`.
fn aiohttp_server(ns: &Netns, port: u16, extra: &[&str]) -> Proc {
    let mut server = ns.command("python3");
    server.arg(peer("http_peers.py")).args(["server", "--port", &port.to_string()]).args(extra);
    let mut server = Proc::spawn(server, "http_peers.py server");
    server.wait_line("listening", false);
    server
}

/// A scenario of http_peers.py's client against `host:port`; its JSON summary.
fn aiohttp_client(ns: &Netns, host: &str, port: u16, scenario: &str) -> Value {
    let mut client = ns.command("python3");
    client.arg(peer("http_peers.py")).args(["client", "--host", host, "--port", &port.to_string()]);
    client.args(["--scenario", scenario]);
    let out = Proc::spawn(client, &format!("http_peers.py client {scenario}")).finish_ok(PEER_RUN);
    last_json(&out.stdout, "http_peers.py client")
}

/// The client ports the aiohttp server saw each request come from ("request PATH from PORT").
fn request_ports(server: &mut Proc) -> Vec<(String, u64)> {
    server.signal(libc::SIGTERM);
    let out = server.finish(STOP);
    out.stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("request ")?;
            let (path, port) = rest.split_once(" from ")?;
            Some((path.to_string(), port.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn nginx_keepalive_pool_is_exact_on_the_backend_port() {
    let tag = "nka";
    let (name, deps) = ("nginx_keepalive_pool_is_exact_on_the_backend_port", [Dep::Aiohttp, Dep::Nginx]);
    let Some(Hosts { client_ns, server_ns, veth, dir }) = hosts(name, tag, &deps) else {
        return;
    };
    let mut upstream = aiohttp_server(&client_ns, UPSTREAM_PORT, &[]);
    let mut nginx = start_nginx(&server_ns, dir.path(), Nginx::KeepalivePool);

    let cap = start_capture(&server_ns, &veth, &[FRONT_PORT, UPSTREAM_PORT], &[], dir.path());
    // GET /index, POST /submit, an upgrade refused for its Origin (403), an upgrade that
    // succeeds: on the front one kept-alive connection, and nginx reuses its pooled
    // upstream connection for all four.
    let summary = aiohttp_client(&client_ns, SERVER_V4, FRONT_PORT, "keepalive");
    let reports = stop_capture(cap, tag);
    nginx.assert_running();
    drop(nginx);
    let seen = request_ports(&mut upstream);
    assert_eq!(summary["reject_statuses"], json!([403]), "{tag}: the Origin check refused one upgrade");
    assert_eq!(seen.len(), 4, "{tag}: the upstream saw every request: {seen:?}");
    assert!(seen.iter().all(|(_, p)| *p == seen[0].1), "{tag}: nginx sent them over one pooled connection: {seen:?}");

    // Front and backend alike: one refusal each, one full session each, nothing else.
    assert_exact(tag, &reports, &Expected { server: &[("handshake_rejected", 2)], ..Expected::sessions(&summary, 2) });
    for port in [FRONT_PORT, UPSTREAM_PORT] {
        assert_eq!(http_requests(&reports, port), 2, "{tag}: GET /index and POST /submit on port {port}");
    }
    let mut rejected: Vec<&str> =
        reports.live_events.iter().map(|e| e["connection"]["server"].as_str().unwrap_or_default()).collect();
    rejected.sort_unstable();
    let (front, back) = (format!("{SERVER_V4}:{FRONT_PORT}"), format!("{CLIENT_V4}:{UPSTREAM_PORT}"));
    assert_eq!(rejected, [back.as_str(), front.as_str()], "{tag}: one refusal on each hop");
}

#[test]
fn haproxy_health_checks_on_the_websocket_port_are_counted_not_reported() {
    let tag = "hap";
    let (name, deps) =
        ("haproxy_health_checks_on_the_websocket_port_are_counted_not_reported", [Dep::Aiohttp, Dep::Haproxy]);
    let Some(Hosts { client_ns, server_ns, veth, dir }) = hosts(name, tag, &deps) else {
        return;
    };
    let conf = haproxy_config(dir.path());
    let _upstream = aiohttp_server(&client_ns, UPSTREAM_PORT, &[]);
    let cap = start_capture(&server_ns, &veth, &[FRONT_PORT, UPSTREAM_PORT], &[], dir.path());
    let mut haproxy = server_ns.command("haproxy");
    haproxy.arg("-f").arg(&conf).arg("-db");
    let mut haproxy = Proc::spawn(haproxy, "haproxy");
    wait_listening(&server_ns, FRONT_PORT, &mut haproxy);
    // Health checks every 100 ms meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    let summary = aiohttp_client(&client_ns, SERVER_V4, FRONT_PORT, "session");
    std::thread::sleep(Duration::from_millis(300));
    // No check after this, so the monitor and tcpdump see the same traffic to the end.
    assert!(haproxy.running(), "haproxy died during the test");
    drop(haproxy);
    let reports = stop_capture(cap, tag);
    assert_exact(tag, &reports, &Expected::sessions(&summary, 2));
    let checks = http_requests(&reports, UPSTREAM_PORT);
    assert!(checks >= 10, "{tag}: health checks counted as HTTP requests on the backend port: {}", reports.live);
    assert_eq!(http_requests(&reports, FRONT_PORT), 0, "{tag}: no plain request on the front port");
}

#[test]
fn socketio_polling_then_upgrade_is_conformant() {
    let tag = "sio";
    let (name, deps) = ("socketio_polling_then_upgrade_is_conformant", [Dep::SocketIo]);
    let Some(Hosts { client_ns, server_ns, veth, dir }) = hosts(name, tag, &deps) else {
        return;
    };
    let port = WS_PORT.to_string();
    let mut server = server_ns.command("node");
    server.arg(peer("socketio_peer.js")).args(["server", "--port", &port, "--expect", "1"]);
    let mut server = Proc::spawn(server, "socketio_peer.js server");
    server.wait_line("listening", false);
    let cap = start_capture(&server_ns, &veth, &[WS_PORT], &[], dir.path());
    let mut client = client_ns.command("node");
    client.arg(peer("socketio_peer.js")).args(["client", "--host", SERVER_V4, "--port", &port, "--events", "20"]);
    let out = Proc::spawn(client, "socketio_peer.js client").finish_ok(PEER_RUN);
    let summary = last_json(&out.stdout, "socket.io client");
    server.finish_ok(STOP);
    let reports = stop_capture(cap, tag);
    assert_eq!(summary["transport"], "websocket", "{tag}: the client upgraded: {summary}");
    for (name, r) in [("live", &reports.live), ("replay", &reports.replay)] {
        let ctx = format!("{tag} {name}: {}", protocol_view(r));
        assert_eq!(r["violations"], zero_kinds(), "{ctx}\nsocket.io's default transport is healthy traffic");
        assert_eq!(r["upgrades_ok"], 1, "{ctx}");
        // Probe, upgrade, 20 events and their acknowledgements, at the least.
        for side in ["client", "server"] {
            assert!(r["frames"][side]["text"].as_u64().unwrap_or(0) >= 21, "{ctx}\n{side} text frames");
        }
    }
    assert!(http_requests(&reports, WS_PORT) >= 2, "{tag}: the polling requests are counted: {}", reports.live);
}

#[test]
fn retry_after_401_on_one_connection_is_one_rejection_and_a_full_session() {
    let tag = "401";
    let (name, deps) = ("retry_after_401_on_one_connection_is_one_rejection_and_a_full_session", [Dep::Aiohttp]);
    let Some(Hosts { client_ns, server_ns, veth, dir }) = hosts(name, tag, &deps) else {
        return;
    };
    let mut server = aiohttp_server(&server_ns, WS_PORT, &[]);
    let cap = start_capture(&server_ns, &veth, &[WS_PORT], &[], dir.path());
    let summary = aiohttp_client(&client_ns, SERVER_V4, WS_PORT, "retry401");
    let reports = stop_capture(cap, tag);
    let seen = request_ports(&mut server);
    assert_eq!(summary["reject_statuses"], json!([401]), "{tag}");
    assert!(seen.len() == 2 && seen[0].1 == seen[1].1, "{tag}: both upgrades on one connection: {seen:?}");
    assert_exact(tag, &reports, &Expected { server: &[("handshake_rejected", 1)], ..Expected::sessions(&summary, 1) });
    assert_eq!(reports.live["connections"], 1, "{tag}: one connection");
}

#[test]
fn browser_sized_handshake_with_a_20kb_cookie_is_analysed() {
    let tag = "ck";
    let (name, deps) = ("browser_sized_handshake_with_a_20kb_cookie_is_analysed", [Dep::Aiohttp]);
    let Some(Hosts { client_ns, server_ns, veth, dir }) = hosts(name, tag, &deps) else {
        return;
    };
    let _server = aiohttp_server(&server_ns, WS_PORT, &["--max-field-size", "65536"]);
    let cap = start_capture(&server_ns, &veth, &[WS_PORT], &[], dir.path());
    let summary = aiohttp_client(&client_ns, SERVER_V4, WS_PORT, "bigcookie");
    let reports = stop_capture(cap, tag);
    assert!(summary["cookie_bytes"].as_u64().unwrap_or(0) > 20_000, "{tag}: {summary}");
    assert_exact(tag, &reports, &Expected::sessions(&summary, 1));
}

#[test]
fn an_nginx_read_timeout_cutting_idle_sessions_is_found_with_its_duration() {
    let test = "an_nginx_read_timeout_cutting_idle_sessions_is_found_with_its_duration";
    let Some(h) = hosts(test, "nit", &[Dep::NodeWs, Dep::Nginx]) else { return };
    // One session through nginx: a message and its echo, then nothing for 6 s.
    let (said, reports) = session_through_nginx(&h, "nit", Nginx::ShortReadTimeout, &[], &["idle", "--idle", "6"]);
    assert_eq!(said["idle"]["code"], 1006, "nginx cut the session without a close frame: {said}");
    for (name, r) in [("live", &reports.live), ("replay", &reports.replay)] {
        let ca = &r["close_analysis"];
        let ctx = format!("{name}: {ca}");
        // The front connection is cut by nginx as its server, the upstream one by nginx
        // as its client; both after the 3 s of proxy_read_timeout.
        assert_eq!(ca["idle_timeout_cut"], json!({"client": 1, "server": 1}), "{ctx}");
        let patterns = ca["idle_cut_patterns"].as_array().expect("patterns");
        assert_eq!(patterns.len(), 2, "{ctx}");
        for p in patterns {
            let idle = p["idle_s"].as_f64().expect("idle_s");
            assert!((2.9..3.6).contains(&idle), "{ctx}: cut after {idle} s");
            assert_eq!(p["connections"], 1, "{ctx}");
        }
        assert!(
            patterns.iter().any(|p| p["side"] == "server") && patterns.iter().any(|p| p["side"] == "client"),
            "{ctx}"
        );
        assert_eq!(r["endings"]["fin_without_close"], 2, "{name}: {}", r["endings"]);
        let top = r["diagnosis"][0]["cause"].as_str().unwrap_or_default();
        assert!(
            top.starts_with("1 connection cut after ") && top.contains(" s idle by the "),
            "{name}: the diagnosis starts with the cut: {}",
            r["diagnosis"]
        );
        assert_eq!(
            r["violations"].as_object().map(|v| v.values().filter_map(Value::as_u64).sum::<u64>()),
            Some(0),
            "{name}"
        );
    }
    let cuts: Vec<&Value> = reports.live_events.iter().filter(|e| e["kind"] == "idle_timeout_cut").collect();
    assert_eq!(cuts.len(), 2, "{:?}", reports.live_events);
    assert!(cuts.iter().all(|e| e["detail"].as_str().is_some_and(|d| d.contains("s idle, without a close handshake"))));
}

/// One session of a close_peers.js scenario (`scenario`: its name, then its options)
/// through nginx set up as `setup`, to a close_peers.js backend started with
/// `backend_args`: what the client saw, and the reports.
fn session_through_nginx(
    h: &Hosts,
    tag: &str,
    setup: Nginx,
    backend_args: &[&str],
    scenario: &[&str],
) -> (Value, Reports) {
    let mut upstream = h.client_ns.command("node");
    upstream.arg(peer("close_peers.js")).args(["server", "--port", &UPSTREAM_PORT.to_string(), "--expect", "1"]);
    upstream.args(backend_args);
    let mut upstream = Proc::spawn(upstream, "close_peers.js server");
    upstream.wait_line("listening", false);
    let mut nginx = start_nginx(&h.server_ns, h.dir.path(), setup);
    let cap = start_capture(&h.server_ns, &h.veth, &[FRONT_PORT, UPSTREAM_PORT], &[], h.dir.path());
    let mut client = h.client_ns.command("node");
    client.arg(peer("close_peers.js")).args(["client", "--host", SERVER_V4, "--port", &FRONT_PORT.to_string()]);
    client.arg("--scenarios").args(scenario);
    let out = Proc::spawn(client, "close_peers.js client via nginx").finish_ok(PEER_RUN);
    let said = last_json(&out.stdout, "client peer");
    upstream.finish_ok(STOP);
    let reports = stop_capture(cap, tag);
    nginx.assert_running();
    (said, reports)
}

#[test]
fn a_proxy_hiding_the_extensions_header_is_named_as_the_hop_that_broke_it() {
    let test = "a_proxy_hiding_the_extensions_header_is_named_as_the_hop_that_broke_it";
    let Some(h) = hosts(test, "phx", &[Dep::NodeWs, Dep::Nginx]) else { return };
    // The backend compresses even "hello"; nginx hides its Sec-WebSocket-Extensions.
    let (said, reports) = session_through_nginx(&h, "phx", Nginx::HideExtensions, &["--deflate", "yes"], &["echo"]);
    assert_eq!(said["echo"]["first"], "close", "the client refuses RSV1 and ends the session before any echo: {said}");
    for (name, r) in [("live", &reports.live), ("replay", &reports.replay)] {
        let ctx = format!("{name}: proxy {} diagnosis {}", r["proxy"], r["diagnosis"]);
        assert_eq!(r["proxy"]["pairs"], 1, "{ctx}");
        assert_eq!(r["proxy"]["alterations"], json!({"extensions_dropped": 1}), "{ctx}");
        assert_eq!(
            r["violations_by_direction"]["server"]["rsv_without_extension"], 1,
            "{ctx}: on the front connection only"
        );
        let top = r["diagnosis"][0]["cause"].as_str().unwrap_or_default();
        assert!(
            top.starts_with("a proxy alters WebSocket sessions: it dropped Sec-WebSocket-Extensions from the 101"),
            "{ctx}"
        );
        assert!(top.contains(&format!("{SERVER_V4}:{FRONT_PORT}")), "{ctx}: names the hop");
    }
    let altered: Vec<&Value> = reports.live_events.iter().filter(|e| e["kind"] == "proxy_altered").collect();
    assert_eq!(altered.len(), 1, "{:?}", reports.live_events);
    assert_eq!(altered[0]["connection"]["server"], format!("{SERVER_V4}:{FRONT_PORT}"), "on the front connection");
}

/// nginx on the server host hiding the backend's `Sec-WebSocket-Extensions`, in front of a
/// compressing close_peers.js backend on the host's loopback.
fn proxy_on_the_host(h: &Hosts) -> (Proc, NginxProc) {
    let mut upstream = h.server_ns.command("node");
    upstream.arg(peer("close_peers.js")).args([
        "server",
        "--port",
        &UPSTREAM_PORT.to_string(),
        "--expect",
        "1",
        "--deflate",
        "yes",
    ]);
    let mut upstream = Proc::spawn(upstream, "close_peers.js server on lo");
    upstream.wait_line("listening", false);
    let nginx =
        start_nginx_to(&h.server_ns, h.dir.path(), Nginx::HideExtensions, &format!("127.0.0.1:{UPSTREAM_PORT}"));
    (upstream, nginx)
}

/// One echo session from the client host through that proxy: the client refuses the
/// compressed frame it was not told about.
fn echo_through_the_proxy(h: &Hosts) {
    let mut client = h.client_ns.command("node");
    client.arg(peer("close_peers.js")).args(["client", "--host", SERVER_V4, "--port", &FRONT_PORT.to_string()]);
    client.args(["--scenarios", "echo"]);
    let said =
        last_json(&Proc::spawn(client, "close_peers.js client via nginx").finish_ok(PEER_RUN).stdout, "client peer");
    assert_eq!(said["echo"]["first"], "close", "the client refuses RSV1: {said}");
}

/// The same on the dashboard, in a real terminal: the Diagnosis panel ranks the proxy
/// first and the Proxy hops panel blames it. The screen goes to stderr.
#[test]
fn the_dashboard_ranks_a_proxy_hiding_the_extensions_header_first() {
    let test = "the_dashboard_ranks_a_proxy_hiding_the_extensions_header_first";
    let Some(h) = hosts(test, "pdb", &[Dep::NodeWs, Dep::Nginx]) else { return };
    let (mut upstream, mut nginx) = proxy_on_the_host(&h);
    let command = format!(
        "ip netns exec {} {} --iface {} --iface lo --port {FRONT_PORT} --port {UPSTREAM_PORT}; sleep 60",
        h.server_ns.name,
        common::ws_monitor_bin(),
        h.veth
    );
    let tmux = common::Tmux::start(&command, 140, 50);
    tmux.wait_for(&format!("ports {FRONT_PORT},{UPSTREAM_PORT}"));
    echo_through_the_proxy(&h);
    upstream.finish_ok(STOP);
    tmux.wait_for("Proxy hops");
    // The engine's counters follow at the next tick.
    let screen = tmux.wait_for("rsv_without_extension");
    eprintln!("{screen}");
    let line = |needle: &str| {
        screen.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?}:\n{screen}"))
    };
    assert!(line("Diagnosis").contains("most likely causes"), "{screen}");
    assert!(line("1. ").contains("a proxy alters WebSocket sessions: it dropped Sec-WebSocket-Extensions"), "{screen}");
    let hop = line("(proxy) →");
    assert!(hop.contains(&format!("{SERVER_V4}:{FRONT_PORT} (proxy) → 127.0.0.1:{UPSTREAM_PORT}")), "{screen}");
    assert!(hop.contains("the proxy changed the session: extensions dropped"), "{screen}");
    tmux.keys(&["q"]);
    nginx.assert_running();
}

/// The deployment the issue describes: nginx on the host takes clients on its outside
/// interface (the veth) and reaches its backend on lo. One monitor on both interfaces
/// pairs the two hops, names the interface of each in the connection log, and blames
/// the proxy in the report, the connection log, the events and the headless log.
#[test]
fn a_proxy_on_the_host_is_watched_on_its_outside_interface_and_on_lo() {
    let test = "a_proxy_on_the_host_is_watched_on_its_outside_interface_and_on_lo";
    let Some(h) = hosts(test, "plo", &[Dep::NodeWs, Dep::Nginx]) else { return };
    let (mut upstream, mut nginx) = proxy_on_the_host(&h);
    let (connections, events) = (h.dir.path().join("connections.jsonl"), h.dir.path().join("events.jsonl"));
    let mut monitor = h.server_ns.command(common::ws_monitor_bin());
    monitor.args(["--iface", &h.veth, "--iface", "lo", "--json", "--no-tui", "--log-interval", "0"]);
    monitor.args(["--port", &FRONT_PORT.to_string(), "--port", &UPSTREAM_PORT.to_string()]);
    monitor.arg("--connections").arg(&connections).arg("--events").arg(&events);
    let mut monitor = Proc::spawn(monitor, "ws-monitor on the veth and lo");
    let line = monitor.wait_line("capturing", true);
    assert!(line.contains(&format!("{} ingress+egress", h.veth)) && line.contains("lo ingress"), "{line}");

    echo_through_the_proxy(&h);
    upstream.finish_ok(STOP);
    std::thread::sleep(Duration::from_millis(500));
    monitor.signal(libc::SIGINT);
    let out = monitor.finish_ok(STOP);
    nginx.assert_running();
    let r = last_json(&out.stdout, "ws-monitor");

    let ctx = format!("proxy {} diagnosis {}", r["proxy"], r["diagnosis"]);
    let names: Vec<&str> = r["attach"]["interfaces"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().filter_map(|i| i["name"].as_str()).collect());
    assert_eq!(names, [h.veth.as_str(), "lo"], "{}", r["attach"]);
    assert_eq!(r["proxy"]["pairs"], 1, "{ctx}");
    assert_eq!(r["proxy"]["alterations"], json!({"extensions_dropped": 1}), "{ctx}");
    assert_eq!(r["proxy"]["seen"][0]["blame"], "proxy", "{ctx}");
    assert_eq!(r["violations_by_direction"]["server"]["rsv_without_extension"], 1, "{ctx}: on the front hop only");
    let top = r["diagnosis"][0]["cause"].as_str().unwrap_or_default();
    assert!(
        top.starts_with("a proxy alters WebSocket sessions: it dropped Sec-WebSocket-Extensions from the 101"),
        "{ctx}"
    );
    // Each hop on its own interface, nothing counted twice.
    let log = std::fs::read_to_string(&connections).expect("connection log");
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(records.len(), 2, "{log}");
    let hop = |port: u16| {
        records.iter().find(|c| c["server"].as_str().is_some_and(|s| s.ends_with(&format!(":{port}")))).expect("hop")
    };
    assert_eq!(hop(FRONT_PORT)["iface"], h.veth.as_str(), "{log}");
    assert_eq!(hop(UPSTREAM_PORT)["iface"], "lo", "{log}");
    assert_eq!(hop(UPSTREAM_PORT)["server"], format!("127.0.0.1:{UPSTREAM_PORT}"), "{log}");
    let has_rsv = |c: &Value| c["kinds"].as_array().is_some_and(|k| k.contains(&json!("rsv_without_extension")));
    assert!(has_rsv(hop(FRONT_PORT)) && !has_rsv(hop(UPSTREAM_PORT)), "the violation on the front hop only: {log}");
    let events = std::fs::read_to_string(&events).expect("events");
    assert!(events.lines().any(|l| l.contains("\"proxy_altered\"")), "{events}");
    assert!(out.stderr.contains("a proxy alters WebSocket sessions"), "the headless log says it too: {}", out.stderr);
}

#[test]
fn a_proxy_stripping_upgrade_is_named_as_the_hop_that_broke_it() {
    let test = "a_proxy_stripping_upgrade_is_named_as_the_hop_that_broke_it";
    let Some(h) = hosts(test, "pup", &[Dep::NodeWs, Dep::Nginx]) else { return };
    let (said, reports) = session_through_nginx(&h, "pup", Nginx::NoUpgrade, &[], &["echo"]);
    assert_eq!(said["echo"]["refused"], "status 426", "{said}");
    for (name, r) in [("live", &reports.live), ("replay", &reports.replay)] {
        let ctx = format!("{name}: proxy {} diagnosis {}", r["proxy"], r["diagnosis"]);
        assert_eq!(r["proxy"]["pairs"], 1, "{ctx}");
        assert_eq!(r["proxy"]["alterations"], json!({"upgrade_removed": 1}), "{ctx}");
        let top = r["diagnosis"][0]["cause"].as_str().unwrap_or_default();
        assert!(top.starts_with("a proxy alters WebSocket sessions: it removed Upgrade/Connection"), "{ctx}");
    }
}
