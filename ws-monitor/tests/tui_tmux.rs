//! The dashboard in a real terminal: ws-monitor runs inside tmux (in a private network
//! namespace, on its loopback), keys switch panes and pause, q exits, and the terminal
//! is restored (cooked mode, main screen). Needs root and tmux.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::time::{Duration, Instant};

use common::Tmux;

#[test]
fn dashboard_renders_switches_panes_pauses_and_restores_the_terminal() {
    if !common::require_root("dashboard_renders_switches_panes_pauses_and_restores_the_terminal") {
        return;
    }
    let ns = common::Netns::new("tui");
    // After ws-monitor exits, print the terminal mode: `icanon` (not `-icanon`) means raw
    // mode was turned off; then keep the pane open so it can be read.
    let command = format!(
        "ip netns exec {} {} --iface lo --port 8001; echo EXITED=$?; stty -a | tr ' ' '\\n' | grep -x -- '-*icanon'; sleep 60",
        ns.name,
        common::ws_monitor_bin()
    );
    let tmux = Tmux::start(&command, 120, 40);

    let screen = tmux.wait_for("port 8001");
    assert!(screen.contains("Violations") && screen.contains("Connections"), "{screen}");
    assert!(screen.contains("q quit"), "footer lists the keys:\n{screen}");

    // Traffic on the monitored port: a WebSocket request that lost its Upgrade headers
    // (a plain HTTP request without any WebSocket header is only counted).
    let server = ns.command("python3").args(["-m", "http.server", "8001", "--bind", "127.0.0.1"]).spawn().unwrap();
    let _server = KillOnDrop(server);
    std::thread::sleep(Duration::from_millis(500));
    let _ = ns.command("python3")
        .args([
            "-c",
            "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:8001/', headers={'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version': '13'})).read()",
        ])
        .output();
    tmux.wait_for("upgrade_missing");

    tmux.keys(&["Space"]);
    tmux.wait_for("PAUSED");
    tmux.keys(&["Space"]);
    let start = Instant::now();
    while tmux.screen().contains("PAUSED") {
        assert!(start.elapsed() < Duration::from_secs(10), "Space did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }

    tmux.keys(&["?"]);
    tmux.wait_for("this help");
    tmux.keys(&["Escape"]);

    // Tab moves the focus to the connections pane: its marker row appears there.
    let before = tmux.screen();
    tmux.keys(&["Tab"]);
    let start = Instant::now();
    while tmux.screen() == before {
        assert!(start.elapsed() < Duration::from_secs(10), "Tab changed nothing");
        std::thread::sleep(Duration::from_millis(100));
    }

    tmux.keys(&["q"]);
    let screen = tmux.wait_for("EXITED=");
    assert!(screen.contains("EXITED=0"), "clean exit:\n{screen}");
    assert!(screen.lines().any(|l| l.trim() == "icanon"), "terminal left in raw mode:\n{screen}");
    // Back on the main screen: the dashboard's frame is gone, the summary is printed.
    assert!(!screen.contains("q quit  ? help"), "alternate screen not left:\n{screen}");
    assert!(screen.contains("upgrade_missing"), "summary after exit:\n{screen}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
