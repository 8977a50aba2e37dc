//! The deployment files in `deploy/` against the program they deploy: every metric and
//! label the Grafana dashboard queries is one the exporter serves, the systemd unit runs
//! options the binary accepts, and the DaemonSet asks for what the capture needs. (The
//! Kubernetes schema, the unit's syntax and the package are checked by `cargo xtask dist
//! --check`.)
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use serde_json::Value;
use ws_monitor::engine::EngineStats;
use ws_monitor::outputs::metrics::Exporter;
use ws_monitor::outputs::report::CaptureReport;
use ws_monitor::reassembly::ReassemblyStats;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Series names and their label names, from the exposition text the exporter serves.
fn served_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut exporter = Exporter::bind(addr).expect("bind the exporter");
    let bound = exporter.local_addr().expect("bound address");
    // A close code, so that the close-code series exist too.
    let engine = EngineStats { close_codes: [(1000u16, 1u64)].into_iter().collect(), ..EngineStats::default() };
    exporter.update(&engine, &ReassemblyStats::default(), &CaptureReport::default(), 0);
    exporter.serve().expect("serve");
    let mut s = TcpStream::connect(bound).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("ws_monitor_")) {
        let series = line.split_whitespace().next().unwrap_or_default();
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = out.entry(name.to_string()).or_default();
        for pair in labels.trim_end_matches('}').split(',').filter(|p| !p.is_empty()) {
            entry.insert(pair.split('=').next().unwrap_or_default().to_string());
        }
    }
    out
}

/// The `ws_monitor_*` names in a PromQL expression, and the labels of its `by (...)`.
fn names_and_groupings(expr: &str) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ws_monitor_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    let mut by = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let tail = &rest[i + 4..];
        let end = tail.find(')').unwrap_or(tail.len());
        by.extend(tail[..end].split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
        rest = &tail[end..];
    }
    (names, by)
}

#[test]
fn the_grafana_dashboard_queries_only_what_the_exporter_serves() {
    let served = served_metrics();
    assert!(served.contains_key("ws_monitor_violations_total"), "{served:?}");
    let dashboard: Value = serde_json::from_str(&deploy("grafana/ws-monitor.json")).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "a dashboard worth the name");
    let mut queried = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel without targets: {panel}"));
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let (names, by) = names_and_groupings(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in &names {
                let labels = served.get(name).unwrap_or_else(|| panic!("{name} is not exported ({expr})"));
                for l in &by {
                    // Prometheus adds `instance` (and `job`) to every scraped series.
                    assert!(
                        labels.contains(l) || l == "instance" || l == "job",
                        "{name} has no label {l:?} ({expr}); it has {labels:?}"
                    );
                }
                queried.insert(name.clone());
            }
        }
    }
    for must in
        ["ws_monitor_violations_total", "ws_monitor_close_analysis_total", "ws_monitor_capture_ring_drops_total"]
    {
        assert!(queried.contains(must), "the dashboard shows {must}");
    }
}

#[test]
fn the_service_and_the_daemonset_run_options_the_binary_accepts() {
    let unit = deploy("systemd/ws-monitor.service");
    let default = deploy("systemd/ws-monitor.default");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let args_line = default.lines().find_map(|l| l.strip_prefix("WS_MONITOR_ARGS=")).expect("WS_MONITOR_ARGS");
    let daemonset = deploy("kubernetes/daemonset.yaml");
    let ds_exec = daemonset.lines().find_map(|l| l.trim().strip_prefix("- exec ")).expect("the DaemonSet's command");
    let ds_args = daemonset
        .lines()
        .skip_while(|l| !l.contains("name: WS_MONITOR_ARGS"))
        .find_map(|l| l.trim().strip_prefix("value: "))
        .expect("the DaemonSet's WS_MONITOR_ARGS");
    for (command, args) in [(exec, args_line), (ds_exec, ds_args)] {
        let words: Vec<String> = command
            .split_whitespace()
            .skip(1)
            .filter(|w| *w != "$WS_MONITOR_ARGS")
            .chain(args.trim_matches('"').split_whitespace())
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        // clap checks every option without starting a capture: `--help` after them.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ws-monitor"))
            .args(&words)
            .arg("--help")
            .output()
            .expect("run ws-monitor");
        assert!(out.status.success(), "{words:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Not root: the three capabilities, nothing more.
    for needed in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
        assert!(unit.lines().any(|l| l.starts_with("AmbientCapabilities=") && l.contains(needed)), "{needed}");
    }
    assert!(unit.contains("Restart=on-failure") && unit.contains("--metrics-addr 127.0.0.1:9640"));
    assert!(daemonset.contains("hostNetwork: true") && daemonset.contains("prometheus.io/scrape: \"true\""));
    assert!(
        daemonset.contains("add: [\"BPF\", \"NET_ADMIN\", \"PERFMON\"]") && daemonset.contains("path: /sys/fs/bpf")
    );
}
