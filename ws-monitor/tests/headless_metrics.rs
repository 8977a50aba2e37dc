//! Headless mode and Prometheus: a live run with injected violations (the raw-socket
//! violator, three times over); the log lines and the `/metrics` values must agree
//! with the `--json` report. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use ws_monitor::testkit::{Frame, Head, RFC_KEY};

const PORT: &str = "9100";
const METRICS: &str = "127.0.0.1:19640";
const RUNS: usize = 3;

fn violator() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/violator.py").display().to_string()
}

fn wait_line(reader: &mut impl BufRead, needle: &str, sink: &mut Vec<String>) {
    let start = Instant::now();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "exited before printing {needle:?}: {sink:?}");
        sink.push(line.clone());
        if line.contains(needle) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no {needle:?} within 30 s");
    }
}

/// The whole answer of the metrics listener at `addr` to `line` ("METHOD TARGET").
fn request(ns: &common::Netns, addr: &'static str, line: &str) -> String {
    let req = format!("{line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    ns.run(move || {
        let mut s = TcpStream::connect(addr).expect("metrics endpoint");
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

/// `name{labels} value` lines of a Prometheus text exposition, keyed by `name{labels}`.
fn scrape(ns: &common::Netns) -> BTreeMap<String, f64> {
    scrape_at(ns, METRICS)
}

fn scrape_at(ns: &common::Netns, addr: &'static str) -> BTreeMap<String, f64> {
    let body = request(ns, addr, "GET /metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body.lines()
        .filter(|l| l.starts_with("ws_monitor_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The value of a metric whose labels include all of `labels`.
fn metric(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> u64 {
    let hits: Vec<f64> = m
        .iter()
        .filter(|(k, _)| {
            k.split('{').next() == Some(name) && labels.iter().all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(hits.len(), 1, "{name}{labels:?} in {m:?}");
    hits[0] as u64
}

struct Run {
    report: Value,
    metrics: BTreeMap<String, f64>,
    /// The status lines of the answers to requests other than `GET /metrics`.
    refusals: Vec<String>,
    log: Vec<String>,
}

/// The monitor (headless, with metrics) on a veth while the violator runs `runs` times.
fn run(tag: &str, runs: usize, extra: &[&str]) -> Run {
    let (client_ns, server_ns, veth) = common::veth_pair(tag);
    let mut monitor = server_ns
        .command(common::ws_monitor_bin())
        .args(["--iface", &veth, "--port", PORT, "--json", "--no-tui", "--log-interval", "60"])
        .args(["--max-frame-size", "64K", "--max-message-size", "128K", "--metrics-addr", METRICS])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(monitor.stderr.take().unwrap());
    let mut log = Vec::new();
    wait_line(&mut err, "capturing", &mut log);
    // Read the rest of stderr as it comes: a full pipe would stop the monitor's loop
    // (its ticks, and so /metrics) until the test read it.
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });

    // Violations the violator's script commits, over all runs.
    let mut expected = 0u64;
    for _ in 0..runs {
        let mut server = server_ns
            .command("python3")
            .args([&violator(), "server", "--port", PORT])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server_out = BufReader::new(server.stdout.take().unwrap());
        wait_line(&mut server_out, "listening", &mut Vec::new());
        let out = client_ns
            .command("python3")
            .args([&violator(), "client", "--host", "10.201.0.2", "--port", PORT])
            .output()
            .unwrap();
        assert!(out.status.success(), "violator client: {}", String::from_utf8_lossy(&out.stderr));
        let script: Value =
            serde_json::from_slice(out.stdout.trim_ascii_end().rsplit(|b| *b == b'\n').next().unwrap_or_default())
                .expect("the violator's expectations");
        expected += ["client", "server"]
            .iter()
            .flat_map(|d| script["violations_by_direction"][d].as_object().into_iter().flatten())
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum::<u64>();
        let mut served = String::new();
        server_out.read_to_string(&mut served).unwrap();
        assert!(server.wait().unwrap().success(), "violator server: {served}");
    }
    // Ticks (1 s) publish the workers' totals to /metrics, a tick or two behind them
    // (more while another test loads the machine): wait for every violation to show and
    // the exposition to stand still.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = scrape(&server_ns);
    loop {
        std::thread::sleep(Duration::from_millis(1100));
        let again = scrape(&server_ns);
        let shown: u64 =
            again.iter().filter(|(k, _)| k.starts_with("ws_monitor_violations_total{")).map(|(_, v)| *v as u64).sum();
        let settled = again == metrics && shown == expected;
        metrics = again;
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "/metrics shows {shown} of {expected} violations after 30 s");
    }
    let refusals = ["GET /", "POST /metrics", "GARBAGE"]
        .iter()
        .map(|line| request(&server_ns, METRICS, line).lines().next().unwrap_or_default().to_string())
        .collect();

    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(monitor.id() as i32, libc::SIGINT) };
    let rest = rest.join().expect("stderr reader");
    log.extend(rest.lines().map(str::to_string));
    let out = monitor.wait_with_output().unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    Run { report, metrics, refusals, log }
}

#[test]
fn logs_and_metrics_agree_with_the_json_report() {
    if !common::require_root("logs_and_metrics_agree_with_the_json_report") {
        return;
    }
    let Run { report, metrics, refusals, log } = run("hm", RUNS, &[]);
    assert_eq!(
        refusals,
        ["HTTP/1.1 404 Not Found", "HTTP/1.1 405 Method Not Allowed", "HTTP/1.1 400 Bad Request"],
        "only GET /metrics is served"
    );

    // /metrics == JSON, for every kind and direction, opcode, and the totals.
    let mut total = 0;
    for dir in ["client", "server"] {
        for (kind, n) in report["violations_by_direction"][dir].as_object().unwrap() {
            let n = n.as_u64().unwrap();
            total += n;
            assert_eq!(
                metric(&metrics, "ws_monitor_violations_total", &[("kind", kind), ("direction", dir)]),
                n,
                "{kind} {dir}"
            );
        }
        for (opcode, n) in report["frames"][dir].as_object().unwrap() {
            assert_eq!(
                metric(&metrics, "ws_monitor_frames_total", &[("opcode", opcode), ("direction", dir)]),
                n.as_u64().unwrap()
            );
        }
    }
    assert!(total > 50, "the violator commits many violations, got {total}");
    assert_eq!(metric(&metrics, "ws_monitor_upgrades_total", &[]), report["upgrades_ok"].as_u64().unwrap());
    assert_eq!(metric(&metrics, "ws_monitor_connections_total", &[]), report["connections"].as_u64().unwrap());
    // Codes allowed on the wire under their number, every other one under "invalid".
    let (mut invalid, mut valid) = (0, 0);
    for (code, n) in report["close_codes"].as_object().unwrap() {
        let (c, n) = (code.parse::<u16>().unwrap(), n.as_u64().unwrap());
        if matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            assert_eq!(metric(&metrics, "ws_monitor_close_codes_total", &[("code", code)]), n);
            valid += 1;
        } else {
            invalid += n;
        }
    }
    assert!(invalid > 0, "the violator sends invalid close codes");
    assert_eq!(metric(&metrics, "ws_monitor_close_codes_total", &[("code", "invalid")]), invalid);
    let series = metrics.keys().filter(|k| k.starts_with("ws_monitor_close_codes_total{")).count();
    assert_eq!(series, valid + 1, "an invalid code got its own series");
    assert_eq!(metric(&metrics, "ws_monitor_capture_gaps_total", &[]), report["capture"]["gaps"].as_u64().unwrap());

    // Logs: per kind, finding lines + suppressed counts == the report's count, and at
    // most 5 lines per kind in one interval.
    for (kind, n) in report["violations"].as_object().unwrap() {
        let tag = format!("kind=\"{kind}\"");
        let lines = log.iter().filter(|l| l.contains(&tag) && !l.contains("suppressed=")).count() as u64;
        let suppressed: u64 = log
            .iter()
            .filter(|l| l.contains(&tag))
            .filter_map(|l| l.split("suppressed=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        assert!(lines <= 5, "{kind}: {lines} lines in one interval");
        assert_eq!(lines + suppressed, n.as_u64().unwrap(), "{kind}: logged + suppressed != report");
    }
    assert!(log.iter().any(|l| l.contains("suppressed=")), "three runs must exceed the per-kind budget");
    let summary = log.iter().find(|l| l.contains("summary:") && l.contains("violations")).expect("summary line");
    assert!(summary.contains(&format!("{total} violations")), "{summary}");
    // Payload bytes never reach the logs: the violator's injected HTTP line is absent.
    assert!(!log.iter().any(|l| l.contains("GET /next")), "payload bytes in the logs");
}

#[test]
fn log_payload_shows_the_bytes_at_fault() {
    if !common::require_root("log_payload_shows_the_bytes_at_fault") {
        return;
    }
    let Run { log, .. } = run("hp", 1, &["--log-payload"]);
    let line = log
        .iter()
        .find(|l| l.contains("kind=\"http_in_stream\"") && l.contains("direction=\"client\""))
        .expect("an http_in_stream finding line");
    assert!(line.contains("payload=") && line.contains("GET /next"), "{line}");
}

/// A child killed if the test panics before it is waited for.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A thread in namespace `ns` (left running, unlike `Netns::run`).
fn spawn_in(ns: &common::Netns, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; setns only affects this thread.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        f()
    })
}

#[test]
fn counters_and_metrics_keep_coming_under_load() {
    if !common::require_root("counters_and_metrics_keep_coming_under_load") {
        return;
    }
    const LOAD_PORT: u16 = 9101;
    const LOAD_METRICS: &str = "127.0.0.1:19641";
    const CONNS: usize = 2;
    const SECS: u64 = 6;
    let (client_ns, server_ns, veth) = common::veth_pair("hl");
    let mut monitor = Killed(
        server_ns
            .command(common::ws_monitor_bin())
            .args(["--iface", &veth, "--port", &LOAD_PORT.to_string(), "--json", "--no-tui", "--log-interval", "1"])
            .args(["--metrics-addr", LOAD_METRICS])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(monitor.0.stderr.take().unwrap());
    let mut log = Vec::new();
    wait_line(&mut err, "capturing", &mut log);
    // The rest of stderr, with the time each line came.
    let lines = std::thread::spawn(move || {
        let mut out = Vec::new();
        for line in err.lines().map_while(Result::ok) {
            out.push((Instant::now(), line));
        }
        out
    });

    // As many small masked text frames as 2 connections take, for 6 s (far more than
    // the monitor can follow on this machine: what matters is that it stays responsive;
    // the bounds are loose, for a machine whose every core is busy).
    let server = spawn_in(&server_ns, move || {
        let listener = std::net::TcpListener::bind(("10.201.0.2", LOAD_PORT)).unwrap();
        let mut readers = Vec::new();
        for _ in 0..CONNS {
            let (mut s, _) = listener.accept().unwrap();
            readers.push(std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                    head.push(b[0]);
                }
                s.write_all(&Head::switching_protocols(RFC_KEY).encode()).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
            }));
        }
        for r in readers {
            r.join().unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            spawn_in(&client_ns, move || {
                let mut s = TcpStream::connect(("10.201.0.2", LOAD_PORT)).unwrap();
                s.write_all(&Head::upgrade_request("/", "x", RFC_KEY).encode()).unwrap();
                let mut resp = [0u8; 129];
                s.read_exact(&mut resp).unwrap();
                let mut batch = Vec::new();
                while batch.len() < 1 << 16 {
                    let text: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
                    Frame::text(text).mask([1, 2, 3, 4]).encode_into(&mut batch);
                }
                let end = Instant::now() + Duration::from_secs(SECS);
                while Instant::now() < end {
                    s.write_all(&batch).unwrap();
                }
            })
        })
        .collect();

    // Meanwhile /metrics answers, every time, within 3 s.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_secs(SECS - 1) {
        let t = Instant::now();
        let m = scrape_at(&server_ns, LOAD_METRICS);
        slowest = slowest.max(t.elapsed());
        scrapes += 1;
        assert!(m.contains_key("ws_monitor_capture_packets_total"), "{m:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(monitor.0.id() as i32, libc::SIGINT) };
    let mut stdout = Vec::new();
    monitor.0.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    assert!(monitor.0.wait().unwrap().success());
    let lines = lines.join().unwrap();
    assert!(slowest < Duration::from_secs(3), "/metrics took {slowest:?} under load");
    assert!(scrapes >= 10);
    // Counter lines (one a second is asked for) keep coming while the load runs: no gap
    // of 4 s or more.
    let ticks: Vec<Instant> = lines
        .iter()
        .filter(|(_, l)| l.contains("counters:"))
        .map(|(t, _)| *t)
        .take_while(|t| *t < started + Duration::from_secs(SECS))
        .collect();
    assert!(
        ticks.len() >= 2,
        "{} counter lines in {SECS} s of load: {:?}",
        ticks.len(),
        lines.iter().map(|(t, l)| (t.duration_since(started), l)).collect::<Vec<_>>()
    );
    let gap = ticks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(gap < Duration::from_secs(4), "counter lines {gap:?} apart under load");
    let report: Value = serde_json::from_slice(&stdout).unwrap();
    assert!(report["frames"]["client"]["text"].as_u64().unwrap_or(0) > 10_000, "{}", report["frames"]);
}
