//! Headless output (stdout not a terminal, or `--no-tui`): `tracing` lines on stderr.
//!
//! - every finding, rate-limited per kind (at most [`FINDINGS_PER_INTERVAL`] lines per
//!   kind per log interval; the rest are counted and reported once per interval);
//! - every `--log-interval` seconds one line with all non-zero counters and their rates;
//! - a summary at exit.
//!
//! Payload bytes never reach the logs unless `--log-payload` is given.

use std::fmt::Write as _;

use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::engine::{EngineStats, Finding, Kind};
use crate::flow::{Direction, Loss};
use crate::outputs::report::CaptureReport;

/// Finding lines per kind per log interval before the rest are only counted.
pub const FINDINGS_PER_INTERVAL: u32 = 5;

/// Log line format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global `tracing` subscriber writing to stderr. `WS_MONITOR_LOG` (an
/// `EnvFilter` directive, default `info`) selects what is shown.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("WS_MONITOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Cumulative counters at one moment, flattened for the periodic line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// (name, value) in a stable order.
    pub values: Vec<(String, u64)>,
}

impl Totals {
    pub fn new(capture: &CaptureReport, engine: &EngineStats, open: usize) -> Totals {
        let mut values: Vec<(String, u64)> = vec![
            ("packets".into(), capture.packets),
            ("bytes_client".into(), capture.bytes_client),
            ("bytes_server".into(), capture.bytes_server),
            ("skipped_client".into(), capture.skipped_client),
            ("skipped_server".into(), capture.skipped_server),
            ("connections".into(), engine.connections),
            ("connections_open".into(), open as u64),
            ("upgrades_ok".into(), engine.upgrades_ok),
            ("frames".into(), engine.frames.iter().map(|f| f.total()).sum()),
            ("ring_drops".into(), capture.ring_drops),
            ("gaps".into(), capture.gaps),
            ("bytes_lost".into(), capture.bytes_lost),
            ("desyncs".into(), engine.desyncs),
            ("findings_suppressed".into(), engine.findings_suppressed),
        ];
        for loss in Loss::ALL {
            values.push((format!("unanalysed.{}", loss.name()), engine.unanalysed.get(loss)));
        }
        for kind in Kind::ALL {
            for dir in Direction::BOTH {
                values.push((format!("{}.{}", kind.name(), dir.name()), engine.violation_count_dir(dir, kind)));
            }
        }
        Totals { values }
    }
}

/// Rate limiter and periodic reporter for headless runs.
pub struct HeadlessLog {
    interval_ns: u64,
    last_ns: Option<u64>,
    previous: Totals,
    budget: [u32; Kind::COUNT],
    suppressed: [u64; Kind::COUNT],
    log_payload: bool,
}

impl HeadlessLog {
    pub fn new(interval_secs: f64, log_payload: bool) -> Self {
        HeadlessLog {
            interval_ns: (interval_secs.max(0.0) * 1e9) as u64,
            last_ns: None,
            previous: Totals::default(),
            budget: [FINDINGS_PER_INTERVAL; Kind::COUNT],
            suppressed: [0; Kind::COUNT],
            log_payload,
        }
    }

    /// Logs a finding unless its kind has used up this interval's lines.
    pub fn finding(&mut self, f: &Finding) {
        let i = f.kind.index();
        match self.budget.get_mut(i) {
            Some(left) if *left > 0 => *left -= 1,
            _ => {
                if let Some(s) = self.suppressed.get_mut(i) {
                    *s += 1;
                }
                return;
            }
        }
        let header = f.header.hex();
        let payload = if self.log_payload { Some(f.excerpt.escaped()) } else { None };
        if let Some(explained) = f.explain() {
            warn!(
                kind = f.kind.name(),
                side = f.dir.name(),
                client = %f.key.client,
                server = %f.key.server,
                connection = f.id.0,
                payload = payload.as_deref(),
                cause = f.kind.likely_cause(),
                "{}: {explained}; check: {}",
                f.kind.name(),
                f.kind.likely_cause()
            );
            return;
        }
        warn!(
            kind = f.kind.name(),
            direction = f.dir.name(),
            client = %f.key.client,
            server = %f.key.server,
            connection = f.id.0,
            offset = f.offset,
            header = header.as_str(),
            payload = payload.as_deref(),
            cause = f.kind.likely_cause(),
            "{}: {} (from the {}); check: {}",
            f.kind.name(),
            f.kind.meaning(),
            f.dir.name(),
            f.kind.likely_cause()
        );
    }

    /// Every log interval: the counter line and the suppressed-findings lines.
    /// `totals` is only called when a line is due.
    pub fn tick(&mut self, now_ns: u64, totals: impl FnOnce() -> Totals) {
        let last = *self.last_ns.get_or_insert(now_ns);
        if self.interval_ns == 0 || now_ns.saturating_sub(last) < self.interval_ns {
            return;
        }
        let totals = totals();
        let secs = (now_ns - last) as f64 / 1e9;
        self.last_ns = Some(now_ns);
        let mut line = String::new();
        for (i, (name, value)) in totals.values.iter().enumerate() {
            if *value == 0 {
                continue;
            }
            // Same names in the same order every time (empty before the first line).
            let before = self.previous.values.get(i).map_or(0, |(_, v)| *v);
            let rate = (*value as f64 - before as f64) / secs;
            let _ = write!(line, "{name}={value} ({rate:.1}/s) ");
        }
        info!("counters: {}", if line.is_empty() { "all zero" } else { line.trim_end() });
        for kind in Kind::ALL {
            let n = std::mem::take(&mut self.suppressed[kind.index()]);
            if n > 0 {
                warn!(
                    kind = kind.name(),
                    suppressed = n,
                    "{}: {n} more findings not logged in the last {secs:.0} s",
                    kind.name()
                );
            }
        }
        self.budget = [FINDINGS_PER_INTERVAL; Kind::COUNT];
        self.previous = totals;
    }

    /// At exit: the totals, and one line per kind seen.
    pub fn summary(
        &mut self,
        capture: &CaptureReport,
        engine: &EngineStats,
        reassembly: &crate::reassembly::ReassemblyStats,
        proxy: &crate::diagnosis::proxy::ProxyStats,
    ) {
        for kind in Kind::ALL {
            let n = std::mem::take(&mut self.suppressed[kind.index()]);
            if n > 0 {
                warn!(kind = kind.name(), suppressed = n, "{}: {n} more findings not logged", kind.name());
            }
        }
        info!(
            "summary: {} connections, {} upgrades, {} violations, {} packets, ring drops {}, gaps {} ({} B lost)",
            engine.connections,
            engine.upgrades_ok,
            engine.violations_total(),
            capture.packets,
            capture.ring_drops,
            capture.gaps,
            capture.bytes_lost
        );
        for line in crate::outputs::report::violation_lines(engine) {
            warn!("summary: {line}");
        }
        for (i, c) in crate::diagnosis::diagnose(engine, reassembly, proxy, capture.ring_drops).iter().enumerate() {
            warn!(
                rank = i + 1,
                evidence = c.evidence,
                "diagnosis {}: {} ({} {}); check: {}",
                i + 1,
                c.cause,
                c.evidence,
                c.unit,
                c.check
            );
        }
    }
}
