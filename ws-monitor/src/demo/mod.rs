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
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::engine::{http, Kind};
use crate::flow::{Closing, Direction, FlowId, FlowKey, Opening, StreamSink};
use crate::testkit::frame::{xor_mask, RSV1, RSV2};
use crate::testkit::{self as kit, op, Len};

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

mod clients;
mod config;
mod frames;
mod proxy;
mod server;
mod state;
mod tap;

use clients::*;
pub use config::DemoConfig;
use frames::*;
use proxy::*;
use server::*;
use state::*;
use tap::*;

#[cfg(test)]
mod tests;
