//! Feeds arbitrary bytes to `ws-monitor replay` as a capture file (pcap or pcapng, any
//! link type), through the packet decoder, reassembly and the engine: a garbage or cut
//! file gets an error, never a panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use ws_monitor::engine::EngineConfig;
use ws_monitor::pipeline::monitor::Monitor;
use ws_monitor::reassembly::ReassemblyConfig;
use ws_monitor::sources::replay;

fuzz_target!(|input: &[u8]| {
    // The reader takes a path (pipes and files alike): a file in memory-backed /dev/shm.
    let Ok(mut file) = tempfile::NamedTempFile::new_in("/dev/shm").or_else(|_| tempfile::NamedTempFile::new()) else {
        return;
    };
    if file.write_all(input).is_err() {
        return;
    }
    let mut monitor = Monitor::new(ReassemblyConfig::default(), EngineConfig::default(), None);
    let _ = replay::detect_ports(file.path());
    let _ = replay::replay(file.path(), &[8001, 80], |seg| monitor.segment(seg));
    monitor.finish(u64::MAX / 2);
});
