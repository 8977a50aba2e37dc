//! Feeds arbitrary TCP segments (sequence and acknowledgement numbers, flags, skips,
//! payload, both directions of a few connections) to reassembly and the engine behind
//! it: any order, overlap, wrap-around, RST or SYN must be handled without a panic, and
//! the flow table and the memory held must stay within their bounds. Some segments are
//! loss notes (a segment the capture lost).
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ws_monitor::engine::EngineConfig;
use ws_monitor::flow::{key_for, Direction, Segment, TcpFlags};
use ws_monitor::pipeline::monitor::Monitor;
use ws_monitor::reassembly::ReassemblyConfig;

const MAX_FLOWS: usize = 4;
const MEMORY_LIMIT: usize = 1 << 15;

fuzz_target!(|input: &[u8]| {
    let reassembly = ReassemblyConfig {
        max_flows: MAX_FLOWS,
        max_buffered_per_direction: 1 << 14,
        idle_timeout_ns: 1_000_000_000,
        max_half_open: 2,
        memory_limit: MEMORY_LIMIT,
    };
    let mut monitor = Monitor::new(reassembly, EngineConfig::default(), None);
    let server = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 8001));
    let mut ts = 1u64;
    // Each segment: 12 bytes of header (connection and direction, flags, sequence and
    // acknowledgement numbers, a length and a skip), then the payload.
    let mut rest = input;
    while rest.len() >= 12 {
        let (h, tail) = rest.split_at(12);
        let client = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000 + u16::from(h[0] & 7)));
        let dir = if h[0] & 0x80 == 0 { Direction::ToServer } else { Direction::ToClient };
        let (src, dst) = if dir == Direction::ToServer { (client, server) } else { (server, client) };
        let key = key_for((src.ip(), src.port()), (dst.ip(), dst.port()), dir);
        let flags = TcpFlags { syn: h[1] & 1 != 0, ack: h[1] & 2 != 0, fin: h[1] & 4 != 0, rst: h[1] & 8 != 0 };
        let seq = u32::from_le_bytes([h[2], h[3], h[4], h[5]]);
        let ack = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
        let len = usize::from(h[10]).min(tail.len());
        let skip = if h[1] & 0x10 != 0 { u32::from(h[11]) * 64 } else { 0 };
        let (data, after) = tail.split_at(len);
        if h[0] & 0x40 != 0 {
            // A loss note: the segment's length, no data.
            monitor.lost(&Segment {
                key,
                dir,
                seq,
                ack,
                flags,
                data: &[],
                skip: skip + len as u32,
                ts_ns: ts,
                iface: 1,
            });
        } else {
            monitor.segment(&Segment { key, dir, seq, ack, flags, data, skip, ts_ns: ts, iface: 1 });
        }
        ts += u64::from(h[1] >> 5) * 400_000_000;
        if h[1] & 0x20 != 0 {
            monitor.tick(ts);
        }
        assert!(monitor.open_flows() <= MAX_FLOWS, "{} flows open, at most {MAX_FLOWS}", monitor.open_flows());
        let held = monitor.reassembly().buffered_bytes;
        assert!(held <= MEMORY_LIMIT as u64, "{held} bytes held, at most {MEMORY_LIMIT}");
        monitor.drain_findings().for_each(drop);
        rest = after;
    }
    monitor.finish(ts + 1);
});
