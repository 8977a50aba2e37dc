//! `--metrics-addr`: Prometheus text exposition at `/metrics`, for fleets of hosts.
//!
//! Counters are set to the engine's and capture's totals once a second, so the
//! exposition always agrees with the `--json` report.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::engine::frame::close_code_valid;
use crate::engine::{EngineStats, FrameCounts, Kind};
use crate::flow::Direction;
use crate::report::CaptureReport;

/// The installed exporter; the HTTP listener runs on a thread of its own, so that a busy
/// capture loop never keeps a scrape waiting.
pub struct Exporter {
    _private: (),
}

impl Exporter {
    /// Binds `addr` and serves `/metrics`.
    pub fn start(addr: SocketAddr) -> anyhow::Result<Exporter> {
        // Installed from a thread outside any tokio runtime, the exporter starts its own
        // runtime on a background thread for the listener.
        std::thread::spawn(move || PrometheusBuilder::new().with_http_listener(addr).install())
            .join()
            .map_err(|_| anyhow::anyhow!("the metrics exporter panicked while starting"))?
            .with_context(|| format!("cannot serve metrics on {addr} (is the port in use? pick another --metrics-addr)"))?;
        describe_counter!("ws_monitor_violations_total", "WebSocket protocol violations by kind and direction of the offending bytes");
        describe_counter!("ws_monitor_frames_total", "WebSocket frames parsed, by opcode and direction");
        describe_counter!("ws_monitor_connections_total", "TCP connections to the monitored ports");
        describe_gauge!("ws_monitor_connections_open", "TCP connections tracked now");
        describe_counter!("ws_monitor_upgrades_total", "Connections that completed a valid HTTP 101 upgrade");
        describe_counter!("ws_monitor_close_codes_total", "Close frames by status code (codes not allowed on the wire as code=\"invalid\")");
        describe_counter!("ws_monitor_http_requests_total", "Plain HTTP requests (no WebSocket header) by server port: health checks, polling");
        describe_counter!("ws_monitor_inflate_skipped_total", "Compressed messages not inflated to their end (max_message_size, max_inflate_rate)");
        describe_counter!("ws_monitor_not_http_total", "Connections given up during the handshake because their bytes were not HTTP");
        describe_counter!("ws_monitor_capture_packets_total", "TCP packets captured on the monitored ports");
        describe_counter!("ws_monitor_capture_bytes_total", "Payload bytes delivered in order, by direction");
        describe_counter!(
            "ws_monitor_capture_bytes_skipped_total",
            "Payload bytes left out by header-only capture (binary frame payload), by direction"
        );
        describe_counter!("ws_monitor_capture_ring_drops_total", "Records lost because the kernel ring buffer was full");
        describe_counter!("ws_monitor_capture_gaps_total", "Holes in TCP streams that were never filled");
        describe_counter!("ws_monitor_capture_bytes_lost_total", "Bytes in those holes");
        let exporter = Exporter { _private: () };
        // Every kind and direction from the start, zeros included.
        exporter.update(&EngineStats::default(), &CaptureReport::default(), 0);
        Ok(exporter)
    }

    /// Sets every exported counter to the current totals.
    pub fn update(&self, engine: &EngineStats, capture: &CaptureReport, open: usize) {
        for dir in Direction::BOTH {
            let d = dir.name();
            for kind in Kind::ALL {
                counter!("ws_monitor_violations_total", "kind" => kind.name(), "direction" => d)
                    .absolute(engine.violation_count_dir(dir, kind));
            }
            for (opcode, n) in opcodes(&engine.frames[dir.index()]) {
                counter!("ws_monitor_frames_total", "opcode" => opcode, "direction" => d).absolute(n);
            }
        }
        counter!("ws_monitor_connections_total").absolute(engine.connections);
        gauge!("ws_monitor_connections_open").set(open as f64);
        counter!("ws_monitor_upgrades_total").absolute(engine.upgrades_ok);
        for (label, n) in close_code_series(&engine.close_codes) {
            counter!("ws_monitor_close_codes_total", "code" => label).absolute(n);
        }
        for (port, n) in &engine.http_requests {
            counter!("ws_monitor_http_requests_total", "port" => port.to_string()).absolute(*n);
        }
        counter!("ws_monitor_not_http_total").absolute(engine.not_http);
        counter!("ws_monitor_inflate_skipped_total").absolute(engine.inflate_skipped);
        counter!("ws_monitor_capture_packets_total").absolute(capture.packets);
        counter!("ws_monitor_capture_bytes_total", "direction" => "client").absolute(capture.bytes_client);
        counter!("ws_monitor_capture_bytes_total", "direction" => "server").absolute(capture.bytes_server);
        counter!("ws_monitor_capture_bytes_skipped_total", "direction" => "client").absolute(capture.skipped_client);
        counter!("ws_monitor_capture_bytes_skipped_total", "direction" => "server").absolute(capture.skipped_server);
        counter!("ws_monitor_capture_ring_drops_total").absolute(capture.ring_drops);
        counter!("ws_monitor_capture_gaps_total").absolute(capture.gaps);
        counter!("ws_monitor_capture_bytes_lost_total").absolute(capture.bytes_lost);
    }
}

/// Close codes as metric series: each code allowed on the wire under its number, every
/// other one (chosen by the peer: up to 65,536 values) under `invalid`, so the series
/// stay bounded. The JSON report keeps the exact codes.
pub fn close_code_series(codes: &BTreeMap<u16, u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (&code, &n) in codes {
        let label = if close_code_valid(code) { code.to_string() } else { "invalid".to_owned() };
        *out.entry(label).or_insert(0) += n;
    }
    out
}

fn opcodes(f: &FrameCounts) -> [(&'static str, u64); 7] {
    [
        ("text", f.text),
        ("binary", f.binary),
        ("continuation", f.continuation),
        ("close", f.close),
        ("ping", f.ping),
        ("pong", f.pong),
        ("reserved", f.reserved),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_close_codes_share_one_series() {
        let codes: BTreeMap<u16, u64> = [(1000, 3), (4001, 1), (0, 2), (1005, 1), (65535, 4)].into_iter().collect();
        let series = close_code_series(&codes);
        let want: BTreeMap<String, u64> =
            [("1000".to_owned(), 3), ("4001".to_owned(), 1), ("invalid".to_owned(), 7)].into_iter().collect();
        assert_eq!(series, want);
    }
}
