//! Feeds arbitrary bytes to the kernel record decoder as ring-buffer records, and what
//! it accepts to reassembly and the engine (as the live loop does): a record a buggy or
//! foreign program wrote must be refused or handled, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_monitor::sources::capture;
use ws_monitor::engine::EngineConfig;
use ws_monitor::pipeline::monitor::Monitor;
use ws_monitor::reassembly::ReassemblyConfig;

fuzz_target!(|input: &[u8]| {
    let reassembly = ReassemblyConfig {
        max_flows: 8,
        max_buffered_per_direction: 1 << 16,
        idle_timeout_ns: 1 << 40,
        max_half_open: 4,
        memory_limit: 1 << 17,
    };
    let mut monitor = Monitor::new(reassembly, EngineConfig { steer: true, ..EngineConfig::default() }, None);
    // Records one after the other, each preceded by its length (one byte, in 8-byte steps).
    let mut rest = input;
    while let Some((&n, tail)) = rest.split_first() {
        let len = (usize::from(n) * 8).min(tail.len());
        let (record, after) = tail.split_at(len);
        match capture::decode(record) {
            Ok((header, payload)) if header.lost != 0 => monitor.lost(&capture::segment(&header, payload)),
            Ok((header, payload)) => monitor.segment(&capture::segment(&header, payload)),
            Err(_) => {}
        }
        monitor.drain_findings().for_each(drop);
        monitor.drain_hints();
        rest = after;
    }
    monitor.finish(u64::MAX / 2);
});
