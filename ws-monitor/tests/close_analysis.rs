//! How connections end, with real peers (Node `ws` on both sides, tests/peers/close_peers.js)
//! between two network namespaces, monitored live: the connection log (`--connections`)
//! line by line against what the peers did, and the report's counts. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

fn peer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/close_peers.js")
}

/// Whether Node and `ws` are installed (`cargo xtask setup --tests` does it).
fn node_ws() -> bool {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/node_modules/ws/package.json");
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !(node && ws.is_file()) {
        assert!(
            std::env::var("CI").is_err(),
            "node with ws in tests/peers/node_modules: run `cargo xtask setup --tests`"
        );
        eprintln!("SKIPPED: needs node with ws in tests/peers/node_modules (cargo xtask setup --tests)");
        return false;
    }
    true
}

struct Run {
    /// The interface captured on.
    veth: String,
    report: Value,
    /// `--events` lines.
    events: Vec<Value>,
    /// Connection-log lines by client port.
    lines: BTreeMap<u64, Value>,
    /// What the client did, by scenario.
    client: Value,
}

/// The four scenarios of close_peers.js, monitored live with `extra` arguments.
fn run(tag: &str, extra: &[&str]) -> Run {
    let (client, server, veth) = common::veth_pair(tag);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("connections.jsonl");
    let events = dir.path().join("events.jsonl");
    let mut srv = server
        .command("node")
        .arg(peer())
        .args(["server", "--port", "8001", "--limit", "1000", "--expect", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node server");
    let mut line = String::new();
    BufReader::new(srv.stdout.take().expect("stdout")).read_line(&mut line).expect("listening");
    assert!(line.contains("listening"), "{line}");
    let (log_arg, events_arg) = (log.display().to_string(), events.display().to_string());
    let mut args = vec!["--connections", log_arg.as_str(), "--events", events_arg.as_str()];
    args.extend_from_slice(extra);
    let monitor = common::start_monitor(&server, &veth, &args);
    let out = client
        .command("node")
        .arg(peer())
        .args(["client", "--host", "10.201.0.2", "--port", "8001", "--big", "5000"])
        .output()
        .expect("node client");
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    let client_said: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    let _ = srv.wait();
    std::thread::sleep(Duration::from_millis(500));
    let report = common::stop_monitor(monitor);
    let text = std::fs::read_to_string(&log).expect("connection log");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .map(|v| (v["client"].as_str().and_then(|c| c.rsplit(':').next()?.parse().ok()).expect("client port"), v))
        .collect();
    let events = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    Run { veth, report, events, lines, client: client_said }
}

impl Run {
    fn line(&self, scenario: &str) -> &Value {
        let port = self.client[scenario]["port"].as_u64().expect("port");
        self.lines
            .get(&port)
            .unwrap_or_else(|| panic!("no connection-log line for {scenario} (port {port}): {:?}", self.lines))
    }
}

#[test]
fn the_connection_log_says_how_each_connection_went_and_ended() {
    if !common::require_root("the_connection_log_says_how_each_connection_went_and_ended") || !node_ws() {
        return;
    }
    let r = run("cl", &["--log-payload"]);
    assert_eq!(r.lines.len(), 4, "one line per connection: {:?}", r.lines);

    let normal = r.line("normal");
    assert_eq!(normal["iface"], r.veth.as_str());
    let hs = &normal["handshake"];
    assert_eq!(hs["line"], "GET /echo");
    assert_eq!(hs["host"], "10.201.0.2:8001");
    assert_eq!(hs["origin"], "http://test.example");
    assert_eq!(hs["status"], 101);
    assert_eq!(hs["extensions"], "permessage-deflate; client_max_window_bits", "ws offers deflate by default");
    assert_eq!(hs["accepted_extensions"], Value::Null, "the server turned it down");
    assert_eq!(normal["messages"], serde_json::json!({"client": 1, "server": 1}));
    assert_eq!(normal["frames"], serde_json::json!({"client": 2, "server": 2}), "a text frame and a close frame each");
    assert_eq!(normal["close"]["client"]["code"], 1000);
    assert_eq!(normal["close"]["client"]["reason"], "bye");
    assert_eq!(normal["close"]["server"]["code"], 1000);
    assert_eq!(normal["closed_first"], "client");
    assert_eq!(normal["ending"], "close_handshake");
    assert_eq!(normal["violations"], 0);
    assert_eq!(normal["tracked"], "handshake");
    assert_eq!(normal["lost_sync"], false);
    assert!(normal["duration_s"].as_f64().expect("duration") > 0.0);

    let big = r.line("big");
    assert_eq!(big["close"]["server"]["code"], 1009);
    assert_eq!(big["close"]["server"]["reason"], r.client["big"]["reason"]);
    assert_eq!(big["closed_first"], "server");
    assert_eq!(big["handshake"]["line"], "GET /limit");

    let binary = r.line("binary");
    assert_eq!(binary["close"]["server"]["code"], 1003);
    assert_eq!(binary["close"]["server"]["reason"], "text only");
    assert_eq!(binary["closed_first"], "server");
    assert_eq!(binary["messages"]["client"], 1);

    let abrupt = r.line("abrupt");
    assert_eq!(abrupt["close"]["client"], Value::Null, "{abrupt}");
    assert_eq!(abrupt["ending"], "fin_without_close", "{abrupt}");
    assert_eq!(abrupt["messages"], serde_json::json!({"client": 1, "server": 1}));

    let endings = &r.report["endings"];
    assert_eq!(endings["close_handshake"], 3, "{endings}");
    assert_eq!(endings["fin_without_close"], 1, "{endings}");
    assert_eq!(endings["rst"], 0, "{endings}");

    // Close analysis: the two refusals by the server, named after what came before them,
    // and the abrupt end on both sides; none of it counts as a violation.
    let ca = &r.report["close_analysis"];
    assert_eq!(ca["peer_protocol_error"], serde_json::json!({"client": 0, "server": 2}), "{ca}");
    assert_eq!(ca["abnormal_closure"], serde_json::json!({"client": 1, "server": 1}), "{ca}");
    assert_eq!(ca["idle_timeout_cut"], serde_json::json!({"client": 0, "server": 0}), "{ca}");
    assert_eq!(r.report["violations"].as_object().map(|v| v.values().filter_map(Value::as_u64).sum::<u64>()), Some(0));
    let details: Vec<String> =
        r.events.iter().filter_map(|e| Some(format!("{} {}", e["kind"].as_str()?, e["detail"].as_str()?))).collect();
    for want in [
        "peer_protocol_error the server closed 1009 after a 5000-byte binary message from the client: it enforces a message size limit",
        "peer_protocol_error the server closed 1003 after a binary message from the client: it does not accept that data type",
        "abnormal_closure the TCP connection ended (FIN) without a close frame from the client",
        "abnormal_closure the TCP connection ended (FIN) without a close frame from the server",
    ] {
        assert!(details.iter().any(|d| d == want), "no event {want:?} in {details:#?}");
    }
    assert_eq!(details.len(), 4, "{details:#?}");
    // The diagnosis puts the server's refusals first.
    let first = &r.report["diagnosis"][0];
    assert!(
        first["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("the server closes connections with a protocol-error code")),
        "{}",
        r.report["diagnosis"]
    );
    assert_eq!(first["evidence"], 2);
}

#[test]
fn close_reasons_are_payload_and_stay_out_of_the_log_without_log_payload() {
    if !common::require_root("close_reasons_are_payload_and_stay_out_of_the_log_without_log_payload") || !node_ws() {
        return;
    }
    let r = run("cr", &[]);
    let binary = r.line("binary");
    assert_eq!(binary["close"]["server"]["code"], 1003);
    assert!(binary["close"]["server"].get("reason").is_none(), "{binary}");
}
