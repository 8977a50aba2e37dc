//! `--metrics-addr`: Prometheus text exposition at `/metrics`, for fleets of hosts.
//!
//! Counters are set to the engine's and capture's totals once a second, so the
//! exposition always agrees with the `--json` report.

use std::net::SocketAddr;

use anyhow::Context as _;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

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
        describe_counter!("ws_monitor_close_codes_total", "Close frames by status code");
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
        for (code, n) in &engine.close_codes {
            counter!("ws_monitor_close_codes_total", "code" => code.to_string()).absolute(*n);
        }
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
