//! The driver's fan-out: findings, connection records and totals to every output asked
//! for (events, connection log, headless log, metrics, dashboard), and the final report.

use anyhow::bail;
use futures_util::Stream;
use ratatui::backend::Backend;

use crate::cli::RunArgs;
use crate::diagnosis::proxy::live_pairs;
use crate::outputs::connections::ConnectionLog;
use crate::outputs::dashboard::{CaptureHealth, Control, Dashboard, Screen};
use crate::outputs::events::EventLog;
use crate::outputs::logs::{HeadlessLog, Totals};
use crate::outputs::metrics::Exporter;
use crate::outputs::report::{self, CaptureReport};
use crate::pipeline::{self, Pipeline};

/// Where findings and counters go besides the final report: the output sinks.
#[derive(Default)]
pub struct Outputs {
    pub events: Option<EventLog>,
    pub connections: Option<ConnectionLog>,
    pub log: Option<HeadlessLog>,
    pub metrics: Option<Exporter>,
}

impl Outputs {
    /// The file outputs `args` ask for, and the headless log if `headless` (times in the
    /// files are capture times plus `epoch_offset_ns`). Metrics are bound apart
    /// ([`Exporter::bind`]): before privileges are dropped.
    pub fn new(args: &RunArgs, epoch_offset_ns: i128, headless: bool) -> anyhow::Result<Outputs> {
        Ok(Outputs {
            events: args
                .events
                .as_deref()
                .map(|p| EventLog::create(p, epoch_offset_ns, args.log_payload))
                .transpose()?,
            connections: args
                .connections
                .as_deref()
                .map(|p| ConnectionLog::create(p, epoch_offset_ns, args.log_payload))
                .transpose()?,
            log: headless.then(|| HeadlessLog::new(args.log_interval, args.log_payload)),
            metrics: None,
        })
    }

    /// Sends the findings and connection records the workers have produced since the
    /// last call.
    pub fn findings(&mut self, pipeline: &mut Pipeline, mut dashboard: Option<&mut Dashboard>) {
        for record in pipeline.drain_records() {
            if let Some(log) = self.connections.as_mut() {
                log.write(&record);
            }
        }
        for finding in pipeline.drain_findings() {
            if let Some(events) = self.events.as_mut() {
                events.write(&finding);
            }
            if let Some(log) = self.log.as_mut() {
                log.finding(&finding);
            }
            if let Some(dashboard) = dashboard.as_deref_mut() {
                dashboard.on_finding(&finding);
            }
        }
    }

    /// About once a second: the periodic log line, metrics, the dashboard's counters,
    /// and the files flushed.
    pub fn tick(
        &mut self,
        now_ns: u64,
        totals: &pipeline::Totals,
        capture: &CaptureReport,
        dashboard: Option<&mut Dashboard>,
    ) {
        if let Some(log) = self.log.as_mut() {
            log.tick(now_ns, || Totals::new(capture, &totals.engine, totals.open_flows));
        }
        if let Some(metrics) = &self.metrics {
            metrics.update(&totals.engine, &totals.reassembly, capture, totals.open_flows);
        }
        if let Some(dashboard) = dashboard {
            let health = CaptureHealth {
                packets: capture.packets,
                bytes_delivered: capture.bytes_client + capture.bytes_server,
                bytes_lost: capture.bytes_lost,
                gaps: capture.gaps,
                ring_drops: capture.ring_drops,
            };
            dashboard.on_proxy(&totals.proxy);
            // Sessions open on both hops of a proxy count as soon as both handshakes are in.
            let open = live_pairs(totals.connections.iter().map(|(id, v)| (*id, v)));
            dashboard.on_diagnosis(crate::diagnosis::diagnose(
                &totals.engine,
                &totals.reassembly,
                &totals.proxy.with_open(&open),
                capture.ring_drops,
            ));
            dashboard.on_tick(now_ns, health, &totals.engine, totals.connections.iter().map(|(id, v)| (*id, v)));
        }
        if let Some(events) = self.events.as_mut() {
            events.flush();
        }
        if let Some(log) = self.connections.as_mut() {
            log.flush();
        }
    }

    /// At the end: the headless summary (or, after a dashboard, a plain one on stderr).
    pub fn summary(&mut self, totals: &pipeline::Totals, capture: &CaptureReport) {
        match self.log.as_mut() {
            Some(log) => log.summary(capture, &totals.engine, &totals.reassembly, &totals.proxy),
            None => {
                eprintln!("ws-monitor: {}", report::stats_line(totals, capture.packets, capture.ring_drops));
                for line in report::violation_lines(&totals.engine) {
                    eprintln!("ws-monitor:   {line}");
                }
            }
        }
    }
}

/// The dashboard and the screen it is drawn on.
pub struct Live<B: Backend, K> {
    pub dashboard: Dashboard,
    pub screen: Screen<B, K>,
}

impl<B: Backend, K: Stream<Item = std::io::Result<crossterm::event::Event>> + Unpin> Live<B, K> {
    /// Waits for a key and acts on it.
    pub async fn next_key(&mut self) -> Control {
        match self.screen.next_event().await {
            // Keys act; a resize and the like only need the redraw that follows.
            Some(Ok(event)) => self.dashboard.on_event(&event),
            // The terminal went away: stop rather than spin.
            Some(Err(_)) | None => Control::Quit,
        }
    }

    pub fn draw(&mut self) -> anyhow::Result<()> {
        self.screen.draw(&self.dashboard)
    }
}

/// The JSON report (with `--json`; none without): the totals, what `extra` adds, and
/// what is common to live capture and replay.
pub fn report(
    totals: &pipeline::Totals,
    run: &RunArgs,
    ports: &[u16],
    capture: &CaptureReport,
    extra: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<Option<serde_json::Value>> {
    if !run.json {
        return Ok(None);
    }
    let mut out = report::report_json(ports, &totals.engine, capture);
    if let Some(map) = out.as_object_mut() {
        map.extend(extra);
        map.insert("reassembly".into(), serde_json::to_value(totals.reassembly)?);
        map.insert("budgets".into(), report::budgets_json(&totals.limits, &totals.reassembly, &totals.engine));
        map.insert("proxy".into(), serde_json::to_value(&totals.proxy)?);
        let diagnosis =
            crate::diagnosis::diagnose(&totals.engine, &totals.reassembly, &totals.proxy, capture.ring_drops);
        map.insert("diagnosis".into(), serde_json::to_value(diagnosis)?);
        map.insert(
            "blind_spots".into(),
            serde_json::json!({
                "connections": totals.blind_spots.sorted(),
                "omitted": totals.blind_spots.omitted,
            }),
        );
        map.insert("peak_rss_bytes".into(), report::peak_rss_bytes().into());
        if run.streams_dir.is_some() {
            map.insert("streams".into(), serde_json::json!({"errors": totals.stream_errors}));
        }
    }
    Ok(Some(out))
}

/// Fails when `--streams-dir` could not write everything (`stream_errors` writes failed).
pub fn check_streams(stream_errors: u64) -> anyhow::Result<()> {
    if stream_errors > 0 {
        bail!(
            "--streams-dir: {stream_errors} writes failed, so its files are incomplete: free disk space, or raise the open-file limit (ulimit -n; two files per open connection)"
        );
    }
    Ok(())
}
