//! Proxy hops: when the monitored ports carry one WebSocket session twice — a front
//! connection (client to proxy) and a back one (proxy to backend) — the two are paired by
//! their `Sec-WebSocket-Key` (proxies forward it unchanged) as they end, and what the
//! proxy changed between them becomes [`Kind::ProxyAltered`] findings: headers of the
//! handshake, and frames (by opcode, RSV1, payload bytes) each way.
//!
//! The two connections of a pair may be analysed by different workers, so pairing works
//! on the connection records the driver receives; [`live_pairs`] pairs the connections
//! still open the same way, from their snapshots (handshakes only: frames are compared
//! once both hops have ended). Each pair says which hop is to blame ([`Blame`]). Pure:
//! no I/O.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::engine::{
    Alteration, ConnectionRecord, ConnectionView, Detail, Ending, Excerpt, Finding, FrameHeaderBytes, HandshakeSeen,
    Kind,
};
use crate::flow::{Direction, FlowId, FlowKey};

/// Records waiting for their other half, at most.
const PENDING: usize = 4096;
/// Pairs kept for the report, at most (the counts go on).
const KEPT: usize = 100;

/// One paired session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pair {
    /// `client -> proxy`.
    pub front: String,
    /// `proxy -> backend`.
    pub back: String,
    /// What the proxy changed ([`Alteration::name`]); empty when nothing.
    pub altered: Vec<&'static str>,
    /// Violations found on each hop.
    pub front_violations: u64,
    pub back_violations: u64,
    pub blame: Blame,
    /// The two hops' connections.
    #[serde(skip)]
    pub hops: [FlowKey; 2],
}

/// Which hop of a proxied session is to blame, from what the proxy changed and where
/// the violations are (ordered from most to least telling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The proxy changed the handshake or the frames.
    Proxy,
    /// Violations on the front hop only: the proxy sends what the backend did not.
    FrontHopOnly,
    /// Violations on the back hop only: the proxy hides (or repairs) them.
    BackHopOnly,
    /// Violations on both hops: the proxy relays what an endpoint sends.
    Endpoint,
    /// Nothing wrong on either hop.
    Clean,
}

impl Blame {
    pub fn of(altered: bool, front_violations: u64, back_violations: u64) -> Blame {
        match (altered, front_violations > 0, back_violations > 0) {
            (true, ..) => Blame::Proxy,
            (false, true, false) => Blame::FrontHopOnly,
            (false, false, true) => Blame::BackHopOnly,
            (false, true, true) => Blame::Endpoint,
            (false, false, false) => Blame::Clean,
        }
    }

    /// For a person: who to look at.
    pub fn describe(self) -> &'static str {
        match self {
            Blame::Proxy => "the proxy changed the session",
            Blame::FrontHopOnly => "the proxy: violations on the front hop only",
            Blame::BackHopOnly => "the proxy hides the backend hop's violations",
            Blame::Endpoint => "an endpoint: the proxy relays its violations",
            Blame::Clean => "clean",
        }
    }
}

/// Two open connections of one session (by `Sec-WebSocket-Key`), front first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePair {
    pub front: (FlowId, FlowKey),
    pub back: (FlowId, FlowKey),
    /// What the proxy changed in the handshake.
    pub altered: Vec<Alteration>,
    pub blame: Blame,
}

/// How much later than the front hop the back hop may open and still be paired with it.
const PAIR_WITHIN_NS: u64 = 10_000_000_000;

/// Pairs the open connections whose upgrade requests carry the same
/// `Sec-WebSocket-Key`, to different servers, opened within [`PAIR_WITHIN_NS`] of each
/// other: the one opened first is the front hop.
pub fn live_pairs<'a>(views: impl Iterator<Item = (FlowId, &'a ConnectionView)>) -> Vec<LivePair> {
    let mut by_key: HashMap<&str, Vec<(FlowId, &ConnectionView)>> = HashMap::new();
    for (id, v) in views {
        if let Some(key) = v.handshake.as_ref().and_then(|h| h.request.key.as_deref()) {
            by_key.entry(key).or_default().push((id, v));
        }
    }
    let mut out: Vec<LivePair> = by_key
        .into_values()
        .filter_map(|mut hops| {
            hops.sort_by_key(|(id, v)| (v.opened_ns, *id));
            let [(fid, f), (bid, b)] = <[_; 2]>::try_from(hops).ok()?;
            if f.key.server == b.key.server || b.opened_ns - f.opened_ns > PAIR_WITHIN_NS {
                return None;
            }
            let altered: Vec<Alteration> = match (&f.handshake, &b.handshake) {
                (Some(fh), Some(bh)) => handshake_alterations(fh, bh).into_iter().map(|(_, a)| a).collect(),
                _ => Vec::new(),
            };
            let blame = Blame::of(!altered.is_empty(), f.violations, b.violations);
            Some(LivePair { front: (fid, f.key), back: (bid, b.key), altered, blame })
        })
        .collect();
    out.sort_by_key(|p| p.front.0);
    out
}

/// Pairs so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    pub pairs: u64,
    /// Pairs with at least one alteration.
    pub altered_pairs: u64,
    /// Alterations by name.
    pub alterations: std::collections::BTreeMap<&'static str, u64>,
    /// The first alteration of each name, as it was seen (for the diagnosis's sentence).
    #[serde(skip)]
    pub examples: std::collections::BTreeMap<&'static str, Alteration>,
    /// The first pairs seen (at most 100), altered ones first once there are many.
    pub seen: Vec<Pair>,
}

impl ProxyStats {
    /// These counts with the handshake alterations of the sessions still open on both
    /// hops (`open`, from [`live_pairs`]) added: what the diagnosis ranks while sockets
    /// stay open.
    pub fn with_open(&self, open: &[LivePair]) -> ProxyStats {
        let mut out = self.clone();
        for p in open.iter().filter(|p| !p.altered.is_empty()) {
            out.pairs += 1;
            out.altered_pairs += 1;
            for a in &p.altered {
                *out.alterations.entry(a.name()).or_insert(0) += 1;
                out.examples.entry(a.name()).or_insert(*a);
            }
            if out.seen.len() < KEPT {
                let hop = |k: FlowKey| format!("{} -> {}", k.client, k.server);
                out.seen.push(Pair {
                    front: hop(p.front.1),
                    back: hop(p.back.1),
                    altered: p.altered.iter().map(|a| a.name()).collect(),
                    front_violations: 0,
                    back_violations: 0,
                    blame: p.blame,
                    hops: [p.front.1, p.back.1],
                });
            }
        }
        out
    }
}

#[derive(Default)]
pub struct Hops {
    pending: HashMap<Box<str>, ConnectionRecord>,
    order: VecDeque<Box<str>>,
    pub stats: ProxyStats,
}

impl Hops {
    /// Takes the record of a connection that ended; when it completes a pair, returns
    /// what the proxy changed, as findings on the front connection.
    pub fn record(&mut self, r: &ConnectionRecord) -> Vec<Finding> {
        let Some(key) = r.handshake.as_ref().and_then(|h| h.request.key.clone()) else { return Vec::new() };
        let Some(other) = self.pending.remove(&key) else {
            if self.pending.insert(key.clone(), r.clone()).is_none() {
                self.order.push_back(key);
            }
            while self.order.len() > PENDING {
                if let Some(old) = self.order.pop_front() {
                    self.pending.remove(&old);
                }
            }
            return Vec::new();
        };
        if other.client == r.client && other.server == r.server {
            return Vec::new(); // the same connection twice (cannot happen: records are final)
        }
        // The client reaches the proxy before the proxy reaches the backend.
        let (front, back) = if other.start_ns <= r.start_ns { (&other, r) } else { (r, &other) };
        let altered = alterations(front, back);
        self.count(front, back, &altered);
        let key = FlowKey { client: front.client, server: front.server };
        altered
            .into_iter()
            .map(|(dir, a)| Finding {
                ts_ns: r.end_ns,
                id: front.id,
                key,
                dir,
                kind: Kind::ProxyAltered,
                offset: 0,
                header: FrameHeaderBytes::EMPTY,
                excerpt: Excerpt::EMPTY,
                detail: Detail::Proxy(a),
            })
            .collect()
    }

    fn count(&mut self, front: &ConnectionRecord, back: &ConnectionRecord, altered: &[(Direction, Alteration)]) {
        let s = &mut self.stats;
        s.pairs += 1;
        s.altered_pairs += u64::from(!altered.is_empty());
        for (_, a) in altered {
            *s.alterations.entry(a.name()).or_insert(0) += 1;
            s.examples.entry(a.name()).or_insert(*a);
        }
        let pair = Pair {
            front: format!("{} -> {}", front.client, front.server),
            back: format!("{} -> {}", back.client, back.server),
            altered: altered.iter().map(|(_, a)| a.name()).collect(),
            front_violations: front.violations,
            back_violations: back.violations,
            blame: Blame::of(!altered.is_empty(), front.violations, back.violations),
            hops: [front, back].map(|r| FlowKey { client: r.client, server: r.server }),
        };
        if s.seen.len() < KEPT {
            s.seen.push(pair);
        } else if !pair.altered.is_empty() {
            // Make room for an altered pair in place of one that was not.
            if let Some(slot) = s.seen.iter_mut().find(|p| p.altered.is_empty()) {
                *slot = pair;
            }
        }
    }
}

/// What differs between the two hops of one session, and in which direction.
pub fn alterations(front: &ConnectionRecord, back: &ConnectionRecord) -> Vec<(Direction, Alteration)> {
    let (Some(f), Some(b)) = (&front.handshake, &back.handshake) else { return Vec::new() };
    let mut out = handshake_alterations(f, b);
    if !(f.status == Some(101) && b.status == Some(101)) {
        return out;
    }
    // Frames: only where both hops were followed whole, in sync, and ended with a close
    // handshake. A hop that ends abruptly leaves frames in flight that the proxy could
    // not deliver any more: a race, not an alteration.
    let whole = |r: &ConnectionRecord| !r.lost_sync && r.unanalysed.total() == 0 && r.ending == Ending::CloseHandshake;
    if !(whole(front) && whole(back)) {
        return out;
    }
    for (dir, ft, bt) in [
        (Direction::ToServer, &front.tally.client, &back.tally.client),
        (Direction::ToClient, &front.tally.server, &back.tally.server),
    ] {
        if ft.rsv1 != bt.rsv1 {
            out.push((dir, Alteration::Rsv1Differs { front: ft.rsv1, back: bt.rsv1 }));
        } else if ft.frames != bt.frames {
            out.push((dir, Alteration::FramesDiffer { front: ft.frames.total(), back: bt.frames.total() }));
        } else if ft.payload != bt.payload {
            out.push((dir, Alteration::PayloadDiffers { front: ft.payload, back: bt.payload }));
        }
    }
    out
}

/// What the proxy changed between the front hop's handshake `f` and the back hop's `b`.
pub fn handshake_alterations(f: &HandshakeSeen, b: &HandshakeSeen) -> Vec<(Direction, Alteration)> {
    let mut out = Vec::new();
    if f.request.upgrade && !b.request.upgrade {
        out.push((Direction::ToServer, Alteration::UpgradeRemoved));
    }
    if f.request.extensions != b.request.extensions && b.request.upgrade {
        out.push((Direction::ToServer, Alteration::OfferChanged));
    }
    if !(f.status == Some(101) && b.status == Some(101)) {
        return out;
    }
    if b.response_upgrade && !f.response_upgrade {
        out.push((Direction::ToClient, Alteration::ResponseUpgradeRemoved));
    }
    match (&f.accepted_extensions, &b.accepted_extensions) {
        (None, Some(_)) => out.push((Direction::ToClient, Alteration::ExtensionsDropped)),
        (Some(_), None) => out.push((Direction::ToClient, Alteration::ExtensionsAdded)),
        _ => {}
    }
    if f.accepted_protocol != b.accepted_protocol {
        out.push((Direction::ToClient, Alteration::SubprotocolChanged));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FrameTally, HandshakeSeen, KindSet, Sides};
    use crate::flow::{FlowId, Opening, Unanalysed};

    fn record(id: u64, client: &str, server: &str, start_ns: u64, accepted: Option<&str>) -> ConnectionRecord {
        let mut hs = HandshakeSeen {
            status: Some(101),
            accepted_extensions: accepted.map(Into::into),
            response_upgrade: true,
            ..HandshakeSeen::default()
        };
        hs.request.key = Some("dGhlIHNhbXBsZSBub25jZQ==".into());
        hs.request.upgrade = true;
        ConnectionRecord {
            id: FlowId(id),
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            iface: 0,
            opening: Opening::Handshake,
            start_ns,
            end_ns: start_ns + 10,
            last_data_ns: start_ns,
            handshake: Some(Box::new(hs)),
            frames: Sides::default(),
            tally: Sides::default(),
            messages: Sides::default(),
            bytes: Sides::default(),
            close: Sides::default(),
            closed_first: None,
            ending: Ending::CloseHandshake,
            violations: 0,
            kinds: KindSet::EMPTY,
            lost_sync: false,
            unanalysed: Unanalysed::default(),
        }
    }

    #[test]
    fn the_two_hops_of_a_session_pair_by_key_and_show_what_the_proxy_changed() {
        let mut hops = Hops::default();
        let front = record(1, "10.0.0.1:5000", "10.0.0.2:8080", 100, None);
        let mut back = record(2, "10.0.0.2:6000", "10.0.0.3:9001", 200, Some("permessage-deflate"));
        back.tally.server = FrameTally { rsv1: 3, ..FrameTally::default() };
        // The back hop ends first; the pair is made when the front one ends.
        assert!(hops.record(&back).is_empty());
        let found = hops.record(&front);
        let got: Vec<(Direction, Alteration)> = found
            .iter()
            .map(|f| {
                (
                    f.dir,
                    match f.detail {
                        Detail::Proxy(a) => a,
                        _ => panic!(),
                    },
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Direction::ToClient, Alteration::ExtensionsDropped),
                (Direction::ToClient, Alteration::Rsv1Differs { front: 0, back: 3 })
            ]
        );
        assert!(found.iter().all(|f| f.key.server.port() == 8080 && f.id == FlowId(1)), "on the front connection");
        assert_eq!((hops.stats.pairs, hops.stats.altered_pairs), (1, 1));
        // A proxy that changes nothing: a pair, no finding.
        let mut quiet = Hops::default();
        assert!(quiet.record(&record(3, "10.0.0.1:5001", "10.0.0.2:8080", 100, None)).is_empty());
        assert!(quiet.record(&record(4, "10.0.0.2:6001", "10.0.0.3:9001", 200, None)).is_empty());
        assert_eq!((quiet.stats.pairs, quiet.stats.altered_pairs), (1, 0));
    }

    #[test]
    fn blame_goes_to_the_proxy_when_it_altered_and_otherwise_to_where_the_violations_are() {
        assert_eq!(Blame::of(true, 0, 0), Blame::Proxy);
        assert_eq!(Blame::of(true, 5, 5), Blame::Proxy);
        assert_eq!(Blame::of(false, 3, 0), Blame::FrontHopOnly);
        assert_eq!(Blame::of(false, 0, 3), Blame::BackHopOnly);
        assert_eq!(Blame::of(false, 3, 3), Blame::Endpoint);
        assert_eq!(Blame::of(false, 0, 0), Blame::Clean);
        // Most telling first: the order the dashboard lists pairs in.
        assert!(Blame::Proxy < Blame::FrontHopOnly && Blame::Endpoint < Blame::Clean);
    }
}
