//! Tests of [`super`].

use std::collections::BTreeSet;

use super::*;
use crate::engine::{Engine, Finding};

// ----- frames -----------------------------------------------------------------------

#[tokio::test]
async fn reads_the_rfc_examples_and_relays_them_unchanged() {
    // RFC 6455 §5.7: masked "Hello", then unmasked "Hello", split anywhere.
    let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let stream = [&masked[..], &unmasked[..]].concat();
    for cut in 0..masked.len() {
        assert!(decode(&masked[..cut]).unwrap().is_none());
    }
    let mut reader = Reader::new(&stream[..]);
    let f = reader.frame().await.unwrap().unwrap();
    assert_eq!((f.payload(), f.header().mask), (&b"Hello"[..], Some([0x37, 0xfa, 0x21, 0x3d])));
    assert!(is_message(&f));
    assert_eq!(Out::frame(f, &[]).bytes, masked);
    let g = reader.frame().await.unwrap().unwrap();
    assert_eq!(to_kit(&g), crate::testkit::Frame::text("Hello"));
    assert_eq!(Out::frame(g, &[]).bytes, unmasked);
    assert!(reader.frame().await.unwrap().is_none());
    // What is too large to relay is refused.
    assert!(decode(&header_claiming(op::BINARY, OVERSIZED_CLAIM)).is_err());
}

#[test]
fn violations_keep_the_rest_of_the_frame() {
    let mut rng = Rng::new(3);
    let text = || Frame::message("x", OpCode::Data(Data::Text), true);
    let rsv1 = Fault::Rsv1Data.strike(text(), &mut rng).outs;
    assert_eq!(rsv1.iter().map(|o| o.bytes.clone()).collect::<Vec<_>>(), [vec![0xC1, 0x01, b'x']]);
    let wide = Fault::NonMinimal.strike(text(), &mut rng).outs;
    assert_eq!(wide[0].bytes, [0x81, 126, 0, 1, b'x']);
    let close = Fault::CloseThenData.strike(text(), &mut rng).outs;
    assert_eq!(close[0].bytes, crate::testkit::Frame::close(1001, b"going away").encode());
    assert_eq!(close[1].bytes, [0x81, 0x01, b'x']);
}

#[test]
fn head_edits() {
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let stripped = edit_head(req, &["upgrade", "connection"], None, None);
    assert_eq!(stripped, b"GET /x HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert_eq!(header_value(req, "SEC-websocket-key").as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
    let wrong = accept_without_guid(req);
    assert_ne!(wrong, crate::engine::handshake::accept_for("dGhlIHNhbXBsZSBub25jZQ=="));
    let resp = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n";
    assert!(is_101(resp));
    assert_eq!(
        edit_head(resp, &[], Some(("sec-websocket-accept", "Sec-WebSocket-Accept: y")), Some("A: b")),
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: y\r\nA: b\r\n\r\n"
    );
}

#[test]
fn schedule_covers_every_kind() {
    let mut rng = Rng::new(0);
    let mut kinds = BTreeSet::new();
    for fault in SCHEDULE {
        let mut outs = vec![fault.request(b"GET / HTTP/1.1\r\n\r\n")];
        outs.push(fault.response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"));
        outs.extend(fault.strike(Frame::message("x", OpCode::Data(Data::Text), true), &mut rng).outs);
        kinds.extend(outs.iter().flat_map(|o| o.kinds.iter().copied()));
    }
    // data_after_close is counted by the writer; handshake_rejected by the relay.
    kinds.insert(Kind::DataAfterClose);
    kinds.insert(Kind::HandshakeRejected);
    assert!(NOT_IN_DEMO.iter().all(|k| !kinds.contains(k)));
    assert_eq!(kinds.len() + NOT_IN_DEMO.len(), Kind::violations().count(), "{kinds:?}");
}

// ----- live demo ------------------------------------------------------------------

async fn alive_tasks_settle() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..50 {
        if metrics.num_alive_tasks() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metrics.num_alive_tasks()
}

#[tokio::test]
async fn runs_and_stops_cleanly() {
    let demo = Demo::start(DemoConfig::default()).await.unwrap();
    let (server, proxy) = (demo.server_port, demo.proxy_port);
    assert_ne!(server, proxy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = demo.activity();
    assert_eq!((idle.server_accepts, idle.proxy_accepts), (0, 0), "clients must wait for go()");

    demo.go();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let a = demo.activity();
    let committed = demo.committed();
    demo.stop().await;

    assert!(a.direct_sessions >= 2, "{a:?}");
    assert!(a.proxy_accepts >= 4 && a.proxied_sessions >= 1, "{a:?}");
    assert!(a.server_accepts > a.direct_sessions, "the proxy connects upstream: {a:?}");
    let kinds: BTreeSet<_> = committed.keys().map(|(k, _)| *k).collect();
    assert!(kinds.len() >= 4, "{committed:?}");
    assert!(committed.keys().all(|(k, d)| Kind::from_name(k).is_some() && (*d == "client" || *d == "server")));
    assert!(committed.contains_key(&("rsv_without_extension", "server")), "{committed:?}");
    assert!(committed.contains_key(&("upgrade_missing", "client")), "{committed:?}");
    assert!(committed.contains_key(&("handshake_rejected", "server")), "{committed:?}");

    for port in [server, proxy] {
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_err(), "port {port} still open");
    }
    assert_eq!(alive_tasks_settle().await, 0, "tasks left after stop()");
}

#[tokio::test]
async fn dropping_ends_everything() {
    let demo = Demo::launch(DemoConfig { clients: 4, seed: 9 }, Timing::FAST, None).await.unwrap();
    let port = demo.proxy_port;
    demo.go();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(demo.activity().proxy_accepts > 0);
    drop(demo);
    assert_eq!(alive_tasks_settle().await, 0, "tasks left after drop");
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_err());
}

/// What the tap delivered: the engine's view, plus the first client bytes of each
/// flow (to tell direct sessions from proxied ones).
#[derive(Default)]
struct Recorder {
    engine: Engine,
    first: HashMap<FlowId, Vec<u8>>,
    keys: HashMap<FlowId, FlowKey>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Recorder>>);

use crate::flow::Loss;

impl StreamSink for Shared {
    fn open(&mut self, id: FlowId, key: &FlowKey, opening: Opening, ts_ns: u64) {
        let mut r = self.0.lock().unwrap();
        r.keys.insert(id, *key);
        r.engine.open(id, key, opening, ts_ns);
    }
    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], ts_ns: u64) {
        let mut r = self.0.lock().unwrap();
        if dir == Direction::ToServer {
            let first = r.first.entry(id).or_default();
            if first.len() < 32 {
                first.extend_from_slice(&data[..data.len().min(32)]);
            }
        }
        r.engine.data(id, dir, offset, data, ts_ns);
    }
    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, loss: Loss, ts_ns: u64) {
        self.0.lock().unwrap().engine.gap(id, dir, offset, len, loss, ts_ns);
    }
    fn close(&mut self, id: FlowId, closing: Closing, ts_ns: u64) {
        self.0.lock().unwrap().engine.close(id, closing, ts_ns);
    }
}

/// The demo's traffic through the real engine, without BPF: direct sessions are
/// clean, and the engine counts exactly what the proxy committed.
#[tokio::test]
async fn engine_sees_exactly_what_was_committed() {
    for (clients, seed) in [(12, 5), (3, 1), (7, 17)] {
        engine_agrees(DemoConfig { clients, seed }).await;
    }
}

/// Runs the demo (fast pacing) through two full fault cycles and checks the engine's
/// findings against [`Demo::committed`].
async fn engine_agrees(cfg: DemoConfig) {
    let rec = Shared::default();
    let tap = Tap::new(Box::new(rec.clone()));
    let demo = Demo::launch(cfg, Timing::FAST, Some(tap)).await.unwrap();
    let (server_port, proxy_port) = (demo.server_port, demo.proxy_port);
    let stats = Arc::clone(&demo.stats);
    demo.go();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let kinds: BTreeSet<_> = demo.committed().keys().map(|(k, _)| *k).collect();
        let a = demo.activity();
        let cycles = a.proxy_accepts >= 2 * SCHEDULE.len() as u64;
        if (kinds.len() + NOT_IN_DEMO.len() == Kind::COUNT && cycles && a.direct_sessions >= 3)
            || Instant::now() > deadline
        {
            break;
        }
    }
    demo.stop().await;
    assert_eq!(alive_tasks_settle().await, 0);

    let committed = stats.committed();
    let mut r = rec.0.lock().unwrap();
    // Violations only: how connections end (close analysis) is not committed.
    let findings: Vec<Finding> = r.engine.drain_findings().filter(|f| f.kind.is_violation()).collect();
    let stats_seen = r.engine.stats().clone();
    assert_eq!(r.engine.connections().count(), 0, "every tapped flow was closed");

    // Every kind was committed, in a complete cycle.
    let kinds: BTreeSet<_> = committed.keys().map(|(k, _)| *k).collect();
    assert_eq!(kinds.len() + NOT_IN_DEMO.len(), Kind::violations().count(), "not every kind committed: {committed:?}");

    // Direct sessions: flows on the server port that the clients opened themselves.
    let direct: BTreeSet<FlowId> =
        r.first.iter().filter(|(_, b)| b.starts_with(b"GET /direct/")).map(|(id, _)| *id).collect();
    assert!(direct.len() >= 3, "{} direct flows", direct.len());
    assert!(direct.iter().all(|id| r.keys.get(id).is_some_and(|k| k.server.port() == server_port)));
    let on_direct: Vec<&Finding> = findings.iter().filter(|f| direct.contains(&f.id)).collect();
    assert!(on_direct.is_empty(), "findings on conformant connections: {on_direct:?}");
    assert!(r.keys.values().any(|k| k.server.port() == proxy_port));

    // Exactly what was committed, kind by kind and direction by direction.
    let mut seen = BTreeMap::new();
    for dir in Direction::BOTH {
        for kind in Kind::violations() {
            let n = stats_seen.violation_count_dir(dir, kind);
            if n > 0 {
                seen.insert((kind.name(), dir.name()), n);
            }
        }
    }
    assert_eq!(seen, committed);
    assert_eq!(findings.len() as u64, stats_seen.violations_total());
    // Faults towards the client show on the proxy port, towards the server on the
    // server port.
    for f in &findings {
        let port = f.key.server.port();
        match f.dir {
            Direction::ToClient => assert_eq!(port, proxy_port, "{f:?}"),
            Direction::ToServer => assert_eq!(port, server_port, "{f:?}"),
        }
    }
}
