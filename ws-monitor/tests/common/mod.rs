//! Helpers for the privileged tests: root check, network namespaces, veth pairs.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// True when the test may load BPF programs and create namespaces. Outside CI a
/// non-root run skips (with a message); in CI (`CI=true`) it fails instead.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (CI runs as root): run `cargo xtask test`");
    }
    eprintln!("SKIPPED {test}: needs root; run `cargo xtask test` (it uses sudo)");
    false
}

/// Runs a command and returns its output, panicking with its stderr on failure.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A network namespace that is deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("wsm-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: a valid namespace fd; setns only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Two namespaces joined by a veth pair: client 10.201.0.1 / fd00:201::1,
/// server 10.201.0.2 / fd00:201::2. Returns (client, server, server-side veth name).
pub fn veth_pair(tag: &str) -> (Netns, Netns, String) {
    let client = Netns::new(&format!("{tag}c"));
    let server = Netns::new(&format!("{tag}s"));
    let pid = std::process::id() % 100_000;
    let (vc, vs) = (format!("wsc{tag}{pid}"), format!("wss{tag}{pid}"));
    sh(&["ip", "link", "add", &vc, "netns", &client.name, "type", "veth", "peer", "name", &vs, "netns", &server.name]);
    for (ns, dev, v4, v6) in
        [(&client, &vc, "10.201.0.1/24", "fd00:201::1/64"), (&server, &vs, "10.201.0.2/24", "fd00:201::2/64")]
    {
        ns.exec(&["ip", "addr", "add", v4, "dev", dev]);
        ns.exec(&["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    (client, server, vs)
}

pub fn ws_monitor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ws-monitor")
}

/// Starts ws-monitor on `veth` in `ns` with `extra` arguments; returns once it captures.
pub fn start_monitor(ns: &Netns, veth: &str, extra: &[&str]) -> std::process::Child {
    let mut child = ns
        .command(ws_monitor_bin())
        .args(["--iface", veth, "--port", "8001", "--json", "--log-interval", "0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ws-monitor");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("capturing") {
        line.clear();
        assert!(err.read_line(&mut line).expect("read stderr") > 0, "ws-monitor exited before capturing");
    }
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            eprintln!("ws-monitor: {l}");
        }
    });
    child
}

/// SIGINT, then the JSON report.
pub fn stop_monitor(child: std::process::Child) -> serde_json::Value {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("ws-monitor output");
    assert!(out.status.success(), "ws-monitor: {}", out.status);
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

/// A tmux session running one command in a terminal of a given size; killed on drop.
pub struct Tmux {
    session: String,
}

impl Tmux {
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        let session = format!("wsm-tui-{}", std::process::id());
        let (w, h) = (width.to_string(), height.to_string());
        let out = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", &w, "-y", &h, command])
            .output()
            .expect("tmux (apt-get install tmux)");
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        Tmux { session }
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        sh(&["tmux"].iter().chain(args.iter()).copied().collect::<Vec<_>>());
    }

    pub fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.session]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until the screen contains `needle`; returns the screen.
    pub fn wait_for(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no {needle:?} on screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.session]).output();
    }
}
