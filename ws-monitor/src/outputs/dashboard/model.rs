//! What the dashboard knows: capture health and its rates, engine totals since the last
//! reset, per-second violation history, connections (including recently closed ones) and
//! a ring of recent findings. Fed by ticks and findings; no I/O, no rendering.

use std::collections::{HashMap, VecDeque};

use crate::engine::{ConnState, ConnectionView, EngineStats, Finding, Kind, KindSet};
use crate::flow::{Direction, FlowId, FlowKey};

/// Seconds of per-kind history kept for sparklines.
pub const HISTORY_SECS: usize = 300;
/// Window of the per-kind rate column, in seconds.
pub const RATE_WINDOW_SECS: u64 = 10;
/// Recent findings kept.
pub const FINDINGS_CAP: usize = 1000;
/// How long a connection that left the engine stays visible as closed.
pub const CLOSED_RETENTION_NS: u64 = 60 * NS_PER_SEC;
/// At most this many closed connections are kept (the oldest go first).
pub const CLOSED_CAP: usize = 1000;

pub(crate) const NS_PER_SEC: u64 = 1_000_000_000;

/// Cumulative capture counters (the dashboard derives rates from deltas between ticks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureHealth {
    /// TCP packets on the monitored ports.
    pub packets: u64,
    /// Payload bytes delivered in order, both directions.
    pub bytes_delivered: u64,
    /// Bytes in gaps (never seen).
    pub bytes_lost: u64,
    /// Gaps (holes that were never filled).
    pub gaps: u64,
    /// Records the kernel could not queue because the ring buffer was full.
    pub ring_drops: u64,
}

impl CaptureHealth {
    /// Field-wise `self - base`, never below zero.
    pub fn since(&self, base: &CaptureHealth) -> CaptureHealth {
        CaptureHealth {
            packets: self.packets.saturating_sub(base.packets),
            bytes_delivered: self.bytes_delivered.saturating_sub(base.bytes_delivered),
            bytes_lost: self.bytes_lost.saturating_sub(base.bytes_lost),
            gaps: self.gaps.saturating_sub(base.gaps),
            ring_drops: self.ring_drops.saturating_sub(base.ring_drops),
        }
    }

    /// Share of the stream bytes that were seen, in percent (`None` before any byte).
    pub fn coverage_pct(&self) -> Option<f64> {
        let total = self.bytes_delivered.saturating_add(self.bytes_lost);
        (total > 0).then(|| self.bytes_delivered as f64 * 100.0 / total as f64)
    }
}

/// Per-second violation counts per kind, the most recent second last.
#[derive(Clone, Debug, Default)]
pub struct History {
    buckets: VecDeque<[u64; Kind::COUNT]>,
    /// Second (since start) of the last bucket.
    last_sec: Option<u64>,
}

impl History {
    /// Makes `sec` the current second, adding empty seconds in between.
    fn advance_to(&mut self, sec: u64) {
        match self.last_sec {
            None => self.buckets.push_back([0; Kind::COUNT]),
            Some(last) if sec > last => {
                let missing = sec - last;
                if missing >= HISTORY_SECS as u64 {
                    self.buckets.clear();
                }
                let push = missing.min(HISTORY_SECS as u64);
                for _ in 0..push {
                    self.buckets.push_back([0; Kind::COUNT]);
                }
            }
            // Same second, or a clock that went back: keep adding to the last bucket.
            Some(_) => return,
        }
        self.last_sec = Some(sec);
        while self.buckets.len() > HISTORY_SECS {
            self.buckets.pop_front();
        }
    }

    /// Adds `n` findings of `kind` to second `sec`.
    fn add(&mut self, sec: u64, kind: Kind, n: u64) {
        self.advance_to(sec);
        if let Some(c) = self.buckets.back_mut().and_then(|b| b.get_mut(kind.index())) {
            *c = c.saturating_add(n);
        }
    }

    /// Counts of `kind` per second, oldest first (at most [`HISTORY_SECS`]).
    pub fn series(&self, kind: Kind) -> Vec<u64> {
        self.buckets.iter().map(|b| b.get(kind.index()).copied().unwrap_or(0)).collect()
    }

    /// Findings of `kind` in the last `secs` seconds (the current one included).
    pub fn recent(&self, kind: Kind, secs: u64) -> u64 {
        let n = usize::try_from(secs).unwrap_or(usize::MAX);
        self.buckets.iter().rev().take(n).map(|b| b.get(kind.index()).copied().unwrap_or(0)).sum()
    }

    /// Seconds stored.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn clear(&mut self) {
        self.buckets.clear();
        self.last_sec = None;
    }
}

/// A connection as the dashboard shows it: the engine's last view of it, plus what the
/// findings said, plus when it left the engine.
#[derive(Clone, Debug)]
pub struct ConnRow {
    pub id: FlowId,
    pub key: FlowKey,
    /// `client → server`, for display and filtering.
    pub label: String,
    /// The engine's view at the last tick it was tracked (`None`: only known from a
    /// finding, it closed before the next tick).
    pub view: Option<ConnectionView>,
    /// Kinds of the findings seen on it.
    pub kinds: KindSet,
    /// Findings seen on it through [`Data::finding`].
    pub findings: u64,
    /// When it was found gone from the engine (closed, evicted).
    pub gone_ns: Option<u64>,
    /// Time of its last finding.
    pub last_finding_ns: Option<u64>,
    base_frames: [u64; 2],
    base_violations: u64,
    /// Tick generation it was last seen in.
    seen_gen: u64,
}

impl ConnRow {
    fn new(id: FlowId, key: FlowKey, gen: u64) -> Self {
        ConnRow {
            id,
            key,
            label: format!("{} → {}", key.client, key.server),
            view: None,
            kinds: KindSet::EMPTY,
            findings: 0,
            gone_ns: None,
            last_finding_ns: None,
            base_frames: [0; 2],
            base_violations: 0,
            seen_gen: gen,
        }
    }

    /// The state shown: the engine's while tracked, `closed` once gone.
    pub fn state_label(&self) -> &'static str {
        if self.gone_ns.is_some() {
            return "closed";
        }
        match self.view.as_ref().map(|v| v.state) {
            None => "new",
            Some(s) => state_name(s),
        }
    }

    /// Whether the connection left the engine.
    pub fn is_gone(&self) -> bool {
        self.gone_ns.is_some()
    }

    /// Frames since the last reset, indexed by [`Direction::index`].
    pub fn frames(&self) -> [u64; 2] {
        let f = self.view.as_ref().map_or([0; 2], |v| v.frames);
        [f[0].saturating_sub(self.base_frames[0]), f[1].saturating_sub(self.base_frames[1])]
    }

    /// Frames in `dir` since the last reset.
    pub fn frames_dir(&self, dir: Direction) -> u64 {
        self.frames().get(dir.index()).copied().unwrap_or(0)
    }

    fn violations_raw(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.violations).max(self.findings)
    }

    /// Violations since the last reset.
    pub fn violations(&self) -> u64 {
        self.violations_raw().saturating_sub(self.base_violations)
    }

    /// Last activity: the engine's last event, a finding, or the time it went away.
    pub fn last_active_ns(&self) -> u64 {
        let v = self.view.as_ref().map_or(0, |v| v.last_ns);
        v.max(self.last_finding_ns.unwrap_or(0)).max(self.gone_ns.unwrap_or(0))
    }

    /// Text matched by the filter: the 4-tuple, the state and the kinds seen.
    pub fn matches(&self, needle: &str) -> bool {
        contains_ci(&self.label, needle)
            || contains_ci(self.state_label(), needle)
            || self.kinds.iter().any(|k| contains_ci(k.name(), needle))
    }

    fn reset(&mut self) {
        self.base_frames = self.view.as_ref().map_or([0; 2], |v| v.frames);
        self.base_violations = self.violations_raw();
    }
}

/// Lower-case display name of an engine connection state.
pub fn state_name(s: ConnState) -> &'static str {
    match s {
        ConnState::Handshake => "handshake",
        ConnState::Open => "open",
        ConnState::Closing => "closing",
        ConnState::Closed => "closed",
        ConnState::Desync => "desync",
        ConnState::NotWebSocket => "not-ws",
    }
}

/// Case-insensitive substring test (`needle` already lower case or not).
pub fn contains_ci(hay: &str, needle: &str) -> bool {
    needle.is_empty() || hay.to_lowercase().contains(&needle.to_lowercase())
}

/// One finding of the recent-findings ring.
#[derive(Clone, Debug)]
pub struct FindingRow {
    /// Sequence number (stable identity for selection).
    pub seq: u64,
    pub finding: Finding,
}

impl FindingRow {
    /// Text matched by the filter: kind, connection, direction and header hex.
    pub fn matches(&self, needle: &str) -> bool {
        let f = &self.finding;
        contains_ci(f.kind.name(), needle)
            || contains_ci(&format!("{} → {}", f.key.client, f.key.server), needle)
            || contains_ci(f.dir.name(), needle)
            || contains_ci(&f.header.hex(), needle)
    }
}

/// A violation kind as a table row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KindRow {
    pub kind: Kind,
    /// Findings from the client (client → server bytes) since the last reset.
    pub client: u64,
    /// Findings from the server (server → client bytes) since the last reset.
    pub server: u64,
    /// Findings per second over the last [`RATE_WINDOW_SECS`].
    pub rate: f64,
    /// Tick time it last increased.
    pub last_active_ns: Option<u64>,
}

impl KindRow {
    pub fn total(&self) -> u64 {
        self.client.saturating_add(self.server)
    }
}

/// Everything fed to the dashboard, with baselines for the `r` reset.
#[derive(Clone, Debug)]
pub struct Data {
    pub started_ns: u64,
    /// Time of the last tick (`started_ns` before the first).
    pub now_ns: u64,
    /// When counting (re)started: start or the last reset.
    pub baseline_ns: u64,
    health: CaptureHealth,
    health_base: CaptureHealth,
    prev_tick: Option<(u64, CaptureHealth)>,
    /// Packets per second over the last tick interval.
    pub packets_per_s: f64,
    /// Delivered bytes per second over the last tick interval.
    pub bytes_per_s: f64,
    stats: EngineStats,
    stats_base: EngineStats,
    /// Violation counts at the previous tick (to find per-tick deltas).
    prev_violations: [[u64; Kind::COUNT]; 2],
    pub history: History,
    last_active: [Option<u64>; Kind::COUNT],
    conns: HashMap<FlowId, ConnRow>,
    gen: u64,
    findings: VecDeque<FindingRow>,
    next_seq: u64,
    /// The most likely causes at the last tick ([`crate::diagnosis`]).
    pub diagnosis: Vec<crate::diagnosis::Cause>,
    /// Sessions seen on two hops of a proxy: those open (or recently closed) among the
    /// connections shown, paired at the last tick, then those paired as they ended.
    pub hops: Vec<HopRow>,
    /// Sessions paired as they ended ([`crate::diagnosis::proxy::ProxyStats::seen`]).
    pub ended_hops: Vec<crate::diagnosis::proxy::Pair>,
}

/// One proxied session: its front and back hops, and who is to blame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopRow {
    pub front: FlowKey,
    pub back: FlowKey,
    /// Both hops are still open.
    pub live: bool,
    /// What the proxy changed: in the handshake, and once both hops ended, in the
    /// frames.
    pub altered: Vec<&'static str>,
    pub blame: crate::diagnosis::proxy::Blame,
}

impl Data {
    pub fn new(started_ns: u64) -> Self {
        Data {
            started_ns,
            now_ns: started_ns,
            baseline_ns: started_ns,
            health: CaptureHealth::default(),
            health_base: CaptureHealth::default(),
            prev_tick: None,
            packets_per_s: 0.0,
            bytes_per_s: 0.0,
            stats: EngineStats::default(),
            stats_base: EngineStats::default(),
            prev_violations: [[0; Kind::COUNT]; 2],
            history: History::default(),
            last_active: [None; Kind::COUNT],
            conns: HashMap::new(),
            gen: 0,
            findings: VecDeque::new(),
            next_seq: 0,
            diagnosis: Vec::new(),
            hops: Vec::new(),
            ended_hops: Vec::new(),
        }
    }

    /// Takes in one tick's state.
    pub fn tick<'a>(
        &mut self,
        now_ns: u64,
        health: CaptureHealth,
        stats: &EngineStats,
        connections: impl Iterator<Item = (FlowId, &'a ConnectionView)>,
    ) {
        // Capture rates from the previous tick (or from the start).
        let (prev_ns, prev) = self.prev_tick.unwrap_or((self.started_ns, CaptureHealth::default()));
        let dt = now_ns.saturating_sub(prev_ns);
        if dt > 0 {
            let secs = dt as f64 / NS_PER_SEC as f64;
            self.packets_per_s = health.packets.saturating_sub(prev.packets) as f64 / secs;
            self.bytes_per_s = health.bytes_delivered.saturating_sub(prev.bytes_delivered) as f64 / secs;
        }
        if dt > 0 || self.prev_tick.is_none() {
            self.prev_tick = Some((now_ns, health));
        }
        self.now_ns = now_ns;
        self.health = health;

        // Per-kind deltas into the per-second history.
        let sec = now_ns.saturating_sub(self.started_ns) / NS_PER_SEC;
        self.history.advance_to(sec);
        for kind in Kind::ALL {
            let i = kind.index();
            let delta: u64 = (0..2)
                .map(|d| {
                    let cur = stats.violations.get(d).and_then(|v| v.get(i)).copied().unwrap_or(0);
                    let prev = self.prev_violations.get(d).and_then(|v| v.get(i)).copied().unwrap_or(0);
                    cur.saturating_sub(prev)
                })
                .sum();
            if delta > 0 {
                self.history.add(sec, kind, delta);
                if let Some(l) = self.last_active.get_mut(i) {
                    *l = Some(now_ns);
                }
            }
        }
        self.prev_violations = stats.violations;
        self.stats = stats.clone();

        self.tick_connections(now_ns, connections);
        self.pair_hops();
    }

    /// Pairs the connections shown that carry one session on two hops of a proxy, and
    /// adds the pairs made as sessions ended.
    fn pair_hops(&mut self) {
        let views = self.conns.values().filter_map(|r| r.view.as_ref().map(|v| (r.id, v)));
        let mut hops: Vec<HopRow> = crate::diagnosis::proxy::live_pairs(views)
            .into_iter()
            .map(|pair| {
                let (front, back) = (self.conns.get(&pair.front.0), self.conns.get(&pair.back.0));
                let live = front.is_some_and(|r| !r.is_gone()) && back.is_some_and(|r| !r.is_gone());
                let altered: Vec<&'static str> = pair.altered.iter().map(|a| a.name()).collect();
                HopRow { front: pair.front.1, back: pair.back.1, live, altered, blame: pair.blame }
            })
            .collect();
        for p in &self.ended_hops {
            let [front, back] = p.hops;
            if let Some(h) = hops.iter_mut().find(|h| h.front == front) {
                // Ended since: what the comparison of the whole hops found.
                h.altered.clone_from(&p.altered);
                h.blame = p.blame;
            } else {
                hops.push(HopRow { front, back, live: false, altered: p.altered.clone(), blame: p.blame });
            }
        }
        // What the proxy changed first, then open before closed.
        hops.sort_by_key(|h| (h.blame, !h.live, h.front.client, h.front.server));
        self.hops = hops;
    }

    fn tick_connections<'a>(&mut self, now_ns: u64, connections: impl Iterator<Item = (FlowId, &'a ConnectionView)>) {
        self.gen = self.gen.wrapping_add(1);
        let gen = self.gen;
        for (id, view) in connections {
            let row = self.conns.entry(id).or_insert_with(|| ConnRow::new(id, view.key, gen));
            row.view = Some(view.clone());
            row.seen_gen = gen;
            row.gone_ns = None;
        }
        for row in self.conns.values_mut() {
            if row.seen_gen != gen && row.gone_ns.is_none() {
                row.gone_ns = Some(now_ns);
            }
        }
        // Drop closed connections after the retention time, and beyond the cap.
        self.conns.retain(|_, r| r.gone_ns.is_none_or(|g| now_ns.saturating_sub(g) <= CLOSED_RETENTION_NS));
        let gone = self.conns.values().filter(|r| r.is_gone()).count();
        if gone > CLOSED_CAP {
            let mut by_age: Vec<(u64, FlowId)> =
                self.conns.values().filter_map(|r| r.gone_ns.map(|g| (g, r.id))).collect();
            by_age.sort_unstable();
            for (_, id) in by_age.into_iter().take(gone - CLOSED_CAP) {
                self.conns.remove(&id);
            }
        }
    }

    /// Takes in one finding.
    pub fn finding(&mut self, f: &Finding) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.findings.push_back(FindingRow { seq, finding: f.clone() });
        while self.findings.len() > FINDINGS_CAP {
            self.findings.pop_front();
        }
        let gen = self.gen;
        let row = self.conns.entry(f.id).or_insert_with(|| ConnRow::new(f.id, f.key, gen));
        row.kinds.insert(f.kind);
        row.findings = row.findings.saturating_add(1);
        row.last_finding_ns = Some(row.last_finding_ns.unwrap_or(0).max(f.ts_ns));
    }

    /// Restarts every counter, rate and history from now (baseline subtraction).
    pub fn reset(&mut self) {
        self.baseline_ns = self.now_ns;
        self.health_base = self.health;
        self.stats_base = self.stats.clone();
        self.history.clear();
        self.last_active = [None; Kind::COUNT];
        for row in self.conns.values_mut() {
            row.reset();
        }
    }

    /// Capture counters since the last reset.
    pub fn health(&self) -> CaptureHealth {
        self.health.since(&self.health_base)
    }

    /// Findings of `kind` in `dir` since the last reset.
    pub fn violations(&self, dir: Direction, kind: Kind) -> u64 {
        self.stats.violation_count_dir(dir, kind).saturating_sub(self.stats_base.violation_count_dir(dir, kind))
    }

    /// All findings since the last reset.
    pub fn violations_total(&self) -> u64 {
        self.stats.violations_total().saturating_sub(self.stats_base.violations_total())
    }

    /// Frames in `dir` since the last reset.
    pub fn frames(&self, dir: Direction) -> u64 {
        let i = dir.index();
        let cur = self.stats.frames.get(i).map_or(0, |f| f.total());
        let base = self.stats_base.frames.get(i).map_or(0, |f| f.total());
        cur.saturating_sub(base)
    }

    /// Connections opened since the last reset.
    pub fn connections_opened(&self) -> u64 {
        self.stats.connections.saturating_sub(self.stats_base.connections)
    }

    /// Clean upgrades since the last reset.
    pub fn upgrades_ok(&self) -> u64 {
        self.stats.upgrades_ok.saturating_sub(self.stats_base.upgrades_ok)
    }

    /// Desyncs since the last reset.
    pub fn desyncs(&self) -> u64 {
        self.stats.desyncs.saturating_sub(self.stats_base.desyncs)
    }

    /// Seconds counted since the last reset (at least 1).
    fn counted_secs(&self) -> u64 {
        (self.now_ns.saturating_sub(self.baseline_ns) / NS_PER_SEC).max(1)
    }

    /// The row of `kind`.
    pub fn kind_row(&self, kind: Kind) -> KindRow {
        let window = RATE_WINDOW_SECS.min(self.counted_secs()).max(1);
        KindRow {
            kind,
            client: self.violations(Direction::ToServer, kind),
            server: self.violations(Direction::ToClient, kind),
            rate: self.history.recent(kind, window) as f64 / window as f64,
            last_active_ns: self.last_active.get(kind.index()).copied().flatten(),
        }
    }

    /// Kinds with findings since the last reset whose name contains `filter`, in `sort`
    /// order.
    pub fn kind_rows(&self, filter: &str, sort: KindSort) -> Vec<KindRow> {
        let mut rows: Vec<KindRow> = Kind::ALL
            .iter()
            .map(|&k| self.kind_row(k))
            .filter(|r| r.total() > 0 && contains_ci(r.kind.name(), filter))
            .collect();
        rows.sort_by(|a, b| {
            let by = match sort {
                KindSort::Recent => b.last_active_ns.cmp(&a.last_active_ns).then(b.total().cmp(&a.total())),
                KindSort::Total => b.total().cmp(&a.total()),
                KindSort::Rate => b.rate.total_cmp(&a.rate).then(b.total().cmp(&a.total())),
                KindSort::Name => a.kind.name().cmp(b.kind.name()),
            };
            by.then(a.kind.cmp(&b.kind))
        });
        rows
    }

    /// Every connection row, unordered.
    pub fn conns(&self) -> impl Iterator<Item = &ConnRow> {
        self.conns.values()
    }

    /// One connection row.
    pub fn conn(&self, id: FlowId) -> Option<&ConnRow> {
        self.conns.get(&id)
    }

    /// Connections matching `filter`, in `sort` order.
    pub fn conn_rows(&self, filter: &str, sort: ConnSort) -> Vec<&ConnRow> {
        let mut rows: Vec<&ConnRow> = self.conns.values().filter(|r| r.matches(filter)).collect();
        rows.sort_by(|a, b| {
            let by = match sort {
                ConnSort::Recent => b.last_active_ns().cmp(&a.last_active_ns()),
                ConnSort::Violations => b.violations().cmp(&a.violations()),
                ConnSort::Frames => {
                    let t = |r: &ConnRow| r.frames().iter().sum::<u64>();
                    t(b).cmp(&t(a))
                }
                ConnSort::Address => a.key.cmp(&b.key),
            };
            // Live connections before closed ones on ties, then a stable order.
            by.then(a.is_gone().cmp(&b.is_gone())).then(a.id.cmp(&b.id))
        });
        rows
    }

    /// Connections still tracked by the engine, and closed ones kept for display.
    pub fn conn_counts(&self) -> (usize, usize) {
        let gone = self.conns.values().filter(|r| r.is_gone()).count();
        (self.conns.len() - gone, gone)
    }

    /// Live connections in `state`.
    pub fn conns_in(&self, state: ConnState) -> usize {
        self.conns.values().filter(|r| !r.is_gone() && r.view.as_ref().is_some_and(|v| v.state == state)).count()
    }

    /// Recent findings matching `filter`, in `sort` order.
    pub fn finding_rows(&self, filter: &str, sort: FindingSort) -> Vec<&FindingRow> {
        let it = self.findings.iter().filter(|f| f.matches(filter));
        match sort {
            FindingSort::Newest => it.rev().collect(),
            FindingSort::Oldest => it.collect(),
        }
    }

    /// One finding of the ring.
    pub fn finding_by_seq(&self, seq: u64) -> Option<&FindingRow> {
        self.findings.iter().find(|f| f.seq == seq)
    }

    /// Findings in the ring.
    pub fn findings_len(&self) -> usize {
        self.findings.len()
    }

    /// The most recent findings of `kind`, newest first.
    pub fn recent_findings_of(&self, kind: Kind, n: usize) -> Vec<&FindingRow> {
        self.findings.iter().rev().filter(|f| f.finding.kind == kind).take(n).collect()
    }

    /// Live and closed connections that raised `kind`, most recent first.
    pub fn conns_with(&self, kind: Kind, n: usize) -> Vec<&ConnRow> {
        let mut v: Vec<&ConnRow> = self.conns.values().filter(|r| r.kinds.contains(kind)).collect();
        v.sort_by(|a, b| b.last_active_ns().cmp(&a.last_active_ns()).then(a.id.cmp(&b.id)));
        v.truncate(n);
        v
    }
}

/// Sort order of the violations table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KindSort {
    /// Most recently active first.
    #[default]
    Recent,
    /// Most findings first.
    Total,
    /// Highest 10 s rate first.
    Rate,
    /// By name.
    Name,
}

impl KindSort {
    pub fn next(self) -> Self {
        match self {
            KindSort::Recent => KindSort::Total,
            KindSort::Total => KindSort::Rate,
            KindSort::Rate => KindSort::Name,
            KindSort::Name => KindSort::Recent,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KindSort::Recent => "recent",
            KindSort::Total => "count",
            KindSort::Rate => "rate",
            KindSort::Name => "name",
        }
    }
}

/// Sort order of the connections table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnSort {
    /// Most recently active first.
    #[default]
    Recent,
    /// Most violations first.
    Violations,
    /// Most frames first.
    Frames,
    /// By client then server address.
    Address,
}

impl ConnSort {
    pub fn next(self) -> Self {
        match self {
            ConnSort::Recent => ConnSort::Violations,
            ConnSort::Violations => ConnSort::Frames,
            ConnSort::Frames => ConnSort::Address,
            ConnSort::Address => ConnSort::Recent,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConnSort::Recent => "recent",
            ConnSort::Violations => "violations",
            ConnSort::Frames => "frames",
            ConnSort::Address => "address",
        }
    }
}

/// Order of the recent-findings list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FindingSort {
    #[default]
    Newest,
    Oldest,
}

impl FindingSort {
    pub fn next(self) -> Self {
        match self {
            FindingSort::Newest => FindingSort::Oldest,
            FindingSort::Oldest => FindingSort::Newest,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FindingSort::Newest => "newest",
            FindingSort::Oldest => "oldest",
        }
    }
}
