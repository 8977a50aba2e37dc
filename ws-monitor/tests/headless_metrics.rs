//! Headless mode and Prometheus: a live run with injected violations (the raw-socket
//! violator, three times over); the log lines and the `/metrics` values must agree
//! with the `--json` report. Needs root.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// `name{labels} value` lines of a Prometheus text exposition, keyed by `name{labels}`.
fn scrape(ns: &common::Netns) -> BTreeMap<String, f64> {
    let body = ns.run(|| {
        let mut s = TcpStream::connect(METRICS).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
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
    log: Vec<String>,
}

/// The monitor (headless, with metrics) on a veth while the violator runs `runs` times.
fn run(tag: &str, runs: usize, extra: &[&str]) -> Run {
    let (client_ns, server_ns, veth) = common::veth_pair(tag);
    let mut monitor = server_ns
        .command(common::ws_monitor_bin())
        .args(["--iface", &veth, "--port", PORT, "--json", "--no-tui", "--log-interval", "60"])
        .args(["--max-frame-size", "64K", "--metrics-addr", METRICS])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(monitor.stderr.take().unwrap());
    let mut log = Vec::new();
    wait_line(&mut err, "capturing", &mut log);

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
        let mut served = String::new();
        server_out.read_to_string(&mut served).unwrap();
        assert!(server.wait().unwrap().success(), "violator server: {served}");
    }
    // One tick (1 s) publishes the totals to /metrics.
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = scrape(&server_ns);

    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(monitor.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    log.extend(rest.lines().map(str::to_string));
    let out = monitor.wait_with_output().unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    Run { report, metrics, log }
}

#[test]
fn logs_and_metrics_agree_with_the_json_report() {
    if !common::require_root("logs_and_metrics_agree_with_the_json_report") {
        return;
    }
    let Run { report, metrics, log } = run("hm", RUNS, &[]);

    // /metrics == JSON, for every kind and direction, opcode, and the totals.
    let mut total = 0;
    for dir in ["client", "server"] {
        for (kind, n) in report["violations_by_direction"][dir].as_object().unwrap() {
            let n = n.as_u64().unwrap();
            total += n;
            assert_eq!(metric(&metrics, "ws_monitor_violations_total", &[("kind", kind), ("direction", dir)]), n, "{kind} {dir}");
        }
        for (opcode, n) in report["frames"][dir].as_object().unwrap() {
            assert_eq!(metric(&metrics, "ws_monitor_frames_total", &[("opcode", opcode), ("direction", dir)]), n.as_u64().unwrap());
        }
    }
    assert!(total > 50, "the violator commits many violations, got {total}");
    assert_eq!(metric(&metrics, "ws_monitor_upgrades_total", &[]), report["upgrades_ok"].as_u64().unwrap());
    assert_eq!(metric(&metrics, "ws_monitor_connections_total", &[]), report["connections"].as_u64().unwrap());
    for (code, n) in report["close_codes"].as_object().unwrap() {
        assert_eq!(metric(&metrics, "ws_monitor_close_codes_total", &[("code", code)]), n.as_u64().unwrap());
    }
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
