//! The final report printed by `--json`: one JSON object at exit.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::engine::{EngineStats, Kind};
use crate::flow::Direction;
use crate::reassembly::ReassemblyStats;
use crate::sources::capture::KernelCounters;

/// The `capture` object: exactly these keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CaptureReport {
    /// TCP packets on the monitored ports (kernel count in live mode, file count in replay).
    pub packets: u64,
    /// Payload bytes delivered in order from the connecting side to the monitored port.
    pub bytes_client: u64,
    /// Payload bytes delivered in order the other way.
    pub bytes_server: u64,
    /// Payload bytes the kernel left out on purpose (header-only capture: binary frame
    /// payload), client to server and back. Not lost: known, and not needed.
    pub skipped_client: u64,
    pub skipped_server: u64,
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
            skipped_client: r.skipped_client,
            skipped_server: r.skipped_server,
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

/// The whole `--json` report, the same for live capture and replay:
/// `{"ports", "connections", "upgrades_ok", "frames", "violations",
/// "violations_by_direction", "close_codes", "http_requests", "not_http",
/// "inflate_skipped", "findings_suppressed", "engine_panics", "unanalysed", "endings", "close_analysis",
/// "sync", "capture"}`.
pub fn report_json(ports: &[u16], engine: &EngineStats, capture: &CaptureReport) -> Value {
    let by_kind = |dir: Option<Direction>| -> Map<String, Value> {
        Kind::violations()
            .map(|k| {
                let n = match dir {
                    Some(d) => engine.violation_count_dir(d, k),
                    None => engine.violation_count(k),
                };
                (k.name().to_string(), Value::from(n))
            })
            .collect()
    };
    let frames = |d: Direction| serde_json::to_value(engine.frames[d.index()]).unwrap_or(Value::Null);
    json!({
        "ports": ports,
        "connections": engine.connections,
        "upgrades_ok": engine.upgrades_ok,
        "frames": {"client": frames(Direction::ToServer), "server": frames(Direction::ToClient)},
        "violations": by_kind(None),
        "violations_by_direction": {
            "client": by_kind(Some(Direction::ToServer)),
            "server": by_kind(Some(Direction::ToClient)),
        },
        "close_codes": engine.close_codes.iter().map(|(c, n)| (c.to_string(), Value::from(*n))).collect::<Map<String, Value>>(),
        "http_requests": engine.http_requests.iter().map(|(p, n)| (p.to_string(), Value::from(*n))).collect::<Map<String, Value>>(),
        "not_http": engine.not_http,
        "inflate_skipped": engine.inflate_skipped,
        "findings_suppressed": engine.findings_suppressed,
        "engine_panics": engine.panics,
        "unanalysed": engine.unanalysed,
        "endings": crate::engine::Ending::ALL
            .iter()
            .map(|e| (e.name().to_string(), Value::from(engine.endings.get(e.index()).copied().unwrap_or(0))))
            .collect::<Map<String, Value>>(),
        "close_analysis": close_analysis_json(engine),
        "sync": {
            "desyncs": engine.desyncs,
            "resyncs": engine.resyncs,
            "unsynced_bytes": engine.unsynced_bytes,
            "skipped_bytes": engine.skipped_bytes,
            "skip_mismatches": engine.skip_mismatches,
        },
        "capture": capture,
    })
}

/// Connections cut by one side after about the same idle time: idle times within
/// [`PATTERN_SPREAD_DS`] of the shortest of a pattern go with it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IdleCutPattern {
    pub side: &'static str,
    /// Mean idle time, seconds.
    pub idle_s: f64,
    pub connections: u64,
}

/// Tenths of a second: how far apart idle times of one pattern may be.
const PATTERN_SPREAD_DS: u64 = 20;

impl IdleCutPattern {
    /// `12 connections cut after 60.0 s idle by the server side`.
    pub fn sentence(&self) -> String {
        let n = self.connections;
        format!(
            "{n} connection{} cut after {:.1} s idle by the {} side: a proxy or load balancer idle timeout (nginx's proxy_read_timeout is 60 s by default)",
            if n == 1 { "" } else { "s" },
            self.idle_s,
            self.side
        )
    }
}

/// The idle-cut patterns of `engine`, most connections first.
pub fn idle_cut_patterns(engine: &EngineStats) -> Vec<IdleCutPattern> {
    let mut out = Vec::new();
    for dir in Direction::BOTH {
        let Some(cuts) = engine.idle_cuts.get(dir.index()) else { continue };
        let mut group: Option<(u64, u64, u64)> = None; // first idle, sum of idle, count
        let flush = |g: Option<(u64, u64, u64)>, out: &mut Vec<IdleCutPattern>| {
            if let Some((_, sum, n)) = g.filter(|g| g.2 > 0) {
                out.push(IdleCutPattern { side: dir.name(), idle_s: sum as f64 / n as f64 / 10.0, connections: n });
            }
        };
        for (&idle, &n) in cuts {
            group = match group {
                Some((first, sum, count)) if idle - first <= PATTERN_SPREAD_DS => {
                    Some((first, sum + idle * n, count + n))
                }
                g => {
                    flush(g, &mut out);
                    Some((idle, idle * n, n))
                }
            };
        }
        flush(group, &mut out);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.connections));
    out
}

/// The `close_analysis` object: each close-analysis kind by side, and the idle-cut
/// patterns.
fn close_analysis_json(engine: &EngineStats) -> Value {
    let mut m: Map<String, Value> = Kind::close_analysis()
        .map(|k| {
            let by = |d: Direction| Value::from(engine.violation_count_dir(d, k));
            (k.name().to_string(), json!({"client": by(Direction::ToServer), "server": by(Direction::ToClient)}))
        })
        .collect();
    let patterns: Vec<Value> = idle_cut_patterns(engine)
        .iter()
        .map(|p| json!({"side": p.side, "idle_s": p.idle_s, "connections": p.connections, "meaning": p.sentence()}))
        .collect();
    m.insert("idle_cut_patterns".into(), patterns.into());
    Value::Object(m)
}

/// The `budgets` object: each limit over all workers, and what it cost.
pub fn budgets_json(limits: &crate::pipeline::Limits, r: &ReassemblyStats, engine: &EngineStats) -> Value {
    json!({
        "memory_limit": limits.memory_limit,
        "buffered_bytes": r.buffered_bytes,
        "peak_buffered_bytes": r.peak_buffered_bytes,
        "memory_limit_hits": r.memory_limit_hits,
        "max_buffered_per_direction": limits.max_buffered_per_direction,
        "buffer_overflows": r.buffer_overflows,
        "max_flows": limits.max_flows,
        "table_full_evictions": r.table_full_evictions,
        "upgraded_evictions": r.upgraded_evictions,
        "max_half_open": limits.max_half_open,
        "half_open_evictions": r.half_open_evictions,
        "max_findings_per_second": limits.max_findings_per_second,
        "findings_suppressed": engine.findings_suppressed,
    })
}

/// This process's peak resident memory (`VmHWM`), or `None` where `/proc` does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// One line of capture and protocol counters, for stderr.
pub fn stats_line(totals: &crate::pipeline::Totals, packets: u64, drops: u64) -> String {
    let r = &totals.reassembly;
    let e = &totals.engine;
    format!(
        "{packets} packets, {} connections open ({} opened, {} closed, {} evicted), {} upgrades, {} frames, {} violations, {} B client->server, {} B server->client, ring drops {drops}, gaps {} ({} B lost)",
        totals.open_flows,
        r.flows_opened,
        r.flows_closed,
        r.flows_evicted,
        e.upgrades_ok,
        e.frames[0].total() + e.frames[1].total(),
        e.violations_total(),
        r.bytes_client,
        r.bytes_server,
        r.gaps,
        r.bytes_lost
    )
}

/// `kind: N (client A, server B) — meaning` for every kind seen, most frequent first.
pub fn violation_lines(engine: &EngineStats) -> Vec<String> {
    let mut kinds: Vec<(Kind, u64)> =
        Kind::ALL.iter().map(|&k| (k, engine.violation_count(k))).filter(|&(_, n)| n > 0).collect();
    kinds.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    kinds
        .into_iter()
        .map(|(k, n)| {
            format!(
                "{}: {n} (client {}, server {}) - {}",
                k.name(),
                engine.violation_count_dir(Direction::ToServer, k),
                engine.violation_count_dir(Direction::ToClient, k),
                k.meaning()
            )
        })
        .collect()
}
