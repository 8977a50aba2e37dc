//! The final report printed by `--json`: one JSON object at exit.

use serde::Serialize;

use crate::capture::KernelCounters;
use crate::reassembly::ReassemblyStats;

/// The `capture` object: exactly these keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CaptureReport {
    /// TCP packets on the monitored ports (kernel count in live mode, file count in replay).
    pub packets: u64,
    /// Payload bytes delivered in order from the connecting side to the monitored port.
    pub bytes_client: u64,
    /// Payload bytes delivered in order the other way.
    pub bytes_server: u64,
    pub flows_opened: u64,
    pub flows_closed: u64,
    pub flows_evicted: u64,
    /// Records the kernel could not put in the ring buffer because it was full.
    pub ring_drops: u64,
    /// Holes in streams that were never filled.
    pub gaps: u64,
    /// Bytes in those holes.
    pub bytes_lost: u64,
}

impl CaptureReport {
    pub fn new(packets: u64, ring_drops: u64, r: &ReassemblyStats) -> Self {
        CaptureReport {
            packets,
            bytes_client: r.bytes_client,
            bytes_server: r.bytes_server,
            flows_opened: r.flows_opened,
            flows_closed: r.flows_closed,
            flows_evicted: r.flows_evicted,
            ring_drops,
            gaps: r.gaps,
            bytes_lost: r.bytes_lost,
        }
    }
}

/// Every kernel counter by name, for the `kernel` object of the live report.
pub fn kernel_json(k: &KernelCounters) -> serde_json::Value {
    serde_json::Value::Object(k.named().map(|(n, v)| (n.to_string(), v.into())).collect())
}
