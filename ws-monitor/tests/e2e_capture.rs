//! End to end, as root: two network namespaces joined by a veth pair, real TCP peers
//! exchanging megabytes both ways over several connections (some opened before the
//! monitor starts, over IPv4 and IPv6), and `ws-monitor` capturing on the server's veth.
//! The reassembled streams must be byte-identical to what was sent.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

const PORT: &str = "9000";

fn peers_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/tcp_peers.py")
}

/// Reads lines of `reader` until one contains `needle` (or panics after 30 s).
fn wait_for_line(reader: &mut impl BufRead, needle: &str) {
    let start = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child output");
        assert!(n > 0, "child exited before printing {needle:?}");
        if line.contains(needle) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no {needle:?} within 30 s");
    }
}

fn wait_ok(mut child: Child, what: &str) {
    let status = child.wait().expect("wait");
    assert!(status.success(), "{what} failed: {status}");
}

struct Traffic {
    pre: usize,
    post: usize,
    up_bytes: usize,
    down_bytes: usize,
    pattern: &'static str,
    ring_size: &'static str,
    /// `--attach`: tcx (this kernel's default) or netlink (how kernels before 6.6 attach).
    attach: &'static str,
}

struct Outcome {
    report: Value,
    client_results: BTreeMap<String, Value>,
    server_results: BTreeMap<String, Value>,
    streams: PathBuf,
    /// TCP segments retransmitted by the peers (both namespaces).
    retransmitted: u64,
    _dir: tempfile::TempDir,
}

/// `RetransSegs` of the TCP counters of the namespace `ns` (`/proc/net/snmp`).
fn retransmitted_segments(ns: &common::Netns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else { panic!("no Tcp counters: {text}") };
    let at = names.split_whitespace().position(|n| n == "RetransSegs").expect("RetransSegs");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("a count")
}

fn run(t: &Traffic, tag: &str) -> Outcome {
    let (client_ns, server_ns, veth) = common::veth_pair(tag);
    let dir = tempfile::tempdir().unwrap();
    let streams = dir.path().join("streams");
    let (client_out, server_out, go) =
        (dir.path().join("client.json"), dir.path().join("server.json"), dir.path().join("go"));
    let script = peers_script();
    let conns = (t.pre + t.post).to_string();

    let mut server = server_ns
        .command("python3")
        .arg(&script)
        .args(["server", "--port", PORT, "--expect", &conns, "--pattern", t.pattern])
        .args(["--send-bytes", &t.down_bytes.to_string(), "--out"])
        .arg(&server_out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server peer");
    wait_for_line(&mut BufReader::new(server.stdout.take().unwrap()), "listening");

    let mut client = client_ns
        .command("python3")
        .arg(&script)
        .args(["client", "--port", PORT, "--hosts", "10.201.0.2,fd00:201::2,10.201.0.2"])
        .args(["--pre", &t.pre.to_string(), "--post", &t.post.to_string(), "--pattern", t.pattern])
        .args(["--send-bytes", &t.up_bytes.to_string(), "--go"])
        .arg(&go)
        .arg("--out")
        .arg(&client_out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start client peer");
    wait_for_line(&mut BufReader::new(client.stdout.take().unwrap()), "pre-connected");

    let mut monitor = server_ns
        .command(common::ws_monitor_bin())
        .args(["--iface", &veth, "--port", PORT, "--json", "--log-interval", "0"])
        .args(["--ring-size", t.ring_size, "--attach", t.attach, "--streams-dir"])
        .arg(&streams)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ws-monitor");
    let mut mon_err = BufReader::new(monitor.stderr.take().unwrap());
    wait_for_line(&mut mon_err, "capturing");

    std::fs::write(&go, b"go").unwrap();
    wait_ok(client, "client peer");
    wait_ok(server, "server peer");
    std::thread::sleep(Duration::from_millis(300));

    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(monitor.id() as i32, libc::SIGINT) };
    let out = monitor.wait_with_output().expect("ws-monitor output");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut mon_err, &mut rest).ok();
    assert!(out.status.success(), "ws-monitor failed: {rest}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    eprintln!("{tag}: {report}");

    let read = |p: &Path| -> BTreeMap<String, Value> { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    Outcome {
        report,
        client_results: read(&client_out),
        server_results: read(&server_out),
        streams,
        retransmitted: retransmitted_segments(&client_ns) + retransmitted_segments(&server_ns),
        _dir: dir,
    }
}

/// The dump file of a connection's stream, found by "<client ip>_<client port>".
fn stream_file(streams: &Path, key: &str, side: &str) -> Option<PathBuf> {
    std::fs::read_dir(streams).ok()?.flatten().map(|e| e.path()).find(|p| {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        name.ends_with(&format!("_{PORT}.{side}"))
            && name.split_once('_').is_some_and(|(_, rest)| rest.starts_with(&format!("{key}_")))
    })
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn streams_are_rebuilt_exactly_over_veth() {
    if !common::require_root("streams_are_rebuilt_exactly_over_veth") {
        return;
    }
    let t = Traffic {
        pre: 2,
        post: 4,
        up_bytes: 3 << 20,
        down_bytes: 2 << 20,
        pattern: "random",
        ring_size: "64M",
        attach: "auto",
    };
    assert_exact(&t, &run(&t, "x"));
}

/// The same through netlink filters on the clsact qdisc, as kernels before 6.6 attach.
#[test]
fn streams_are_rebuilt_exactly_through_netlink_filters() {
    if !common::require_root("streams_are_rebuilt_exactly_through_netlink_filters") {
        return;
    }
    let t = Traffic {
        pre: 1,
        post: 2,
        up_bytes: 1 << 20,
        down_bytes: 3 << 19,
        pattern: "random",
        ring_size: "64M",
        attach: "netlink",
    };
    let o = run(&t, "n");
    assert_eq!(o.report["attach"]["mode"], "netlink");
    assert_eq!(o.report["attach"]["interfaces"][0]["hooks"], serde_json::json!(["ingress", "egress"]));
    assert_exact(&t, &o);
}

/// Every stream byte-identical to what the peers sent, and the report saying so.
fn assert_exact(t: &Traffic, o: &Outcome) {
    let conns = (t.pre + t.post) as u64;
    assert_eq!(o.client_results.len() as u64, conns);
    for (key, c) in &o.client_results {
        let s = &o.server_results[key];
        assert_eq!(c["sent_sha"], s["recv_sha"], "peers disagree on {key}");
        assert_eq!(s["sent_sha"], c["recv_sha"], "peers disagree on {key}");
        for (side, expected) in [("client", &c["sent_sha"]), ("server", &s["sent_sha"])] {
            let file = stream_file(&o.streams, key, side).unwrap_or_else(|| panic!("no {side} stream for {key}"));
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(&Value::from(sha_hex(&bytes)), expected, "{side} stream of {key} differs");
        }
    }
    let cap = &o.report["capture"];
    let keys: Vec<&str> = cap.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "bytes_client",
            "bytes_lost",
            "bytes_server",
            "flows_closed",
            "flows_evicted",
            "flows_opened",
            "gaps",
            "packets",
            "ring_drops",
            "skipped_client",
            "skipped_server"
        ]
    );
    assert_eq!(cap["ring_drops"], 0);
    assert_eq!(cap["gaps"], 0);
    assert_eq!(cap["bytes_lost"], 0);
    assert_eq!(cap["bytes_client"], conns * t.up_bytes as u64);
    assert_eq!(cap["bytes_server"], conns * t.down_bytes as u64);
    assert_eq!(cap["flows_opened"], conns);
    assert_eq!(cap["flows_closed"], conns);
    assert_eq!(cap["flows_evicted"], 0);
    assert!(cap["packets"].as_u64().unwrap() > 100);
}

/// Gaps recorded for a stream file: (offset, len) pairs.
fn gaps(file: &Path) -> Vec<(u64, u64)> {
    let path = PathBuf::from(format!("{}.gaps", file.display()));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// How one stream's bytes were accounted for.
#[derive(Default)]
struct Accounting {
    /// Bytes before the first byte seen (the connection's first records were lost).
    unseen_prefix: u64,
    /// Bytes after the last thing seen, when the records that would reveal the end
    /// (data, FIN, and the peer's ACKs) were all lost.
    unseen_tail: u64,
    delivered: u64,
    /// Reported as gaps.
    lost: u64,
    /// 1 when the final gap, known only from the peer's ACK, also covers the FIN's
    /// sequence number (a FIN lost with the ring looks like one more lost byte).
    phantom: u64,
}

/// Checks a counter-pattern stream seen with gaps: every delivered byte is the sent
/// byte at its position.
fn check_counter_stream(file: &Path, seed: u64, sent_len: u64) -> Accounting {
    let bytes = std::fs::read(file).unwrap();
    let gaps = gaps(file);
    let in_gap = |off: u64| gaps.iter().any(|&(o, l)| off >= o && off < o + l);
    let lost: u64 = gaps.iter().map(|g| g.1).sum();
    let delivered = bytes.len() as u64 - lost;
    if delivered == 0 {
        // Nothing to locate the gaps with: count them as lost, the rest as unseen.
        let phantom = lost.saturating_sub(sent_len).min(1);
        return Accounting { unseen_prefix: sent_len + phantom - lost, lost, phantom, ..Default::default() };
    }
    // Locate the stream: find a delivered, fully visible 8-byte word of the pattern.
    let word_at = |f: usize| u64::from_le_bytes(bytes[f..f + 8].try_into().unwrap());
    let mut anchor = None;
    'search: for f in 0..bytes.len().saturating_sub(8) {
        if (f as u64..f as u64 + 8).any(in_gap) {
            continue;
        }
        let w = word_at(f);
        if w >> 40 == seed {
            let start = (w & ((1 << 40) - 1)) * 8;
            if start >= f as u64 {
                anchor = Some(start - f as u64);
                break 'search;
            }
        }
    }
    let anchor = anchor.expect("no pattern word found in a delivered stream");
    let expected = |pos: u64| -> u8 {
        let word = (seed << 40) | (pos / 8);
        word.to_le_bytes()[(pos % 8) as usize]
    };
    for (f, b) in bytes.iter().enumerate() {
        if !in_gap(f as u64) {
            assert_eq!(*b, expected(anchor + f as u64), "wrong byte at offset {f} of {}", file.display());
        }
    }
    let end = anchor + bytes.len() as u64;
    assert!(end <= sent_len + 1, "{}: stream ends at {end}, the sender stopped at {sent_len}", file.display());
    let phantom = end.saturating_sub(sent_len);
    if phantom == 1 {
        let last = gaps.last().expect("a phantom byte is always in the final gap");
        assert_eq!(last.0 + last.1, bytes.len() as u64, "the phantom byte ends the stream");
    }
    Accounting { unseen_prefix: anchor, unseen_tail: sent_len.saturating_sub(end), delivered, lost, phantom }
}

#[test]
fn tiny_ring_reports_drops_and_gaps_that_add_up_and_never_wrong_bytes() {
    if !common::require_root("tiny_ring_reports_drops_and_gaps_that_add_up_and_never_wrong_bytes") {
        return;
    }
    let t = Traffic {
        pre: 1,
        post: 3,
        up_bytes: 2 << 20,
        down_bytes: 1 << 20,
        pattern: "counter",
        ring_size: "16K",
        attach: "auto",
    };
    let o = run(&t, "y");
    let cap = &o.report["capture"];
    let kernel = &o.report["kernel"];
    assert!(cap["ring_drops"].as_u64().unwrap() > 0, "a 16 KiB ring must overflow");
    assert!(cap["gaps"].as_u64().unwrap() > 0);

    let mut sum = Accounting::default();
    for (key, c) in &o.client_results {
        let port: u64 = key.rsplit('_').next().unwrap().parse().unwrap();
        let s = &o.server_results[key];
        for (side, seed, sent) in [("client", 2 * port, &c["sent_len"]), ("server", 2 * port + 1, &s["sent_len"])] {
            let sent = sent.as_u64().unwrap();
            let a = match stream_file(&o.streams, key, side) {
                Some(file) => check_counter_stream(&file, seed, sent),
                // Every record of the connection was lost.
                None => Accounting { unseen_prefix: sent, ..Default::default() },
            };
            sum.unseen_prefix += a.unseen_prefix;
            sum.unseen_tail += a.unseen_tail;
            sum.delivered += a.delivered;
            sum.lost += a.lost;
            sum.phantom += a.phantom;
        }
    }
    let total = o.client_results.len() as u64 * (t.up_bytes + t.down_bytes) as u64;
    let unseen = sum.unseen_prefix + sum.unseen_tail;
    eprintln!(
        "tiny ring: sent {total}, delivered {}, in gaps {} ({} FIN phantoms), unseen {} (prefix {}, tail {})",
        sum.delivered, sum.lost, sum.phantom, unseen, sum.unseen_prefix, sum.unseen_tail
    );
    assert_eq!(
        sum.delivered + sum.lost + unseen,
        total + sum.phantom,
        "every sent byte is delivered, in a gap, or unseen"
    );
    assert!(sum.lost > 0, "lost records must show up as gaps");
    assert_eq!(cap["bytes_lost"].as_u64().unwrap(), sum.lost);
    assert_eq!(cap["bytes_client"].as_u64().unwrap() + cap["bytes_server"].as_u64().unwrap(), sum.delivered);
    // Everything missing was lost in the ring (or not copied), nothing else. The ring
    // may also have dropped retransmissions (tail-loss probes) of bytes seen anyway.
    let ring_lost = kernel["ring_full_bytes"].as_u64().unwrap()
        + kernel["load_error_bytes"].as_u64().unwrap()
        + kernel["bytes_truncated"].as_u64().unwrap();
    let missing = sum.lost + unseen - sum.phantom;
    eprintln!("tiny ring: kernel dropped {ring_lost} payload bytes, {missing} missing from streams");
    assert!(missing <= ring_lost, "only bytes the ring dropped may be missing");
    // Every record lost left a note, so every byte it carried is a gap where it was on
    // the wire, ends of connections included: per connection, the bytes unanalysed for
    // capture loss add up to what the kernel dropped. (A lost retransmission would be
    // counted by the kernel and be no blind spot: the peers' counters say if any was sent.)
    assert_eq!(kernel["loss_notes_lost"].as_u64(), Some(0), "the notes ring kept up");
    assert_eq!(unseen, 0, "no end of a connection went unaccounted");
    let spots = o.report["blind_spots"]["connections"].as_array().unwrap();
    let per_conn: u64 = spots.iter().map(|c| c["unanalysed"]["capture_loss"].as_u64().unwrap()).sum();
    eprintln!(
        "tiny ring: {} connections with blind spots, {per_conn} B of capture loss, {} segments retransmitted",
        spots.len(),
        o.retransmitted
    );
    assert_eq!(o.report["unanalysed"]["capture_loss"].as_u64(), Some(per_conn));
    if o.retransmitted == 0 {
        assert_eq!(per_conn, ring_lost, "per-connection losses add up to the kernel's count");
    } else {
        assert!(per_conn <= ring_lost, "per-connection losses never exceed the kernel's count");
    }
}

/// A rare kernel-side event reaches the headless log: the kernel program walks the
/// server's frame headers after the 101, meets a header it cannot follow (RSV2/RSV3 set,
/// a reserved opcode), goes back to full copy and logs it (aya-log); ws-monitor forwards
/// the line at debug level, after it has dropped its privileges and filtered its system
/// calls.
#[test]
fn a_frame_walk_resync_in_the_kernel_reaches_the_debug_log() {
    if !common::require_root("a_frame_walk_resync_in_the_kernel_reaches_the_debug_log") {
        return;
    }
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};

    let ns = common::Netns::new("klog");
    let mut monitor = ns
        .command(common::ws_monitor_bin())
        .args(["--iface", "lo", "--port", PORT, "--no-tui", "--json", "--log-interval", "0"])
        .env("WS_MONITOR_LOG", "info,ws_monitor::kernel=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ws-monitor");
    let mut err = BufReader::new(monitor.stderr.take().unwrap());
    let mut before = Vec::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "ws-monitor exited before capturing: {before:?}");
        let capturing = line.contains("capturing");
        before.push(line);
        if capturing {
            break;
        }
    }
    assert!(
        before.iter().any(|l| l.contains("privileges dropped") && l.contains("system calls filtered")),
        "the lines must be read once privileges are dropped and system calls filtered: {before:?}"
    );

    ns.run(|| {
        let listener = TcpListener::bind(("127.0.0.1", PORT.parse::<u16>().unwrap())).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        for s in [&client, &server] {
            s.set_nodelay(true).unwrap();
        }
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let _ = server.read(&mut buf).unwrap();
        // Each write its own packet: the 101 (the walk starts after it), a frame it walks,
        // then bytes that are no frame header it would follow.
        let pause = || std::thread::sleep(Duration::from_millis(100));
        server
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .unwrap();
        pause();
        server.write_all(b"\x81\x02ok").unwrap();
        pause();
        server.write_all(b"\x7f\xffno frame header").unwrap();
        pause();
    });
    // Forwarded at the next one-second tick, or at the end.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(monitor.id() as i32, libc::SIGINT) };
    let out = monitor.wait_with_output().expect("ws-monitor output");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(out.status.success(), "ws-monitor failed: {rest}");
    let line = rest.lines().find(|l| l.contains("kernel: frame walk resync")).unwrap_or_else(|| {
        panic!("no kernel log line about the resync in ws-monitor's output:\n{rest}");
    });
    assert!(line.contains("DEBUG"), "forwarded at debug level: {line}");
    assert!(line.contains("implausible frame header 7fff at offset 0"), "{line}");
    assert!(line.contains(&format!("[::ffff:127.0.0.1]:{PORT} -> [::ffff:127.0.0.1]:")), "{line}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["kernel"]["walk_stops"], 1, "{report}");
    assert_eq!(report["kernel"]["log_lines_suppressed"], 0, "{report}");
    assert_eq!(report["kernel"]["log_lines_lost"], 0, "{report}");
}
