//! Engine tests (frames and handshakes from [`crate::testkit`]): one test per kind,
//! the legal look-alikes, delivery-split invariance, gaps and resync, property tests.

use std::cell::Cell;
use std::net::SocketAddr;

use flate2::{Compress, Compression};
use proptest::prelude::*;

use super::*;
use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, StreamSink};
use crate::testkit::frame::close_body;
use crate::testkit::{accept, op, Frame, Head, Len, RFC_KEY};

/// Payload that makes the engine panic in unit tests (see `Engine::data`): the injected
/// fault of the monitor's panic-containment test.
pub(crate) const FAULT: &[u8] = b"\xde\xadinject-an-engine-panic";

const C: Direction = Direction::ToServer;
const S: Direction = Direction::ToClient;

// ----- frames and handshakes from the test kit ----------------------------------------

const CONT: u8 = op::CONTINUATION;
const TEXT: u8 = op::TEXT;
const BIN: u8 = op::BINARY;
const CLOSE: u8 = op::CLOSE;
const PING: u8 = op::PING;
const PONG: u8 = op::PONG;

thread_local! {
    static KEYS: Cell<u32> = const { Cell::new(1) };
}

/// A fresh, distinct masking key.
fn next_key() -> [u8; 4] {
    KEYS.with(|k| {
        let n = k.get();
        k.set(n.wrapping_add(1));
        (n.wrapping_mul(0x9E37_79B9) ^ 0x5A5A_1234).to_be_bytes()
    })
}

/// Masking with a fresh key.
trait Masked {
    fn masked(self) -> Frame;
}

impl Masked for Frame {
    fn masked(self) -> Frame {
        self.mask(next_key())
    }
}

/// A client frame (masked with a fresh key).
fn cf(op: u8, payload: impl Into<Vec<u8>>) -> Frame {
    Frame::new(op, payload).masked()
}

/// A server frame.
fn sf(op: u8, payload: impl Into<Vec<u8>>) -> Frame {
    Frame::new(op, payload)
}

/// permessage-deflate sender: sync flush, trailing 00 00 ff ff removed.
fn deflate(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
    super::inflate::tests::pmd_compress(c, msg)
}

const KEY: &str = RFC_KEY;

/// The upgrade request, with `extra` header lines at its end.
fn request(extra: &str) -> Vec<u8> {
    Head::upgrade_request("/chat", "example.com", KEY).set("Connection", "keep-alive, Upgrade").raw(extra).encode()
}

/// The 101, with `extra` header lines at its end.
fn response(extra: &str) -> Vec<u8> {
    Head::switching_protocols(KEY).raw(extra).encode()
}

// ----- scripts and split-invariant runner ----------------------------------------------

#[derive(Clone, Debug)]
enum Ev {
    Data(Direction, Vec<u8>),
    Gap(Direction, u64),
}

#[derive(Clone, Debug)]
struct Script {
    opening: Opening,
    cfg: EngineConfig,
    evs: Vec<Ev>,
}

impl Script {
    fn handshake() -> Script {
        Script { opening: Opening::Handshake, cfg: EngineConfig::default(), evs: Vec::new() }
    }
    fn mid() -> Script {
        Script { opening: Opening::MidStream, ..Script::handshake() }
    }
    /// A connection upgraded with these extra request / response header lines.
    fn upgraded(req_extra: &str, resp_extra: &str) -> Script {
        let mut s = Script::handshake();
        s.data(C, request(req_extra));
        s.data(S, response(resp_extra));
        s
    }
    fn plain() -> Script {
        Script::upgraded("", "")
    }
    fn deflate() -> Script {
        Script::upgraded(
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        )
    }
    fn data(&mut self, d: Direction, b: Vec<u8>) -> &mut Script {
        self.evs.push(Ev::Data(d, b));
        self
    }
    fn c(&mut self, f: Frame) -> &mut Script {
        self.data(C, f.encode())
    }
    fn s(&mut self, f: Frame) -> &mut Script {
        self.data(S, f.encode())
    }
    fn gap(&mut self, d: Direction, n: u64) -> &mut Script {
        self.evs.push(Ev::Gap(d, n));
        self
    }
}

/// How `data` deliveries are cut.
#[derive(Clone, Copy, Debug)]
enum Cut {
    Whole,
    Bytes,
    Random(u64),
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

type Found = Vec<(Direction, Kind, u64)>;

fn key() -> FlowKey {
    FlowKey {
        client: "10.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        server: "10.0.0.2:8080".parse::<SocketAddr>().unwrap(),
    }
}

fn run_cut(sc: &Script, cut: Cut) -> (EngineStats, Found) {
    let mut e = Engine::new(sc.cfg);
    let id = FlowId(42);
    e.open(id, &key(), sc.opening, 1);
    let mut off = [0u64; 2];
    let mut rng = Rng(match cut {
        Cut::Random(s) => s.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1,
        _ => 1,
    });
    let mut found = Vec::new();
    for (t, ev) in sc.evs.iter().enumerate() {
        let ts = 10 + t as u64;
        match ev {
            Ev::Data(d, b) => {
                let mut rest: &[u8] = b;
                while !rest.is_empty() {
                    let n = match cut {
                        Cut::Whole => rest.len(),
                        Cut::Bytes => 1,
                        Cut::Random(_) => {
                            let r = rng.next();
                            // Mostly small pieces, sometimes large ones.
                            let max = if r & 3 == 0 { 4096 } else { 24 };
                            1 + (r >> 8) as usize % max
                        }
                    }
                    .min(rest.len());
                    e.data(id, *d, off[d.index()], &rest[..n], ts);
                    off[d.index()] += n as u64;
                    rest = &rest[n..];
                }
            }
            Ev::Gap(d, n) => {
                e.gap(id, *d, off[d.index()], *n, Loss::Capture, ts);
                off[d.index()] += n;
            }
        }
        found.extend(e.drain_findings().filter(|f| f.kind.is_violation()).map(|f| (f.dir, f.kind, f.offset)));
    }
    e.close(id, Closing::Fin, 1000);
    found.extend(e.drain_findings().filter(|f| f.kind.is_violation()).map(|f| (f.dir, f.kind, f.offset)));
    assert!(e.connection(id).is_none());
    (e.stats().clone(), found)
}

// ----- a model of header-only capture ------------------------------------------------------

/// Stream ranges a header-only capture leaves out, per direction, as the kernel program
/// decides (written from its rules, not from its code): once a server delivery starts
/// with a 101 response whose head ends in it (the first exchange on the connection, or
/// one after plain HTTP exchanges), frames start after its head, and in the client's
/// stream after what the client had sent by then; binary payload past its first 64 bytes
/// (and that of its continuations) is skipped; anything unusual (RSV2/3, a reserved
/// opcode, a control frame out of bounds, a length with the MSB set) ends the walk. None
/// for scripts with gaps or without a handshake.
fn header_only_skips(sc: &Script) -> Option<[Vec<(u64, u64)>; 2]> {
    if sc.opening != Opening::Handshake || sc.evs.iter().any(|e| matches!(e, Ev::Gap(..))) {
        return None;
    }
    let mut streams: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut starts = None;
    for ev in &sc.evs {
        if let Ev::Data(d, b) = ev {
            if starts.is_none() && *d == S && b.starts_with(b"HTTP/1.1 101") {
                if let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") {
                    let server = streams[S.index()].len() + end + 4;
                    starts = Some((streams[C.index()].len() as u64, server as u64));
                }
            }
            streams[d.index()].extend_from_slice(b);
        }
    }
    let (client_start, server_start) = starts?;
    let walk = |b: &[u8], mut at: u64| {
        let mut skips = Vec::new();
        let mut msg_skip = false;
        loop {
            let h = |i: u64| b.get((at + i) as usize).copied();
            let (Some(b0), Some(b1)) = (h(0), h(1)) else { break };
            let (op, fin, rsv1) = (b0 & 0x0f, b0 & 0x80 != 0, b0 & 0x40 != 0);
            if b0 & 0x30 != 0 || (3..=7).contains(&op) || op > 10 {
                break;
            }
            let (ext, len) = match b1 & 0x7f {
                126 => (2, u64::from(u16::from_be_bytes([h(2).unwrap_or(0), h(3).unwrap_or(0)]))),
                127 => (8, (2..10).fold(0u64, |v, i| (v << 8) | u64::from(h(i).unwrap_or(0)))),
                n => (0, u64::from(n)),
            };
            if len >= 1 << 31 || (op >= 8 && (len > 125 || !fin)) {
                break;
            }
            let body = at + 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
            let skipped = !rsv1 && (op == 2 || (op == 0 && msg_skip));
            if op < 8 {
                msg_skip = !fin && skipped;
            }
            if skipped && len > 64 {
                skips.push((body + 64, body + len));
            }
            at = body + len;
        }
        skips
    };
    let mut out = [Vec::new(), Vec::new()];
    out[C.index()] = walk(&streams[C.index()], client_start);
    out[S.index()] = walk(&streams[S.index()], server_start);
    Some(out)
}

/// Runs `sc` as a header-only capture would deliver it (whole deliveries, skips cut out).
fn run_header_only(sc: &Script, skips: &[Vec<(u64, u64)>; 2]) -> (EngineStats, Found) {
    let mut e = Engine::new(EngineConfig { steer: true, ..sc.cfg });
    let id = FlowId(42);
    e.open(id, &key(), sc.opening, 1);
    let mut off = [0u64; 2];
    let mut found = Vec::new();
    for (t, ev) in sc.evs.iter().enumerate() {
        let Ev::Data(d, b) = ev else { continue };
        let ts = 10 + t as u64;
        let (start, end) = (off[d.index()], off[d.index()] + b.len() as u64);
        let mut at = start;
        for &(from, to) in skips[d.index()].iter().filter(|(f, t)| *t > start && *f < end) {
            let (from, to) = (from.max(start), to.min(end));
            if from > at {
                e.data(id, *d, at, &b[(at - start) as usize..(from - start) as usize], ts);
            }
            e.skip(id, *d, from, to - from, ts);
            at = to;
        }
        if at < end {
            e.data(id, *d, at, &b[(at - start) as usize..], ts);
        }
        off[d.index()] = end;
        found.extend(e.drain_findings().filter(|f| f.kind.is_violation()).map(|f| (f.dir, f.kind, f.offset)));
    }
    e.close(id, Closing::Fin, 1000);
    found.extend(e.drain_findings().filter(|f| f.kind.is_violation()).map(|f| (f.dir, f.kind, f.offset)));
    (e.stats().clone(), found)
}

/// Runs `sc` whole, byte by byte and at random cuts, and as a header-only capture would
/// deliver it; all must agree exactly (but for the count of bytes skipped).
fn run(sc: &Script) -> (EngineStats, Found) {
    let (stats, mut found) = run_cut(sc, Cut::Whole);
    found.sort();
    if let Some(skips) = header_only_skips(sc) {
        let (mut s2, mut f2) = run_header_only(sc, &skips);
        f2.sort();
        let skipped: u64 = skips.iter().flatten().map(|(a, b)| b - a).sum();
        assert_eq!(s2.skipped_bytes, skipped, "every skip passed over in sync");
        assert_eq!(s2.skip_mismatches, 0);
        s2.skipped_bytes = 0;
        assert_eq!(s2, stats, "stats differ under header-only capture");
        assert_eq!(f2, found, "findings differ under header-only capture");
    }
    let big = sc.evs.iter().map(|e| if let Ev::Data(_, b) = e { b.len() } else { 0 }).sum::<usize>();
    let mut cuts = vec![Cut::Random(1), Cut::Random(2), Cut::Random(3)];
    if big < 300_000 {
        cuts.push(Cut::Bytes);
    }
    for cut in cuts {
        let (s2, mut f2) = run_cut(sc, cut);
        f2.sort();
        assert_eq!(s2, stats, "stats differ for {cut:?}");
        assert_eq!(f2, found, "findings differ for {cut:?}");
    }
    (stats, found)
}

/// Runs `sc` and checks the findings are exactly `want` (direction, kind), in any order.
fn expect(sc: &Script, want: &[(Direction, Kind)]) -> EngineStats {
    let (stats, found) = run(sc);
    let mut got: Vec<(Direction, Kind)> = found.iter().map(|f| (f.0, f.1)).collect();
    let mut want = want.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want, "findings: {found:?}");
    for (d, k) in &want {
        assert!(stats.violation_count_dir(*d, *k) >= 1);
    }
    assert_eq!(stats.violations_total(), want.len() as u64);
    stats
}

fn clean(sc: &Script) -> EngineStats {
    expect(sc, &[])
}

// ----- handshake kinds ------------------------------------------------------------------

#[test]
fn clean_upgrade_counts_ok() {
    let mut sc = Script::plain();
    sc.c(cf(TEXT, "hi")).s(sf(TEXT, "hello"));
    let st = clean(&sc);
    assert_eq!(st.upgrades_ok, 1);
    assert_eq!(st.connections, 1);
    assert_eq!((st.frames[0].text, st.frames[1].text), (1, 1));
}

#[test]
fn handshake_rejected() {
    let mut sc = Script::handshake();
    sc.data(C, request("")).data(S, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec());
    sc.c(cf(TEXT, "ignored"));
    let st = expect(&sc, &[(S, Kind::HandshakeRejected)]);
    assert_eq!(st.upgrades_ok, 0);
}

#[test]
fn interim_response_is_skipped() {
    let mut sc = Script::handshake();
    sc.data(C, request(""));
    let mut resp = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
    resp.extend(response(""));
    sc.data(S, resp).s(sf(TEXT, "ok"));
    assert_eq!(clean(&sc).upgrades_ok, 1);
}

#[test]
fn upgrade_missing() {
    let mut sc = Script::handshake();
    sc.data(
        C,
        format!("GET /chat HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .into_bytes(),
    );
    sc.data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    sc.data(C, b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    expect(&sc, &[(C, Kind::UpgradeMissing)]);
}

/// A load-balancer health check: a plain request, no WebSocket headers.
const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: backend\r\nUser-Agent: lb/1.0\r\n\r\n";

fn http_requests(st: &EngineStats) -> u64 {
    st.http_requests.get(&key().server.port()).copied().unwrap_or(0)
}

#[test]
fn health_checks_are_counted_not_reported() {
    let mut sc = Script::handshake();
    sc.data(C, HEALTH.to_vec()).data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let st = clean(&sc);
    assert_eq!(http_requests(&st), 1);
    // Several on one keep-alive connection, bodies by length and chunked, a HEAD.
    let mut sc = Script::handshake();
    for _ in 0..2 {
        sc.data(C, HEALTH.to_vec()).data(
            S,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nGET\r\n2;x=y\r\n \x88\r\n0\r\n\r\n".to_vec(),
        );
        sc.data(C, b"HEAD /health HTTP/1.1\r\nHost: b\r\n\r\n".to_vec())
            .data(S, b"HTTP/1.1 204 No Content\r\n\r\n".to_vec());
        sc.data(C, b"POST /ping HTTP/1.1\r\nContent-Length: 6\r\n\r\nGET /x".to_vec())
            .data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\x81\x01a".to_vec());
    }
    let st = clean(&sc);
    assert_eq!(http_requests(&st), 6);
    assert_eq!(st.frames[0].total() + st.frames[1].total(), 0);
}

/// A plain exchange, then the upgrade on the same connection: the session is analysed.
#[test]
fn upgrade_after_plain_requests_on_keep_alive() {
    let mut sc = Script::handshake();
    sc.data(C, b"GET /index HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
        .data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello".to_vec());
    sc.data(C, b"POST /form HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".to_vec())
        .data(S, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec());
    sc.data(C, request("")).data(S, response(""));
    sc.c(cf(TEXT, "hi")).s(sf(TEXT, "hello")).s(sf(PING, vec![0u8; 126]));
    let st = expect(&sc, &[(S, Kind::ControlTooLong)]);
    assert_eq!((st.upgrades_ok, http_requests(&st)), (1, 2));
    assert_eq!((st.frames[0].text, st.frames[1].text, st.frames[1].ping), (1, 1, 1));
}

/// 401 then an authenticated retry (and a 403 then a retry): one rejection, one session.
#[test]
fn rejected_upgrade_then_retry_on_same_connection() {
    for reject in [
        &b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ws\"\r\nContent-Length: 12\r\n\r\nUnauthorized"
            [..],
        &b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nForbidden\r\n0\r\n\r\n"[..],
    ] {
        let mut sc = Script::handshake();
        sc.data(C, request("")).data(S, reject.to_vec());
        sc.data(C, request("Authorization: Basic dXNlcjpwYXNz\r\n")).data(S, response(""));
        sc.c(cf(TEXT, "hi")).c(cf(BIN, vec![7u8; 300])).s(sf(BIN, vec![9u8; 500]));
        sc.s(sf(CLOSE, close_body(1005, b"")));
        // A header-only capture starts walking at the retry's 101 and skips binary payload.
        let skips = header_only_skips(&sc).expect("a 101 starts a server delivery");
        assert_eq!(skips.iter().map(Vec::len).sum::<usize>(), 2);
        let st = expect(&sc, &[(S, Kind::HandshakeRejected), (S, Kind::InvalidCloseCode)]);
        assert_eq!((st.upgrades_ok, st.frames[0].text, st.frames[1].close), (1, 1, 1));
        assert_eq!((st.frames[0].binary, st.frames[1].binary), (1, 1));
        assert_eq!(http_requests(&st), 0);
    }
}

/// Only a request showing WebSocket intent without the upgrade tokens is upgrade_missing.
#[test]
fn upgrade_missing_needs_websocket_intent() {
    let mut sc = Script::handshake();
    sc.data(C, b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n".to_vec());
    sc.data(S, b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n".to_vec());
    let st = expect(&sc, &[(C, Kind::UpgradeMissing)]);
    assert_eq!(http_requests(&st), 0);
    // Another protocol's upgrade (h2c) is not WebSocket and not a violation.
    let mut sc = Script::handshake();
    sc.data(C, b"GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n".to_vec());
    sc.data(
        S,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x00\x00\x12\x04".to_vec(),
    );
    sc.data(C, vec![0x81, 0x05, 1, 2]);
    clean(&sc);
}

#[test]
fn frame_before_upgrade() {
    let mut sc = Script::handshake();
    let mut early = request("");
    early.extend(cf(TEXT, "too early").encode());
    sc.data(C, early).data(S, response(""));
    sc.c(cf(TEXT, "in time")).s(sf(TEXT, "ok"));
    let st = expect(&sc, &[(C, Kind::FrameBeforeUpgrade)]);
    assert_eq!((st.frames[0].text, st.upgrades_ok), (2, 1));
    // The server never answers (it drops the junk): still reported when the connection ends.
    let mut sc = Script::handshake();
    let mut early = request("");
    early.extend(cf(PING, "early").encode());
    sc.data(C, early);
    expect(&sc, &[(C, Kind::FrameBeforeUpgrade)]);
    // Frames that come after the server began its answer were not sent early, even in
    // the delivery that also completes the request.
    let mut sc = Script::handshake();
    let mut late = request("");
    late.extend(cf(TEXT, "after the 101 was sent").encode());
    sc.data(S, response("")).data(C, late).c(cf(TEXT, "later"));
    let st = clean(&sc);
    assert_eq!((st.frames[0].text, st.upgrades_ok), (2, 1));
    let mut sc = Script::handshake();
    let mut early = request("");
    early.extend(cf(TEXT, "early").encode());
    let resp = response("");
    let (head, tail) = resp.split_at(10);
    sc.data(C, early).data(S, head.to_vec()).c(cf(TEXT, "late")).data(S, tail.to_vec());
    let st = expect(&sc, &[(C, Kind::FrameBeforeUpgrade)]);
    assert_eq!(st.frames[0].text, 2);
}

/// A browser-sized head (20 KB cookie) is read; beyond 32 KiB or 256 fields it is
/// reported, never silently dropped.
#[test]
fn handshake_head_limits() {
    let cookie = format!("Cookie: session={}\r\n", "a".repeat(20_000));
    let mut sc = Script::upgraded(&cookie, "");
    sc.c(cf(TEXT, "hi"));
    assert_eq!(clean(&sc).upgrades_ok, 1);
    let mut sc = Script::handshake();
    sc.data(C, request(&format!("Cookie: session={}\r\n", "a".repeat(40_000)))).data(S, response(""));
    expect(&sc, &[(C, Kind::HandshakeTooLarge)]);
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut sc = Script::handshake();
    sc.data(C, request(&many)).data(S, response(""));
    expect(&sc, &[(C, Kind::HandshakeTooLarge)]);
    let many: String = (0..240).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut sc = Script::upgraded(&many, "");
    sc.c(cf(TEXT, "hi"));
    assert_eq!(clean(&sc).upgrades_ok, 1);
}

#[test]
fn response_body_until_close_ends_http_silently() {
    let mut sc = Script::handshake();
    sc.data(C, HEALTH.to_vec())
        .data(S, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nGET / HTTP/1.1 \x81\x00".to_vec());
    let st = clean(&sc);
    assert_eq!(http_requests(&st), 1);
}

#[test]
fn accept_mismatch() {
    let mut sc = Script::handshake();
    sc.data(C, request(""));
    sc.data(
        S,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_vec(),
    );
    sc.s(sf(TEXT, "frames still parsed"));
    let st = expect(&sc, &[(S, Kind::AcceptMismatch)]);
    assert_eq!(st.frames[1].text, 1);
}

#[test]
fn bad_handshake_request_version() {
    let mut sc = Script::handshake();
    let req = String::from_utf8(request("")).unwrap().replace("Version: 13", "Version: 8");
    sc.data(C, req.into_bytes());
    sc.data(S, b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec());
    expect(&sc, &[(C, Kind::BadHandshake), (S, Kind::HandshakeRejected)]);
}

#[test]
fn bad_handshake_request_key() {
    let mut sc = Script::handshake();
    let req = String::from_utf8(request("")).unwrap().replace(KEY, "c2hvcnQ=");
    sc.data(C, req.into_bytes());
    // The server answers with the accept for the key it got: only the key is at fault.
    sc.data(
        S,
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept("c2hvcnQ=")
        )
        .into_bytes(),
    );
    expect(&sc, &[(C, Kind::BadHandshake)]);
}

#[test]
fn bad_handshake_101_without_upgrade_headers() {
    let mut sc = Script::handshake();
    sc.data(C, request(""));
    sc.data(
        S,
        format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {}\r\n\r\n", accept(KEY)).into_bytes(),
    );
    sc.s(sf(BIN, vec![1, 2, 3]));
    expect(&sc, &[(S, Kind::BadHandshake)]);
}

#[test]
fn extension_not_offered() {
    let mut sc = Script::upgraded("", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    // The server compresses as it announced: RSV1 is then legal.
    let mut z = Compress::new(Compression::default(), false);
    sc.s(sf(TEXT, deflate(&mut z, b"hello")).rsv(4));
    expect(&sc, &[(S, Kind::ExtensionNotOffered)]);
}

#[test]
fn subprotocol_not_offered() {
    let sc = Script::upgraded("Sec-WebSocket-Protocol: chat, superchat\r\n", "Sec-WebSocket-Protocol: mqtt\r\n");
    expect(&sc, &[(S, Kind::ExtensionNotOffered)]);
    let sc = Script::upgraded("Sec-WebSocket-Protocol: chat, superchat\r\n", "Sec-WebSocket-Protocol: superchat\r\n");
    clean(&sc);
}

#[test]
fn handshake_kinds_once_per_connection() {
    let mut sc = Script::handshake();
    sc.data(C, request(""));
    sc.data(S, b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: x-a, x-b\r\n\r\n".to_vec());
    // Missing headers (bad), missing accept (mismatch), two extensions not offered (once).
    expect(&sc, &[(S, Kind::BadHandshake), (S, Kind::AcceptMismatch), (S, Kind::ExtensionNotOffered)]);
}

#[test]
fn tls_on_plain_port() {
    let mut sc = Script::handshake();
    sc.data(C, vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]);
    sc.data(S, vec![0x16, 0x03, 0x03, 0x00, 0x7A]);
    sc.data(C, vec![0x17, 0x03, 0x03, 0, 5, 1, 2, 3, 4, 5]);
    let (st, found) = run(&sc);
    assert_eq!(found, vec![(C, Kind::TlsOnPlainPort, 0)]);
    assert_eq!(st.violations_total(), 1);
}

#[test]
fn garbage_is_not_websocket_and_silent() {
    let mut sc = Script::handshake();
    sc.data(C, b"\x00\x01\x02 not http at all\r\n\r\n".to_vec());
    sc.data(S, vec![0x88, 0x01, 0x00]);
    clean(&sc);
}

// ----- frame kinds ----------------------------------------------------------------------

#[test]
fn rsv_without_extension() {
    let mut sc = Script::plain();
    sc.c(cf(TEXT, "x").rsv(4));
    expect(&sc, &[(C, Kind::RsvWithoutExtension)]);
    let mut sc = Script::deflate();
    sc.s(sf(BIN, vec![1]).rsv(2));
    expect(&sc, &[(S, Kind::RsvWithoutExtension)]);
}

/// Without permessage-deflate RSV1 is rsv_without_extension on every frame; rsv1_invalid
/// is only where deflate is in force.
#[test]
fn rsv1_without_deflate_on_control_and_continuation() {
    let mut sc = Script::plain();
    sc.c(cf(PING, "p").rsv(4))
        .s(sf(TEXT, "a").fin(false))
        .s(sf(CONT, "b").rsv(4))
        .s(sf(CLOSE, close_body(1000, b"")).rsv(4));
    expect(&sc, &[(C, Kind::RsvWithoutExtension), (S, Kind::RsvWithoutExtension), (S, Kind::RsvWithoutExtension)]);
    let mut sc = Script::plain();
    sc.c(cf(PING, "p").rsv(1)).s(sf(PONG, "q").rsv(2));
    expect(&sc, &[(C, Kind::RsvWithoutExtension), (S, Kind::RsvWithoutExtension)]);
}

#[test]
fn duplicated_or_malformed_accept_is_bad_handshake() {
    for accept in [format!("{0}\r\nSec-WebSocket-Accept: {0}", accept(KEY)), "not-base64!".to_owned()] {
        let mut sc = Script::handshake();
        sc.data(C, request(""));
        sc.data(
            S,
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
                .into_bytes(),
        );
        sc.s(sf(TEXT, "still parsed"));
        let st = expect(&sc, &[(S, Kind::BadHandshake)]);
        assert_eq!(st.frames[1].text, 1);
    }
}

#[test]
fn oversized_message_fragmented() {
    let mut sc = Script::plain();
    sc.cfg.max_message_size = 1000;
    sc.c(cf(BIN, vec![1u8; 600]).fin(false))
        .c(cf(CONT, vec![2u8; 300]).fin(false))
        .c(cf(CONT, vec![3u8; 200]).fin(false));
    sc.c(cf(CONT, vec![4u8; 200])).c(cf(TEXT, vec![b'a'; 900]));
    // One frame over the frame limit is oversized_frame only.
    sc.cfg.max_frame_size = 2000;
    sc.s(sf(BIN, vec![0u8; 2500]).fin(false)).s(sf(CONT, vec![0u8; 10]));
    let st = expect(&sc, &[(C, Kind::OversizedMessage), (S, Kind::OversizedFrame)]);
    assert_eq!(st.frames[0].continuation, 3);
}

/// Corrupt DEFLATE data is invalid_compressed_data, binary messages too (once per
/// message); the frames stay in sync and later messages are checked again when the
/// window resets with each message.
#[test]
fn invalid_compressed_data() {
    let mut sc = Script::deflate();
    sc.s(sf(BIN, vec![0xFF, 0xFF, 0xFF, 0xFF]).rsv(4)).s(sf(TEXT, "plain text is fine"));
    expect(&sc, &[(S, Kind::InvalidCompressedData)]);
    let mut sc = Script::upgraded(
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n",
    );
    let mut z = Compress::new(Compression::default(), false);
    sc.c(cf(BIN, vec![0xFF, 0x00, 0x12]).fin(false).rsv(4)).c(cf(CONT, vec![0xFF; 40]));
    sc.c(cf(TEXT, deflate(&mut z, b"fresh window: ok")).rsv(4));
    let st = expect(&sc, &[(C, Kind::InvalidCompressedData)]);
    assert_eq!((st.frames[0].binary, st.frames[0].text), (1, 1));
}

/// A message that inflates beyond max_message_size is oversized_message; inflating stops
/// there (counted), and the frames stay in sync.
#[test]
fn inflate_budget_per_message_and_per_second() {
    let mut z = Compress::new(Compression::default(), false);
    let bomb = deflate(&mut z, &vec![b'a'; 4 << 20]);
    assert!(bomb.len() < 10_000);
    let mut sc = Script::deflate();
    sc.cfg.max_message_size = 1 << 20;
    sc.s(sf(TEXT, bomb.clone()).rsv(4)).s(sf(TEXT, "after")).s(sf(PING, vec![0u8; 126]));
    let st = expect(&sc, &[(S, Kind::OversizedMessage), (S, Kind::ControlTooLong)]);
    assert_eq!((st.inflate_skipped, st.frames[1].text), (1, 2));
    // The engine-wide rate: beyond it a message is skipped, not reported.
    let mut sc = Script::deflate();
    sc.cfg.max_inflate_rate = 1 << 20;
    let mut z = Compress::new(Compression::default(), false);
    sc.s(sf(TEXT, deflate(&mut z, &vec![b'b'; 2 << 20])).rsv(4)).s(sf(TEXT, "after"));
    let st = clean(&sc);
    assert_eq!(st.inflate_skipped, 1);
}

#[test]
fn rsv1_invalid() {
    let mut z = Compress::new(Compression::default(), false);
    let body = deflate(&mut z, b"hello hello hello");
    let (a, b) = body.split_at(3);
    let mut sc = Script::deflate();
    sc.s(sf(TEXT, a.to_vec()).fin(false).rsv(4)).s(sf(CONT, b.to_vec()).rsv(4));
    expect(&sc, &[(S, Kind::Rsv1Invalid)]);
    let mut sc = Script::deflate();
    sc.c(cf(PING, "p").rsv(4));
    expect(&sc, &[(C, Kind::Rsv1Invalid)]);
}

#[test]
fn reserved_opcode() {
    let mut sc = Script::plain();
    sc.s(sf(3, "x")).s(sf(TEXT, "after"));
    let st = expect(&sc, &[(S, Kind::ReservedOpcode)]);
    assert_eq!((st.frames[1].reserved, st.frames[1].text), (1, 1));
    let mut sc = Script::plain();
    sc.c(cf(0xB, ""));
    expect(&sc, &[(C, Kind::ReservedOpcode)]);
}

#[test]
fn unmasked_client_frame() {
    let mut sc = Script::plain();
    sc.c(Frame::new(TEXT, "no mask")).c(cf(TEXT, "ok"));
    expect(&sc, &[(C, Kind::UnmaskedClientFrame)]);
}

#[test]
fn masked_server_frame() {
    let mut sc = Script::plain();
    sc.s(sf(BIN, vec![9; 10]).masked());
    expect(&sc, &[(S, Kind::MaskedServerFrame)]);
}

#[test]
fn control_too_long() {
    let mut sc = Script::plain();
    sc.c(cf(PING, vec![7u8; 126]));
    expect(&sc, &[(C, Kind::ControlTooLong)]);
}

#[test]
fn control_fragmented() {
    let mut sc = Script::plain();
    sc.s(sf(PONG, "x").fin(false));
    expect(&sc, &[(S, Kind::ControlFragmented)]);
}

#[test]
fn orphan_continuation() {
    let mut sc = Script::plain();
    sc.c(cf(CONT, "lost").fin(false)).c(cf(CONT, "rest")).c(cf(TEXT, "fine"));
    expect(&sc, &[(C, Kind::OrphanContinuation)]);
}

#[test]
fn interleaved_data_frame() {
    let mut sc = Script::plain();
    sc.s(sf(TEXT, "part").fin(false)).s(sf(BIN, vec![1, 2]));
    expect(&sc, &[(S, Kind::InterleavedDataFrame)]);
}

#[test]
fn non_minimal_length() {
    let mut sc = Script::plain();
    sc.s(sf(BIN, vec![0; 5]).form(Len::Ext16));
    expect(&sc, &[(S, Kind::NonMinimalLength)]);
    let mut sc = Script::plain();
    sc.c(cf(BIN, vec![0; 1000]).form(Len::Ext64)).c(cf(TEXT, "still in sync"));
    expect(&sc, &[(C, Kind::NonMinimalLength)]);
}

#[test]
fn length_msb_set() {
    let mut sc = Script::plain();
    sc.s(sf(BIN, vec![]).claim(1 << 63)).s(sf(TEXT, "unsynced now"));
    let st = expect(&sc, &[(S, Kind::LengthMsbSet)]);
    assert_eq!(st.desyncs, 1);
}

#[test]
fn oversized_frame() {
    let mut sc = Script::plain();
    sc.cfg.max_frame_size = 1000;
    sc.c(cf(BIN, vec![1; 1000])).c(cf(BIN, vec![1; 1001])).c(cf(TEXT, "next"));
    let st = expect(&sc, &[(C, Kind::OversizedFrame)]);
    assert_eq!(st.frames[0].binary, 2);
}

// ----- payload kinds --------------------------------------------------------------------

#[test]
fn invalid_utf8_text() {
    let mut sc = Script::plain();
    sc.c(cf(TEXT, vec![b'a', 0xFF, b'b']));
    expect(&sc, &[(C, Kind::InvalidUtf8Text)]);
    // Truncated at the end of the message, split over fragments.
    let mut sc = Script::plain();
    sc.s(sf(TEXT, "ok €".as_bytes()[..4].to_vec()).fin(false)).s(sf(CONT, "€".as_bytes()[..2].to_vec()));
    expect(&sc, &[(S, Kind::InvalidUtf8Text)]);
    // Once per message even with several bad fragments.
    let mut sc = Script::plain();
    sc.c(cf(TEXT, vec![0xFF]).fin(false)).c(cf(CONT, vec![0xFE]).fin(false)).c(cf(CONT, vec![0xC0]));
    sc.c(cf(TEXT, "next message fine"));
    let (_, found) = run(&sc);
    assert_eq!(found.len(), 1);
    // The finding points at the message's first frame.
    let first = request("").len() as u64;
    assert_eq!(found[0], (C, Kind::InvalidUtf8Text, first));
}

#[test]
fn invalid_utf8_in_compressed_text() {
    let mut z = Compress::new(Compression::default(), false);
    let mut sc = Script::deflate();
    sc.s(sf(TEXT, deflate(&mut z, "fine ✓".as_bytes())).rsv(4));
    sc.s(sf(TEXT, deflate(&mut z, &[b'x', 0xC3, 0x28])).rsv(4));
    sc.s(sf(TEXT, deflate(&mut z, "fine again ✓ fine".as_bytes())).rsv(4));
    expect(&sc, &[(S, Kind::InvalidUtf8Text)]);
}

#[test]
fn invalid_close_payload() {
    let mut sc = Script::plain();
    sc.c(cf(CLOSE, vec![3]));
    expect(&sc, &[(C, Kind::InvalidClosePayload)]);
}

#[test]
fn invalid_close_code() {
    for code in [1005u16, 999, 1004, 1006, 1015, 2999, 5000] {
        let mut sc = Script::plain();
        sc.s(sf(CLOSE, close_body(code, b"")));
        let st = expect(&sc, &[(S, Kind::InvalidCloseCode)]);
        assert_eq!(st.close_codes.get(&code), Some(&1));
    }
}

#[test]
fn invalid_close_reason() {
    let mut sc = Script::plain();
    sc.c(cf(CLOSE, close_body(1000, &[b'b', 0xFF])));
    expect(&sc, &[(C, Kind::InvalidCloseReason)]);
}

#[test]
fn data_after_close() {
    let mut sc = Script::plain();
    sc.c(cf(CLOSE, close_body(1000, b""))).c(cf(TEXT, "late")).c(cf(PING, ""));
    sc.s(sf(TEXT, "server may still send")).s(sf(CLOSE, close_body(1000, b"")));
    let st = expect(&sc, &[(C, Kind::DataAfterClose)]);
    assert_eq!(st.close_codes.get(&1000), Some(&2));
}

// ----- stream kinds ---------------------------------------------------------------------

#[test]
fn http_in_stream() {
    let mut sc = Script::plain();
    sc.c(cf(TEXT, "hi"));
    sc.data(C, b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec());
    sc.data(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec());
    let (st, found) = run(&sc);
    let at = (request("").len() + cf(TEXT, "hi").encode().len()) as u64;
    assert_eq!(found, vec![(C, Kind::HttpInStream, at)]);
    assert_eq!(st.desyncs, 2);
    assert_eq!(st.violations_total(), 1);
}

// ----- legal look-alikes ------------------------------------------------------------------

#[test]
fn ping_between_fragments_and_unsolicited_pong() {
    let mut sc = Script::plain();
    sc.c(cf(TEXT, "frag ").fin(false)).c(cf(PING, "p")).c(cf(CONT, "mid ").fin(false)).c(cf(PONG, ""));
    sc.c(cf(CONT, "end"));
    sc.s(sf(PONG, "unsolicited")).s(sf(BIN, vec![1]).fin(false)).s(sf(PING, "")).s(sf(CONT, vec![2]));
    let st = clean(&sc);
    assert_eq!(st.frames[0], FrameCounts { text: 1, continuation: 2, ping: 1, pong: 1, ..FrameCounts::default() });
    assert_eq!(st.frames[1], FrameCounts { binary: 1, continuation: 1, ping: 1, pong: 1, ..FrameCounts::default() });
}

#[test]
fn zero_length_frames() {
    let mut sc = Script::plain();
    sc.c(cf(TEXT, "")).c(cf(BIN, "")).c(cf(PING, "")).c(cf(TEXT, "").fin(false)).c(cf(CONT, ""));
    sc.s(sf(TEXT, "")).s(sf(PONG, "")).s(sf(CLOSE, "")).data(C, cf(CLOSE, "").encode());
    let st = clean(&sc);
    assert_eq!(st.frames[0].total(), 6);
    assert_eq!(st.frames[1].total(), 3);
}

#[test]
fn boundary_lengths_minimally_encoded() {
    let mut sc = Script::plain();
    for n in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
        sc.c(cf(BIN, vec![0xA5; n])).s(sf(BIN, vec![0x5A; n]));
        sc.s(sf(TEXT, "é".repeat(n / 2).into_bytes()));
    }
    let st = clean(&sc);
    assert_eq!(st.frames[0].binary, 8);
    assert_eq!(st.frames[1].text, 8);
}

#[test]
fn rsv1_on_first_frame_with_deflate() {
    let mut zc = Compress::new(Compression::default(), false);
    let mut zs = Compress::new(Compression::default(), false);
    let mut sc = Script::deflate();
    for i in 0..5 {
        let msg = format!("message {i}: ünïcödé text repeated repeated repeated");
        let z = deflate(&mut zc, msg.as_bytes());
        let (a, b) = z.split_at(z.len() / 2);
        // Compressed, fragmented: RSV1 only on the first frame.
        sc.c(cf(TEXT, a.to_vec()).fin(false).rsv(4)).c(cf(CONT, b.to_vec()));
        sc.s(sf(TEXT, deflate(&mut zs, msg.as_bytes())).rsv(4));
        // Uncompressed messages are allowed too.
        sc.s(sf(TEXT, msg.clone()));
        sc.s(sf(BIN, deflate(&mut zs, &[0u8, 1, 2, 3, 255])).rsv(4));
    }
    let st = clean(&sc);
    assert_eq!(st.upgrades_ok, 1);
    assert_eq!(st.frames[1].text, 10);
}

#[test]
fn deflate_no_context_takeover() {
    let mut sc = Script::upgraded(
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n",
    );
    for i in 0..4 {
        let mut z = Compress::new(Compression::default(), false);
        let msg = format!("fresh context {i} ✓");
        sc.s(sf(TEXT, deflate(&mut z, msg.as_bytes())).rsv(4));
        let mut z = Compress::new(Compression::default(), false);
        sc.c(cf(TEXT, deflate(&mut z, msg.as_bytes())).rsv(4));
    }
    let mut z = Compress::new(Compression::default(), false);
    sc.c(cf(TEXT, deflate(&mut z, &[0xE2, 0x82])).rsv(4));
    expect(&sc, &[(C, Kind::InvalidUtf8Text)]);
}

#[test]
fn close_codes_legal() {
    let mut sc = Script::plain();
    sc.c(cf(CLOSE, close_body(1000, "bye ✓ — à bientôt".as_bytes())));
    sc.s(sf(CLOSE, close_body(4000, b"app")));
    let st = clean(&sc);
    assert_eq!(st.close_codes.len(), 2);
    for code in [1001u16, 1003, 1007, 1011, 1014, 3000, 4999] {
        let mut sc = Script::plain();
        sc.s(sf(CLOSE, close_body(code, b"")));
        clean(&sc);
    }
}

#[test]
fn multibyte_text_split_across_fragments_and_deliveries() {
    let text = "añ€𝄞".repeat(20);
    let b = text.as_bytes();
    let mut sc = Script::plain();
    // Cut inside multi-byte characters: 𝄞 is 4 bytes.
    sc.c(cf(TEXT, b[..2].to_vec()).fin(false)).c(cf(CONT, b[2..7].to_vec()).fin(false));
    sc.c(cf(CONT, b[7..].to_vec()));
    sc.s(sf(TEXT, b[..6].to_vec()).fin(false)).s(sf(PING, "")).s(sf(CONT, b[6..].to_vec()));
    clean(&sc);
}

#[test]
fn connection_view_states() {
    let mut e = Engine::default();
    let id = FlowId(1);
    e.open(id, &key(), Opening::Handshake, 5);
    assert_eq!(e.connection(id).unwrap().state, ConnState::Handshake);
    let req = request("");
    e.data(id, C, 0, &req, 6);
    let resp = response("Sec-WebSocket-Protocol: \r\n");
    e.data(id, S, 0, &resp, 7);
    assert_eq!(e.connection(id).unwrap().state, ConnState::Open);
    let close = cf(CLOSE, close_body(1001, b"")).encode();
    e.data(id, C, req.len() as u64, &close, 8);
    let v = e.connection(id).unwrap();
    assert_eq!((v.state, v.last_close_code, v.frames), (ConnState::Closing, Some(1001), [1, 0]));
    let close = sf(CLOSE, close_body(1000, b"")).encode();
    e.data(id, S, resp.len() as u64, &close, 9);
    assert_eq!(e.connection(id).unwrap().state, ConnState::Closed);
    assert_eq!(e.connections().count(), 1);
    e.close(id, Closing::Fin, 10);
    assert_eq!(e.connections().count(), 0);
    assert_eq!(e.stats().frames[0].close, 1);
}

#[test]
fn finding_carries_header_bytes() {
    let mut e = Engine::default();
    let id = FlowId(3);
    e.open(id, &key(), Opening::Handshake, 0);
    let req = request("");
    e.data(id, C, 0, &req, 1);
    e.data(id, S, 0, &response(""), 2);
    e.data(id, C, req.len() as u64, &Frame::new(TEXT, "x").encode(), 3);
    let f: Vec<Finding> = e.drain_findings().filter(|f| f.kind.is_violation()).collect();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].kind, f[0].dir, f[0].offset, f[0].header.hex().as_str()),
        (Kind::UnmaskedClientFrame, C, req.len() as u64, "8101")
    );
    assert_eq!(f[0].key, key());
    assert_eq!(f[0].ts_ns, 3);
}

// ----- delivery splits ------------------------------------------------------------------

/// A long mixed conversation, violations included, is reported identically however it
/// is cut (`run` checks whole / byte-by-byte / random cuts agree).
#[test]
fn every_split_gives_identical_results() {
    let mut zc = Compress::new(Compression::default(), false);
    let mut sc = Script::deflate();
    for i in 0..30u32 {
        let s = format!("msg {i} ✓ {}", "x".repeat(i as usize * 37));
        sc.c(cf(TEXT, deflate(&mut zc, s.as_bytes())).rsv(4));
        sc.s(sf(BIN, vec![i as u8; (i * 811) as usize % 3000]));
        if i % 7 == 3 {
            sc.s(sf(3, "bad"));
            sc.c(cf(TEXT, vec![0xFF, 0xFE]));
            sc.c(cf(PING, vec![0; 130]));
        }
    }
    sc.c(cf(CLOSE, close_body(1000, b""))).s(sf(CLOSE, close_body(1000, b"")));
    let (st, found) = run(&sc);
    assert_eq!(st.violation_count(Kind::ReservedOpcode), 4);
    assert_eq!(st.violation_count(Kind::InvalidUtf8Text), 4);
    assert_eq!(st.violation_count(Kind::ControlTooLong), 4);
    assert_eq!(found.len(), 12);
}

// ----- gaps and resync ----------------------------------------------------------------------

/// Many ordinary frames, alternating kinds and sizes.
fn traffic(sc: &mut Script, dir: Direction, n: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    for i in 0..n {
        let r = rng.next();
        let len = match r % 5 {
            0 => (r >> 8) as usize % 10,
            1 => (r >> 8) as usize % 200,
            2 => 126 + (r >> 8) as usize % 2000,
            _ => (r >> 8) as usize % 60,
        };
        let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let f = if i % 9 == 4 {
            Frame::new(PING, payload.get(..len.min(100)).unwrap_or(&[]).to_vec())
        } else if i % 3 == 0 {
            Frame::new(TEXT, "ü".repeat(len / 2).into_bytes())
        } else {
            Frame::new(BIN, payload)
        };
        let f = if dir == C { f.masked() } else { f };
        sc.data(dir, f.encode());
    }
}

#[test]
fn gap_inside_payload_stays_in_sync() {
    let mut sc = Script::plain();
    let big = cf(BIN, vec![3u8; 1000]).encode();
    sc.data(C, big[..300].to_vec()).gap(C, 500).data(C, big[800..].to_vec());
    // Text whose invalid byte falls in a gap is not reported, nor is the message.
    let t =
        sf(TEXT, "aaaa\u{FFFF}bbbb".as_bytes().iter().map(|&b| if b == 0xEF { 0xFF } else { b }).collect::<Vec<u8>>())
            .encode();
    sc.data(S, t[..4].to_vec()).gap(S, 4).data(S, t[8..].to_vec());
    // A gap ending exactly at the end of a payload keeps sync too.
    let b2 = sf(BIN, vec![1u8; 50]).encode();
    sc.data(S, b2[..10].to_vec()).gap(S, 42);
    traffic(&mut sc, C, 20, 5);
    traffic(&mut sc, S, 20, 6);
    sc.c(Frame::new(TEXT, "unmasked: still detected"));
    let st = expect(&sc, &[(C, Kind::UnmaskedClientFrame)]);
    assert_eq!((st.desyncs, st.resyncs), (0, 0));
    assert_eq!(st.frames[0].total(), 22);
    assert_eq!(st.frames[1].total(), 22);
}

#[test]
fn gap_over_header_desyncs_then_resyncs() {
    for dir in [C, S] {
        let mut sc = Script::plain();
        traffic(&mut sc, dir, 10, 11);
        let f = if dir == C { cf(BIN, vec![9u8; 300]) } else { sf(BIN, vec![9u8; 300]) };
        let f = f.encode();
        // Lose the end of one frame and the header of the next.
        sc.data(dir, f[..100].to_vec()).gap(dir, f.len() as u64 - 100 + 3);
        let g = if dir == C { cf(BIN, vec![1u8; 40]) } else { sf(BIN, vec![1u8; 40]) }.encode();
        sc.data(dir, g[3..].to_vec());
        traffic(&mut sc, dir, 60, 12);
        let (st, found) = run(&sc);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!((st.desyncs, st.resyncs), (1, 1), "{dir:?}");
        let counted = st.frames[dir.index()].total();
        assert!((10 + 40..=10 + 61).contains(&counted), "{counted}");
    }
}

#[test]
fn violations_reported_again_after_probation() {
    let mut sc = Script::plain();
    sc.gap(C, 7);
    traffic(&mut sc, C, 40, 3);
    sc.c(Frame::new(TEXT, "unmasked"));
    let st = expect(&sc, &[(C, Kind::UnmaskedClientFrame)]);
    assert_eq!((st.desyncs, st.resyncs), (1, 1));
}

#[test]
fn mid_stream_resyncs_without_findings() {
    let mut full = Script::mid();
    traffic(&mut full, S, 80, 21);
    traffic(&mut full, C, 80, 22);
    // Start every few bytes into the server stream.
    let Ev::Data(_, first) = &full.evs[0] else { unreachable!() };
    for cut in [0usize, 1, 2, 5, 9] {
        let mut sc = full.clone();
        sc.evs[0] = Ev::Data(S, first[cut.min(first.len())..].to_vec());
        let (st, found) = run(&sc);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(st.resyncs, 2, "cut {cut}");
        assert_eq!(st.desyncs, 0);
    }
}

#[test]
fn mid_stream_does_not_report_rsv_or_state_kinds() {
    let mut sc = Script::mid();
    // Starts inside a fragmented message: continuation first, RSV1 (maybe deflate).
    sc.s(sf(CONT, "tail of message").fin(false)).s(sf(CONT, "end"));
    for i in 0..30 {
        sc.s(sf(TEXT, format!("compressed? {i}")).rsv(4));
    }
    let st = clean(&sc);
    assert_eq!(st.resyncs, 1);
    assert_eq!(st.frames[1].total(), 32);
}

#[test]
fn large_frames_resync_beyond_window() {
    let mut sc = Script::mid();
    let mut rng = Rng(99);
    for _ in 0..12 {
        let payload: Vec<u8> = (0..150_000).map(|_| rng.next() as u8).collect();
        sc.s(sf(BIN, payload));
    }
    for _ in 0..20 {
        sc.s(sf(TEXT, "small"));
    }
    let Ev::Data(_, first) = &sc.evs[0] else { unreachable!() };
    sc.evs[0] = Ev::Data(S, first[5000..].to_vec());
    let (st, found) = run(&sc);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(st.resyncs, 1);
    assert!(st.frames[1].binary >= 5, "{:?}", st.frames[1]);
}

#[test]
fn client_reusing_one_key_never_resyncs_and_stays_silent() {
    let mut sc = Script::mid();
    for i in 0..40u8 {
        sc.c(Frame::new(BIN, vec![i; 20]).mask([1, 2, 3, 4]));
    }
    let st = clean(&sc);
    assert_eq!((st.resyncs, st.frames[0].total()), (0, 0));
}

#[test]
fn handshake_gap_falls_back_to_scanning() {
    let mut sc = Script::handshake();
    let req = request("");
    sc.data(C, req[..20].to_vec()).gap(C, (req.len() - 20) as u64);
    sc.data(S, response(""));
    traffic(&mut sc, C, 30, 8);
    traffic(&mut sc, S, 30, 9);
    let (st, found) = run(&sc);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(st.desyncs, 2);
    assert_eq!(st.resyncs, 2);
}

/// Found by `arbitrary_frames_split_identically`: garbage deflate data may yield some
/// output before the error shows, depending on cuts; it must never be judged.
#[test]
fn corrupt_compressed_text_is_judged_identically() {
    let mut sc = Script::deflate();
    let frames = [(64u8, 225u8, vec![26u8]), (0, 80, vec![25, 64, 128, 160, 83, 2, 230, 140, 41, 0, 0, 0])];
    for (b0, op, payload) in frames {
        let f = Frame::new(op & 0x0F, payload).fin(b0 & 0x80 != 0).rsv((b0 >> 4) & 7);
        sc.c(f.clone());
        sc.s(f);
    }
    let (st, _) = run(&sc);
    assert_eq!(run_cut(&sc, Cut::Random(424)).0, st);
    assert_eq!(st.violation_count(Kind::InvalidUtf8Text), 0);
    assert_eq!(st.violation_count(Kind::UnmaskedClientFrame), 2);
}

// ----- property tests -----------------------------------------------------------------------

/// One message of generated valid traffic.
#[derive(Clone, Debug)]
enum Gen {
    Text(String, usize),
    Binary(Vec<u8>, usize),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn gen_msg() -> impl Strategy<Value = Gen> {
    prop_oneof![
        ("\\PC{0,80}", 1usize..4).prop_map(|(s, n)| Gen::Text(s, n)),
        (prop::collection::vec(any::<u8>(), 0..300), 1usize..4).prop_map(|(b, n)| Gen::Binary(b, n)),
        (prop::sample::select(vec![125usize, 126, 127, 65535, 65536]), 1usize..3)
            .prop_map(|(len, n)| Gen::Binary(vec![0xAB; len], n)),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Gen::Ping),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Gen::Pong),
    ]
}

/// Encodes messages into frames (fragmenting at char-agnostic byte cuts, a ping between
/// fragments), returning the bytes and the expected counts.
fn encode_msgs(msgs: &[Gen], dir: Direction) -> (Vec<u8>, FrameCounts) {
    encode_msgs_with(msgs, dir, None)
}

/// Like [`encode_msgs`], compressing every data message when `z` is given.
fn encode_msgs_with(msgs: &[Gen], dir: Direction, mut z: Option<&mut Compress>) -> (Vec<u8>, FrameCounts) {
    let mut out = Vec::new();
    let mut counts = FrameCounts::default();
    let mk = |op: u8, fin: bool, p: &[u8]| {
        let f = Frame::new(op, p.to_vec()).fin(fin);
        if dir == C { f.masked() } else { f }.encode()
    };
    for m in msgs {
        let (op, bytes, n) = match m {
            Gen::Text(s, n) => (TEXT, s.as_bytes().to_vec(), *n),
            Gen::Binary(b, n) => (BIN, b.clone(), *n),
            Gen::Ping(p) => {
                out.extend(mk(PING, true, p));
                counts.ping += 1;
                continue;
            }
            Gen::Pong(p) => {
                out.extend(mk(PONG, true, p));
                counts.pong += 1;
                continue;
            }
        };
        let (bytes, rsv) = match z.as_deref_mut() {
            Some(z) => (deflate(z, &bytes), 4),
            None => (bytes, 0),
        };
        let step = bytes.len().div_ceil(n.max(1)).max(1);
        let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(step).collect() };
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let f = Frame::new(if i == 0 { op } else { CONT }, c.to_vec()).fin(last).rsv(if i == 0 { rsv } else { 0 });
            out.extend(if dir == C { f.masked() } else { f }.encode());
            if i > 0 {
                counts.continuation += 1;
            } else if op == TEXT {
                counts.text += 1;
            } else {
                counts.binary += 1;
            }
            if !last && i == 0 {
                out.extend(mk(PING, true, b"between"));
                counts.ping += 1;
            }
        }
    }
    (out, counts)
}

/// Feeds `bytes` in pieces of the given sizes (cycled).
fn feed_cut(e: &mut Engine, id: FlowId, dir: Direction, start: u64, bytes: &[u8], cuts: &[usize]) -> u64 {
    let mut off = start;
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts.get(i % cuts.len().max(1)).copied().unwrap_or(rest.len()).clamp(1, rest.len());
        e.data(id, dir, off, &rest[..n], off);
        off += n as u64;
        rest = &rest[n..];
        i += 1;
    }
    off
}

/// Feeds `bytes[from..hi]` in direction `d`, cut by `cuts`, with the gaps of that side
/// (`gaps`: `(server side?, at, len)`, `at` taken modulo the stream's length) reported as
/// gaps instead of bytes; returns the offset reached.
#[allow(clippy::too_many_arguments)]
fn feed_with_gaps(
    e: &mut Engine,
    id: FlowId,
    d: Direction,
    bytes: &[u8],
    from: u64,
    hi: u64,
    gaps: &[(bool, u32, u64)],
    cuts: &[usize],
) -> u64 {
    let mut holes: Vec<(u64, u64)> = gaps
        .iter()
        .filter(|g| g.0 == (d == S))
        .map(|g| (u64::from(g.1) % bytes.len() as u64, g.2))
        .filter(|&(at, _)| at < hi)
        .collect();
    holes.sort();
    let mut off = from;
    for (at, len) in holes {
        if at < off {
            continue;
        }
        off = feed_cut(e, id, d, off, &bytes[off as usize..at as usize], cuts);
        let len = len.min(bytes.len() as u64 - off);
        e.gap(id, d, off, len, Loss::Capture, 0);
        off += len;
    }
    if off < hi {
        off = feed_cut(e, id, d, off, &bytes[off as usize..hi as usize], cuts);
    }
    off
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        // Regressions are kept as plain unit tests below, not in a file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_traffic_round_trips_under_any_segmentation(
        cmsgs in prop::collection::vec(gen_msg(), 0..25),
        smsgs in prop::collection::vec(gen_msg(), 0..25),
        ccuts in prop::collection::vec(1usize..700, 1..20),
        scuts in prop::collection::vec(1usize..700, 1..20),
    ) {
        let (cb, cc) = encode_msgs(&cmsgs, C);
        let (sb, scn) = encode_msgs(&smsgs, S);
        let mut e = Engine::default();
        let id = FlowId(9);
        e.open(id, &key(), Opening::Handshake, 0);
        let co = feed_cut(&mut e, id, C, 0, &request(""), &ccuts);
        let so = feed_cut(&mut e, id, S, 0, &response(""), &scuts);
        feed_cut(&mut e, id, C, co, &cb, &ccuts);
        feed_cut(&mut e, id, S, so, &sb, &scuts);
        e.close(id, Closing::Fin, 1);
        let found: Vec<Finding> = e.drain_findings().filter(|f| f.kind.is_violation()).collect();
        prop_assert!(found.is_empty(), "{:?}", found);
        prop_assert_eq!(e.stats().frames[0], cc);
        prop_assert_eq!(e.stats().frames[1], scn);
        prop_assert_eq!(e.stats().desyncs, 0);
    }

    #[test]
    fn valid_traffic_evicted_anywhere_and_resumed_raises_nothing(
        cmsgs in prop::collection::vec(gen_msg(), 5..30),
        smsgs in prop::collection::vec(gen_msg(), 5..30),
        cstop in any::<u32>(),
        sstop in any::<u32>(),
        cuts in prop::collection::vec(1usize..500, 1..10),
        compress in any::<bool>(),
    ) {
        // A session evicted at any byte of each stream (in a frame or between frames,
        // inside a compressed message or not) and resumed from the next byte on.
        let ext = if compress { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
        let (mut zc, mut zs) = (Compress::new(Compression::fast(), false), Compress::new(Compression::fast(), false));
        let mut cb = request(ext);
        let cstart = cb.len();
        cb.extend(encode_msgs_with(&cmsgs, C, compress.then_some(&mut zc)).0);
        let mut sb = response(ext);
        let sstart = sb.len();
        sb.extend(encode_msgs_with(&smsgs, S, compress.then_some(&mut zs)).0);
        let cstop = cstart + cstop as usize % (cb.len() - cstart + 1);
        let sstop = sstart + sstop as usize % (sb.len() - sstart + 1);
        let mut e = Engine::default();
        e.open(FlowId(1), &key(), Opening::Handshake, 0);
        feed_cut(&mut e, FlowId(1), C, 0, &cb[..cstart], &cuts);
        feed_cut(&mut e, FlowId(1), S, 0, &sb[..sstop], &cuts);
        feed_cut(&mut e, FlowId(1), C, cstart as u64, &cb[cstart..cstop], &cuts);
        e.close(FlowId(1), Closing::Evicted, 1);
        e.open(FlowId(2), &key(), Opening::Resumed, 2);
        feed_cut(&mut e, FlowId(2), S, 0, &sb[sstop..], &cuts);
        feed_cut(&mut e, FlowId(2), C, 0, &cb[cstop..], &cuts);
        e.close(FlowId(2), Closing::Fin, 3);
        let found: Vec<Finding> = e.drain_findings().filter(|f| f.kind.is_violation()).collect();
        prop_assert!(found.is_empty(), "{:?}", found);
        prop_assert_eq!(e.stats().desyncs, 0);
    }

    #[test]
    fn a_known_violation_never_turns_valid_traffic_into_findings(
        cmsgs in prop::collection::vec(gen_msg(), 10..40),
        smsgs in prop::collection::vec(gen_msg(), 10..40),
        gaps in prop::collection::vec((any::<bool>(), any::<u32>(), 1u64..3000), 1..5),
        cuts in prop::collection::vec(1usize..500, 1..10),
    ) {
        // Each side breaks the rules once at the start (a client frame unmasked, a
        // server frame masked), so each direction knows a violation pattern; everything
        // after is valid, with gaps. The two first frames are the only findings.
        let mut cb = request("");
        let cstart = cb.len();
        cb.extend(Frame::new(1, "x").encode());
        cb.extend(encode_msgs(&cmsgs, C).0);
        let mut sb = response("");
        let sstart = sb.len();
        sb.extend(Frame::new(2, "y").masked().encode());
        sb.extend(encode_msgs(&smsgs, S).0);
        let mut e = Engine::default();
        let id = FlowId(13);
        e.open(id, &key(), Opening::Handshake, 0);
        let mut offs = [feed_cut(&mut e, id, C, 0, &cb[..cstart], &cuts), 0];
        offs[1] = feed_cut(&mut e, id, S, 0, &sb[..sstart + 8], &cuts);
        offs[0] = feed_cut(&mut e, id, C, offs[0], &cb[cstart..cstart + 3], &cuts);
        for (d, bytes) in [(C, &cb), (S, &sb)] {
            feed_with_gaps(&mut e, id, d, bytes, offs[d.index()], bytes.len() as u64, &gaps, &cuts);
        }
        e.close(id, Closing::Fin, 1);
        let found: Vec<(Direction, Kind, u64)> = e.drain_findings().filter(|f| f.kind.is_violation()).map(|f| (f.dir, f.kind, f.offset)).collect();
        prop_assert_eq!(
            found,
            vec![(S, Kind::MaskedServerFrame, sstart as u64), (C, Kind::UnmaskedClientFrame, cstart as u64)]
        );
    }

    #[test]
    fn valid_traffic_joined_mid_stream_raises_nothing(
        smsgs in prop::collection::vec(gen_msg(), 20..50),
        cmsgs in prop::collection::vec(gen_msg(), 20..50),
        sskip in 0usize..400,
        cskip in 0usize..400,
        cuts in prop::collection::vec(1usize..300, 1..10),
    ) {
        let (sb, _) = encode_msgs(&smsgs, S);
        let (cb, _) = encode_msgs(&cmsgs, C);
        let mut e = Engine::default();
        let id = FlowId(10);
        e.open(id, &key(), Opening::MidStream, 0);
        feed_cut(&mut e, id, S, 0, &sb[sskip.min(sb.len())..], &cuts);
        feed_cut(&mut e, id, C, 0, &cb[cskip.min(cb.len())..], &cuts);
        e.close(id, Closing::Fin, 1);
        let found: Vec<Finding> = e.drain_findings().filter(|f| f.kind.is_violation()).collect();
        prop_assert!(found.is_empty(), "{:?}", found);
    }

    #[test]
    fn valid_traffic_with_gaps_raises_nothing(
        cmsgs in prop::collection::vec(gen_msg(), 10..40),
        smsgs in prop::collection::vec(gen_msg(), 10..40),
        gaps in prop::collection::vec((any::<bool>(), any::<u32>(), 1u64..3000), 1..4),
        cuts in prop::collection::vec(1usize..500, 1..10),
        compress in any::<bool>(),
    ) {
        let ext = if compress { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
        let mut zc = Compress::new(Compression::fast(), false);
        let mut zs = Compress::new(Compression::fast(), false);
        let mut cb = request(ext);
        cb.extend(encode_msgs_with(&cmsgs, C, compress.then_some(&mut zc)).0);
        let mut sb = response(ext);
        sb.extend(encode_msgs_with(&smsgs, S, compress.then_some(&mut zs)).0);
        let mut e = Engine::default();
        let id = FlowId(12);
        e.open(id, &key(), Opening::Handshake, 0);
        // The request, then the server's side, then the client's frames (sent after the 101).
        let rl = request(ext).len() as u64;
        let mut offs = [0u64; 2];
        for (d, bytes, hi) in [(C, &cb, rl), (S, &sb, sb.len() as u64), (C, &cb, cb.len() as u64)] {
            offs[d.index()] = feed_with_gaps(&mut e, id, d, bytes, offs[d.index()], hi, &gaps, &cuts);
        }
        e.close(id, Closing::Fin, 1);
        let found: Vec<Finding> = e.drain_findings().filter(|f| f.kind.is_violation()).collect();
        prop_assert!(found.is_empty(), "{:?}", found);
    }

    #[test]
    fn header_only_capture_changes_no_finding(
        cmsgs in prop::collection::vec(gen_msg(), 0..12),
        smsgs in prop::collection::vec(gen_msg(), 0..12),
        odd in prop::collection::vec((any::<bool>(), any::<u8>(), any::<bool>(), 0usize..400, any::<u16>()), 0..5),
        compress in any::<bool>(),
    ) {
        // Valid traffic in both directions, with arbitrary frames (any opcode, RSV bits,
        // FIN, mask, length) spliced in at message boundaries: whatever the engine
        // reports, it must report the same when binary payload arrives as skips.
        let ext = if compress { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
        let mut sc = Script::upgraded(ext, ext);
        let (mut zc, mut zs) = (Compress::new(Compression::fast(), false), Compress::new(Compression::fast(), false));
        let (mut cb, _) = encode_msgs_with(&cmsgs, C, compress.then_some(&mut zc));
        let (mut sb, _) = encode_msgs_with(&smsgs, S, compress.then_some(&mut zs));
        for &(to_server, b0, masked, len, at) in &odd {
            let f = Frame::new(b0 & 0x0f, vec![0x5a; len]).fin(b0 & 0x80 != 0).rsv((b0 >> 4) & 7);
            let f = if masked { f.masked() } else { f };
            let bytes = if to_server { &mut cb } else { &mut sb };
            // At a message boundary: the end, or the start of the stream.
            let at = if at % 2 == 0 { 0 } else { bytes.len() };
            bytes.splice(at..at, f.encode());
        }
        sc.data(C, cb).data(S, sb);
        run(&sc);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        ops in prop::collection::vec((any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..200), 0u64..50), 0..40),
        handshake in any::<bool>(),
        prefix in any::<bool>(),
    ) {
        let mut e = Engine::new(EngineConfig { max_frame_size: 1000, max_message_size: 3000, ..EngineConfig::default() });
        let id = FlowId(11);
        e.open(id, &key(), if handshake { Opening::Handshake } else { Opening::MidStream }, 0);
        let mut off = [0u64; 2];
        if prefix && handshake {
            let r = request("Sec-WebSocket-Extensions: permessage-deflate\r\n");
            e.data(id, C, 0, &r, 0);
            off[0] = r.len() as u64;
            let r = response("Sec-WebSocket-Extensions: permessage-deflate\r\n");
            e.data(id, S, 0, &r, 0);
            off[1] = r.len() as u64;
        }
        for (server, is_gap, bytes, gap) in ops {
            let d = if server { S } else { C };
            if is_gap {
                e.gap(id, d, off[d.index()], gap, Loss::Capture, 0);
                off[d.index()] += gap;
            } else {
                e.data(id, d, off[d.index()], &bytes, 0);
                off[d.index()] += bytes.len() as u64;
            }
            let _ = e.connection(id).map(|v| v.state);
        }
        e.close(id, Closing::Rst, 0);
        let _ = e.drain_findings().filter(|f| f.kind.is_violation()).count();
    }

    #[test]
    fn arbitrary_frames_split_identically(
        frames in prop::collection::vec((any::<u8>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..140), any::<bool>()), 0..30),
        cut_seed in 1u64..1000,
    ) {
        let mut sc = Script::deflate();
        for (b0, op, payload, masked) in frames {
            let mut f = Frame::new(op & 0x0F, payload).fin(b0 & 0x80 != 0).rsv((b0 >> 4) & 7);
            if masked { f = f.masked(); }
            sc.c(f.clone());
            f.mask = None;
            sc.s(f);
        }
        let (st, mut found) = run_cut(&sc, Cut::Whole);
        let (st2, mut found2) = run_cut(&sc, Cut::Random(cut_seed));
        found.sort();
        found2.sort();
        prop_assert_eq!(st, st2);
        prop_assert_eq!(found, found2);
    }
}

#[test]
#[ignore]
fn bench_throughput() {
    let mut sc = Script::plain();
    traffic(&mut sc, C, 20000, 1);
    traffic(&mut sc, S, 20000, 2);
    let bytes: usize = sc.evs.iter().map(|e| if let Ev::Data(_, b) = e { b.len() } else { 0 }).sum();
    for cut in [Cut::Whole, Cut::Random(5)] {
        let t = std::time::Instant::now();
        let (st, f) = run_cut(&sc, cut);
        let el = t.elapsed();
        eprintln!(
            "{cut:?}: {bytes} bytes {:?} -> {:.1} MB/s frames {} findings {}",
            el,
            bytes as f64 / el.as_secs_f64() / 1e6,
            st.frames[0].total() + st.frames[1].total(),
            f.len()
        );
    }
    let mut sc = Script::mid();
    traffic(&mut sc, C, 20000, 1);
    let t = std::time::Instant::now();
    let (st, _) = run_cut(&sc, Cut::Random(5));
    eprintln!("mid: {:?} resyncs {}", t.elapsed(), st.resyncs);
    // Pure garbage while unsynced.
    let mut sc = Script::mid();
    let mut rng = Rng(3);
    sc.data(S, (0..20_000_000).map(|_| rng.next() as u8).collect());
    let t = std::time::Instant::now();
    let (st, _) = run_cut(&sc, Cut::Random(5));
    eprintln!("garbage 20MB: {:?} skipped {} resyncs {}", t.elapsed(), st.skipped_bytes, st.resyncs);
}

// ----- header-only capture: skips and hints --------------------------------------------

/// An upgraded connection with steering on; returns the engine and both stream offsets.
fn steered() -> (Engine, [u64; 2]) {
    let mut e = Engine::new(EngineConfig { steer: true, ..EngineConfig::default() });
    e.open(FlowId(1), &key(), Opening::Handshake, 0);
    let (req, resp) = (request(""), response(""));
    e.data(FlowId(1), C, 0, &req, 0);
    e.data(FlowId(1), S, 0, &resp, 0);
    (e, [req.len() as u64, resp.len() as u64])
}

#[test]
fn a_skip_inside_binary_payload_is_passed_over_in_sync() {
    let (mut e, off) = steered();
    let frame = sf(BIN, vec![7u8; 1000]).encode();
    e.data(FlowId(1), S, off[1], &frame[..4 + 64], 0);
    e.skip(FlowId(1), S, off[1] + 68, 936, 0);
    let next = off[1] + frame.len() as u64;
    e.data(FlowId(1), S, next, &sf(CLOSE, close_body(1000, b"")).encode(), 0);
    let st = e.stats().clone();
    assert_eq!((st.skipped_bytes, st.skip_mismatches, st.desyncs), (936, 0, 0));
    assert_eq!(st.frames[S.index()].binary, 1);
    assert_eq!(st.close_codes.get(&1000), Some(&1), "in sync after the skip");
    assert!(e.drain_hints().all(|h| !matches!(h.steer, Steer::FullCopy)));
}

#[test]
fn a_skip_where_bytes_are_needed_is_a_gap_and_asks_for_full_copy() {
    let (mut e, off) = steered();
    // Text is read (UTF-8): a capture must not skip it. Invalid UTF-8 in the skipped part
    // cannot be seen, and the message is not judged at all.
    let mut text = vec![b'a'; 500];
    text[300] = 0xff;
    let frame = sf(TEXT, text).encode();
    e.data(FlowId(1), S, off[1], &frame[..100], 0);
    e.skip(FlowId(1), S, off[1] + 100, frame.len() as u64 - 100, 0);
    assert_eq!(e.stats().skip_mismatches, 1);
    assert_eq!(e.stats().skipped_bytes, 0);
    assert_eq!(e.drain_findings().filter(|f| f.kind.is_violation()).count(), 0);
    let hints: Vec<Hint> = e.drain_hints().collect();
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert_eq!((hints[0].dir, hints[0].steer), (S, Steer::FullCopy));

    // A skip over a header: sync is lost (and the capture already copies everything).
    let (mut e, off) = steered();
    e.skip(FlowId(1), C, off[0], 50, 0);
    assert_eq!((e.stats().skip_mismatches, e.stats().desyncs), (1, 1));
}

/// The capture walks only after a 101: a skip during the handshake is out of step even
/// inside an HTTP body (counted, full copy asked); a body of known length takes the loss
/// and the exchanges go on to the upgrade.
#[test]
fn a_skip_inside_an_http_body_is_a_mismatch_the_handshake_survives() {
    let mut e = Engine::new(EngineConfig { steer: true, ..EngineConfig::default() });
    let id = FlowId(1);
    e.open(id, &key(), Opening::Handshake, 0);
    let get = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let body = head.len() as u64;
    e.data(id, C, 0, get, 0);
    e.data(id, S, 0, head, 0);
    e.data(id, S, body, &[b'x'; 100], 0);
    e.skip(id, S, body + 100, 900, 0);
    e.data(id, C, get.len() as u64, &request(""), 0);
    e.data(id, S, body + 1000, &response(""), 0);
    let st = e.stats().clone();
    assert_eq!((st.skip_mismatches, st.skipped_bytes, st.desyncs, st.upgrades_ok), (1, 0, 0, 1));
    assert_eq!(http_requests(&st), 1);
    assert_eq!(e.connection(id).map(|c| c.state), Some(ConnState::Open));
    let hints: Vec<Hint> = e.drain_hints().collect();
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert_eq!((hints[0].dir, hints[0].steer), (S, Steer::FullCopy));
}

#[test]
fn binary_payload_read_in_full_anchors_the_capture_at_the_next_header() {
    let (mut e, off) = steered();
    // Two fragments of one binary message, copied whole (the capture is not walking).
    let first = sf(BIN, vec![1u8; 5000]).fin(false).encode();
    e.data(FlowId(1), S, off[1], &first[..2000], 0);
    let hints: Vec<Hint> = e.drain_hints().collect();
    let at = off[1] + first.len() as u64;
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert_eq!((hints[0].dir, hints[0].steer), (S, Steer::Anchor { offset: at, open: OpenMessage::Skip }));
    e.data(FlowId(1), S, off[1] + 2000, &first[2000..], 0);
    assert_eq!(e.drain_hints().count(), 0, "at most one anchor per MiB of stream");

    // Text is read anyway: no anchor. And nothing without steering.
    let (mut e, off) = steered();
    e.data(FlowId(1), S, off[1], &sf(TEXT, vec![b'x'; 5000]).encode(), 0);
    assert_eq!(e.drain_hints().count(), 0);
    let mut e = Engine::default();
    e.open(FlowId(1), &key(), Opening::Handshake, 0);
    e.data(FlowId(1), C, 0, &request(""), 0);
    e.data(FlowId(1), S, 0, &response(""), 0);
    e.data(FlowId(1), S, off[1], &sf(BIN, vec![1u8; 5000]).encode(), 0);
    assert_eq!(e.drain_hints().count(), 0);
}

// ----- budgets --------------------------------------------------------------------------

#[test]
fn findings_per_connection_per_second_are_capped_and_the_rest_counted() {
    let cfg = EngineConfig { max_findings_per_second: 10, ..EngineConfig::default() };
    let mut e = Engine::new(cfg);
    let id = FlowId(1);
    e.open(id, &key(), Opening::Handshake, 0);
    e.data(id, C, 0, &request(""), 0);
    e.data(id, S, 0, &response(""), 0);
    let mut off = request("").len() as u64;
    let unmasked = Frame::new(1, "hi").encode();
    let mut send = |e: &mut Engine, n: usize, ts: u64| {
        for _ in 0..n {
            e.data(id, C, off, &unmasked, ts);
            off += unmasked.len() as u64;
        }
        e.drain_findings().filter(|f| f.kind.is_violation()).count()
    };
    // 1,000 violations in the first second: 10 findings, every violation counted.
    assert_eq!(send(&mut e, 1000, 1_000), 10);
    // A second later, 10 more.
    assert_eq!(send(&mut e, 50, 1_000_001_000), 10);
    let st = e.stats();
    assert_eq!(st.violation_count(Kind::UnmaskedClientFrame), 1050);
    assert_eq!(st.findings_suppressed, 1030);
    assert_eq!(e.connection(id).map(|v| v.violations), Some(1050));
}

#[test]
fn unanalysed_bytes_are_counted_per_connection_by_cause() {
    let mut e = Engine::default();
    let id = FlowId(1);
    e.open(id, &key(), Opening::Handshake, 0);
    e.data(id, C, 0, &request(""), 0);
    e.data(id, S, 0, &response(""), 0);
    let base = request("").len() as u64;
    // A gap over a header: the direction scans, passing over what follows until it syncs.
    let f = Frame::new(2, vec![7u8; 40]).masked().encode();
    e.data(id, C, base, &f, 1);
    e.gap(id, C, base + f.len() as u64, 3, Loss::Capture, 2);
    e.data(id, C, base + f.len() as u64 + 3, &f[3..], 3);
    e.gap(id, S, response("").len() as u64, 100, Loss::Eviction, 4);
    let v = e.connection(id).map(|v| v.unanalysed).unwrap_or_default();
    assert_eq!(v.get(Loss::Capture), 3);
    assert_eq!(v.get(Loss::Eviction), 100);
    assert!(v.get(Loss::Resync) > 0, "the rest of the frame after the gap was passed over unsynced");
    assert_eq!(e.stats().unanalysed, v);
    e.close(id, Closing::Evicted, 5);
    let spots = e.blind_spots().sorted();
    assert_eq!(spots.len(), 1);
    assert_eq!(spots[0].total, v.total());
}

#[test]
fn a_session_resumed_at_a_frame_boundary_is_checked_from_its_first_frame() {
    let ext = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let mut e = Engine::default();
    e.open(FlowId(1), &key(), Opening::Handshake, 0);
    e.data(FlowId(1), C, 0, &request(ext), 0);
    e.data(FlowId(1), S, 0, &response(ext), 0);
    e.close(FlowId(1), Closing::Evicted, 1);
    // Back after the eviction: the first frame is already judged, with the negotiation
    // known (RSV1 is fine on a data frame from the server, wrong on a ping).
    e.open(FlowId(2), &key(), Opening::Resumed, 2);
    e.data(FlowId(2), C, 0, &Frame::new(1, "hi").encode(), 3);
    e.data(FlowId(2), S, 0, &Frame::new(9, "").rsv(4).encode(), 3);
    let kinds: Vec<Kind> = e.drain_findings().filter(|f| f.kind.is_violation()).map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::UnmaskedClientFrame, Kind::Rsv1Invalid]);
    let v = e.connection(FlowId(2)).cloned().expect("tracked");
    assert_eq!((v.opening, v.deflate, v.state), (Opening::Resumed, true, ConnState::Open));
    // Resumed without anything remembered (another key): mid-stream.
    let other = FlowKey { client: "10.0.0.9:1".parse().unwrap(), ..key() };
    e.open(FlowId(3), &other, Opening::Resumed, 4);
    assert_eq!(e.connection(FlowId(3)).map(|v| v.opening), Some(Opening::MidStream));
}

#[test]
fn a_client_that_never_masks_is_found_again_soon_after_a_gap() {
    let mut e = Engine::default();
    let id = FlowId(1);
    e.open(id, &key(), Opening::Handshake, 0);
    let req = request("");
    e.data(id, C, 0, &req, 0);
    e.data(id, S, 0, &response(""), 0);
    let frame = Frame::new(1, "hi").encode();
    let stream: Vec<u8> = frame.repeat(100);
    let base = req.len() as u64;
    // 10 frames, then 6 bytes lost (frame 11 and the header of frame 12), then the rest.
    e.data(id, C, base, &stream[..40], 1);
    e.gap(id, C, base + 40, 6, Loss::Capture, 2);
    e.data(id, C, base + 46, &stream[46..], 3);
    e.close(id, Closing::Fin, 4);
    // Frame 13 on: its header is the known pattern and frame 14's header confirms it.
    assert_eq!(e.stats().violation_count(Kind::UnmaskedClientFrame), 10 + 88);
    assert_eq!(e.stats().resyncs, 1);
    assert_eq!(e.connection(id), None);
}

// ----- close analysis -------------------------------------------------------------------

/// An upgraded connection 1 (plain, no extension) at time 0; returns the client's and
/// server's next offsets.
fn session(e: &mut Engine) -> [u64; 2] {
    e.open(FlowId(1), &key(), Opening::Handshake, 0);
    let (req, resp) = (request(""), response(""));
    e.data(FlowId(1), C, 0, &req, 0);
    e.data(FlowId(1), S, 0, &resp, 0);
    [req.len() as u64, resp.len() as u64]
}

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason.as_bytes());
    Frame::new(8, body).masked().encode()
}

fn kinds_and_details(e: &mut Engine) -> Vec<(Direction, Kind, Detail)> {
    e.drain_findings().map(|f| (f.dir, f.kind, f.detail)).collect()
}

#[test]
fn a_close_with_1002_names_the_violation_before_it() {
    let mut e = Engine::default();
    let [c, s] = session(&mut e);
    let bad = Frame::new(1, "x").rsv(4).encode(); // RSV1 without permessage-deflate
    e.data(FlowId(1), S, s, &bad, 1);
    e.data(FlowId(1), C, c, &close_frame(1002, "rsv"), 2);
    let found: Vec<Finding> = e.drain_findings().collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!((found[1].dir, found[1].kind), (C, Kind::PeerProtocolError));
    assert_eq!(found[1].detail, Detail::Close { code: 1002, before: Before::Violation(Kind::RsvWithoutExtension) });
    assert_eq!(found[1].explain().as_deref(), Some("the client closed 1002 after the server's rsv_without_extension"));
    assert_eq!(e.stats().violations_total(), 1, "close analysis is not a violation");
}

#[test]
fn a_close_with_1009_or_1003_names_the_message_before_it() {
    let mut e = Engine::default();
    let [c, s] = session(&mut e);
    e.data(FlowId(1), C, c, &Frame::new(2, vec![7u8; 5000]).masked().encode(), 1);
    e.data(FlowId(1), S, s, &Frame::new(8, [&1009u16.to_be_bytes()[..], b"too big"].concat()).encode(), 2);
    // The client answers with the same code: only the first close is a refusal.
    e.data(FlowId(1), C, c + 5008, &close_frame(1009, ""), 3);
    let found = kinds_and_details(&mut e);
    assert_eq!(
        found,
        [(
            S,
            Kind::PeerProtocolError,
            Detail::Close { code: 1009, before: Before::Message { text: false, size: 5000 } }
        )]
    );
    let mut e = Engine::default();
    let [c, s] = session(&mut e);
    e.data(FlowId(1), C, c, &Frame::new(2, vec![1u8; 10]).masked().encode(), 1);
    e.data(FlowId(1), S, s, &Frame::new(8, [&1003u16.to_be_bytes()[..], b"text only"].concat()).encode(), 2);
    let found: Vec<Finding> = e.drain_findings().collect();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].explain().as_deref(),
        Some("the server closed 1003 after a binary message from the client: it does not accept that data type")
    );
    // 1000 and 1001 are normal closures.
    let mut e = Engine::default();
    let [c, _] = session(&mut e);
    e.data(FlowId(1), C, c, &close_frame(1001, "going away"), 1);
    assert!(e.drain_findings().next().is_none());
}

#[test]
fn tcp_ending_without_close_frames_is_an_abnormal_closure_and_after_idle_a_cut() {
    let s_ns = 1_000_000_000;
    // Data at 1 s, the server's FIN at 4 s: cut after 3 s idle, by the server.
    let mut e = Engine::default();
    let [c, _] = session(&mut e);
    e.data(FlowId(1), C, c, &Frame::new(1, "hi").masked().encode(), s_ns);
    e.end(FlowId(1), S, 4 * s_ns);
    e.end(FlowId(1), C, 4 * s_ns + 1000);
    e.close(FlowId(1), Closing::Fin, 4 * s_ns + 2000);
    let found = kinds_and_details(&mut e);
    assert_eq!(
        found,
        [
            (C, Kind::AbnormalClosure, Detail::Ended { rst: false }),
            (S, Kind::AbnormalClosure, Detail::Ended { rst: false }),
            (S, Kind::IdleTimeoutCut, Detail::Idle { ms: 3000 }),
        ]
    );
    assert_eq!(e.stats().idle_cuts[S.index()].get(&30), Some(&1));
    assert_eq!(e.stats().endings[Ending::FinWithoutClose.index()], 1);
    // A close handshake, then TCP: nothing to say.
    let mut e = Engine::default();
    let [c, s] = session(&mut e);
    e.data(FlowId(1), C, c, &close_frame(1000, ""), s_ns);
    e.data(FlowId(1), S, s, &Frame::new(8, 1000u16.to_be_bytes().to_vec()).encode(), s_ns);
    e.end(FlowId(1), S, 9 * s_ns);
    e.close(FlowId(1), Closing::Fin, 9 * s_ns);
    assert!(e.drain_findings().next().is_none());
    assert_eq!(e.stats().endings[Ending::CloseHandshake.index()], 1);
    // A RST right after data: abnormal, no cut.
    let mut e = Engine::default();
    let [c, _] = session(&mut e);
    e.data(FlowId(1), C, c, &Frame::new(1, "hi").masked().encode(), s_ns);
    e.end(FlowId(1), C, s_ns + 10);
    e.close(FlowId(1), Closing::Rst, s_ns + 10);
    let found = kinds_and_details(&mut e);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|f| f.1 == Kind::AbnormalClosure && f.2 == Detail::Ended { rst: true }));
}
