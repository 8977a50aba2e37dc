//! Test fixture: a real [`Engine`] fed with encoded handshakes and frames through its
//! [`StreamSink`] impl, and a [`Dashboard`] fed with its stats, findings and connections
//! at deterministic times.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine as _;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use sha1::{Digest, Sha1};

use super::{CaptureHealth, Dashboard};
use crate::engine::Engine;
use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, StreamSink};

pub const NS: u64 = 1_000_000_000;
/// Monotonic time the dashboard starts at.
pub const START: u64 = 1_000 * NS;
/// Makes `START` 2025-03-14T09:26:40Z.
pub const EPOCH_OFFSET: i128 = 1_741_944_400 * NS as i128 - START as i128;

pub const C: Direction = Direction::ToServer;
pub const S: Direction = Direction::ToClient;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

// ----- a tiny RFC 6455 encoder -----------------------------------------------------------

/// One frame: FIN, RSV bits (`0b100` = RSV1), opcode, optional masking key, payload.
pub fn frame(fin: bool, rsv: u8, op: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (op & 0x0f)];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A well-formed masked client frame.
pub fn client(op: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, op, Some(MASK), payload)
}

/// A well-formed unmasked server frame.
pub fn server(op: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, op, None, payload)
}

/// A close body: status code then reason.
pub fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(reason.as_bytes());
    b
}

pub fn accept(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

pub fn request() -> Vec<u8> {
    format!(
        "GET /live HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

pub fn response_101() -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept(KEY)
    )
    .into_bytes()
}

/// An upgrade request with its own key, offering permessage-deflate or not.
pub fn request_keyed(key: &str, offer: bool) -> Vec<u8> {
    let offer = if offer { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
    format!(
        "GET /live HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n{offer}Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Its 101, accepting permessage-deflate or not.
pub fn response_keyed(key: &str, deflate: bool) -> Vec<u8> {
    let accepted = if deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{accepted}\r\n",
        accept(key)
    )
    .into_bytes()
}

pub fn response_404() -> Vec<u8> {
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
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
        w.send(1, C, &client(OP_TEXT, b"{\"op\":\"subscribe\"}"));
        w.send(1, S, &server(OP_TEXT, b"{\"ok\":true}"));
        if s % 5 == 0 {
            w.send(2, S, &server(OP_PING, b""));
            w.send(2, C, &client(OP_PONG, b""));
        }
        if s == 20 {
            w.send(3, C, &client(OP_CLOSE, &close_body(1000, "bye")));
            w.send(3, S, &server(OP_CLOSE, &close_body(1000, "")));
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
            w.send(2, C, &frame(true, 0b100, OP_TEXT, Some(MASK), b"\x4a\xcc\x4d\xc9\xc9\x07\x00"));
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
                w.send(3, S, &frame(true, 0, OP_TEXT, Some([1, 2, 3, 4]), b"masked by the server"));
            }
            50 => {
                w.at(50_150);
                w.send(3, C, &client(OP_CLOSE, &close_body(1005, "")));
                w.send(3, S, &server(OP_CLOSE, &close_body(1000, "")));
            }
            55 => w.close(3),
            60 => {
                w.at(60_710);
                w.send(2, C, &frame(true, 0, OP_TEXT, None, b"hello"));
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
        let compressed = frame(true, 0b100, OP_TEXT, None, b"\x4a\xcc\x4d\xc9\xc9\x07\x00");
        w.send(2, S, &compressed);
        w.send(1, S, &compressed);
        if s < 20 {
            w.send(3, C, &client(OP_TEXT, b"hi"));
            w.send(4, C, &client(OP_TEXT, b"hi"));
        }
        if s == 20 {
            for id in [3, 4] {
                w.send(id, C, &client(OP_CLOSE, &close_body(1000, "")));
                w.send(id, S, &server(OP_CLOSE, &close_body(1000, "")));
                w.close(id);
            }
        }
    }
    w.at(30_000);
    w
}

/// The incident's healthy traffic of second `s` (connection 1, and 6 every 10 s).
pub fn chat(w: &mut Wire, s: u64) {
    w.send(1, C, &client(OP_TEXT, b"{\"op\":\"ping\"}"));
    w.send(1, S, &server(OP_TEXT, b"{\"op\":\"pong\"}"));
    if s.is_multiple_of(10) {
        w.send(6, C, &client(OP_BINARY, &[1, 2, 3, 4]));
        w.send(6, S, &server(OP_BINARY, &[5, 6, 7, 8]));
    }
}

/// An unmasked client text frame.
pub fn unmasked(payload: &[u8]) -> Vec<u8> {
    frame(true, 0, OP_TEXT, None, payload)
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
