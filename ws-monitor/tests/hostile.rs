//! Hostile traffic, live: spoofed floods sent between two namespaces (tests/peers/flood.py)
//! while the monitor runs with its budgets. Memory stays under `--memory-limit` and the
//! report says what was given up; a SYN flood through a small flow table leaves a real
//! violator beside it counted exactly. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// An address on the veth's subnet that nobody holds: the server side drops what is
/// sent to it without answering (no RST), as a host drops a spoofed flood.
const NOBODY: &str = "10.201.0.99";

fn flood() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/flood.py").display().to_string()
}

/// The veth of `ns` (the only interface besides lo) and the MAC address of `peer_dev` in
/// `peer`: the spoofed frames' way out and destination.
fn route(ns: &common::Netns, peer: &common::Netns, peer_dev: &str) -> (String, String) {
    let out = ns.exec(&["ls", "/sys/class/net"]);
    let dev = String::from_utf8_lossy(&out.stdout).split_whitespace().find(|d| *d != "lo").expect("a veth").to_string();
    let mac = peer.exec(&["cat", &format!("/sys/class/net/{peer_dev}/address")]);
    (dev, String::from_utf8_lossy(&mac.stdout).trim().to_string())
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn a_spoofed_out_of_order_flood_stays_under_the_memory_limit() {
    if !common::require_root("a_spoofed_out_of_order_flood_stays_under_the_memory_limit") {
        return;
    }
    let (client, server, veth) = common::veth_pair("oo");
    let (dev, mac) = route(&client, &server, &veth);
    let limit: u64 = 4 << 20;
    let monitor =
        common::start_monitor(&server, &veth, &["--memory-limit", "4M", "--ring-size", "64M", "--full-payload"]);
    // 40 spoofed connections, each a byte, a 99-byte hole, then 600 kB that can only wait
    // for the hole: 24 MB to hold without a limit.
    let flows = 40u64;
    let out = client
        .command("python3")
        .args([&flood(), "ooo", "--iface", &dev, "--mac", &mac, "--dst", NOBODY, "--flows", &flows.to_string()])
        .args(["--hole", "99", "--bytes", "600000"])
        .output()
        .expect("flood");
    assert!(out.status.success(), "flood: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    let report = common::stop_monitor(monitor);
    let budgets = &report["budgets"];
    eprintln!("budgets: {budgets}\nunanalysed: {}", report["unanalysed"]);
    assert_eq!(n(&report["kernel"]["ring_full_records"]), 0, "the ring kept up: {report}");
    assert_eq!(n(&report["capture"]["flows_opened"]), flows);
    assert_eq!(n(&budgets["memory_limit"]), limit);
    assert!(n(&budgets["peak_buffered_bytes"]) <= limit, "held more than the limit: {budgets}");
    assert!(n(&budgets["peak_buffered_bytes"]) > limit / 2, "the flood came near the limit: {budgets}");
    // What the limit cost: holes given up, each exactly the 99 bytes left out.
    let hits = n(&budgets["memory_limit_hits"]);
    assert!(hits > 0, "{budgets}");
    assert_eq!(n(&report["unanalysed"]["buffer_limit"]), 99 * hits);
    assert_eq!(n(&budgets["buffered_bytes"]), 0, "nothing held after the end");
}

#[test]
fn a_syn_flood_through_a_small_flow_table_leaves_a_violator_counted_exactly() {
    if !common::require_root("a_syn_flood_through_a_small_flow_table_leaves_a_violator_counted_exactly") {
        return;
    }
    let (client, server, veth) = common::veth_pair("sf");
    let (dev, mac) = route(&client, &server, &veth);
    let mut ws_server = server
        .command("python3")
        .args([&flood(), "server", "--port", "8001"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    BufReader::new(ws_server.stdout.take().expect("stdout")).read_line(&mut line).expect("listening");
    assert!(line.contains("listening"), "{line}");
    let monitor = common::start_monitor(&server, &veth, &["--max-flows", "1000"]);
    // 225 unmasked frames over about 4 s, and meanwhile 66,000 spoofed SYNs.
    let violator = client
        .command("python3")
        .args([&flood(), "violator", "--dst", "10.201.0.2", "--port", "8001", "--frames", "225", "--interval", "0.018"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("violator");
    std::thread::sleep(Duration::from_millis(300));
    let out = client
        .command("python3")
        .args([&flood(), "syn", "--iface", &dev, "--mac", &mac, "--dst", NOBODY, "--count", "66000"])
        .output()
        .expect("syn flood");
    assert!(out.status.success(), "syn flood: {}", String::from_utf8_lossy(&out.stderr));
    let v = violator.wait_with_output().expect("violator");
    assert!(String::from_utf8_lossy(&v.stdout).contains("done"), "violator: {v:?}");
    let _ = ws_server.wait();
    std::thread::sleep(Duration::from_millis(500));
    let report = common::stop_monitor(monitor);
    let budgets = &report["budgets"];
    eprintln!("budgets: {budgets}\ncapture: {}", report["capture"]);
    assert!(n(&report["capture"]["flows_opened"]) > 60_000, "the flood was seen: {}", report["capture"]);
    assert!(n(&budgets["table_full_evictions"]) + n(&budgets["half_open_evictions"]) > 60_000, "{budgets}");
    assert_eq!(n(&budgets["upgraded_evictions"]), 0, "the session was never pushed out: {budgets}");
    assert_eq!(
        n(&report["violations"]["unmasked_client_frame"]),
        225,
        "every violation counted: {}",
        report["violations"]
    );
    assert_eq!(n(&report["upgrades_ok"]), 1);
}
