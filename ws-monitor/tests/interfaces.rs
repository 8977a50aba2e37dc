//! Capture on several interfaces, as root: `--iface any` in a network namespace that
//! gets a bridge and a veth port while the monitor runs. Every packet between the
//! client and the server passes two monitored interfaces (the port, then the bridge, and
//! the other way back); the monitor must attach to both as they come up, hand each
//! packet on once, and name the interface in the connection log.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sh, Netns};
use serde_json::Value;

fn flood_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/flood.py").display().to_string()
}

/// Waits until `lines` has one containing each of `needles` (panics after 15 s).
fn wait_for_lines(lines: &Mutex<Vec<String>>, needles: &[&str]) {
    let start = Instant::now();
    loop {
        let seen = lines.lock().unwrap();
        if needles.iter().all(|n| seen.iter().any(|l| l.contains(n))) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no {needles:?} within 15 s in {seen:#?}");
        drop(seen);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The monitor's stderr, line by line, as it comes.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let err = BufReader::new(child.stderr.take().expect("stderr"));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            eprintln!("ws-monitor: {l}");
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn any_follows_interfaces_that_come_up_and_counts_a_bridged_packet_once() {
    if common::require_root("any_follows_interfaces_that_come_up_and_counts_a_bridged_packet_once") {
        bridged("tcx");
    }
}

#[test]
fn any_follows_interfaces_through_netlink_filters_too() {
    if common::require_root("any_follows_interfaces_through_netlink_filters_too") {
        bridged("netlink");
    }
}

/// The scenario above with `--attach attach`.
fn bridged(attach: &str) {
    let tag = &attach[..1];
    let host = Netns::new(&format!("any{tag}h"));
    let client = Netns::new(&format!("any{tag}c"));
    let dir = tempfile::tempdir().unwrap();
    let connections = dir.path().join("connections.jsonl");
    // Only lo exists when the monitor starts.
    let mut monitor = host
        .command(common::ws_monitor_bin())
        .args([
            "--iface",
            "any",
            "--attach",
            attach,
            "--port",
            "8001",
            "--json",
            "--log-interval",
            "0",
            "--connections",
        ])
        .arg(&connections)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ws-monitor");
    let lines = collect_stderr(&mut monitor);
    wait_for_lines(&lines, &["capturing"]);

    // A bridge with the server's address, and a veth port to the client, come up.
    let pid = std::process::id() % 100_000;
    let (br, vh, vc) = (format!("wsb{tag}{pid}"), format!("wsh{tag}{pid}"), format!("wsv{tag}{pid}"));
    host.exec(&["ip", "link", "add", &br, "type", "bridge"]);
    host.exec(&["ip", "addr", "add", "10.202.0.2/24", "dev", &br]);
    host.exec(&["ip", "link", "set", &br, "up"]);
    sh(&["ip", "link", "add", &vh, "netns", &host.name, "type", "veth", "peer", "name", &vc, "netns", &client.name]);
    host.exec(&["ip", "link", "set", &vh, "master", &br]);
    host.exec(&["ip", "link", "set", &vh, "up"]);
    client.exec(&["ip", "addr", "add", "10.202.0.1/24", "dev", &vc]);
    client.exec(&["ip", "link", "set", &vc, "up"]);
    wait_for_lines(&lines, &[&format!("{br} came up"), &format!("{vh} came up")]);

    let mut server = host
        .command("python3")
        .args([&flood_script(), "server", "--port", "8001"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut ready = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut ready).expect("server output");
    assert_eq!(ready.trim(), "listening");
    // The bridge forwards once its port has learnt addresses: retry the connection.
    let frames = 50;
    let start = Instant::now();
    loop {
        let out = client
            .command("python3")
            .args([&flood_script(), "violator", "--dst", "10.202.0.2", "--port", "8001"])
            .args(["--frames", &frames.to_string(), "--interval", "0.01"])
            .output()
            .expect("run the client");
        if out.status.success() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "client: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(server.wait().expect("server").success());
    std::thread::sleep(Duration::from_millis(500));
    let report = common::stop_monitor(monitor);

    let names: Vec<&str> = report["attach"]["interfaces"]
        .as_array()
        .expect("attach.interfaces")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    for name in ["lo", br.as_str(), vh.as_str()] {
        assert!(names.contains(&name), "{name} attached: {names:?}");
    }
    assert_eq!(report["attach"]["any"], true);
    assert_eq!(report["attach"]["mode"], attach);
    // Every packet passed two monitored interfaces; one copy of each was handed on.
    let kernel = &report["kernel"];
    eprintln!(
        "{attach}: packets_matched {} packets_duplicate {} duplicate_bytes {}",
        kernel["packets_matched"], kernel["packets_duplicate"], report["reassembly"]["duplicate_bytes"]
    );
    assert!(n(&kernel["packets_matched"]) > 2 * frames, "{kernel}");
    assert_eq!(n(&kernel["packets_duplicate"]), n(&kernel["packets_matched"]), "each packet seen twice: {kernel}");
    assert_eq!(
        n(&report["reassembly"]["duplicate_bytes"]),
        0,
        "nothing reached reassembly twice: {}",
        report["reassembly"]
    );
    assert_eq!(n(&report["violations"]["unmasked_client_frame"]), frames, "{}", report["violations"]);

    let log = std::fs::read_to_string(&connections).expect("connection log");
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(records.len(), 1, "{log}");
    let r = &records[0];
    assert_eq!(r["iface"], vh.as_str(), "the connection's first packet came in on the port: {r}");
    assert_eq!(r["client"].as_str().map(|c| c.starts_with("10.202.0.1:")), Some(true), "{r}");
    assert_eq!(r["server"], "10.202.0.2:8001");
    assert_eq!(n(&r["frames"]["client"]), frames, "{r}");
    assert_eq!(n(&r["violations"]), frames, "{r}");
}
