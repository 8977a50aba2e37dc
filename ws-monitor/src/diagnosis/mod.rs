//! The few most likely causes right now, ranked by evidence, each with what to check:
//! the report's `diagnosis` list and the headless summary. Written for someone who has
//! never read RFC 6455. Pure: built from the totals, no I/O.

pub mod proxy;

use serde::Serialize;

use crate::diagnosis::proxy::ProxyStats;
use crate::engine::{EngineStats, Kind};
use crate::flow::{Direction, Loss};
use crate::outputs::report::idle_cut_patterns;
use crate::reassembly::ReassemblyStats;

/// One likely cause.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cause {
    /// What is going on, in one sentence.
    pub cause: String,
    /// How much shows it (findings, connections or bytes, as `unit` says).
    pub evidence: u64,
    pub unit: &'static str,
    /// What to check next.
    pub check: String,
    /// Ranking weight (higher first): how telling the sign is, times the order of
    /// magnitude of its evidence ([`weight`]).
    #[serde(skip)]
    weight: u64,
}

/// How telling a sign is (`tier`), times the number of binary digits of its evidence:
/// ten times the evidence adds about 3.3 to the factor, so a more telling kind of sign
/// is not drowned by a frequent, less telling one.
fn weight(tier: u64, evidence: u64) -> u64 {
    tier * u64::from(u64::BITS - evidence.leading_zeros())
}

/// Causes listed at most.
pub const MOST: usize = 5;

/// How telling each sign is: a wrong handshake breaks every connection it touches; a
/// frame violation breaks one connection; how connections end, and what the monitor
/// could not see, explain less on their own.
const PROXY: u64 = 200;
const HANDSHAKE: u64 = 100;
const FRAME: u64 = 20;
const CLOSE: u64 = 5;
const CAPTURE: u64 = 1;

/// The causes that `engine` and `reassembly` show, most telling first, [`MOST`] at most.
pub fn diagnose(engine: &EngineStats, reassembly: &ReassemblyStats, proxy: &ProxyStats, ring_drops: u64) -> Vec<Cause> {
    let mut out = Vec::new();
    // What a proxy changed between the two hops of a session: the most telling of all,
    // since it names the hop.
    for (&name, &n) in &proxy.alterations {
        let example = proxy.seen.iter().find(|p| p.altered.contains(&name));
        let hop = example.map_or_else(String::new, |p| format!(" (client side {}, backend side {})", p.front, p.back));
        let what = proxy.examples.get(name).map_or_else(|| name.to_string(), |a| format!("it {}", a.sentence()));
        out.push(Cause {
            cause: format!("a proxy alters WebSocket sessions: {what}{hop}"),
            evidence: n,
            unit: "sessions",
            check: Kind::ProxyAltered.likely_cause().to_string(),
            weight: weight(PROXY, n),
        });
    }
    // Violations, by kind and by the side whose bytes are at fault.
    for kind in Kind::violations() {
        for dir in Direction::BOTH {
            let n = engine.violation_count_dir(dir, kind);
            if n == 0 {
                continue;
            }
            let tier = if kind.once_per_connection() { HANDSHAKE } else { FRAME };
            out.push(Cause {
                cause: format!("the {} sends {}: {}", dir.name(), kind.name(), kind.meaning()),
                evidence: n,
                unit: "findings",
                check: kind.likely_cause().to_string(),
                weight: weight(tier, n),
            });
        }
    }
    // Refusals by a peer (close codes that say the other side broke a rule).
    for dir in Direction::BOTH {
        let n = engine.violation_count_dir(dir, Kind::PeerProtocolError);
        if n > 0 {
            out.push(Cause {
                cause: format!(
                    "the {} closes connections with a protocol-error code (1002, 1003, 1007, 1008 or 1009): it refuses what the {} sends",
                    dir.name(),
                    dir.reverse().name()
                ),
                evidence: n,
                unit: "connections",
                check: Kind::PeerProtocolError.likely_cause().to_string(),
                weight: weight(FRAME, n),
            });
        }
    }
    for p in idle_cut_patterns(engine) {
        out.push(Cause {
            cause: p.sentence(),
            evidence: p.connections,
            unit: "connections",
            check: Kind::IdleTimeoutCut.likely_cause().to_string(),
            weight: weight(FRAME, p.connections),
        });
    }
    let abnormal: u64 = Direction::BOTH.iter().map(|&d| engine.violation_count_dir(d, Kind::AbnormalClosure)).sum();
    if abnormal > 0 {
        out.push(Cause {
            cause: "connections end without a close frame: the applications see close code 1006".into(),
            evidence: abnormal,
            unit: "connection sides",
            check: Kind::AbnormalClosure.likely_cause().to_string(),
            weight: weight(CLOSE, abnormal),
        });
    }
    capture_causes(engine, reassembly, ring_drops, &mut out);
    out.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.cause.cmp(&b.cause)));
    out.truncate(MOST);
    out
}

/// What the monitor itself could not see or keep.
fn capture_causes(engine: &EngineStats, r: &ReassemblyStats, ring_drops: u64, out: &mut Vec<Cause>) {
    let lost = engine.unanalysed.get(Loss::Capture);
    if ring_drops > 0 || lost > 0 {
        out.push(Cause {
            cause: format!("the monitor missed {lost} bytes ({ring_drops} ring-buffer records dropped): findings on those connections may be missing"),
            evidence: lost,
            unit: "bytes",
            check: "raise --ring-size, or lower the load on this host's CPUs; --workers for more analysis threads".into(),
            weight: weight(CAPTURE, lost / 1024),
        });
    }
    if r.upgraded_evictions > 0 {
        out.push(Cause {
            cause: "WebSocket sessions were pushed out of a full flow table".into(),
            evidence: r.upgraded_evictions,
            unit: "sessions",
            check: "raise --max-flows (each tracked connection costs about 2.5 KB)".into(),
            weight: weight(CAPTURE, r.upgraded_evictions),
        });
    }
    let limited = engine.unanalysed.get(Loss::BufferLimit);
    if r.memory_limit_hits > 0 {
        out.push(Cause {
            cause: format!("out-of-order data beyond --memory-limit was given up ({limited} bytes unanalysed): a flood of spoofed or badly reordered segments?"),
            evidence: r.memory_limit_hits,
            unit: "holes given up",
            check: "look for a flood (many half-open or out-of-order connections); raise --memory-limit if the traffic is real".into(),
            weight: weight(CAPTURE, r.memory_limit_hits),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_problem_outranks_more_frequent_close_findings() {
        let mut e = EngineStats::default();
        e.violations[Direction::ToServer.index()][Kind::UpgradeMissing.index()] = 3;
        e.violations[Direction::ToServer.index()][Kind::AbnormalClosure.index()] = 40;
        e.violations[Direction::ToClient.index()][Kind::AbnormalClosure.index()] = 40;
        let d = diagnose(&e, &ReassemblyStats::default(), &ProxyStats::default(), 0);
        assert_eq!(d.len(), 2);
        assert!(d[0].cause.starts_with("the client sends upgrade_missing"), "{d:?}");
        assert_eq!((d[0].evidence, d[0].unit), (3, "findings"));
        assert_eq!(d[1].evidence, 80);
    }

    #[test]
    fn idle_cuts_and_blind_spots_say_what_to_check() {
        let mut e = EngineStats::default();
        e.idle_cuts[Direction::ToClient.index()].insert(600, 12);
        e.unanalysed.add(Loss::Capture, 1 << 20);
        let d = diagnose(&e, &ReassemblyStats::default(), &ProxyStats::default(), 7);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].cause.starts_with("12 connections cut after 60.0 s idle by the server side"), "{d:?}");
        assert!(d[0].check.contains("proxy_read_timeout"));
        assert!(d[1].check.contains("--ring-size"));
        assert!(diagnose(&EngineStats::default(), &ReassemblyStats::default(), &ProxyStats::default(), 0).is_empty());
    }
}
