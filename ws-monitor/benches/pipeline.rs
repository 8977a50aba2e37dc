//! Throughput of the userspace pipeline, printed as figures: MB/s of reassembly + engine
//! on MSS-sized segments, of the engine alone on 64 KiB deliveries, and each as a ratio
//! to a reference measured in the same run (a byte-summing pass over the same bytes).
//! The engine reads every header and unmasks and validates text payloads, but only
//! skips over binary payloads, so it can beat a pass that touches every byte. Also the
//! peak resident memory. Run:
//! `cargo bench -p ws-monitor --bench pipeline`.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use ws_monitor::engine::{Engine, EngineConfig};
use ws_monitor::flow::{key_for, Closing, Direction, FlowId, Opening, Segment, StreamSink, TcpFlags};
use ws_monitor::monitor::Monitor;
use ws_monitor::reassembly::ReassemblyConfig;

const CONNECTIONS: u16 = 64;
const MSS: usize = 1448;
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// One frame, masked when `mask` is given.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// A connection's two streams: a valid upgrade, then 200 frames: a mix of text and
/// binary of 16 B to 60 KB, or (`text_only`) 4 KB texts, every byte to validate.
fn streams(seed: u16, text_only: bool) -> (Vec<u8>, Vec<u8>) {
    let mut c = format!(
        "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    )
    .into_bytes();
    let text = "héllo wörld, a chat message of moderate length ".repeat(4);
    let binary: Vec<u8> = (0..60_000u32).map(|i| (i * 31 + seed as u32) as u8).collect();
    let long_text = "ünïcödé text, four kilobytes of it. ".repeat(100);
    for i in 0..200u32 {
        let key = (i ^ seed as u32).to_be_bytes();
        let len = [16, 120, 500, 4000, 60_000][i as usize % 5];
        if text_only {
            frame(&mut c, 1, long_text.as_bytes(), Some(key));
            frame(&mut s, 1, long_text.as_bytes(), None);
        } else if i % 2 == 0 {
            frame(&mut c, 1, text.as_bytes(), Some(key));
            frame(&mut s, 1, text.as_bytes(), None);
        } else {
            frame(&mut c, 2, &binary[..len], Some(key));
            frame(&mut s, 2, &binary[..len], None);
        }
    }
    frame(&mut c, 8, &1000u16.to_be_bytes(), Some([1, 2, 3, 4]));
    frame(&mut s, 8, &1000u16.to_be_bytes(), None);
    (c, s)
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn main() {
    for (name, text_only) in [("mixed text and binary", false), ("text only", true)] {
        let conns: Vec<(Vec<u8>, Vec<u8>)> = (0..CONNECTIONS).map(|i| streams(i, text_only)).collect();
        measure(name, &conns);
    }
    println!("peak RSS: {} MiB (each traffic set is held in memory while measured)", peak_rss_kib() / 1024);
}

fn measure(name: &str, conns: &[(Vec<u8>, Vec<u8>)]) {
    let total: usize = conns.iter().map(|(c, s)| c.len() + s.len()).sum();

    // Reference: one pass over the same bytes.
    let start = Instant::now();
    let mut sum = 0u64;
    for (c, s) in conns {
        for b in c.iter().chain(s.iter()) {
            sum = sum.wrapping_add(*b as u64);
        }
    }
    black_box(sum);
    let reference = start.elapsed().as_secs_f64();

    // Engine alone, in 64 KiB deliveries (a GSO/GRO super-packet at most), the two
    // directions interleaved as on the wire.
    const DELIVERY: usize = 64 * 1024;
    let start = Instant::now();
    let mut engine = Engine::new(EngineConfig::default());
    for (i, (c, s)) in conns.iter().enumerate() {
        let key = key_for((Ipv4Addr::new(10, 0, 0, 1).into(), 40000 + i as u16), (Ipv4Addr::new(10, 0, 0, 2).into(), 8001), Direction::ToServer);
        let id = FlowId(i as u64);
        engine.open(id, &key, Opening::Handshake, 0);
        let (mut cs, mut ss) = (c.chunks(DELIVERY), s.chunks(DELIVERY));
        let (mut oc, mut os) = (0u64, 0u64);
        loop {
            let (a, b) = (cs.next(), ss.next());
            if a.is_none() && b.is_none() {
                break;
            }
            if let Some(a) = a {
                engine.data(id, Direction::ToServer, oc, a, 1);
                oc += a.len() as u64;
            }
            if let Some(b) = b {
                engine.data(id, Direction::ToClient, os, b, 1);
                os += b.len() as u64;
            }
        }
        engine.close(id, Closing::Fin, 2);
    }
    let engine_secs = start.elapsed().as_secs_f64();
    assert_eq!(engine.stats().violations_total(), 0, "benchmark traffic must be conformant");
    assert_eq!(engine.stats().desyncs, 0, "the engine must follow every frame");
    let frames: u64 = engine.stats().frames.iter().map(|f| f.total()).sum();
    assert_eq!(frames, conns.len() as u64 * 2 * 201);

    // Reassembly + engine from MSS-sized segments, both directions interleaved.
    let start = Instant::now();
    let mut monitor = Monitor::new(ReassemblyConfig::default(), EngineConfig::default(), None);
    for (i, (c, s)) in conns.iter().enumerate() {
        let client = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000 + i as u16));
        let server = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 8001));
        let key = key_for((client.ip(), client.port()), (server.ip(), server.port()), Direction::ToServer);
        let (isn_c, isn_s) = (1000u32, 5000u32);
        let syn = |dir, seq, ack, synf: bool, ackf: bool| Segment {
            key,
            dir,
            seq,
            ack,
            flags: TcpFlags { syn: synf, ack: ackf, fin: false, rst: false },
            data: &[],
            skip: 0,
            ts_ns: 1,
        };
        monitor.segment(&syn(Direction::ToServer, isn_c, 0, true, false));
        monitor.segment(&syn(Direction::ToClient, isn_s, isn_c + 1, true, true));
        let mut offs = [0usize; 2];
        while offs[0] < c.len() || offs[1] < s.len() {
            for (i, dir, data, isn, peer_isn) in
                [(0, Direction::ToServer, c, isn_c, isn_s), (1, Direction::ToClient, s, isn_s, isn_c)]
            {
                let off = offs[i];
                if off < data.len() {
                    let end = (off + MSS).min(data.len());
                    let peer_delivered = offs[1 - i] as u32;
                    monitor.segment(&Segment {
                        key,
                        dir,
                        seq: isn.wrapping_add(1).wrapping_add(off as u32),
                        ack: peer_isn.wrapping_add(1).wrapping_add(peer_delivered),
                        flags: TcpFlags { ack: true, ..TcpFlags::default() },
                        data: &data[off..end],
                        skip: 0,
                        ts_ns: 2,
                    });
                    offs[i] = end;
                }
            }
        }
        black_box(monitor.drain_findings().count());
    }
    monitor.finish(3);
    let pipeline_secs = start.elapsed().as_secs_f64();
    assert_eq!(monitor.engine_stats().violations_total(), 0);
    assert_eq!(monitor.engine_stats().desyncs, 0);
    assert_eq!(monitor.engine_stats().frames.iter().map(|f| f.total()).sum::<u64>(), frames);
    assert_eq!(monitor.reassembly().gaps, 0);

    println!("{name}: {CONNECTIONS} connections, {:.1} MB, {frames} frames", total as f64 / 1e6);
    println!("  reference (byte-summing pass):  {:>7.0} MB/s", mb_per_s(total, reference));
    println!(
        "  engine alone (64 KiB):          {:>7.0} MB/s = {:.2} x the reference's speed",
        mb_per_s(total, engine_secs),
        reference / engine_secs
    );
    println!(
        "  reassembly + engine ({MSS} B):  {:>7.0} MB/s = {:.2} x the reference's speed, {:.0} k segments/s",
        mb_per_s(total, pipeline_secs),
        reference / pipeline_secs,
        (total / MSS) as f64 / 1e3 / pipeline_secs
    );
}
