//! The demo's shared state: timing, counts of what it committed, the stop signal, and a small deterministic random generator.

use super::*;

/// Pacing of the clients (milliseconds, inclusive ranges).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    /// Before the first message of a session.
    pub(super) first: (u64, u64),
    /// Between messages.
    pub(super) interval: (u64, u64),
    /// Messages per session.
    pub(super) messages: (u64, u64),
    /// Before reconnecting.
    pub(super) pause: (u64, u64),
}

impl Timing {
    /// A few messages per second per client, sessions of about 3 s.
    pub(super) const LIVE: Timing =
        Timing { first: (150, 300), interval: (250, 450), messages: (6, 10), pause: (300, 700) };
    /// Fast enough for a test to see a whole fault cycle in a few seconds.
    #[cfg(test)]
    pub(super) const FAST: Timing = Timing { first: (5, 20), interval: (10, 30), messages: (3, 5), pause: (10, 30) };
}

/// Counters shared by every task.
#[derive(Default)]
pub(super) struct Stats {
    /// Indexed by [`Direction::index`], then [`Kind::index`].
    pub(super) committed: [[AtomicU64; Kind::COUNT]; 2],
    pub(super) direct_sessions: AtomicU64,
    pub(super) proxied_sessions: AtomicU64,
    pub(super) server_accepts: AtomicU64,
    pub(super) proxy_accepts: AtomicU64,
    pub(super) peer_errors: AtomicU64,
}

impl Stats {
    pub(super) fn commit(&self, kind: Kind, dir: Direction) {
        if let Some(c) = self.committed.get(dir.index()).and_then(|d| d.get(kind.index())) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn committed(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        let mut out = BTreeMap::new();
        for dir in Direction::BOTH {
            for kind in Kind::ALL {
                let n = self
                    .committed
                    .get(dir.index())
                    .and_then(|d| d.get(kind.index()))
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                if n > 0 {
                    out.insert((kind.name(), dir.name()), n);
                }
            }
        }
        out
    }

    pub(super) fn activity(&self) -> Activity {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Activity {
            direct_sessions: get(&self.direct_sessions),
            proxied_sessions: get(&self.proxied_sessions),
            server_accepts: get(&self.server_accepts),
            proxy_accepts: get(&self.proxy_accepts),
            peer_errors: get(&self.peer_errors),
        }
    }
}

/// The demo's stop signal, as seen by a task.
#[derive(Clone)]
pub(super) struct Stop(pub(super) watch::Receiver<bool>);

impl Stop {
    /// Resolves once the demo stops (or is dropped).
    pub(super) async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Runs `f` unless the demo stops first.
    pub(super) async fn guard<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            () = self.wait() => None,
            out = f => Some(out),
        }
    }

    /// Sleeps; `false` if the demo stopped meanwhile.
    pub(super) async fn sleep(&self, d: Duration) -> bool {
        self.guard(tokio::time::sleep(d)).await.is_some()
    }
}

/// What every task needs.
pub(super) struct Ctx {
    pub(super) server: SocketAddr,
    pub(super) proxy: SocketAddr,
    pub(super) timing: Timing,
    pub(super) stats: Arc<Stats>,
    pub(super) tap: Option<Tap>,
    pub(super) stop: Stop,
}

/// Deterministic pseudo-random numbers (splitmix64).
#[derive(Clone, Debug)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C908)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub(super) fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        let span = hi.saturating_sub(lo).saturating_add(1);
        lo.saturating_add(self.next_u64() % span)
    }

    pub(super) fn millis(&mut self, range: (u64, u64)) -> Duration {
        Duration::from_millis(self.range(range))
    }

    /// An independent generator for a child task.
    pub(super) fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }

    pub(super) fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_be_bytes()
    }
}
