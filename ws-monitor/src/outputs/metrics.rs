//! `--metrics-addr`: Prometheus text exposition at `/metrics`, for fleets of hosts.
//!
//! Counters are set to the engine's and capture's totals once a second, so the
//! exposition always agrees with the `--json` report. The listener answers `GET` (and
//! `HEAD`) of `/metrics` only: 404 for any other path, 405 for any other method, 400 for
//! what is not an HTTP request.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::engine::frame::close_code_valid;
use crate::engine::{EngineStats, FrameCounts, Kind};
use crate::flow::{Direction, Loss};
use crate::outputs::report::CaptureReport;
use crate::reassembly::ReassemblyStats;

/// The installed exporter and its listener.
pub struct Exporter {
    /// The bound listener until [`Exporter::serve`] hands it to its thread.
    listener: Option<(TcpListener, PrometheusHandle)>,
}

impl Exporter {
    /// Binds `addr` and installs the metrics recorder; [`Exporter::serve`] answers.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Exporter> {
        let listener = TcpListener::bind(addr).with_context(|| {
            format!("cannot serve metrics on {addr} (is the port in use? pick another --metrics-addr)")
        })?;
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed in this process"))?;
        describe_counter!(
            "ws_monitor_violations_total",
            "WebSocket protocol violations by kind and direction of the offending bytes"
        );
        describe_counter!(
            "ws_monitor_close_analysis_total",
            "How connections ended: peer_protocol_error, abnormal_closure, idle_timeout_cut, by the side concerned"
        );
        describe_counter!("ws_monitor_frames_total", "WebSocket frames parsed, by opcode and direction");
        describe_counter!("ws_monitor_connections_total", "TCP connections to the monitored ports");
        describe_gauge!("ws_monitor_connections_open", "TCP connections tracked now");
        describe_counter!("ws_monitor_upgrades_total", "Connections that completed a valid HTTP 101 upgrade");
        describe_counter!(
            "ws_monitor_close_codes_total",
            "Close frames by status code (codes not allowed on the wire as code=\"invalid\")"
        );
        describe_counter!(
            "ws_monitor_http_requests_total",
            "Plain HTTP requests (no WebSocket header) by server port: health checks, polling"
        );
        describe_counter!(
            "ws_monitor_inflate_skipped_total",
            "Compressed messages not inflated to their end (max_message_size, max_inflate_rate)"
        );
        describe_counter!(
            "ws_monitor_not_http_total",
            "Connections given up during the handshake because their bytes were not HTTP"
        );
        describe_counter!("ws_monitor_capture_packets_total", "TCP packets captured on the monitored ports");
        describe_counter!("ws_monitor_capture_bytes_total", "Payload bytes delivered in order, by direction");
        describe_counter!(
            "ws_monitor_capture_bytes_skipped_total",
            "Payload bytes left out by header-only capture (binary frame payload), by direction"
        );
        describe_counter!(
            "ws_monitor_capture_ring_drops_total",
            "Records lost because the kernel ring buffer was full"
        );
        describe_counter!("ws_monitor_capture_gaps_total", "Holes in TCP streams that were never filled");
        describe_counter!("ws_monitor_capture_bytes_lost_total", "Bytes in those holes");
        describe_counter!(
            "ws_monitor_unanalysed_bytes_total",
            "Bytes no check saw, by cause: capture_loss, eviction, buffer_limit, resync"
        );
        describe_counter!(
            "ws_monitor_budget_hits_total",
            "Times a limit acted, by budget: memory_limit, flow_buffer, max_flows, max_half_open (evictions), max_findings_per_second (findings left out)"
        );
        describe_counter!(
            "ws_monitor_sessions_evicted_total",
            "WebSocket sessions evicted from a full flow table (raise --max-flows)"
        );
        describe_counter!(
            "ws_monitor_connections_ended_total",
            "WebSocket connections ended, by how: close_handshake, close_one_sided, fin_without_close, rst, evicted, open_at_exit"
        );
        describe_gauge!("ws_monitor_buffered_bytes", "Out-of-order bytes held now over all connections");
        describe_counter!(
            "ws_monitor_engine_panics_total",
            "Times analysing a connection panicked: that connection was dropped, the monitor went on (please report)"
        );
        let exporter = Exporter { listener: Some((listener, handle)) };
        // Every kind and direction from the start, zeros included.
        exporter.update(&EngineStats::default(), &ReassemblyStats::default(), &CaptureReport::default(), 0);
        Ok(exporter)
    }

    /// The address it listens on (before [`Exporter::serve`]): the port the system chose
    /// for port 0.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Answers scrapes from a thread of its own, so that a busy capture loop never keeps
    /// one waiting.
    pub fn serve(&mut self) -> anyhow::Result<()> {
        let Some((listener, handle)) = self.listener.take() else { return Ok(()) };
        std::thread::Builder::new()
            .name("ws-monitor-metrics".into())
            .spawn(move || serve(listener, handle))
            .context("starting the metrics listener thread")?;
        Ok(())
    }

    /// Sets every exported counter to the current totals.
    pub fn update(&self, engine: &EngineStats, reassembly: &ReassemblyStats, capture: &CaptureReport, open: usize) {
        for dir in Direction::BOTH {
            let d = dir.name();
            for kind in Kind::violations() {
                counter!("ws_monitor_violations_total", "kind" => kind.name(), "direction" => d)
                    .absolute(engine.violation_count_dir(dir, kind));
            }
            for kind in Kind::close_analysis() {
                counter!("ws_monitor_close_analysis_total", "kind" => kind.name(), "side" => d)
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
        for loss in Loss::ALL {
            counter!("ws_monitor_unanalysed_bytes_total", "cause" => loss.name()).absolute(engine.unanalysed.get(loss));
        }
        let r = reassembly;
        for (budget, n) in [
            ("memory_limit", r.memory_limit_hits),
            ("flow_buffer", r.buffer_overflows),
            ("max_flows", r.table_full_evictions),
            ("max_half_open", r.half_open_evictions),
            ("max_findings_per_second", engine.findings_suppressed),
        ] {
            counter!("ws_monitor_budget_hits_total", "budget" => budget).absolute(n);
        }
        counter!("ws_monitor_sessions_evicted_total").absolute(r.upgraded_evictions);
        counter!("ws_monitor_engine_panics_total").absolute(engine.panics);
        for ending in crate::engine::Ending::ALL {
            counter!("ws_monitor_connections_ended_total", "how" => ending.name())
                .absolute(engine.endings.get(ending.index()).copied().unwrap_or(0));
        }
        gauge!("ws_monitor_buffered_bytes").set(r.buffered_bytes as f64);
    }
}

/// Scrapes answered at once; a connection beyond them is closed at once (a scraper
/// retries at its next interval).
const MAX_SCRAPES: usize = 8;
/// How long a scraper may take to send its request or read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const REQUEST_CAP: usize = 8 << 10;

fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let handle = Arc::new(handle);
    let busy = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_SCRAPES {
            busy.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (handle, done) = (handle.clone(), busy.clone());
        let spawned = std::thread::Builder::new().name("ws-monitor-scrape".into()).spawn(move || {
            let _ = answer(stream, &handle);
            done.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Reads one request and answers it (then closes the connection).
fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    let mut buf = vec![0u8; REQUEST_CAP];
    let mut len = 0;
    let route = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break route(req.method.unwrap_or(""), req.path.unwrap_or("")),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            Ok(httparse::Status::Partial) => break Route::TooLarge,
            Err(_) => break Route::BadRequest,
        }
    };
    let (status, extra, body) = match route {
        Route::Metrics { head } => {
            let body = handle.render();
            ("200 OK", "Content-Type: text/plain; version=0.0.4\r\n", if head { String::new() } else { body })
        }
        Route::NotFound => ("404 Not Found", "", "not found: ws-monitor serves /metrics only\n".to_owned()),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "Allow: GET, HEAD\r\n", "use GET /metrics\n".to_owned()),
        Route::TooLarge => ("431 Request Header Fields Too Large", "", String::new()),
        Route::BadRequest => ("400 Bad Request", "", String::new()),
    };
    let head = format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[derive(Debug, PartialEq)]
enum Route {
    Metrics { head: bool },
    NotFound,
    MethodNotAllowed,
    TooLarge,
    BadRequest,
}

fn route(method: &str, target: &str) -> Route {
    let path = target.split(['?', '#']).next().unwrap_or("");
    match (method, path) {
        (_, p) if p != "/metrics" => Route::NotFound,
        ("GET", _) => Route::Metrics { head: false },
        ("HEAD", _) => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
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
    fn only_get_or_head_of_metrics_is_served() {
        assert_eq!(route("GET", "/metrics"), Route::Metrics { head: false });
        assert_eq!(route("GET", "/metrics?name[]=x"), Route::Metrics { head: false });
        assert_eq!(route("HEAD", "/metrics"), Route::Metrics { head: true });
        assert_eq!(route("GET", "/"), Route::NotFound);
        assert_eq!(route("GET", "/metricsx"), Route::NotFound);
        assert_eq!(route("POST", "/"), Route::NotFound);
        assert_eq!(route("POST", "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route("DELETE", "/metrics"), Route::MethodNotAllowed);
    }

    #[test]
    fn invalid_close_codes_share_one_series() {
        let codes: BTreeMap<u16, u64> = [(1000, 3), (4001, 1), (0, 2), (1005, 1), (65535, 4)].into_iter().collect();
        let series = close_code_series(&codes);
        let want: BTreeMap<String, u64> =
            [("1000".to_owned(), 3), ("4001".to_owned(), 1), ("invalid".to_owned(), 7)].into_iter().collect();
        assert_eq!(series, want);
    }
}
