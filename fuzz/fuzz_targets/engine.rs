//! Feeds arbitrary bytes to the protocol engine as a connection's two streams, cut at
//! arbitrary points, with gaps: handshake parsing, frame parsing, resync, inflate and
//! UTF-8 validation must never panic.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ws_monitor::engine::{Engine, EngineConfig};
use ws_monitor::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, StreamSink};

fuzz_target!(|input: &[u8]| {
    let Some((&control, rest)) = input.split_first() else { return };
    let mut engine =
        Engine::new(EngineConfig { max_frame_size: 1 << 16, max_message_size: 1 << 18, ..EngineConfig::default() });
    let key = FlowKey {
        client: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
        server: SocketAddr::from((Ipv4Addr::LOCALHOST, 8001)),
    };
    let id = FlowId(1);
    let opening = if control & 1 == 0 { Opening::Handshake } else { Opening::MidStream };
    engine.open(id, &key, opening, 0);
    let mut offsets = [0u64; 2];
    // Each piece: one control byte (direction, gap or data, length), then the data.
    let mut data = rest;
    let mut ts = 1;
    while let Some((&c, tail)) = data.split_first() {
        let dir = if c & 0x80 == 0 { Direction::ToServer } else { Direction::ToClient };
        let len = ((c & 0x3f) as usize + 1) * if control & 2 == 0 { 1 } else { 16 };
        let off = &mut offsets[dir.index()];
        if c & 0x40 != 0 && control & 4 != 0 {
            engine.gap(id, dir, *off, len as u64, Loss::Capture, ts);
            *off += len as u64;
            data = tail;
        } else {
            let n = len.min(tail.len());
            let (piece, after) = tail.split_at(n);
            engine.data(id, dir, *off, piece, ts);
            *off += n as u64;
            data = after;
        }
        ts += 1;
        engine.drain_findings().for_each(drop);
    }
    engine.close(id, Closing::Fin, ts);
    let _ = engine.stats();
});
