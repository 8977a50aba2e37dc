//! `ws-monitor demo`: live WebSocket traffic on loopback for the monitor to watch.
//!
//! Three parts, all on 127.0.0.1, all tasks of one [`Demo`]:
//!
//! * an **echo server** (tokio-tungstenite, default config) that echoes text and binary
//!   messages and answers pings;
//! * **clients** (tokio-tungstenite) that send text (with multi-byte UTF-8), binary and
//!   pings a few times a second, close with 1000 after a few seconds and reconnect. Half
//!   of them talk to the server directly: that traffic is conformant and must raise no
//!   finding. The other half go through
//! * a **misbehaving proxy**: raw TCP, it relays the HTTP upgrade and then every frame
//!   (parsing frame headers itself), and commits one fault per connection, taking the
//!   next entry of a rotating schedule (below) on each new connection.
//!
//! Monitor both ports ([`Demo::server_port`], [`Demo::proxy_port`]). A fault the proxy
//! commits on bytes towards the client shows on the proxy port in the `server`
//! direction; one on bytes towards the upstream server shows on the server port in the
//! `client` direction. [`Demo::committed`] counts what was committed, by kind and
//! direction, at the moment the bytes were written.
//!
//! # Fault schedule
//!
//! Frame faults fire on the first text/binary frame of their direction. Injected frames
//! go in front of that frame (so the peer trips over them at once); "last" faults
//! desynchronise their direction, so the proxy stops relaying it afterwards.
//!
//! | fault | how | kinds (direction) |
//! |---|---|---|
//! | `Rsv1Data` | RSV1 set on the server's echo | `rsv_without_extension` (server) |
//! | `StripUpgrade` | `Upgrade`/`Connection` removed from the request; the server drops it, the proxy answers 502 | `upgrade_missing` (client), `handshake_rejected` (server) |
//! | `Unmask` | the client's frame forwarded unmasked | `unmasked_client_frame` (client) |
//! | `ReservedOpcode` | a frame with opcode 3 | `reserved_opcode` (server) |
//! | `WrongAccept` | `Sec-WebSocket-Accept` computed without the GUID | `accept_mismatch` (server) |
//! | `BadUtf8` | a Latin-1 text frame | `invalid_utf8_text` (server) |
//! | `PingTooLong` | a 200-byte ping | `control_too_long` (server) |
//! | `NonMinimal` | the client's frame length re-encoded in the 16-bit (or 64-bit) form | `non_minimal_length` (client) |
//! | `MaskServer` | the server's echo masked | `masked_server_frame` (server) |
//! | `Close1005` | a close frame with code 1005, then the echo | `invalid_close_code`, `data_after_close` (server) |
//! | `OrphanCont` | a continuation frame, FIN set, no message open | `orphan_continuation` (server) |
//! | `TlsHello` | a TLS record sent upstream instead of the request; the proxy answers 502 | `tls_on_plain_port` (client), `handshake_rejected` (server) |
//! | `PingFragmented` | a ping with FIN = 0 | `control_fragmented` (server) |
//! | `Rsv2Data` | RSV2 set on the client's frame | `rsv_without_extension` (client) |
//! | `No101Upgrade` | `Upgrade`/`Connection` removed from the 101 | `bad_handshake` (server) |
//! | `Interleaved` | a text frame with FIN = 0, then another text frame | `interleaved_data_frame` (server) |
//! | `CloseOneByte` | a close frame with a 1-byte body, then the echo | `invalid_close_payload`, `data_after_close` (server) |
//! | `Rsv1Ping` | a ping with RSV1 (no extension negotiated) | `rsv_without_extension` (server) |
//! | `ExtraExtension` | `Sec-WebSocket-Extensions: permessage-deflate` added to the 101 | `extension_not_offered` (server) |
//! | `CloseThenData` | a valid close (1001), then the echo | `data_after_close` (server) |
//! | `CloseBadReason` | a close frame whose reason is cut inside a UTF-8 character, then the echo | `invalid_close_reason`, `data_after_close` (server) |
//! | `Oversized` | a header claiming a 20 MiB payload (last) | `oversized_frame` (server), with the monitor's default `--max-frame-size` of 16M |
//! | `HttpToServer` | `GET /health HTTP/1.1` instead of the client's frame (last) | `http_in_stream` (client) |
//! | `LengthMsb` | a 64-bit length with the MSB set (last) | `length_msb_set` (server) |
//! | `HttpToClient` | `HTTP/1.1 200 OK` instead of the echo (last) | `http_in_stream` (server) |
//! | `EarlyFrame` | a masked ping sent upstream right behind the request, before the 101 | `frame_before_upgrade` (client) |
//! | `ManyHeaders` | 300 extra header fields in the request; the server drops it, the proxy answers 502 | `handshake_too_large` (client), `handshake_rejected` (server) |
//!
//! `rsv1_invalid` and `invalid_compressed_data` need permessage-deflate, which the demo's
//! tungstenite peers do not negotiate, and `oversized_message` over 64 MiB of one message;
//! the protocol end-to-end tests commit them.
//! Every data frame the proxy writes after a close frame in the same direction is also
//! counted as `data_after_close`. tungstenite peers answer most faults by dropping the
//! connection; the client then reconnects (a cycle of the 27 entries takes about 10 s
//! with the default 4 clients).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::engine::Kind;
use crate::flow::{Closing, Direction, FlowId, FlowKey, Opening, StreamSink};

/// Kinds the demo does not commit: two need permessage-deflate, which its tungstenite
/// peers do not negotiate, and oversized_message needs over 64 MiB of one message (the
/// protocol end-to-end tests commit all three).
pub const NOT_IN_DEMO: [Kind; 3] = [Kind::Rsv1Invalid, Kind::InvalidCompressedData, Kind::OversizedMessage];

/// Payload length the `Oversized` fault claims: over the monitor's default 16 MiB.
pub const OVERSIZED_CLAIM: u64 = 20 * 1024 * 1024;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle server-side connection is dropped after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A proxied connection is cut after this long, whatever it does.
const RELAY_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// `stop` waits this long for tasks to finish before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Longest HTTP head the proxy buffers.
const MAX_HEAD: usize = 16 * 1024;
/// Largest frame payload the proxy relays (the demo's messages are far smaller).
const MAX_RELAY_PAYLOAD: u64 = 1024 * 1024;

/// What `ws-monitor demo` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoConfig {
    /// Client tasks; half (rounded down) talk to the server directly, the rest go
    /// through the proxy.
    pub clients: usize,
    /// Seeds message contents, pauses, masking keys and where the fault schedule starts.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { clients: 4, seed: 0 }
    }
}

/// What the demo's peers did so far (failures of peers are expected: most faults make
/// tungstenite drop the connection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// WebSocket sessions opened directly to the echo server.
    pub direct_sessions: u64,
    /// WebSocket sessions opened through the proxy (handshake faults make some fail).
    pub proxied_sessions: u64,
    /// Connections the echo server accepted (direct and from the proxy).
    pub server_accepts: u64,
    /// Connections the proxy accepted.
    pub proxy_accepts: u64,
    /// Sessions and connections that ended in an error.
    pub peer_errors: u64,
}

/// Started demo traffic. Dropping it (or calling [`stop`](Demo::stop)) ends every task.
pub struct Demo {
    /// Port of the echo server on 127.0.0.1.
    pub server_port: u16,
    /// Port of the misbehaving proxy on 127.0.0.1.
    pub proxy_port: u16,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    go: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Demo {
    /// Binds 127.0.0.1:0 for the echo server and the proxy, and spawns everything on the
    /// current tokio runtime; clients only start connecting after [`go`](Demo::go).
    pub async fn start(cfg: DemoConfig) -> anyhow::Result<Demo> {
        Demo::launch(cfg, Timing::LIVE, None).await
    }

    /// Like [`start`](Demo::start), and every byte the demo's peers write on the two
    /// ports is also handed to `sink`, as a capture would (each connection opened with
    /// [`Opening::Handshake`], closed with [`Closing::Fin`] once both ends are dropped).
    /// This runs the engine on the demo without BPF (tests, or no root).
    pub async fn start_with_sink(cfg: DemoConfig, sink: Box<dyn StreamSink + Send>) -> anyhow::Result<Demo> {
        Demo::launch(cfg, Timing::LIVE, Some(Tap::new(sink))).await
    }

    async fn launch(cfg: DemoConfig, timing: Timing, tap: Option<Tap>) -> anyhow::Result<Demo> {
        tokio::runtime::Handle::try_current().context("the demo needs a tokio runtime")?;
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server_listener = TcpListener::bind(any).await.context("binding the echo server on 127.0.0.1")?;
        let proxy_listener = TcpListener::bind(any).await.context("binding the proxy on 127.0.0.1")?;
        let server = server_listener.local_addr()?;
        let proxy = proxy_listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let (go, go_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let ctx = Arc::new(Ctx { server, proxy, timing, stats: Arc::clone(&stats), tap, stop: Stop(stop_rx) });
        let mut rng = Rng::new(cfg.seed);
        let mut tasks = JoinSet::new();
        tasks.spawn(run_server(Arc::clone(&ctx), server_listener));
        let first = usize::try_from(cfg.seed % SCHEDULE.len() as u64).unwrap_or(0);
        tasks.spawn(run_proxy(Arc::clone(&ctx), proxy_listener, first, rng.fork()));
        for index in 0..cfg.clients {
            let route = if index % 2 == 0 { Route::Proxied } else { Route::Direct };
            tasks.spawn(client(Arc::clone(&ctx), index, route, go_rx.clone(), rng.fork()));
        }
        tracing::debug!(%server, %proxy, clients = cfg.clients, "demo started");
        Ok(Demo { server_port: server.port(), proxy_port: proxy.port(), stats, stop, go, tasks })
    }

    /// Lets the clients start connecting.
    pub fn go(&self) {
        self.go.send_replace(true);
    }

    /// Ends every task and waits for them; the ports are closed when it returns.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let mut tasks = std::mem::take(&mut self.tasks);
        let finished = timeout(STOP_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tasks.shutdown().await;
        }
    }

    /// Violations committed so far, by kind name and direction (`"client"`/`"server"`),
    /// as far as the demo knows.
    pub fn committed(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.stats.committed()
    }

    /// Connections and sessions so far.
    pub fn activity(&self) -> Activity {
        self.stats.activity()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Tasks see the signal; the JoinSet aborts whatever is still running.
        self.stop.send_replace(true);
    }
}

// ----- shared state ----------------------------------------------------------------------

/// Pacing of the clients (milliseconds, inclusive ranges).
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Before the first message of a session.
    first: (u64, u64),
    /// Between messages.
    interval: (u64, u64),
    /// Messages per session.
    messages: (u64, u64),
    /// Before reconnecting.
    pause: (u64, u64),
}

impl Timing {
    /// A few messages per second per client, sessions of about 3 s.
    const LIVE: Timing = Timing { first: (150, 300), interval: (250, 450), messages: (6, 10), pause: (300, 700) };
    /// Fast enough for a test to see a whole fault cycle in a few seconds.
    #[cfg(test)]
    const FAST: Timing = Timing { first: (5, 20), interval: (10, 30), messages: (3, 5), pause: (10, 30) };
}

/// Counters shared by every task.
#[derive(Default)]
struct Stats {
    /// Indexed by [`Direction::index`], then [`Kind::index`].
    committed: [[AtomicU64; Kind::COUNT]; 2],
    direct_sessions: AtomicU64,
    proxied_sessions: AtomicU64,
    server_accepts: AtomicU64,
    proxy_accepts: AtomicU64,
    peer_errors: AtomicU64,
}

impl Stats {
    fn commit(&self, kind: Kind, dir: Direction) {
        if let Some(c) = self.committed.get(dir.index()).and_then(|d| d.get(kind.index())) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn committed(&self) -> BTreeMap<(&'static str, &'static str), u64> {
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

    fn activity(&self) -> Activity {
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
struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once the demo stops (or is dropped).
    async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Runs `f` unless the demo stops first.
    async fn guard<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            () = self.wait() => None,
            out = f => Some(out),
        }
    }

    /// Sleeps; `false` if the demo stopped meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        self.guard(tokio::time::sleep(d)).await.is_some()
    }
}

/// What every task needs.
struct Ctx {
    server: SocketAddr,
    proxy: SocketAddr,
    timing: Timing,
    stats: Arc<Stats>,
    tap: Option<Tap>,
    stop: Stop,
}

/// Deterministic pseudo-random numbers (splitmix64).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C908)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        let span = hi.saturating_sub(lo).saturating_add(1);
        lo.saturating_add(self.next_u64() % span)
    }

    fn millis(&mut self, range: (u64, u64)) -> Duration {
        Duration::from_millis(self.range(range))
    }

    /// An independent generator for a child task.
    fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }

    fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_be_bytes()
    }
}

// ----- tap: the peers' writes as a capture would see them -------------------------------

/// Hands every byte written on a tapped connection to a [`StreamSink`].
#[derive(Clone)]
struct Tap(Arc<Mutex<TapState>>);

struct TapState {
    sink: Box<dyn StreamSink + Send>,
    flows: HashMap<FlowKey, TapFlow>,
    next_id: u64,
    t0: Instant,
}

/// One connection: both ends attach; it is closed when both have detached.
struct TapFlow {
    id: FlowId,
    ends: u32,
    /// Bytes delivered so far, by [`Direction::index`].
    sent: [u64; 2],
}

impl TapState {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Tap {
    fn new(sink: Box<dyn StreamSink + Send>) -> Tap {
        Tap(Arc::new(Mutex::new(TapState { sink, flows: HashMap::new(), next_id: 1, t0: Instant::now() })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut TapState) -> R) -> R {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    fn attach(&self, key: FlowKey) {
        self.with(|s| {
            let ts = s.now_ns();
            if let Some(f) = s.flows.get_mut(&key) {
                f.ends += 1;
                return;
            }
            let id = FlowId(s.next_id);
            s.next_id += 1;
            s.flows.insert(key, TapFlow { id, ends: 1, sent: [0; 2] });
            s.sink.open(id, &key, Opening::Handshake, ts);
        });
    }

    fn data(&self, key: &FlowKey, dir: Direction, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.with(|s| {
            let ts = s.now_ns();
            let TapState { sink, flows, .. } = s;
            let Some(f) = flows.get_mut(key) else {
                return;
            };
            if let Some(offset) = f.sent.get_mut(dir.index()) {
                sink.data(f.id, dir, *offset, bytes, ts);
                *offset += bytes.len() as u64;
            }
        });
    }

    fn detach(&self, key: &FlowKey) {
        self.with(|s| {
            let ts = s.now_ns();
            let Some(f) = s.flows.get_mut(key) else {
                return;
            };
            f.ends = f.ends.saturating_sub(1);
            if f.ends == 0 {
                let id = f.id;
                s.flows.remove(key);
                s.sink.close(id, Closing::Fin, ts);
            }
        });
    }
}

/// A stream (or write half) whose writes are reported to a [`Tap`] as bytes travelling
/// in `dir` on connection `key`.
struct Tapped<S> {
    inner: S,
    tap: Option<(Tap, FlowKey, Direction)>,
}

impl<S> Tapped<S> {
    fn new(inner: S, tap: Option<&Tap>, key: FlowKey, dir: Direction) -> Tapped<S> {
        let tap = tap.map(|t| {
            t.attach(key);
            (t.clone(), key, dir)
        });
        Tapped { inner, tap }
    }
}

impl<S> Drop for Tapped<S> {
    fn drop(&mut self) {
        if let Some((tap, key, _)) = &self.tap {
            tap.detach(key);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let res = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some((tap, key, dir))) = (&res, &me.tap) {
            tap.data(key, *dir, buf.get(..*n).unwrap_or(buf));
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ----- echo server ----------------------------------------------------------------------

/// Accepts connections until the demo stops; `serve` makes the task for each one.
async fn accept_loop<F>(ctx: Arc<Ctx>, listener: TcpListener, mut serve: impl FnMut(TcpStream, SocketAddr) -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = ctx.stop.wait() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve(stream, peer));
                }
                Err(_) => {
                    if !ctx.stop.sleep(ACCEPT_BACKOFF).await {
                        break;
                    }
                }
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// The echo server: each connection served by its own task.
async fn run_server(ctx: Arc<Ctx>, listener: TcpListener) {
    let c = Arc::clone(&ctx);
    accept_loop(ctx, listener, move |stream, peer| {
        Stats::bump(&c.stats.server_accepts);
        echo(Arc::clone(&c), stream, peer)
    })
    .await;
}

/// One server-side WebSocket connection: echoes data messages until it ends.
async fn echo(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let stream = Tapped::new(stream, ctx.tap.as_ref(), FlowKey { client: peer, server: local }, Direction::ToClient);
    let mut ws = match timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::accept_async(stream)).await {
        Ok(Ok(ws)) => ws,
        _ => return Stats::bump(&ctx.stats.peer_errors),
    };
    while let Ok(Some(msg)) = timeout(IDLE_TIMEOUT, ws.next()).await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return Stats::bump(&ctx.stats.peer_errors);
                }
            }
            // tungstenite answers pings and close frames itself.
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(_) => return Stats::bump(&ctx.stats.peer_errors),
        }
    }
}

// ----- clients --------------------------------------------------------------------------

/// Where a client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Direct,
    Proxied,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Proxied => "proxied",
        }
    }
}

/// Sessions one after another, from `go` until the demo stops.
async fn client(ctx: Arc<Ctx>, index: usize, route: Route, mut go: watch::Receiver<bool>, mut rng: Rng) {
    let started = ctx.stop.guard(async { go.wait_for(|g| *g).await.is_ok() }).await;
    if started != Some(true) {
        return;
    }
    loop {
        match ctx.stop.guard(session(&ctx, index, route, &mut rng)).await {
            None => return,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::trace!(index, route = route.name(), error = %e, "demo client session ended");
                Stats::bump(&ctx.stats.peer_errors);
            }
        }
        if !ctx.stop.sleep(rng.millis(ctx.timing.pause)).await {
            return;
        }
    }
}

/// One WebSocket session: a few messages, each awaiting its echo (or pong), then a
/// close with 1000.
async fn session(ctx: &Ctx, index: usize, route: Route, rng: &mut Rng) -> anyhow::Result<()> {
    let addr = match route {
        Route::Direct => ctx.server,
        Route::Proxied => ctx.proxy,
    };
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let key = FlowKey { client: stream.local_addr()?, server: addr };
    let stream = Tapped::new(stream, ctx.tap.as_ref(), key, Direction::ToServer);
    let url = format!("ws://{addr}/{}/{index}", route.name());
    let (mut ws, _) = timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::client_async(url, stream)).await??;
    Stats::bump(match route {
        Route::Direct => &ctx.stats.direct_sessions,
        Route::Proxied => &ctx.stats.proxied_sessions,
    });
    tokio::time::sleep(rng.millis(ctx.timing.first)).await;
    let count = rng.range(ctx.timing.messages);
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(rng.millis(ctx.timing.interval)).await;
        }
        let msg = sample_message(i, rng);
        let ping = matches!(msg, Message::Ping(_));
        ws.send(msg).await?;
        timeout(REPLY_TIMEOUT, await_reply(&mut ws, ping)).await??;
    }
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await?;
    // The server answers the close and closes the TCP connection first.
    let _ = timeout(CLOSE_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    Ok(())
}

/// Reads until the echo of a data message (or the pong of a ping) arrives.
async fn await_reply<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, ping: bool) -> anyhow::Result<()> {
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Pong(_) if ping => return Ok(()),
            Message::Text(_) | Message::Binary(_) if !ping => return Ok(()),
            Message::Close(_) => anyhow::bail!("closed by the peer"),
            _ => {}
        }
    }
    anyhow::bail!("connection ended")
}

/// Texts with multi-byte UTF-8 (2, 3 and 4-byte sequences).
const TEXTS: [&str; 6] =
    ["héllo wörld", "Grüße aus Köln ✓", "日本語のテキスト", "emoji 🚀🎉 ok", "Ελληνικά и русский", "naïve café — 1 €"];

/// The `i`-th message of a session: text, binary, ping, and sometimes a longer text
/// (16-bit length form).
fn sample_message(i: u64, rng: &mut Rng) -> Message {
    let text = TEXTS.get((rng.next_u64() % TEXTS.len() as u64) as usize).copied().unwrap_or("hello");
    match i % 4 {
        0 => Message::text(text),
        1 => {
            let len = rng.range((1, 64));
            Message::binary((0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>())
        }
        2 => Message::Ping(format!("ping {i}").into_bytes().into()),
        _ if rng.next_u64().is_multiple_of(3) => {
            let times = rng.range((8, 16)) as usize;
            Message::text(vec![text; times].join(" · "))
        }
        _ => Message::text(text),
    }
}

// ----- frames (the proxy's own reader and writer) ----------------------------------------

/// Opcodes.
mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
}

const RSV1: u8 = 0b100;
const RSV2: u8 = 0b010;

/// How a payload length is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LenForm {
    /// In the second byte (0-125).
    Short,
    /// 126 and 16 bits.
    Ext16,
    /// 127 and 64 bits.
    Ext64,
}

impl LenForm {
    fn minimal(len: usize) -> LenForm {
        if len < 126 {
            LenForm::Short
        } else if len <= 0xFFFF {
            LenForm::Ext16
        } else {
            LenForm::Ext64
        }
    }
}

/// A frame with its payload unmasked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Frame {
    fin: bool,
    /// RSV1-3 as the low three bits.
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// The form the length is written in (a shorter one is used when it cannot hold it).
    form: LenForm,
    payload: Vec<u8>,
}

fn xor_mask(data: &mut [u8], key: [u8; 4]) {
    for (b, k) in data.iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

impl Frame {
    /// A final, unmasked frame with a minimal length.
    fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        let payload = payload.into();
        Frame { fin: true, rsv: 0, opcode, mask: None, form: LenForm::minimal(payload.len()), payload }
    }

    /// A close frame with `code` and `reason` bytes.
    fn close(code: u16, reason: &[u8]) -> Frame {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(reason);
        Frame::new(op::CLOSE, body)
    }

    fn is_data(opcode: u8) -> bool {
        matches!(opcode, op::CONTINUATION | op::TEXT | op::BINARY)
    }

    /// The frame at the start of `buf` and its size, `None` if incomplete.
    fn decode(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let (form, ext) = match b1 & 0x7F {
            126 => (LenForm::Ext16, 2usize),
            127 => (LenForm::Ext64, 8usize),
            _ => (LenForm::Short, 0usize),
        };
        let masked = b1 & 0x80 != 0;
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        let Some(header) = buf.get(..header_len) else {
            return Ok(None);
        };
        let len = match form {
            LenForm::Short => u64::from(b1 & 0x7F),
            _ => header.iter().skip(2).take(ext).fold(0u64, |a, b| (a << 8) | u64::from(*b)),
        };
        if len > MAX_RELAY_PAYLOAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too large to relay"));
        }
        let len = len as usize;
        let mask = match header.get(2 + ext..) {
            Some(&[k0, k1, k2, k3]) if masked => Some([k0, k1, k2, k3]),
            _ => None,
        };
        let Some(body) = buf.get(header_len..header_len + len) else {
            return Ok(None);
        };
        let mut payload = body.to_vec();
        if let Some(key) = mask {
            xor_mask(&mut payload, key);
        }
        let frame = Frame { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0b111, opcode: b0 & 0x0F, mask, form, payload };
        Ok(Some((frame, header_len + len)))
    }

    fn encode(&self) -> Vec<u8> {
        let len = self.payload.len();
        let form = match self.form {
            LenForm::Short if len >= 126 => LenForm::minimal(len),
            LenForm::Ext16 if len > 0xFFFF => LenForm::Ext64,
            f => f,
        };
        let mut out = Vec::with_capacity(14 + len);
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0x0F));
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        match form {
            LenForm::Short => out.push(m | len as u8),
            LenForm::Ext16 => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            LenForm::Ext64 => {
                out.push(m | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let start = out.len();
        out.extend_from_slice(&self.payload);
        if let Some(key) = self.mask {
            out.splice(start..start, key);
            if let Some(body) = out.get_mut(start + 4..) {
                xor_mask(body, key);
            }
        }
        out
    }
}

/// A final, unmasked header claiming a `len`-byte payload in the 64-bit form; no payload.
fn header_claiming(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 127];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Buffered reading of HTTP heads and frames.
struct Reader<R> {
    rd: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(rd: R) -> Reader<R> {
        Reader { rd, buf: Vec::new() }
    }

    /// Reads more bytes; `false` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = self.rd.read(&mut chunk).await?;
        self.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        Ok(n > 0)
    }

    /// An HTTP head up to and including its blank line; `None` if the stream ends first.
    async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = self.buf.split_off(end + 4);
                return Ok(Some(std::mem::replace(&mut self.buf, rest)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too long"));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next frame; `None` if the stream ends first.
    async fn frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = Frame::decode(&self.buf)? {
                self.buf.drain(..used.min(self.buf.len()));
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

/// Bytes the proxy writes, with the kinds they commit.
struct Out {
    bytes: Vec<u8>,
    kinds: &'static [Kind],
    /// Opcode of the frame these bytes start (for close / data-after-close tracking).
    opcode: Option<u8>,
}

impl Out {
    fn frame(f: &Frame, kinds: &'static [Kind]) -> Out {
        Out { bytes: f.encode(), kinds, opcode: Some(f.opcode) }
    }

    fn raw(bytes: impl Into<Vec<u8>>, kinds: &'static [Kind], opcode: Option<u8>) -> Out {
        Out { bytes: bytes.into(), kinds, opcode }
    }
}

/// One direction of a proxied connection, as written by the proxy.
struct Writer<W> {
    w: W,
    dir: Direction,
    /// A close frame was written in this direction.
    closed: bool,
    stats: Arc<Stats>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes `out` and records what it commits.
    async fn send(&mut self, out: Out) -> io::Result<()> {
        let late = self.closed && out.opcode.is_some_and(Frame::is_data);
        self.w.write_all(&out.bytes).await?;
        for kind in out.kinds {
            self.stats.commit(*kind, self.dir);
        }
        if late {
            self.stats.commit(Kind::DataAfterClose, self.dir);
        }
        if out.opcode == Some(op::CLOSE) {
            self.closed = true;
        }
        Ok(())
    }
}

// ----- the misbehaving proxy -------------------------------------------------------------

/// One fault per proxied connection; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Rsv1Data,
    StripUpgrade,
    Unmask,
    ReservedOpcode,
    WrongAccept,
    BadUtf8,
    PingTooLong,
    NonMinimal,
    MaskServer,
    Close1005,
    OrphanCont,
    TlsHello,
    PingFragmented,
    Rsv2Data,
    No101Upgrade,
    Interleaved,
    CloseOneByte,
    Rsv1Ping,
    ExtraExtension,
    CloseThenData,
    CloseBadReason,
    Oversized,
    HttpToServer,
    LengthMsb,
    HttpToClient,
    EarlyFrame,
    ManyHeaders,
}

/// The rotating schedule: connection `n` to the proxy gets `SCHEDULE[(start + n) % len]`.
const SCHEDULE: [Fault; 27] = [
    Fault::Rsv1Data,
    Fault::StripUpgrade,
    Fault::Unmask,
    Fault::ReservedOpcode,
    Fault::WrongAccept,
    Fault::BadUtf8,
    Fault::PingTooLong,
    Fault::NonMinimal,
    Fault::MaskServer,
    Fault::Close1005,
    Fault::OrphanCont,
    Fault::TlsHello,
    Fault::PingFragmented,
    Fault::Rsv2Data,
    Fault::No101Upgrade,
    Fault::Interleaved,
    Fault::CloseOneByte,
    Fault::Rsv1Ping,
    Fault::ExtraExtension,
    Fault::CloseThenData,
    Fault::CloseBadReason,
    Fault::Oversized,
    Fault::HttpToServer,
    Fault::LengthMsb,
    Fault::HttpToClient,
    Fault::EarlyFrame,
    Fault::ManyHeaders,
];

/// Where a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The upgrade request on its way to the server.
    Request,
    /// The server's response on its way to the client.
    Response,
    /// The first data frame travelling this way.
    Frames(Direction),
}

/// A TLS handshake record (a truncated ClientHello).
const TLS_HELLO: [u8; 9] = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00];

/// What the proxy answers when the upstream server closed without a response.
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What a frame fault writes instead of the first data frame, and whether the
/// direction ends there (its framing is lost).
struct Strike {
    outs: Vec<Out>,
    last: bool,
}

impl Fault {
    fn stage(self) -> Stage {
        match self {
            Fault::StripUpgrade | Fault::TlsHello | Fault::EarlyFrame | Fault::ManyHeaders => Stage::Request,
            Fault::WrongAccept | Fault::No101Upgrade | Fault::ExtraExtension => Stage::Response,
            Fault::Unmask | Fault::NonMinimal | Fault::Rsv2Data | Fault::HttpToServer => {
                Stage::Frames(Direction::ToServer)
            }
            _ => Stage::Frames(Direction::ToClient),
        }
    }

    /// The request as forwarded upstream.
    fn request(self, head: &[u8]) -> Out {
        match self {
            Fault::StripUpgrade => {
                Out::raw(edit_head(head, &["upgrade", "connection"], None, None), &[Kind::UpgradeMissing], None)
            }
            Fault::TlsHello => Out::raw(TLS_HELLO, &[Kind::TlsOnPlainPort], None),
            Fault::EarlyFrame => {
                let mut bytes = head.to_vec();
                bytes.extend(Frame { mask: Some([1, 2, 3, 4]), ..Frame::new(op::PING, "early") }.encode());
                Out::raw(bytes, &[Kind::FrameBeforeUpgrade], None)
            }
            Fault::ManyHeaders => {
                let many: Vec<String> = (0..300).map(|i| format!("X-Filler-{i}: x")).collect();
                Out::raw(edit_head(head, &[], None, Some(&many.join("\r\n"))), &[Kind::HandshakeTooLarge], None)
            }
            _ => Out::raw(head, &[], None),
        }
    }

    /// The server's response as forwarded to the client.
    fn response(self, head: &[u8], request: &[u8]) -> Out {
        if !is_101(head) {
            return Out::raw(head, &[], None);
        }
        match self {
            Fault::WrongAccept => {
                let wrong = format!("Sec-WebSocket-Accept: {}", accept_without_guid(request));
                Out::raw(
                    edit_head(head, &[], Some(("sec-websocket-accept", &wrong)), None),
                    &[Kind::AcceptMismatch],
                    None,
                )
            }
            Fault::No101Upgrade => {
                Out::raw(edit_head(head, &["upgrade", "connection"], None, None), &[Kind::BadHandshake], None)
            }
            Fault::ExtraExtension => Out::raw(
                edit_head(head, &[], None, Some("Sec-WebSocket-Extensions: permessage-deflate")),
                &[Kind::ExtensionNotOffered],
                None,
            ),
            _ => Out::raw(head, &[], None),
        }
    }

    /// Applies a frame fault to `frame`, the first data frame of its direction.
    fn strike(self, mut frame: Frame, rng: &mut Rng) -> Strike {
        let before = |extra: Vec<Out>, frame: &Frame| {
            let mut outs = extra;
            outs.push(Out::frame(frame, &[]));
            Strike { outs, last: false }
        };
        let instead = |out: Out| Strike { outs: vec![out], last: true };
        let changed =
            |frame: &Frame, kinds: &'static [Kind]| Strike { outs: vec![Out::frame(frame, kinds)], last: false };
        match self {
            Fault::Rsv1Data => {
                frame.rsv |= RSV1;
                changed(&frame, &[Kind::RsvWithoutExtension])
            }
            Fault::Rsv2Data => {
                frame.rsv |= RSV2;
                changed(&frame, &[Kind::RsvWithoutExtension])
            }
            Fault::MaskServer => {
                frame.mask = Some(rng.mask_key());
                changed(&frame, &[Kind::MaskedServerFrame])
            }
            Fault::Unmask => {
                frame.mask = None;
                changed(&frame, &[Kind::UnmaskedClientFrame])
            }
            Fault::NonMinimal => {
                frame.form = if frame.payload.len() < 126 { LenForm::Ext16 } else { LenForm::Ext64 };
                changed(&frame, &[Kind::NonMinimalLength])
            }
            Fault::Rsv1Ping => {
                let ping = Frame { rsv: RSV1, ..Frame::new(op::PING, "rsv1") };
                before(vec![Out::frame(&ping, &[Kind::RsvWithoutExtension])], &frame)
            }
            Fault::ReservedOpcode => {
                before(vec![Out::frame(&Frame::new(0x3, "opcode 3"), &[Kind::ReservedOpcode])], &frame)
            }
            Fault::PingTooLong => {
                before(vec![Out::frame(&Frame::new(op::PING, vec![b'p'; 200]), &[Kind::ControlTooLong])], &frame)
            }
            Fault::PingFragmented => {
                let ping = Frame { fin: false, ..Frame::new(op::PING, "fragmented ping") };
                before(vec![Out::frame(&ping, &[Kind::ControlFragmented])], &frame)
            }
            Fault::OrphanCont => {
                before(vec![Out::frame(&Frame::new(op::CONTINUATION, "orphan"), &[Kind::OrphanContinuation])], &frame)
            }
            Fault::Interleaved => {
                let open = Frame { fin: false, ..Frame::new(op::TEXT, "first half, ") };
                let next = Frame::new(op::TEXT, "a new message");
                before(vec![Out::frame(&open, &[]), Out::frame(&next, &[Kind::InterleavedDataFrame])], &frame)
            }
            Fault::BadUtf8 => {
                // Latin-1 "café au lait".
                before(
                    vec![Out::frame(&Frame::new(op::TEXT, b"caf\xe9 au lait".to_vec()), &[Kind::InvalidUtf8Text])],
                    &frame,
                )
            }
            Fault::CloseOneByte => {
                before(vec![Out::frame(&Frame::new(op::CLOSE, vec![0x03]), &[Kind::InvalidClosePayload])], &frame)
            }
            Fault::Close1005 => {
                before(vec![Out::frame(&Frame::close(1005, b"no status"), &[Kind::InvalidCloseCode])], &frame)
            }
            Fault::CloseBadReason => {
                // "bye ✓" cut inside the check mark.
                before(vec![Out::frame(&Frame::close(1000, b"bye \xe2\x9c"), &[Kind::InvalidCloseReason])], &frame)
            }
            Fault::CloseThenData => before(vec![Out::frame(&Frame::close(1001, b"going away"), &[])], &frame),
            Fault::Oversized => instead(Out::raw(
                header_claiming(op::BINARY, OVERSIZED_CLAIM),
                &[Kind::OversizedFrame],
                Some(op::BINARY),
            )),
            Fault::LengthMsb => instead(Out::raw(
                header_claiming(op::BINARY, 0x8000_0000_0000_0400),
                &[Kind::LengthMsbSet],
                Some(op::BINARY),
            )),
            Fault::HttpToClient => {
                instead(Out::raw(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], &[Kind::HttpInStream], None))
            }
            Fault::HttpToServer => {
                instead(Out::raw(&b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..], &[Kind::HttpInStream], None))
            }
            // Handshake faults never reach the frames.
            Fault::StripUpgrade
            | Fault::TlsHello
            | Fault::EarlyFrame
            | Fault::ManyHeaders
            | Fault::WrongAccept
            | Fault::No101Upgrade
            | Fault::ExtraExtension => changed(&frame, &[]),
        }
    }
}

/// Whether an HTTP head is a `101` response.
fn is_101(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.1 101 ") || head.starts_with(b"HTTP/1.0 101 ")
}

/// The value of header `name` in an HTTP head.
fn header_value(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// An HTTP head with the headers named in `drop` removed, header `replace.0` replaced
/// by the line `replace.1`, and the line `add` appended.
fn edit_head(head: &[u8], drop: &[&str], replace: Option<(&str, &str)>, add: Option<&str>) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<String> = Vec::new();
    for (i, line) in text.trim_end_matches("\r\n").split("\r\n").enumerate() {
        let name = line.split_once(':').map(|(n, _)| n.trim());
        let is = |wanted: &str| i > 0 && name.is_some_and(|n| n.eq_ignore_ascii_case(wanted));
        if drop.iter().any(|d| is(d)) {
            continue;
        }
        match replace {
            Some((wanted, with)) if is(wanted) => lines.push(with.to_owned()),
            _ => lines.push(line.to_owned()),
        }
    }
    if let Some(add) = add {
        lines.push(add.to_owned());
    }
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// `base64(SHA-1(key))`: the accept value of a server that forgot the GUID.
fn accept_without_guid(request: &[u8]) -> String {
    let key = header_value(request, "sec-websocket-key").unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(key.as_bytes()))
}

/// The misbehaving proxy: each connection gets the next fault of the schedule.
async fn run_proxy(ctx: Arc<Ctx>, listener: TcpListener, first: usize, mut rng: Rng) {
    let c = Arc::clone(&ctx);
    let mut next = first;
    accept_loop(ctx, listener, move |stream, peer| {
        Stats::bump(&c.stats.proxy_accepts);
        let fault = SCHEDULE.get(next % SCHEDULE.len()).copied().unwrap_or(Fault::Rsv1Data);
        next = next.wrapping_add(1);
        relay(Arc::clone(&c), stream, peer, fault, rng.fork())
    })
    .await;
}

/// One proxied connection.
async fn relay(ctx: Arc<Ctx>, down: TcpStream, peer: SocketAddr, fault: Fault, rng: Rng) {
    tracing::trace!(%peer, ?fault, "demo proxy connection");
    match timeout(RELAY_LIFETIME, relay_inner(&ctx, down, peer, fault, rng)).await {
        Ok(Ok(())) => {}
        _ => Stats::bump(&ctx.stats.peer_errors),
    }
}

async fn relay_inner(ctx: &Ctx, down: TcpStream, peer: SocketAddr, fault: Fault, mut rng: Rng) -> io::Result<()> {
    let local = down.local_addr()?;
    down.set_nodelay(true)?;
    let (down_rd, down_wr) = down.into_split();
    let mut from_client = Reader::new(down_rd);
    let mut to_client = Writer {
        w: Tapped::new(down_wr, ctx.tap.as_ref(), FlowKey { client: peer, server: local }, Direction::ToClient),
        dir: Direction::ToClient,
        closed: false,
        stats: Arc::clone(&ctx.stats),
    };
    let Some(request) = timeout(HANDSHAKE_TIMEOUT, from_client.head()).await.map_err(io::Error::other)?? else {
        return Ok(());
    };

    let up = timeout(CONNECT_TIMEOUT, TcpStream::connect(ctx.server)).await.map_err(io::Error::other)??;
    up.set_nodelay(true)?;
    let up_key = FlowKey { client: up.local_addr()?, server: ctx.server };
    let (up_rd, up_wr) = up.into_split();
    let mut from_server = Reader::new(up_rd);
    let mut to_server = Writer {
        w: Tapped::new(up_wr, ctx.tap.as_ref(), up_key, Direction::ToServer),
        dir: Direction::ToServer,
        closed: false,
        stats: Arc::clone(&ctx.stats),
    };

    to_server.send(fault.request(&request)).await?;
    let response = match timeout(HANDSHAKE_TIMEOUT, from_server.head()).await {
        Ok(Ok(Some(head))) => head,
        // The server hung up without answering: say so, as a gateway would.
        _ => return to_client.send(Out::raw(BAD_GATEWAY, &[Kind::HandshakeRejected], None)).await,
    };
    let upgraded = is_101(&response);
    to_client.send(fault.response(&response, &request)).await?;
    if !upgraded {
        return Ok(());
    }

    let target = match fault.stage() {
        Stage::Frames(dir) => Some(dir),
        Stage::Request | Stage::Response => None,
    };
    let mut up_rng = rng.fork();
    let (a, b) = tokio::join!(
        pump(&mut from_client, &mut to_server, (target == Some(Direction::ToServer)).then_some(fault), &mut up_rng),
        pump(&mut from_server, &mut to_client, (target == Some(Direction::ToClient)).then_some(fault), &mut rng),
    );
    a.and(b)
}

/// Relays frames one way until the source ends, applying `fault` to the first data
/// frame; then half-closes the destination.
async fn pump<R, W>(from: &mut Reader<R>, to: &mut Writer<W>, fault: Option<Fault>, rng: &mut Rng) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut armed = fault;
    while let Some(frame) = from.frame().await? {
        let fault = match armed {
            Some(f) if matches!(frame.opcode, op::TEXT | op::BINARY) => f,
            _ => {
                to.send(Out::frame(&frame, &[])).await?;
                continue;
            }
        };
        armed = None;
        let strike = fault.strike(frame, rng);
        for out in strike.outs {
            to.send(out).await?;
        }
        if strike.last {
            break;
        }
    }
    to.w.shutdown().await
}

#[cfg(test)]
mod tests;
