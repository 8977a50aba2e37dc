//! Throughput of the userspace pipeline on in-memory streams, one table row per kind of
//! traffic: MB/s of the engine alone on 64 KiB deliveries and of reassembly + engine on
//! MSS-sized segments, each as a ratio to a memcpy of the same bytes measured in the same
//! run. The engine reads every header and unmasks and validates text payloads (inflating
//! compressed ones), but only skips over binary payloads, so it can beat a copy. Also the
//! peak resident memory. Reassembly + engine run three ways: one monitor on the bench's
//! own thread, and the pipeline (this thread hands segments to worker threads) with one
//! worker and with one per CPU. Run: `cargo bench -p ws-monitor --bench pipeline`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use ws_monitor::engine::{Engine, EngineConfig};
use ws_monitor::flow::{key_for, Closing, Direction, FlowId, Opening, Segment, StreamSink};
use ws_monitor::pipeline::monitor::Monitor;
use ws_monitor::pipeline::{default_workers, Pipeline};
use ws_monitor::reassembly::ReassemblyConfig;
use ws_monitor::testkit::frame::RSV1;
use ws_monitor::testkit::scenario::{self, Tcp};
use ws_monitor::testkit::{Frame, Head, RFC_KEY};

const CONNECTIONS: u16 = 64;
const MSS: usize = 1448;

/// One final frame, masked when `mask` is given, appended to `out`.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    Frame { mask, ..Frame::new(opcode, payload) }.encode_into(out);
}

/// What a connection carries after its upgrade.
#[derive(Clone, Copy)]
enum Traffic {
    /// 64 KiB binary frames (1,000 of them... 100 per connection).
    Bulk,
    /// Masked text frames of 20 to 200 bytes (chat, telemetry).
    Small,
    /// Text and binary of 16 B to 60 KB.
    Mixed,
    /// 4 KB texts: every byte unmasked and validated.
    Text,
    /// 4 KB texts under permessage-deflate: every byte inflated and validated.
    Deflate,
}

impl Traffic {
    const ALL: [Traffic; 5] = [Traffic::Bulk, Traffic::Small, Traffic::Mixed, Traffic::Text, Traffic::Deflate];

    fn name(self) -> &'static str {
        match self {
            Traffic::Bulk => "bulk binary (64 KiB frames)",
            Traffic::Small => "small text (20-200 B masked frames)",
            Traffic::Mixed => "mixed text and binary (16 B - 60 KB)",
            Traffic::Text => "text only (4 KB masked messages)",
            Traffic::Deflate => "permessage-deflate text (4 KB messages)",
        }
    }

    fn frames(self) -> u32 {
        match self {
            Traffic::Bulk => 40,
            Traffic::Small => 20_000,
            _ => 200,
        }
    }
}

/// Raw deflate of one message with the permessage-deflate tail removed.
fn deflate(z: &mut flate2::Compress, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    z.compress_vec(msg, &mut out, flate2::FlushCompress::Sync).expect("deflate");
    while out.capacity() == out.len() {
        out.reserve(1024);
        z.compress_vec(&[], &mut out, flate2::FlushCompress::Sync).expect("deflate");
    }
    out.truncate(out.len().saturating_sub(4));
    out
}

/// A connection's two streams: a valid upgrade, then `traffic.frames()` frames each way
/// and a close.
fn streams(seed: u16, traffic: Traffic) -> (Vec<u8>, Vec<u8>) {
    let (mut request, mut response) =
        (Head::upgrade_request("/chat", "x", RFC_KEY), Head::switching_protocols(RFC_KEY));
    if matches!(traffic, Traffic::Deflate) {
        request = request.set("Sec-WebSocket-Extensions", "permessage-deflate");
        response = response.set("Sec-WebSocket-Extensions", "permessage-deflate");
    }
    let (mut c, mut s) = (request.encode(), response.encode());
    let text = "héllo wörld, a chat message of moderate length ".repeat(4);
    let binary: Vec<u8> = (0..65_536u32).map(|i| (i * 31 + seed as u32) as u8).collect();
    let long_text = "ünïcödé text, four kilobytes of it. ".repeat(100);
    let small = "a chat message of some length, repeated to fill two hundred bytes of text..".repeat(3);
    let (mut zc, mut zs) = (
        flate2::Compress::new(flate2::Compression::fast(), false),
        flate2::Compress::new(flate2::Compression::fast(), false),
    );
    for i in 0..traffic.frames() {
        let key = (i ^ seed as u32).to_be_bytes();
        match traffic {
            Traffic::Bulk => {
                frame(&mut c, 2, &binary, Some(key));
                frame(&mut s, 2, &binary, None);
            }
            Traffic::Small => {
                let len = 20 + (i.wrapping_mul(2_654_435_761) >> 8) as usize % 181;
                frame(&mut c, 1, &small.as_bytes()[..len], Some(key));
                frame(&mut s, 1, &small.as_bytes()[..len], None);
            }
            Traffic::Text => {
                frame(&mut c, 1, long_text.as_bytes(), Some(key));
                frame(&mut s, 1, long_text.as_bytes(), None);
            }
            Traffic::Deflate => {
                Frame::text(deflate(&mut zc, long_text.as_bytes())).rsv(RSV1).mask(key).encode_into(&mut c);
                Frame::text(deflate(&mut zs, long_text.as_bytes())).rsv(RSV1).encode_into(&mut s);
            }
            Traffic::Mixed => {
                let len = [16, 120, 500, 4000, 60_000][i as usize % 5];
                if i % 2 == 0 {
                    frame(&mut c, 1, text.as_bytes(), Some(key));
                    frame(&mut s, 1, text.as_bytes(), None);
                } else {
                    frame(&mut c, 2, &binary[..len], Some(key));
                    frame(&mut s, 2, &binary[..len], None);
                }
            }
        }
    }
    frame(&mut c, 8, &1000u16.to_be_bytes(), Some([1, 2, 3, 4]));
    frame(&mut s, 8, &1000u16.to_be_bytes(), None);
    (c, s)
}

/// Each connection as TCP segments, both directions interleaved; the client's first
/// segment is its request alone (its frames follow the 101, as on the wire).
fn segments(conns: &[(Vec<u8>, Vec<u8>)], f: &mut dyn FnMut(&Segment<'_>)) {
    for (i, (c, s)) in conns.iter().enumerate() {
        let client = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000 + i as u16));
        let server = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 8001));
        let mut tcp = Tcp::new(client, server, 1000, 5000);
        tcp.iface = 1;
        tcp.open(f);
        tcp.ts_ns = 2;
        tcp.exchange(c, s, MSS, f);
    }
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn main() {
    let workers = default_workers();
    println!("| traffic ({CONNECTIONS} connections) | MB | frames | memcpy MB/s | engine alone, 64 KiB deliveries | reassembly + engine, {MSS} B segments, on one thread | the same, pipeline of 1 worker | the same, pipeline of {workers} workers (÷ 1 worker) |");
    println!("|---|---|---|---|---|---|---|---|");
    for traffic in Traffic::ALL {
        let conns: Vec<(Vec<u8>, Vec<u8>)> = (0..CONNECTIONS).map(|i| streams(i, traffic)).collect();
        measure(traffic, &conns);
    }
    println!("peak RSS: {} MiB (each traffic set is held in memory while measured)", peak_rss_kib() / 1024);
}

fn measure(traffic: Traffic, conns: &[(Vec<u8>, Vec<u8>)]) {
    let total: usize = conns.iter().map(|(c, s)| c.len() + s.len()).sum();

    // Reference: a copy of the same bytes, in the same 64 KiB pieces.
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    for (c, s) in conns {
        for piece in c.chunks(64 * 1024).chain(s.chunks(64 * 1024)) {
            buf[..piece.len()].copy_from_slice(piece);
            black_box(&mut buf);
        }
    }
    let reference = start.elapsed().as_secs_f64();

    // Engine alone, in 64 KiB deliveries (a GSO/GRO super-packet at most), the two
    // directions interleaved as on the wire.
    const DELIVERY: usize = 64 * 1024;
    let start = Instant::now();
    let mut engine = Engine::new(EngineConfig::default());
    for (i, (c, s)) in conns.iter().enumerate() {
        let key = key_for(
            (Ipv4Addr::new(10, 0, 0, 1).into(), 40000 + i as u16),
            (Ipv4Addr::new(10, 0, 0, 2).into(), 8001),
            Direction::ToServer,
        );
        let id = FlowId(i as u64);
        engine.open(id, &key, Opening::Handshake, 0);
        // The request, then the 101, as on the wire (a client sends frames only once the
        // 101 is there), then both directions in large deliveries.
        let (ch, sh) = (scenario::head_len(c), scenario::head_len(s));
        engine.data(id, Direction::ToServer, 0, &c[..ch], 1);
        engine.data(id, Direction::ToClient, 0, &s[..sh], 1);
        let (mut cs, mut ss) = (c[ch..].chunks(DELIVERY), s[sh..].chunks(DELIVERY));
        let (mut oc, mut os) = (ch as u64, sh as u64);
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
    assert_eq!(frames, conns.len() as u64 * 2 * (u64::from(traffic.frames()) + 1));

    // Reassembly + engine from MSS-sized segments, both directions interleaved: one
    // monitor on this thread, then the multi-core pipeline with one worker per CPU.
    let start = Instant::now();
    let mut monitor = Monitor::new(ReassemblyConfig::default(), EngineConfig::default(), None);
    segments(conns, &mut |seg| monitor.segment(seg));
    monitor.finish(3);
    let pipeline_secs = start.elapsed().as_secs_f64();
    assert_eq!(monitor.engine_stats().violations_total(), 0);
    assert_eq!(monitor.engine_stats().desyncs, 0);
    assert_eq!(monitor.engine_stats().frames.iter().map(|f| f.total()).sum::<u64>(), frames);
    assert_eq!(monitor.reassembly().gaps, 0);

    let pipelined = |workers: usize| {
        let start = Instant::now();
        let mut pipeline = Pipeline::start(workers, ReassemblyConfig::default(), EngineConfig::default(), None, true)
            .expect("workers");
        segments(conns, &mut |seg| pipeline.segment(seg));
        pipeline.finish(3, |_| {});
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(pipeline.totals().engine, *monitor.engine_stats(), "the workers count what one monitor counts");
        secs
    };
    let one_secs = pipelined(1);
    let workers_secs = pipelined(default_workers());
    let rate = |secs: f64| {
        format!(
            "{:.0} MB/s = {:.2}× memcpy, {:.2} M frames/s",
            mb_per_s(total, secs),
            reference / secs,
            frames as f64 / 1e6 / secs
        )
    };

    println!(
        "| {} | {:.1} | {frames} | {:.0} | {:.0} MB/s = {:.2}× memcpy | {} | {} | {} ({:.2}×) |",
        traffic.name(),
        total as f64 / 1e6,
        mb_per_s(total, reference),
        mb_per_s(total, engine_secs),
        reference / engine_secs,
        rate(pipeline_secs),
        rate(one_secs),
        rate(workers_secs),
        one_secs / workers_secs,
    );
}
