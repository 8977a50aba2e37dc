//! Bad input gets one clear line and a non-zero exit; nothing stays attached after the
//! monitor exits, even after `kill -9`.

mod common;

use std::io::{BufRead, BufReader};
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
fn attached(ns: &common::Netns, iface: &'static str) -> usize {
    ns.run(move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|t| SchedClassifier::query_tcx(iface, t).map(|(_, progs)| progs.len()).unwrap_or(0))
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

fn wait_detached(ns: &common::Netns, iface: &'static str) {
    let start = Instant::now();
    while attached(ns, iface) > 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "programs still attached to {iface}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nothing_stays_attached_after_sigterm_or_kill_9() {
    if !common::require_root("nothing_stays_attached_after_sigterm_or_kill_9") {
        return;
    }
    let (_client, server, veth) = common::veth_pair("k");
    let veth: &'static str = Box::leak(veth.into_boxed_str());
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
