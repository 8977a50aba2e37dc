//! Test fixture: a real [`Engine`] fed with handshakes and frames from [`crate::testkit`] through its
//! [`StreamSink`] impl, and a [`Dashboard`] fed with its stats, findings and connections
//! at deterministic times.

use std::collections::HashMap;
use std::net::SocketAddr;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::{CaptureHealth, Dashboard};
use crate::engine::Engine;
use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, StreamSink};
use crate::testkit::frame::{close_body, RSV1};
use crate::testkit::{op, Frame, Head, RFC_KEY};

pub const NS: u64 = 1_000_000_000;
/// Monotonic time the dashboard starts at.
pub const START: u64 = 1_000 * NS;
/// Makes `START` 2025-03-14T09:26:40Z.
pub const EPOCH_OFFSET: i128 = 1_741_944_400 * NS as i128 - START as i128;

pub const C: Direction = Direction::ToServer;
pub const S: Direction = Direction::ToClient;

const KEY: &str = RFC_KEY;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

// ----- frames and heads from the test kit --------------------------------------------------

/// A well-formed masked client frame.
pub fn client(op: u8, payload: &[u8]) -> Vec<u8> {
    Frame::new(op, payload).mask(MASK).encode()
}

/// A well-formed unmasked server frame.
pub fn server(op: u8, payload: &[u8]) -> Vec<u8> {
    Frame::new(op, payload).encode()
}

pub fn request() -> Vec<u8> {
    Head::upgrade_request("/live", "ws.example.com", KEY).encode()
}

pub fn response_101() -> Vec<u8> {
    Head::switching_protocols(KEY).encode()
}

/// An upgrade request with its own key, offering permessage-deflate or not.
pub fn request_keyed(key: &str, offer: bool) -> Vec<u8> {
    let head = Head::upgrade_request("/live", "ws.example.com", key);
    match offer {
        true => head.insert_before("Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "permessage-deflate"),
        false => head,
    }
    .encode()
}

/// Its 101, accepting permessage-deflate or not.
pub fn response_keyed(key: &str, deflate: bool) -> Vec<u8> {
    let head = Head::switching_protocols(key);
    match deflate {
        true => head.set("Sec-WebSocket-Extensions", "permessage-deflate"),
        false => head,
    }
    .encode()
}

pub fn response_404() -> Vec<u8> {
    Head::status(404, "Not Found").set("Content-Length", "0").encode()
}

/// The start of a TLS ClientHello.
pub fn tls_hello() -> Vec<u8> {
    vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]
}

// ----- the wire --------------------------------------------------------------------------

/// An engine and a dashboard fed in lock step.
pub struct Wire {
    pub engine: Engine,
    pub dash: Dashboard,
    pub health: CaptureHealth,
    /// Milliseconds since `START`.
    pub ms: u64,
    offsets: HashMap<(u64, usize), u64>,
    keys: HashMap<u64, FlowKey>,
    /// Last second ticked.
    ticked: u64,
}

impl Wire {
    pub fn new() -> Self {
        let mut dash = Dashboard::new("eth0", &[8001, 8443], START);
        dash.set_epoch_offset(EPOCH_OFFSET);
        Wire {
            engine: Engine::default(),
            dash,
            health: CaptureHealth::default(),
            ms: 0,
            offsets: HashMap::new(),
            keys: HashMap::new(),
            ticked: 0,
        }
    }

    pub fn ts(&self) -> u64 {
        START + self.ms * 1_000_000
    }

    /// Moves the clock to `ms` after start (ticking every whole second passed).
    pub fn at(&mut self, ms: u64) {
        assert!(ms >= self.ms, "time goes forward: {ms} < {}", self.ms);
        while (self.ticked + 1) * 1000 <= ms {
            self.ticked += 1;
            self.ms = self.ticked * 1000;
            self.tick();
        }
        self.ms = ms;
    }

    /// One dashboard tick at the current time.
    pub fn tick(&mut self) {
        let now = self.ts();
        let open = crate::diagnosis::proxy::live_pairs(self.engine.connections());
        let causes = crate::diagnosis::diagnose(
            self.engine.stats(),
            &crate::reassembly::ReassemblyStats::default(),
            &crate::diagnosis::proxy::ProxyStats::default().with_open(&open),
            self.health.ring_drops,
        );
        self.dash.on_diagnosis(causes);
        self.dash.on_tick(now, self.health, self.engine.stats(), self.engine.connections());
    }

    fn flush(&mut self) {
        let findings: Vec<_> = self.engine.drain_findings().collect();
        for f in &findings {
            self.dash.on_finding(f);
        }
    }

    pub fn open(&mut self, id: u64, client: &str, server: &str) {
        let key =
            FlowKey { client: client.parse::<SocketAddr>().unwrap(), server: server.parse::<SocketAddr>().unwrap() };
        self.keys.insert(id, key);
        let ts = self.ts();
        self.engine.open(FlowId(id), &key, Opening::Handshake, ts);
        self.flush();
    }

    pub fn send(&mut self, id: u64, dir: Direction, bytes: &[u8]) {
        let off = self.offsets.entry((id, dir.index())).or_insert(0);
        let at = *off;
        *off += bytes.len() as u64;
        let ts = self.ts();
        self.engine.data(FlowId(id), dir, at, bytes, ts);
        self.health.packets += 1;
        self.health.bytes_delivered += bytes.len() as u64;
        self.flush();
    }

    pub fn lose(&mut self, id: u64, dir: Direction, len: u64) {
        let off = self.offsets.entry((id, dir.index())).or_insert(0);
        let at = *off;
        *off += len;
        let ts = self.ts();
        self.engine.gap(FlowId(id), dir, at, len, Loss::Capture, ts);
        self.health.gaps += 1;
        self.health.bytes_lost += len;
        self.flush();
    }

    pub fn close(&mut self, id: u64) {
        let ts = self.ts();
        self.engine.close(FlowId(id), Closing::Fin, ts);
        self.flush();
    }

    /// A clean WebSocket upgrade.
    pub fn upgrade(&mut self, id: u64, client: &str, srv: &str) {
        self.open(id, client, srv);
        self.send(id, C, &request());
        self.send(id, S, &response_101());
    }

    pub fn key(&mut self, code: KeyCode) {
        let _ = self.dash.on_key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    pub fn keys(&mut self, codes: &[KeyCode]) {
        for c in codes {
            self.key(*c);
        }
    }
}

/// Healthy traffic only: three clean connections, one closed, for 30 s.
pub fn calm() -> Wire {
    let mut w = Wire::new();
    w.at(500);
    w.upgrade(1, "10.0.0.1:50001", "10.0.0.100:8001");
    w.upgrade(2, "10.0.0.2:50002", "10.0.0.100:8001");
    w.upgrade(3, "10.0.0.3:50003", "10.0.0.100:8443");
    for s in 1..30 {
        w.at(s * 1000 + 200);
        w.send(1, C, &client(op::TEXT, b"{\"op\":\"subscribe\"}"));
        w.send(1, S, &server(op::TEXT, b"{\"ok\":true}"));
        if s % 5 == 0 {
            w.send(2, S, &server(op::PING, b""));
            w.send(2, C, &client(op::PONG, b""));
        }
        if s == 20 {
            w.send(3, C, &client(op::CLOSE, &close_body(1000, b"bye")));
            w.send(3, S, &server(op::CLOSE, &close_body(1000, b"")));
        }
        if s == 21 {
            w.close(3);
        }
    }
    w.at(30_000);
    w
}

/// An incident: a clean connection, a client compressing without negotiation (RSV1) that
/// later sends an unmasked frame, a server masking its frames and a client closing with
/// 1005 (closed at 55 s), TLS on the plain port, a rejected upgrade, an IPv6 connection
/// that desyncs after a gap, and one still in its handshake. Ends at 90 s.
pub fn incident() -> Wire {
    let mut w = Wire::new();
    w.at(300);
    w.upgrade(1, "10.0.0.1:50001", "10.0.0.100:8001");
    w.at(1_400);
    w.upgrade(2, "10.0.0.2:50002", "10.0.0.100:8001");
    w.at(2_100);
    w.upgrade(3, "10.0.0.3:50003", "10.0.0.100:8001");
    w.at(4_700);
    w.upgrade(6, "[2001:db8::6]:50006", "[2001:db8::100]:8443");

    let rsv1_seconds = [20u64, 21, 22, 40, 41, 80, 81, 81, 82, 83, 85, 86, 86, 87];
    for s in 5..=89u64 {
        w.at(s * 1000 + 100);
        chat(&mut w, s);
        for _ in rsv1_seconds.iter().filter(|&&x| x == s) {
            w.send(2, C, &Frame::text(&b"\x4a\xcc\x4d\xc9\xc9\x07\x00"[..]).rsv(RSV1).mask(MASK).encode());
        }
        match s {
            10 => {
                w.at(10_250);
                w.open(4, "10.0.0.4:50004", "10.0.0.100:8443");
                w.send(4, C, &tls_hello());
            }
            12 => {
                w.at(12_600);
                w.open(5, "10.0.0.5:50005", "10.0.0.100:8001");
                w.send(5, C, &request());
                w.send(5, S, &response_404());
            }
            30 => {
                w.at(30_420);
                w.send(3, S, &Frame::text("masked by the server").mask([1, 2, 3, 4]).encode());
            }
            50 => {
                w.at(50_150);
                w.send(3, C, &client(op::CLOSE, &close_body(1005, b"")));
                w.send(3, S, &server(op::CLOSE, &close_body(1000, b"")));
            }
            55 => w.close(3),
            60 => {
                w.at(60_710);
                w.send(2, C, &Frame::text("hello").encode());
            }
            70 => {
                w.at(70_900);
                w.lose(6, S, 100);
            }
            88 => {
                w.open(7, "10.0.0.7:50007", "10.0.0.100:8001");
                w.send(7, C, &request());
            }
            _ => {}
        }
    }
    w.at(90_000);
    w
}

/// A proxy at 10.0.0.10:8080 in front of a backend at 10.0.0.20:8001, two sessions
/// through it: one whose 101 the proxy strips of `permessage-deflate` while relaying the
/// backend's compressed frames (connections 1 and 2), and a clean one (3 and 4, closed
/// at 20 s). Ends at 30 s.
pub fn proxied() -> Wire {
    const STRIPPED: &str = "c3RyaXBwZWQgc2Vzc2lvbg==";
    const CLEAN: &str = "Y2xlYW4gc2Vzc2lvbmtleQ==";
    let mut w = Wire::new();
    w.at(200);
    w.open(1, "10.0.0.1:50001", "10.0.0.10:8080");
    w.send(1, C, &request_keyed(STRIPPED, true));
    w.at(210);
    w.open(2, "10.0.0.10:40001", "10.0.0.20:8001");
    w.send(2, C, &request_keyed(STRIPPED, true));
    w.send(2, S, &response_keyed(STRIPPED, true));
    w.send(1, S, &response_keyed(STRIPPED, false));
    w.at(1_300);
    w.open(3, "10.0.0.3:50003", "10.0.0.10:8080");
    w.send(3, C, &request_keyed(CLEAN, false));
    w.open(4, "10.0.0.10:40004", "10.0.0.20:8001");
    w.send(4, C, &request_keyed(CLEAN, false));
    w.send(4, S, &response_keyed(CLEAN, false));
    w.send(3, S, &response_keyed(CLEAN, false));
    for s in 2..30u64 {
        w.at(s * 1000 + 100);
        let compressed = Frame::text(&b"\x4a\xcc\x4d\xc9\xc9\x07\x00"[..]).rsv(RSV1).encode();
        w.send(2, S, &compressed);
        w.send(1, S, &compressed);
        if s < 20 {
            w.send(3, C, &client(op::TEXT, b"hi"));
            w.send(4, C, &client(op::TEXT, b"hi"));
        }
        if s == 20 {
            for id in [3, 4] {
                w.send(id, C, &client(op::CLOSE, &close_body(1000, b"")));
                w.send(id, S, &server(op::CLOSE, &close_body(1000, b"")));
                w.close(id);
            }
        }
    }
    w.at(30_000);
    w
}

/// The incident's healthy traffic of second `s` (connection 1, and 6 every 10 s).
pub fn chat(w: &mut Wire, s: u64) {
    w.send(1, C, &client(op::TEXT, b"{\"op\":\"ping\"}"));
    w.send(1, S, &server(op::TEXT, b"{\"op\":\"pong\"}"));
    if s.is_multiple_of(10) {
        w.send(6, C, &client(op::BINARY, &[1, 2, 3, 4]));
        w.send(6, S, &server(op::BINARY, &[5, 6, 7, 8]));
    }
}

/// An unmasked client text frame.
pub fn unmasked(payload: &[u8]) -> Vec<u8> {
    Frame::text(payload).encode()
}

/// Renders the dashboard into a `width` x `height` test terminal.
pub fn render(d: &Dashboard, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
    t.draw(|f| d.render(f)).unwrap();
    t
}

/// A reusable test terminal that renders without the backend diff (size sweeps).
pub struct Canvas(Terminal<TestBackend>);

impl Canvas {
    pub fn new() -> Self {
        Canvas(Terminal::new(TestBackend::new(1, 1)).unwrap())
    }

    /// Renders `d` into a `width` x `height` frame.
    pub fn draw(&mut self, d: &Dashboard, width: u16, height: u16) {
        self.0.backend_mut().resize(width, height);
        self.0.resize(ratatui::layout::Rect::new(0, 0, width, height)).unwrap();
        let mut frame = self.0.get_frame();
        d.render(&mut frame);
        assert_eq!(frame.area(), ratatui::layout::Rect::new(0, 0, width, height));
    }
}

/// The rendered text, one string per row.
pub fn text(d: &Dashboard, width: u16, height: u16) -> String {
    render(d, width, height).backend().to_string()
}
