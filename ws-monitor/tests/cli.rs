//! Bad input gets one clear line and a non-zero exit; nothing stays attached after the
//! monitor exits, even after `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};

fn ws_monitor(args: &[&str]) -> Output {
    Command::new(common::ws_monitor_bin()).args(args).output().unwrap()
}

/// The whole of stderr is one line that starts like an error.
fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, got {}: {err}", out.status);
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("ws-monitor: error: "), "{err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
    err
}

#[test]
fn bad_ports_are_one_line_usage_errors() {
    for args in [
        &["--iface", "lo", "--port", "0"][..],
        &["--iface", "lo", "--port", "http"],
        &["--iface", "lo", "--port", "70000"],
        &["--iface", "lo"],
        &["--port", "8001"],
        &["--iface", "lo", "--port", "8001", "--ring-size", "1000"],
        &["--iface", "lo", "--port", "8001", "--bogus"],
    ] {
        let out = ws_monitor(args);
        let err = one_line_error(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    }
    let err = one_line_error(&ws_monitor(&["--iface", "lo", "--port", "0"]));
    assert!(err.contains("1 to 65535"), "{err}");
}

#[test]
fn too_many_workers_is_refused() {
    let err = one_line_error(&ws_monitor(&["replay", "/dev/null", "--port", "8001", "--workers", "1000"]));
    assert!(err.contains("--workers 1000: at most 256"), "{err}");
}

#[test]
fn unknown_interface_says_how_to_list_them() {
    if !common::require_root("unknown_interface_says_how_to_list_them") {
        return;
    }
    let err = one_line_error(&ws_monitor(&["--iface", "nosuch0", "--port", "8001"]));
    assert!(err.contains("no such interface") && err.contains("ip link"), "{err}");
}

#[test]
fn any_goes_alone_and_every_named_interface_must_exist() {
    let err = one_line_error(&ws_monitor(&["--iface", "lo", "--iface", "any", "--port", "8001"]));
    assert!(err.contains("--iface any already means every interface"), "{err}");
    if !common::require_root("any_goes_alone_and_every_named_interface_must_exist") {
        return;
    }
    let err = one_line_error(&ws_monitor(&["--iface", "lo,nosuch0", "--port", "8001"]));
    assert!(err.contains("no such interface \"nosuch0\""), "{err}");
}

#[test]
fn too_many_ports_is_refused() {
    let mut args = vec!["--iface".to_string(), "lo".to_string()];
    for p in 1..=17 {
        args.extend(["--port".to_string(), (8000 + p).to_string()]);
    }
    let out = Command::new(common::ws_monitor_bin()).args(&args).output().unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("at most 16"), "{err}");
}

#[test]
fn without_root_it_says_to_use_sudo() {
    if !common::require_root("without_root_it_says_to_use_sudo") {
        return;
    }
    // Drop to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(common::ws_monitor_bin())
        .args(["--iface", "lo", "--port", "8001"])
        .output()
        .expect("setpriv (util-linux)");
    let err = one_line_error(&out);
    assert!(err.contains("sudo") && err.contains("CAP_BPF"), "{err}");
}

/// Programs attached to `iface` (ingress + egress) through TCX, seen from the netns.
fn attached(ns: &common::Netns, iface: &str) -> usize {
    let iface = iface.to_string();
    ns.run(move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|t| SchedClassifier::query_tcx(&iface, t).map(|(_, progs)| progs.len()).unwrap_or(0))
            .sum()
    })
}

fn start_monitor(ns: &common::Netns, iface: &str) -> std::process::Child {
    let mut child = ns
        .command(common::ws_monitor_bin())
        .args(["--iface", iface, "--port", "8001", "--log-interval", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let start = Instant::now();
    while !line.contains("capturing") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "monitor exited early");
        assert!(start.elapsed() < Duration::from_secs(20));
    }
    // Keep draining stderr so the monitor never blocks on a full pipe.
    std::thread::spawn(move || for _ in err.lines() {});
    child
}

/// Nothing of ws-monitor's stays on `iface` (TCX programs or netlink filters).
fn wait_detached(ns: &common::Netns, iface: &str) {
    let start = Instant::now();
    loop {
        let tcx = attached(ns, iface);
        let filters =
            String::from_utf8_lossy(&ns.exec(&["tc", "filter", "show", "dev", iface, "ingress"]).stdout).to_string();
        if tcx == 0 && !filters.contains("ws_monitor") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still attached to {iface}: {tcx} TCX programs, filters {filters}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nothing_stays_attached_after_sigterm_or_kill_9() {
    if !common::require_root("nothing_stays_attached_after_sigterm_or_kill_9") {
        return;
    }
    let (_client, server, veth) = common::veth_pair("k");
    let veth = veth.as_str();
    let ns = &server;
    assert_eq!(attached(ns, veth), 0);

    // SIGTERM: clean exit, both hooks detached.
    let child = start_monitor(ns, veth);
    assert_eq!(attached(ns, veth), 2, "ingress and egress on a veth");
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{status}");
    wait_detached(ns, veth);

    // kill -9: the kernel drops the TCX links with the process's file descriptors.
    let mut child = start_monitor(ns, veth);
    assert_eq!(attached(ns, veth), 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_detached(ns, veth);

    // Loopback: one hook only (every packet passes egress then ingress).
    let child = start_monitor(ns, "lo");
    assert_eq!(attached(ns, "lo"), 1);
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    wait_detached(ns, "lo");
}

#[test]
fn man_page_and_completions_come_from_the_cli_definitions() {
    let man = ws_monitor(&["man"]);
    assert!(man.status.success());
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "not roff: {man:.200}");
    for flag in ["iface", "port", "metrics\\-addr", "log\\-payload", "replay", "demo"] {
        assert!(man.contains(flag), "man page lacks {flag}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = ws_monitor(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("ws-monitor") && script.contains("metrics-addr"), "{shell} completions incomplete");
    }
    let err = one_line_error(&ws_monitor(&["completions", "tcsh"]));
    assert!(err.contains("tcsh"), "{err}");
}

#[test]
fn an_interface_down_is_warned_and_one_deleted_ends_the_run_with_a_report() {
    if !common::require_root("an_interface_down_is_warned_and_one_deleted_ends_the_run_with_a_report") {
        return;
    }
    for attach in ["tcx", "netlink"] {
        let (_client, server, veth) = common::veth_pair(&attach[..1]);
        server.exec(&["ip", "link", "set", &veth, "down"]);
        let mut child = server
            .command(common::ws_monitor_bin())
            .args(["--iface", &veth, "--port", "8001", "--json", "--log-interval", "0", "--attach", attach])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        let start = Instant::now();
        while !seen.last().is_some_and(|l: &String| l.contains("capturing")) {
            let mut line = String::new();
            assert!(err.read_line(&mut line).unwrap() > 0, "{attach}: monitor exited early: {seen:?}");
            seen.push(line);
            assert!(start.elapsed() < Duration::from_secs(20));
        }
        assert!(
            seen.iter().any(|l| l.contains(&format!("{veth} is down")) && l.contains("ip link set")),
            "{attach}: a warning that the interface is down: {seen:?}"
        );
        // Deleted while capturing: the run ends within a tick or two, with the report
        // on stdout and one line on stderr that says why.
        server.exec(&["ip", "link", "del", &veth]);
        let deleted = Instant::now();
        let out = loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut rest = String::new();
                err.read_to_string(&mut rest).unwrap();
                let mut stdout = String::new();
                child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
                break (status, rest, stdout);
            }
            if deleted.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{attach}: still running 10 s after {veth} was deleted");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (status, rest, stdout) = out;
        assert!(!status.success(), "{attach}: a deleted interface is a failed run: {status}");
        let errors: Vec<&str> = rest.lines().filter(|l| l.contains("error") || l.contains("WARN")).collect();
        assert_eq!(errors.len(), 1, "{attach}: one line says what happened: {rest}");
        assert!(errors[0].contains("disappeared") && errors[0].contains(&veth), "{attach}: {rest}");
        let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{attach}: a final report on stdout ({e}): {stdout}"));
        assert_eq!(report["capture"]["ring_drops"], 0, "{attach}: {report}");
    }
}

/// `Name:\tvalue` fields of every thread of `pid` (`/proc/PID/task/*/status`).
fn thread_status(pid: u32, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().map_while(Result::ok) {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(v) = status.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))) {
            out.push(v.trim().to_string());
        }
    }
    out
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_BPF: u64 = 1 << 39;

#[test]
fn privileges_are_dropped_on_every_thread_once_attached() {
    if !common::require_root("privileges_are_dropped_on_every_thread_once_attached") {
        return;
    }
    let before = u64::from_str_radix(&thread_status(std::process::id(), "CapEff")[0], 16).unwrap();
    assert!(before & CAP_NET_ADMIN != 0, "the test runs with every capability: {before:x}");
    for (attach, user, needed) in [("tcx", None, 0), ("netlink", None, CAP_NET_ADMIN), ("tcx", Some("nobody"), 0)] {
        let (client, server, veth) = common::veth_pair(&attach[..2]);
        let mut args =
            vec!["--iface", veth.as_str(), "--port", "8001", "--json", "--log-interval", "0", "--attach", attach];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        let mut child = server
            .command(common::ws_monitor_bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("capturing") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "{attach}: monitor exited early");
        }
        std::thread::spawn(move || for _ in err.lines() {});
        let pid = child.id();
        let ctx = format!("{attach} {user:?}");
        let threads = thread_status(pid, "CapEff");
        assert!(threads.len() > 2, "{ctx}: workers and the heartbeat are running: {threads:?}");
        for field in ["CapEff", "CapPrm"] {
            for v in thread_status(pid, field) {
                let caps = u64::from_str_radix(&v, 16).unwrap();
                // CAP_BPF stays only where the kernel wants it for map access.
                assert_eq!(caps & !CAP_BPF, needed, "{ctx}: {field} {v} on a thread (before: {before:x})");
            }
        }
        assert!(
            thread_status(pid, "CapBnd").iter().all(|v| u64::from_str_radix(v, 16).unwrap() & !CAP_BPF == needed),
            "{ctx}"
        );
        assert!(thread_status(pid, "NoNewPrivs").iter().all(|v| v == "1"), "{ctx}: NoNewPrivs");
        assert!(thread_status(pid, "Seccomp").iter().all(|v| v == "2"), "{ctx}: a seccomp filter on every thread");
        if user.is_some() {
            assert!(
                thread_status(pid, "Uid").iter().all(|v| v.starts_with("65534\t")),
                "{ctx}: {:?}",
                thread_status(pid, "Uid")
            );
        }
        // It still captures: a connection to the port, and its bytes, arrive.
        client.exec(&["python3", "-c", "import socket,time\ns=socket.socket()\ns.settimeout(2)\ntry:\n s.connect(('10.201.0.2',8001))\nexcept OSError:\n pass\ntime.sleep(0.3)"]);
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{ctx}: {}", out.status);
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{ctx}: report: {e}"));
        assert!(report["capture"]["packets"].as_u64().unwrap_or(0) >= 2, "{ctx}: a SYN and its answer: {report}");
        assert_eq!(report["privileges"]["seccomp"], true, "{ctx}: {report}");
        wait_detached(&server, &veth);
    }
}

#[test]
fn the_demo_runs_with_dropped_privileges_and_finds_what_it_commits() {
    if !common::require_root("the_demo_runs_with_dropped_privileges_and_finds_what_it_commits") {
        return;
    }
    let ns = common::Netns::new("demo");
    let out = ns
        .command(common::ws_monitor_bin())
        .args(["demo", "--duration", "5", "--no-tui", "--json", "--log-interval", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "demo: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the demo's report");
    let committed: u64 =
        report["demo_committed"].as_object().expect("demo_committed").values().filter_map(|v| v.as_u64()).sum();
    let found: u64 = report["violations"].as_object().unwrap().values().filter_map(|v| v.as_u64()).sum();
    // (A violation committed while the monitor stops may miss the capture.)
    assert!(
        found > 0 && found <= committed && committed - found <= 2,
        "committed {committed}, found {found}: {report}"
    );
    assert_eq!(report["privileges"]["seccomp"], true, "{report}");
}
