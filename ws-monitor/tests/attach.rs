//! Attaching the way kernels before 6.6 do (netlink `cls_bpf` filters on the clsact
//! qdisc), forced on this kernel with `--attach netlink`: every restart works, nothing of
//! ws-monitor's stays after a clean exit, a filter that `kill -9` leaves costs nothing and
//! is removed by the next start or by `ws-monitor detach`, and another tool's qdisc and
//! filters are never touched. Needs root. (`cargo xtask kernels` runs the same on real
//! 5.10, 6.1 and 6.12 kernels under QEMU.)
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
use aya::programs::loaded_programs;
use ws_monitor::sources::capture::clsact::{Filter, Hook, Rtnl};
use ws_monitor_common::{Counter, ORPHAN_AFTER_NS};

const PORT: &str = "8001";

struct Setup {
    client: common::Netns,
    server: common::Netns,
    veth: String,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let (client, server, veth) = common::veth_pair(tag);
        Setup { client, server, veth }
    }

    fn ifindex(&self) -> u32 {
        let out = self.server.exec(&["cat", &format!("/sys/class/net/{}/ifindex", self.veth)]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Every filter on the server's veth, both hooks.
    fn filters(&self) -> Vec<Filter> {
        let ifindex = self.ifindex();
        self.server.run(move || {
            let mut rtnl = Rtnl::open().unwrap();
            Hook::BOTH.iter().flat_map(|h| rtnl.filters(ifindex, *h).unwrap()).collect()
        })
    }

    fn ours(&self) -> Vec<Filter> {
        self.filters().into_iter().filter(Filter::is_ws_monitor).collect()
    }

    fn qdisc(&self) -> Option<String> {
        let ifindex = self.ifindex();
        self.server.run(move || Rtnl::open().unwrap().ingress_slot(ifindex).unwrap())
    }

    fn tc(&self, args: &str) {
        let mut full = vec!["tc"];
        full.extend(args.split_whitespace());
        let full: Vec<String> = full.into_iter().map(|a| a.replace("VETH", &self.veth)).collect();
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.server.exec(&refs);
    }

    /// Starts `ws-monitor --attach netlink` on the veth; returns once it is capturing,
    /// with what it said on the way.
    fn start(&self) -> (Monitor, Vec<String>) {
        let mut child = self
            .server
            .command(common::ws_monitor_bin())
            .args(["--iface", &self.veth, "--port", PORT, "--attach", "netlink", "--json", "--log-interval", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut said = Vec::new();
        let start = Instant::now();
        loop {
            let mut line = String::new();
            assert!(err.read_line(&mut line).unwrap() > 0, "monitor exited early: {said:?}");
            said.push(line.trim().to_string());
            if line.contains("capturing") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "not capturing after 20 s: {said:?}");
        }
        std::thread::spawn(move || for _ in err.lines() {});
        (Monitor(Some(child)), said)
    }

    /// One TCP connection through the veth: `up` bytes to the server, `down` back.
    fn exchange(&self, up: usize, down: usize) {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/tcp_peers.py");
        let out = |n: &str| dir.path().join(n).to_string_lossy().to_string();
        std::fs::write(out("go"), b"go").unwrap();
        let mut server = self
            .server
            .command("python3")
            .args([script, "server", "--port", PORT, "--send-bytes", &down.to_string(), "--out", &out("s")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening"));
        let client = self
            .client
            .command("python3")
            .args([script, "client", "--port", PORT, "--hosts", "10.201.0.2", "--send-bytes", &up.to_string()])
            .args(["--go", &out("go"), "--out", &out("c")])
            .status()
            .unwrap();
        if !client.success() {
            let _ = server.kill();
        }
        assert!(client.success());
        assert!(server.wait().unwrap().success());
    }

    /// Packets through the veth that the filters run on (refused connections).
    fn some_packets(&self) {
        for _ in 0..3 {
            let _ = self
                .client
                .command("python3")
                .args([
                    "-c",
                    "import socket\ntry: socket.create_connection(('10.201.0.2', 8001), 2)\nexcept OSError: pass",
                ])
                .status();
        }
    }
}

/// A running ws-monitor, killed if a failing test leaves it running.
struct Monitor(Option<Child>);

impl Monitor {
    fn take(mut self) -> Child {
        self.0.take().expect("a running monitor")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, and the report printed on the way out.
fn stop(monitor: Monitor) -> serde_json::Value {
    let child = monitor.take();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    serde_json::from_slice(&out.stdout).expect("the JSON report")
}

fn kill_9(monitor: Monitor) {
    let mut child = monitor.take();
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `packets_seen` of the program attached by `filter`, read through its COUNTERS map.
fn packets_seen(setup: &Setup, filter: &Filter) -> u64 {
    let prog_id = filter.prog_id.expect("a bpf filter names its program");
    setup.server.run(move || {
        let program = loaded_programs().flatten().find(|p| p.id() == prog_id).expect("the program is loaded");
        let id = program
            .map_ids()
            .unwrap()
            .unwrap()
            .into_iter()
            .find(|id| MapInfo::from_id(*id).unwrap().name_as_str() == Some("COUNTERS"))
            .expect("a COUNTERS map");
        let counters: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(MapData::from_id(id).unwrap())).unwrap();
        counters.get(&(Counter::PacketsSeen as u32), 0).unwrap().iter().sum()
    })
}

fn assert_exact(report: &serde_json::Value, up: u64, down: u64) {
    let cap = &report["capture"];
    assert_eq!((cap["bytes_client"].as_u64(), cap["bytes_server"].as_u64()), (Some(up), Some(down)), "{report}");
    assert_eq!((cap["ring_drops"].as_u64(), cap["gaps"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(report["attach"]["mode"], "netlink");
}

#[test]
fn netlink_filters_restart_clean_up_and_leave_other_tools_alone() {
    if !common::require_root("netlink_filters_restart_clean_up_and_leave_other_tools_alone") {
        return;
    }
    let s = Setup::new("a");
    let (up, down) = (200_000, 150_000);

    // A clean exit removes the filters and the clsact qdisc ws-monitor added.
    let (child, _) = s.start();
    assert_eq!(s.ours().len(), 2, "ingress and egress filters");
    assert_eq!(s.qdisc().as_deref(), Some("clsact"));
    s.exchange(up, down);
    let report = stop(child);
    assert_exact(&report, up as u64, down as u64);
    assert_eq!(report["attach"]["interfaces"][0]["qdisc_owned"], true);
    assert!(s.filters().is_empty());
    assert_eq!(s.qdisc(), None, "the clsact qdisc ws-monitor added is gone");

    // And again: the second run must not trip over anything the first left.
    let (child, said) = s.start();
    assert!(!said.iter().any(|l| l.contains("stale")), "{said:?}");
    s.exchange(up, down);
    assert_exact(&stop(child), up as u64, down as u64);
    assert_eq!(s.qdisc(), None);

    // kill -9 leaves the filters attached, but dormant once the heartbeat is old.
    let (child, _) = s.start();
    kill_9(child);
    let left = s.ours();
    assert_eq!(left.len(), 2, "netlink filters outlive a killed process");
    let before = packets_seen(&s, &left[0]);
    s.some_packets();
    assert!(packets_seen(&s, &left[0]) > before, "still counting while the heartbeat is fresh");
    std::thread::sleep(Duration::from_nanos(ORPHAN_AFTER_NS + 1_000_000_000));
    let dormant = packets_seen(&s, &left[0]);
    s.some_packets();
    assert_eq!(packets_seen(&s, &left[0]), dormant, "an orphan does nothing");

    // The next start removes them (and takes over the qdisc the killed one added).
    let (child, said) = s.start();
    assert!(said.iter().any(|l| l.contains("removed 2 stale ws-monitor filter")), "{said:?}");
    s.exchange(up, down);
    let report = stop(child);
    assert_exact(&report, up as u64, down as u64);
    assert_eq!(report["attach"]["interfaces"][0]["stale_filters_removed"], 2);
    assert!(s.filters().is_empty());
    assert_eq!(s.qdisc(), None);

    // Someone else's clsact qdisc and filter: used as they are, never touched.
    s.tc("qdisc add dev VETH clsact");
    // A final verdict ahead of ws-monitor's filter would hide every packet from it.
    s.tc("filter add dev VETH ingress prio 7 protocol all u32 match u32 0 0 classid 1:1");
    let foreign = s.filters();
    assert!(!foreign.is_empty() && foreign.iter().all(|f| !f.is_ws_monitor()));
    let (child, _) = s.start();
    s.exchange(up, down);
    let report = stop(child);
    assert_exact(&report, up as u64, down as u64);
    assert_eq!(report["attach"]["interfaces"][0]["qdisc_owned"], false);
    assert_eq!(s.filters(), foreign, "the foreign filter is exactly as it was");
    assert_eq!(s.qdisc().as_deref(), Some("clsact"), "the foreign qdisc stays");

    // kill -9 on top of the foreign qdisc, then `ws-monitor detach`: only ours go.
    let (child, _) = s.start();
    kill_9(child);
    let out = s.server.command(common::ws_monitor_bin()).args(["detach", "--iface", &s.veth]).output().unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("removed 2 stale ws-monitor filters (ingress, egress)"), "{said}");
    assert!(!said.contains("qdisc"), "the qdisc was not ws-monitor's: {said}");
    assert_eq!(s.filters(), foreign);
    s.tc("qdisc del dev VETH clsact");

    // detach after a kill -9 where ws-monitor had added the qdisc: both go.
    let (child, _) = s.start();
    kill_9(child);
    let out = s.server.command(common::ws_monitor_bin()).args(["detach", "--iface", &s.veth]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("and the clsact qdisc ws-monitor had added"), "{said}");
    assert!(s.filters().is_empty());
    assert_eq!(s.qdisc(), None);
    let out = s.server.command(common::ws_monitor_bin()).args(["detach", "--iface", &s.veth]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing of ws-monitor's is attached"));
}

#[test]
fn a_running_instance_keeps_its_filters_when_another_starts_or_detaches() {
    if !common::require_root("a_running_instance_keeps_its_filters_when_another_starts_or_detaches") {
        return;
    }
    let s = Setup::new("b");
    let (first, _) = s.start();
    let (second, said) = s.start();
    assert!(said.iter().any(|l| l.contains("another ws-monitor")), "{said:?}");
    assert_eq!(s.ours().len(), 4, "two instances, two hooks each");
    let out = s.server.command(common::ws_monitor_bin()).args(["detach", "--iface", &s.veth]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("left 4 filters") && said.contains("still running"), "{said}");
    assert_eq!(s.ours().len(), 4);
    s.exchange(1000, 1000);
    assert_exact(&stop(second), 1000, 1000);
    assert_eq!(s.ours().len(), 2, "the first instance's filters stay");
    assert_exact(&stop(first), 1000, 1000);
    assert!(s.filters().is_empty());
    assert_eq!(s.qdisc(), None, "the qdisc goes with the last ws-monitor filter");
}

#[test]
fn unknown_attach_modes_are_one_line_usage_errors() {
    let out = std::process::Command::new(common::ws_monitor_bin())
        .args(["--iface", "lo", "--port", PORT, "--attach", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--attach") && err.contains("netlink"), "{err}");
}
