//! Tests of [`super`].

use super::*;
use crate::flow::TcpFlags;
use std::collections::HashMap;
use std::net::SocketAddr;
use Direction::{ToClient, ToServer};

/// One event as the sink saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Open(FlowId, Opening),
    Data(FlowId, Direction, u64, Vec<u8>),
    Gap(FlowId, Direction, u64, u64),
    Skip(FlowId, Direction, u64, u64),
    Close(FlowId, Closing),
}

/// Per-flow bookkeeping of the recording sink.
struct FlowRec {
    key: FlowKey,
    pos: [u64; 2],
    closed: Option<Closing>,
}

/// Records every event and asserts the sink contract as it goes: open before anything
/// else, data/gap tiling each direction from offset 0, nothing after close, one close.
#[derive(Default)]
struct Rec {
    events: Vec<Ev>,
    flows: HashMap<FlowId, FlowRec>,
    /// Bytes in gaps, by why.
    losses: HashMap<Loss, u64>,
}

impl Rec {
    fn live(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64) {
        let flow = self.flows.get_mut(&id).expect("event before open");
        assert!(flow.closed.is_none(), "event after close on {id:?}");
        assert!(len > 0, "empty event");
        let pos = &mut flow.pos[dir.index()];
        assert_eq!(offset, *pos, "tiling broken on {id:?} {dir:?}");
        *pos += len;
    }

    fn opened(&self) -> Vec<(FlowId, Opening)> {
        self.events.iter().filter_map(|e| if let Ev::Open(id, o) = e { Some((*id, *o)) } else { None }).collect()
    }

    fn closes(&self) -> Vec<(FlowId, Closing)> {
        self.events.iter().filter_map(|e| if let Ev::Close(id, c) = e { Some((*id, *c)) } else { None }).collect()
    }

    fn only_flow(&self) -> FlowId {
        let opened = self.opened();
        assert_eq!(opened.len(), 1, "{opened:?}");
        opened[0].0
    }

    /// Data delivered on `id`/`dir`, concatenated.
    fn data(&self, id: FlowId, dir: Direction) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.events {
            if let Ev::Data(i, d, _, bytes) = e {
                if *i == id && *d == dir {
                    out.extend_from_slice(bytes);
                }
            }
        }
        out
    }

    fn gaps(&self, id: FlowId, dir: Direction) -> Vec<(u64, u64)> {
        let f = |e: &Ev| match e {
            Ev::Gap(i, d, off, len) if *i == id && *d == dir => Some((*off, *len)),
            _ => None,
        };
        self.events.iter().filter_map(f).collect()
    }

    /// The stream as tiled by the sink: `Some(byte)` delivered, `None` gap.
    fn tiles(&self, id: FlowId, dir: Direction) -> Vec<Option<u8>> {
        let mut out = Vec::new();
        for e in &self.events {
            match e {
                Ev::Data(i, d, _, bytes) if *i == id && *d == dir => out.extend(bytes.iter().map(|&b| Some(b))),
                Ev::Gap(i, d, _, len) if *i == id && *d == dir => out.extend((0..*len).map(|_| None)),
                _ => {}
            }
        }
        out
    }
}

impl StreamSink for Rec {
    fn open(&mut self, id: FlowId, key: &FlowKey, opening: Opening, _ts: u64) {
        assert!(!self.flows.contains_key(&id), "{id:?} opened twice");
        self.flows.insert(id, FlowRec { key: *key, pos: [0, 0], closed: None });
        self.events.push(Ev::Open(id, opening));
    }
    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], _ts: u64) {
        self.live(id, dir, offset, data.len() as u64);
        self.events.push(Ev::Data(id, dir, offset, data.to_vec()));
    }
    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, loss: Loss, _ts: u64) {
        *self.losses.entry(loss).or_insert(0) += len;
        self.live(id, dir, offset, len);
        self.events.push(Ev::Gap(id, dir, offset, len));
    }
    fn skip(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, _ts: u64) {
        self.live(id, dir, offset, len);
        self.events.push(Ev::Skip(id, dir, offset, len));
    }
    fn close(&mut self, id: FlowId, closing: Closing, _ts: u64) {
        let flow = self.flows.get_mut(&id).expect("close before open");
        assert!(flow.closed.is_none(), "{id:?} closed twice");
        flow.closed = Some(closing);
        self.events.push(Ev::Close(id, closing));
    }
}

fn key_n(n: u16) -> FlowKey {
    FlowKey { client: ([10, 0, 0, 1], 40_000 + n).into(), server: ([10, 0, 0, 2], 80).into() }
}

fn key() -> FlowKey {
    key_n(0)
}

/// A segment; `flags` holds any of `S`, `F`, `R`; `ack` sets the ACK flag.
fn mk<'a>(dir: Direction, seq: u32, ack: Option<u32>, flags: &str, data: &'a [u8]) -> Segment<'a> {
    Segment {
        key: key(),
        dir,
        seq,
        ack: ack.unwrap_or(0),
        flags: TcpFlags {
            syn: flags.contains('S'),
            ack: ack.is_some(),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
        },
        data,
        skip: 0,
        iface: 0,
        ts_ns: 0,
    }
}

const C: u32 = 1000; // client ISN
const S: u32 = 5000; // server ISN

/// A reassembler and sink after a full handshake with ISNs `c` and `s`.
fn handshake_with(cfg: ReassemblyConfig, c: u32, s: u32) -> (Reassembler, Rec) {
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    r.segment(&mk(ToServer, c, None, "S", b""), &mut rec);
    r.segment(&mk(ToClient, s, Some(c.wrapping_add(1)), "S", b""), &mut rec);
    r.segment(&mk(ToServer, c.wrapping_add(1), Some(s.wrapping_add(1)), "", b""), &mut rec);
    (r, rec)
}

fn handshake() -> (Reassembler, Rec) {
    handshake_with(ReassemblyConfig::default(), C, S)
}

/// Client data at stream offset `off` (handshake ISNs), acking nothing new.
fn cdata(off: u32, data: &[u8]) -> Segment<'_> {
    mk(ToServer, C + 1 + off, Some(S + 1), "", data)
}

fn sdata(off: u32, data: &[u8]) -> Segment<'_> {
    mk(ToClient, S + 1 + off, Some(C + 1), "", data)
}

/// Pure ACK from the server acknowledging client offset `off`.
fn sack(off: u32) -> Segment<'static> {
    mk(ToClient, S + 1, Some(C + 1 + off), "", b"")
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn rst_outside_the_window_is_ignored() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"hello"), &mut rec);
    // A stale or spoofed RST far from the client's sequence space.
    r.segment(&mk(ToServer, C.wrapping_add(0x4000_0000), None, "R", b""), &mut rec);
    r.segment(&mk(ToClient, S.wrapping_sub(70_000), None, "R", b""), &mut rec);
    assert!(rec.closes().is_empty());
    assert_eq!(r.stats().rst_ignored, 2);
    r.segment(&cdata(5, b" world"), &mut rec);
    // In the window: believed.
    r.segment(&mk(ToServer, C + 1 + 11, None, "R", b""), &mut rec);
    assert_eq!(rec.closes().len(), 1);
    assert_eq!(rec.closes()[0].1, Closing::Rst);
}

#[test]
fn syn_retransmitted_after_close_opens_nothing() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"x"), &mut rec);
    r.segment(&mk(ToServer, C + 2, Some(S + 1), "F", b""), &mut rec);
    r.segment(&mk(ToClient, S + 1, Some(C + 3), "F", b""), &mut rec);
    assert_eq!(rec.closes().len(), 1);
    // A spurious retransmission of the old SYN and SYN-ACK: no new connection.
    r.segment(&mk(ToServer, C, None, "S", b""), &mut rec);
    r.segment(&mk(ToClient, S, Some(C + 1), "S", b""), &mut rec);
    assert_eq!((rec.opened().len(), r.open_flows(), r.stats().phantom_syns), (1, 0, 2));
    // A new ISN is a new connection.
    r.segment(&mk(ToServer, C + 100_000, None, "S", b""), &mut rec);
    assert_eq!((rec.opened().len(), r.open_flows()), (2, 1));
}

/// Ports both monitored; [`ends`] connects a client on the one to a server on the other.
const BOTH: [u16; 2] = [8001, 8002];

/// A client on 8002 and its server on 8001.
fn ends() -> (SocketAddr, SocketAddr) {
    (([10, 0, 0, 1], 8002).into(), ([10, 0, 0, 2], 8001).into())
}

/// A segment from `src` to `dst` as the capture labels it (kernel program and replay)
/// with [`BOTH`] monitored: towards the server when the destination port is monitored,
/// else towards the client.
fn captured<'a>(
    (src, dst): (SocketAddr, SocketAddr),
    seq: u32,
    ack: Option<u32>,
    flags: &str,
    data: &'a [u8],
) -> Segment<'a> {
    let dir = if BOTH.contains(&dst.port()) { ToServer } else { ToClient };
    let key = crate::flow::key_for((src.ip(), src.port()), (dst.ip(), dst.port()), dir);
    Segment { key, ..mk(dir, seq, ack, flags, data) }
}

/// A fresh reassembler fed `segs`.
fn fed(segs: &[Segment<'_>]) -> (Reassembler, Rec) {
    let (mut r, mut rec) = (Reassembler::new(ReassemblyConfig::default()), Rec::default());
    for seg in segs {
        r.segment(seg, &mut rec);
    }
    (r, rec)
}

/// Ports 8001 and 8002 both monitored, and a client on 8002 connecting to 8001: the
/// capture labels both ways "towards the server" (each destination port is monitored).
/// The SYN's sender is the client: one connection, both streams, a clean close.
#[test]
fn direction_comes_from_the_syn_when_both_ports_are_monitored() {
    let (a, b) = ends();
    let (up, down) = ((a, b), (b, a));
    let (req, resp) = (bytes(300), bytes(500));
    let (r, rec) = fed(&[
        captured(up, C, None, "S", b""),
        captured(down, S, Some(C + 1), "S", b""),
        captured(up, C + 1, Some(S + 1), "", b""),
        captured(up, C + 1, Some(S + 1), "", &req),
        captured(down, S + 1, Some(C + 301), "", &resp),
        captured(up, C + 301, Some(S + 501), "F", b""),
        captured(down, S + 501, Some(C + 302), "F", b""),
        captured(up, C + 302, Some(S + 502), "", b""),
    ]);
    let id = rec.only_flow();
    assert_eq!(rec.opened(), [(id, Opening::Handshake)]);
    assert_eq!(rec.flows[&id].key, FlowKey { client: a, server: b });
    assert_eq!((rec.data(id, ToServer), rec.data(id, ToClient)), (req, resp));
    assert_eq!(rec.closes(), [(id, Closing::Fin)]);
    let st = r.stats();
    assert_eq!((st.gaps, st.bytes_lost, st.flows_closed, st.flows_evicted), (0, 0, 1, 0));
    assert_eq!((st.bytes_client, st.bytes_server), (300, 500));
    assert_eq!(r.open_flows(), 0);
}

/// The SYN-ACK alone (the SYN was not captured) also says who the server is. A
/// connection picked up mid-stream between two monitored ports is one flow for both
/// directions, oriented as the capture labelled its first segment.
#[test]
fn syn_ack_or_first_segment_orients_the_flow() {
    let (a, b) = ends();
    let get = captured((a, b), C + 1, Some(S + 1), "", b"GET");
    let http = captured((b, a), S + 1, Some(C + 4), "", b"HTTP");
    let syn_ack = captured((b, a), S, Some(C + 1), "S", b"");
    for (segs, opening) in [(&[syn_ack, get, http][..], Opening::Handshake), (&[get, http][..], Opening::MidStream)] {
        let (r, rec) = fed(segs);
        let id = rec.only_flow();
        assert_eq!(rec.opened(), [(id, opening)]);
        assert_eq!(rec.flows[&id].key, FlowKey { client: a, server: b });
        assert_eq!((rec.data(id, ToServer), rec.data(id, ToClient)), (b"GET".to_vec(), b"HTTP".to_vec()));
        assert_eq!(r.stats().gaps, 0);
    }
}

/// A connection picked up mid-stream between two monitored ports, oriented by the
/// capture's label the wrong way round: a SYN from its "server" with data already seen
/// is a new connection, opened the SYN's way.
#[test]
fn a_syn_the_other_way_round_starts_a_new_connection() {
    let (a, b) = ends();
    let (_, rec) = fed(&[
        captured((b, a), 7000, Some(300), "", b"stale"),
        captured((a, b), C, None, "S", b""),
        captured((b, a), S, Some(C + 1), "S", b""),
        captured((a, b), C + 1, Some(S + 1), "", b"GET"),
    ]);
    let opened = rec.opened();
    assert_eq!(opened.len(), 2, "{opened:?}");
    let (old, new) = (opened[0].0, opened[1].0);
    assert_eq!(rec.flows[&old].key, FlowKey { client: b, server: a });
    assert_eq!(rec.closes(), [(old, Closing::Evicted)]);
    assert_eq!((opened[1].1, rec.flows[&new].key), (Opening::Handshake, FlowKey { client: a, server: b }));
    assert_eq!(rec.data(new, ToServer), b"GET");

    // Both ends sending a SYN (simultaneous open) stays one connection.
    let (_, rec) = fed(&[
        captured((a, b), C, None, "S", b""),
        captured((b, a), S, None, "S", b""),
        captured((a, b), C, Some(S + 1), "S", b""),
        captured((a, b), C + 1, Some(S + 1), "", b"GET"),
    ]);
    let id = rec.only_flow();
    assert_eq!((rec.flows[&id].key, rec.data(id, ToServer)), (FlowKey { client: a, server: b }, b"GET".to_vec()));
}

#[test]
fn in_order_delivery_from_the_segment() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"GET / "), &mut rec);
    r.segment(&cdata(6, b"HTTP/1.1"), &mut rec);
    r.segment(&sdata(0, b"HTTP/1.1 101"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.opened(), vec![(id, Opening::Handshake)]);
    assert_eq!(rec.events[1], Ev::Data(id, ToServer, 0, b"GET / ".to_vec()));
    assert_eq!(rec.events[2], Ev::Data(id, ToServer, 6, b"HTTP/1.1".to_vec()));
    assert_eq!(rec.data(id, ToClient), b"HTTP/1.1 101");
    let st = r.stats();
    assert_eq!((st.segments, st.flows_opened, st.bytes_client, st.bytes_server), (6, 1, 14, 12));
    assert_eq!((st.gaps, st.duplicate_bytes, st.out_of_order_segments), (0, 0, 0));
    assert_eq!(r.open_flows(), 1);
}

#[test]
fn out_of_order_waits_for_the_hole() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(5, b"world"), &mut rec);
    r.segment(&cdata(10, b"!"), &mut rec);
    let id = rec.only_flow();
    assert!(rec.data(id, ToServer).is_empty());
    r.segment(&cdata(0, b"hello"), &mut rec);
    assert_eq!(rec.data(id, ToServer), b"helloworld!");
    assert_eq!(r.stats().out_of_order_segments, 2);
    assert_eq!(r.stats().bytes_client, 11);
    assert_eq!(r.stats().gaps, 0);
}

/// Client data at `off` followed by a known-length skip.
fn cskip(off: u32, data: &[u8], skip: u32) -> Segment<'_> {
    Segment { skip, ..cdata(off, data) }
}

#[test]
fn skips_take_their_place_in_the_stream_in_and_out_of_order() {
    let (mut r, mut rec) = handshake();
    r.segment(&cskip(0, b"hd", 100), &mut rec);
    // Out of order: a skip-only segment and data after it wait for the hole.
    r.segment(&cskip(152, b"", 48), &mut rec);
    r.segment(&cdata(200, b"tail"), &mut rec);
    r.segment(&cskip(102, b"xy", 48), &mut rec);
    // A retransmission of skipped bytes, now copied: already delivered, dropped.
    r.segment(&cdata(110, &[0u8; 20]), &mut rec);
    let id = rec.only_flow();
    let events: Vec<&Ev> = rec.events.iter().filter(|e| !matches!(e, Ev::Open(..))).collect();
    assert_eq!(
        events,
        [
            &Ev::Data(id, ToServer, 0, b"hd".to_vec()),
            &Ev::Skip(id, ToServer, 2, 100),
            &Ev::Data(id, ToServer, 102, b"xy".to_vec()),
            &Ev::Skip(id, ToServer, 104, 48),
            &Ev::Skip(id, ToServer, 152, 48),
            &Ev::Data(id, ToServer, 200, b"tail".to_vec()),
        ]
    );
    let st = r.stats();
    assert_eq!((st.bytes_client, st.skipped_client, st.gaps, st.duplicate_bytes), (8, 196, 0, 20));
    assert_eq!(st.out_of_order_segments, 2);
}

#[test]
fn a_fin_after_a_skip_ends_the_stream_there() {
    let (mut r, mut rec) = handshake();
    let mut fin = cskip(0, b"h", 9);
    fin.flags.fin = true;
    r.segment(&fin, &mut rec);
    let id = rec.only_flow();
    r.segment(&mk(ToClient, S + 1, Some(C + 1 + 11), "F", b""), &mut rec);
    assert_eq!(rec.closes(), [(id, Closing::Fin)]);
    assert_eq!(r.stats().skipped_client, 9);
}

#[test]
fn exact_duplicates_are_dropped() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"abc"), &mut rec);
    r.segment(&cdata(0, b"abc"), &mut rec);
    r.segment(&cdata(6, b"ghi"), &mut rec);
    r.segment(&cdata(6, b"ghi"), &mut rec);
    r.segment(&cdata(3, b"def"), &mut rec);
    r.segment(&cdata(3, b"def"), &mut rec);
    assert_eq!(rec.data(rec.only_flow(), ToServer), b"abcdefghi");
    assert_eq!(r.stats().duplicate_bytes, 9);
    assert_eq!(r.stats().bytes_client, 9);
}

#[test]
fn overlapping_retransmissions_deliver_only_new_bytes() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"0123456789"), &mut rec);
    // Old part differs: delivered bytes never change; only 10..15 is new.
    r.segment(&cdata(5, b"XXXXXabcde"), &mut rec);
    // Buffered piece, then one overlapping both the delivered end and its start.
    r.segment(&cdata(20, b"klmno"), &mut rec);
    r.segment(&cdata(13, b"YYfghijZZZ"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.data(id, ToServer), b"0123456789abcdefghijklmno");
    assert_eq!(r.stats().duplicate_bytes, 5 + 2 + 3);
    // Out-of-order overlaps: a piece reaching into a held one keeps the held copy.
    r.segment(&cdata(30, b"uvw"), &mut rec);
    r.segment(&cdata(28, b"stUV"), &mut rec);
    r.segment(&cdata(25, b"pqr"), &mut rec);
    assert_eq!(rec.data(id, ToServer), b"0123456789abcdefghijklmnopqrstuvw");
    assert_eq!(r.stats().gaps, 0);
}

#[test]
fn retransmission_covering_several_held_pieces() {
    let all = bytes(50);
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(10, &all[10..20]), &mut rec);
    r.segment(&cdata(30, &all[30..40]), &mut rec);
    r.segment(&cdata(0, &all), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.data(id, ToServer), all);
    assert_eq!(r.stats().duplicate_bytes, 20);
    // Same, but the covering copy is itself out of order: it fills around held pieces.
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(10, &all[10..20]), &mut rec);
    r.segment(&cdata(30, &all[30..40]), &mut rec);
    r.segment(&cdata(5, &all[5..45]), &mut rec);
    r.segment(&cdata(40, &all[40..50]), &mut rec);
    assert!(rec.data(id, ToServer).is_empty());
    r.segment(&cdata(0, &all[..7]), &mut rec);
    assert_eq!(rec.data(id, ToServer), all);
    assert_eq!(r.stats().duplicate_bytes, 20 + 5 + 2);
    assert_eq!(r.stats().bytes_client, 50);
}

#[test]
fn sequence_wrap_around() {
    let isn = u32::MAX - 5;
    let (mut r, mut rec) = handshake_with(ReassemblyConfig::default(), isn, u32::MAX);
    let all = bytes(40);
    let seq = |off: u32| isn.wrapping_add(1).wrapping_add(off);
    r.segment(&mk(ToServer, seq(20), Some(0), "", &all[20..]), &mut rec);
    r.segment(&mk(ToServer, seq(0), Some(0), "", &all[..10]), &mut rec);
    r.segment(&mk(ToServer, seq(10), Some(0), "", &all[10..20]), &mut rec);
    // Server ISN u32::MAX: its data starts at seq 0.
    r.segment(&mk(ToClient, 0, Some(seq(40)), "", b"pong"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.data(id, ToServer), all);
    assert_eq!(rec.data(id, ToClient), b"pong");
    assert_eq!(r.stats().gaps, 0);
}

#[test]
fn offsets_extend_past_4_gib() {
    // Push the client stream forward in 1 GiB steps with ack-declared gaps.
    let (mut r, mut rec) = handshake();
    let step: u64 = 1 << 30;
    for i in 1..=5u64 {
        let off = (i * step) as u32; // wraps: only the low 32 bits travel
        r.segment(&cdata(off, b"x"), &mut rec);
        r.segment(&sack(off.wrapping_add(1)), &mut rec);
    }
    let id = rec.only_flow();
    let gaps = rec.gaps(id, ToServer);
    assert_eq!(gaps.len(), 5);
    assert_eq!(gaps[4], (4 * step + 1, step - 1));
    let last = rec.events.iter().rev().find(|e| matches!(e, Ev::Data(..))).cloned();
    assert_eq!(last, Some(Ev::Data(id, ToServer, 5 * step, b"x".to_vec())));
}

#[test]
fn fin_fin_lifecycle_closes_once() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"hi"), &mut rec);
    r.segment(&sdata(0, b"yo"), &mut rec);
    r.segment(&mk(ToServer, C + 3, Some(S + 3), "F", b""), &mut rec);
    assert_eq!(r.open_flows(), 1);
    r.segment(&mk(ToClient, S + 3, Some(C + 4), "F", b"!"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.closes(), vec![(id, Closing::Fin)]);
    assert_eq!(rec.data(id, ToClient), b"yo!");
    assert_eq!(r.open_flows(), 0);
    // The last ACK and a late retransmitted FIN (empty) do not reopen anything.
    r.segment(&mk(ToServer, C + 4, Some(S + 5), "", b""), &mut rec);
    r.segment(&mk(ToClient, S + 3, Some(C + 4), "F", b""), &mut rec);
    assert_eq!(r.open_flows(), 0);
    assert_eq!(rec.opened().len(), 1);
    let st = r.stats();
    assert_eq!((st.flows_opened, st.flows_closed, st.flows_evicted), (1, 1, 0));
}

#[test]
fn fin_waits_for_the_hole_before_it() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(3, b"def"), &mut rec);
    r.segment(&mk(ToServer, C + 8, Some(S + 1), "F", b""), &mut rec);
    r.segment(&mk(ToClient, S + 1, Some(C + 1), "F", b""), &mut rec);
    assert_eq!(r.open_flows(), 1);
    r.segment(&cdata(0, b"abc"), &mut rec);
    assert_eq!(r.open_flows(), 1, "6 is still missing");
    // Data past the FIN is ignored.
    r.segment(&cdata(6, b"gXYZ"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.data(id, ToServer), b"abcdefg");
    assert_eq!(rec.closes(), vec![(id, Closing::Fin)]);
}

#[test]
fn fin_hole_acked_becomes_a_gap_and_closes() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"ab"), &mut rec);
    r.segment(&mk(ToServer, C + 11, Some(S + 1), "F", b""), &mut rec);
    r.segment(&mk(ToClient, S + 1, Some(C + 12), "F", b""), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.gaps(id, ToServer), vec![(2, 8)]);
    assert_eq!(rec.closes(), vec![(id, Closing::Fin)]);
}

#[test]
fn rst_flushes_and_closes() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"ab"), &mut rec);
    r.segment(&cdata(5, b"fg"), &mut rec);
    r.segment(&sack(9), &mut rec);
    r.segment(&mk(ToClient, S + 1, None, "R", b""), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.tiles(id, ToServer), [Some(b'a'), Some(b'b'), None, None, None, Some(b'f'), Some(b'g'), None, None]);
    assert_eq!(rec.gaps(id, ToServer), vec![(2, 3), (7, 2)]);
    assert_eq!(rec.closes(), vec![(id, Closing::Rst)]);
    let st = r.stats();
    assert_eq!((st.flows_closed, st.gaps, st.bytes_lost, st.bytes_client), (1, 2, 5, 4));
    assert_eq!(r.open_flows(), 0);
}

#[test]
fn mid_stream_starts_at_first_seq() {
    let (mut r, mut rec) = (Reassembler::new(ReassemblyConfig::default()), Rec::default());
    r.segment(&mk(ToClient, 700, Some(300), "", b"srv"), &mut rec);
    r.segment(&mk(ToServer, 300, Some(703), "", b"cli"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.opened(), vec![(id, Opening::MidStream)]);
    assert_eq!(rec.events[1], Ev::Data(id, ToClient, 0, b"srv".to_vec()));
    assert_eq!(rec.events[2], Ev::Data(id, ToServer, 0, b"cli".to_vec()));
    // A later segment from before the start is old news.
    r.segment(&mk(ToClient, 690, Some(303), "", b"0123456789"), &mut rec);
    assert_eq!(rec.data(id, ToClient), b"srv");
    assert_eq!(r.stats().duplicate_bytes, 10);
}

#[test]
fn mid_stream_starts_at_a_prior_peer_ack() {
    let (mut r, mut rec) = (Reassembler::new(ReassemblyConfig::default()), Rec::default());
    // Server data acks client seq 1000; the client's first data seen is at 1100.
    r.segment(&mk(ToClient, 9000, Some(1000), "", b"s"), &mut rec);
    r.segment(&mk(ToServer, 1100, Some(9001), "", b"later"), &mut rec);
    let id = rec.only_flow();
    assert!(rec.data(id, ToServer).is_empty(), "bytes 0..100 are missing");
    // The server acks past the hole: it is a gap of exactly 100 bytes.
    r.segment(&mk(ToClient, 9001, Some(1105), "", b""), &mut rec);
    assert_eq!(rec.gaps(id, ToServer), vec![(0, 100)]);
    assert_eq!(rec.data(id, ToServer), b"later");
    // An ACK more than 1 MiB before the first byte, or after it, is not a start.
    for (ack, first) in [(1000u32, 1000 + (2 << 20)), (1200, 1100)] {
        let (mut r, mut rec) = (Reassembler::new(ReassemblyConfig::default()), Rec::default());
        r.segment(&mk(ToClient, 9000, Some(ack), "", b"s"), &mut rec);
        r.segment(&mk(ToServer, first, Some(9001), "", b"x"), &mut rec);
        let id = rec.only_flow();
        assert_eq!(rec.events[2], Ev::Data(id, ToServer, 0, b"x".to_vec()));
    }
}

#[test]
fn syn_ack_alone_opens_a_handshake_flow() {
    let (mut r, mut rec) = (Reassembler::new(ReassemblyConfig::default()), Rec::default());
    r.segment(&mk(ToClient, S, Some(C + 1), "S", b""), &mut rec);
    r.segment(&cdata(0, b"a"), &mut rec);
    r.segment(&sdata(0, b"b"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.opened(), vec![(id, Opening::Handshake)]);
    assert_eq!((rec.data(id, ToServer), rec.data(id, ToClient)), (b"a".to_vec(), b"b".to_vec()));
}

#[test]
fn acked_hole_becomes_a_gap() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"ab"), &mut rec);
    r.segment(&cdata(6, b"gh"), &mut rec);
    r.segment(&cdata(12, b"mn"), &mut rec);
    let id = rec.only_flow();
    // An ACK only into the hole: gap up to the ACK, the rest still waits.
    r.segment(&sack(4), &mut rec);
    assert_eq!(rec.gaps(id, ToServer), vec![(2, 2)]);
    assert_eq!(rec.data(id, ToServer), b"ab");
    r.segment(&cdata(4, b"ef"), &mut rec);
    assert_eq!(rec.data(id, ToServer), b"abefgh");
    // An ACK past everything: gap up to the held piece, which is delivered.
    r.segment(&sack(14), &mut rec);
    assert_eq!(rec.gaps(id, ToServer), vec![(2, 2), (8, 4)]);
    assert_eq!(rec.data(id, ToServer), b"abefghmn");
    assert_eq!((r.stats().gaps, r.stats().bytes_lost), (2, 6));
    // An ACK seen before the data: the hole is a gap as soon as data shows it.
    r.segment(&sack(30), &mut rec);
    r.segment(&cdata(20, b"uv"), &mut rec);
    assert_eq!(rec.gaps(id, ToServer).last(), Some(&(14, 6)));
    assert_eq!(rec.data(id, ToServer), b"abefghmnuv");
}

#[test]
fn buffer_cap_forces_a_gap() {
    let cfg = ReassemblyConfig { max_buffered_per_direction: 10, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = handshake_with(cfg, C, S);
    r.segment(&cdata(0, b"a"), &mut rec);
    r.segment(&cdata(5, b"fghij"), &mut rec);
    r.segment(&cdata(20, b"uvwxy"), &mut rec);
    let id = rec.only_flow();
    assert_eq!(r.stats().buffer_overflows, 0);
    r.segment(&cdata(12, b"m"), &mut rec);
    assert_eq!(rec.gaps(id, ToServer), vec![(1, 4)]);
    assert_eq!(rec.data(id, ToServer), b"afghij");
    assert_eq!((r.stats().buffer_overflows, r.stats().gaps, r.stats().bytes_lost), (1, 1, 4));
    // One piece bigger than the cap on its own.
    let big = bytes(30);
    r.segment(&cdata(40, &big), &mut rec);
    assert_eq!(rec.gaps(id, ToServer)[1..], [(10, 2), (13, 7), (25, 15)]);
    assert_eq!(rec.tiles(id, ToServer).len(), 70);
    assert_eq!(r.stats().buffer_overflows, 4);
}

#[test]
fn finish_gaps_up_to_the_fin() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"ab"), &mut rec);
    r.segment(&cdata(4, b"ef"), &mut rec);
    r.segment(&mk(ToServer, C + 11, Some(S + 1), "F", b""), &mut rec);
    r.segment(&sdata(0, b"z"), &mut rec);
    r.finish(99, &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.gaps(id, ToServer), vec![(2, 2), (6, 4)]);
    assert_eq!(rec.data(id, ToServer), b"abef");
    assert!(rec.gaps(id, ToClient).is_empty());
    assert_eq!(rec.closes(), vec![(id, Closing::CaptureEnded)]);
    assert_eq!(r.open_flows(), 0);
    assert_eq!((r.stats().flows_closed, r.stats().flows_open_at_end), (0, 1));
}

#[test]
fn finish_gaps_up_to_the_peer_ack() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"ab"), &mut rec);
    r.segment(&sack(7), &mut rec);
    let id = rec.only_flow();
    assert!(rec.gaps(id, ToServer).is_empty(), "no hole known yet");
    r.finish(99, &mut rec);
    assert_eq!(rec.gaps(id, ToServer), vec![(2, 5)]);
    assert_eq!(rec.closes(), vec![(id, Closing::CaptureEnded)]);
}

#[test]
fn idle_flows_are_evicted() {
    let cfg = ReassemblyConfig { idle_timeout_ns: 100, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    r.segment(&Segment { ts_ns: 1_000, ..cdata(0, b"a") }, &mut rec);
    r.segment(&Segment { key: key_n(1), ts_ns: 1_050, ..cdata(0, b"b") }, &mut rec);
    r.segment(&Segment { ts_ns: 1_060, ..cdata(3, b"d") }, &mut rec);
    r.segment(&Segment { ts_ns: 1_070, ..sack(4) }, &mut rec);
    r.tick(1_150, &mut rec);
    assert_eq!(r.open_flows(), 2, "not idle for longer than the timeout yet");
    r.tick(1_151, &mut rec);
    assert_eq!(r.open_flows(), 1);
    let opened = rec.opened();
    assert_eq!(rec.closes(), vec![(opened[1].0, Closing::Evicted)]);
    r.tick(1_170, &mut rec);
    assert_eq!(r.open_flows(), 1);
    r.tick(1_171, &mut rec);
    assert_eq!(r.open_flows(), 0);
    assert_eq!(rec.gaps(opened[0].0, ToServer), vec![(1, 2)]);
    assert_eq!(rec.data(opened[0].0, ToServer), b"ad");
    let st = r.stats();
    assert_eq!((st.flows_evicted, st.table_full_evictions, st.flows_closed), (2, 0, 0));
}

#[test]
fn full_table_evicts_the_least_recently_active() {
    let cfg = ReassemblyConfig { max_flows: 2, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    for n in [0, 1, 0] {
        r.segment(&Segment { key: key_n(n), ..cdata(n as u32, b"x") }, &mut rec);
    }
    r.segment(&Segment { key: key_n(2), ..cdata(0, b"y") }, &mut rec);
    let opened = rec.opened();
    assert_eq!(opened.len(), 3);
    assert_eq!(rec.closes(), vec![(opened[1].0, Closing::Evicted)]);
    assert_eq!(r.open_flows(), 2);
    let st = r.stats();
    assert_eq!((st.flows_evicted, st.table_full_evictions), (1, 1));
    // The evicted key comes back as a new flow, evicting the now-oldest (key 0).
    r.segment(&Segment { key: key_n(1), ..cdata(1, b"z") }, &mut rec);
    assert_eq!(rec.closes().last(), Some(&(opened[0].0, Closing::Evicted)));
    r.finish(0, &mut rec);
    assert_eq!(rec.closes().len(), 4);
    assert_eq!(r.stats().flows_opened, 4);
}

/// A SYN from the client of `key_n(n)`.
fn syn_n(n: u16) -> Segment<'static> {
    Segment { key: key_n(n), ..mk(ToServer, 7, None, "S", b"") }
}

#[test]
fn a_syn_flood_evicts_half_open_connections_only() {
    let cfg = ReassemblyConfig { max_flows: 10, max_half_open: 4, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    // Two connections with data, one of them a WebSocket session, older than the flood.
    r.segment(&Segment { key: key_n(1), ..cdata(0, b"GET") }, &mut rec);
    r.segment(&Segment { key: key_n(2), ..cdata(0, b"ws") }, &mut rec);
    let ws = rec.opened()[1].0;
    r.promote(ws, &key_n(2));
    for n in 100..1100 {
        r.segment(&syn_n(n), &mut rec);
    }
    assert_eq!(r.open_flows(), 2 + 4, "4 half-open at most, beside the 2 established");
    let st = r.stats();
    assert_eq!((st.half_open_evictions, st.table_full_evictions), (996, 0));
    assert!(rec.closes().iter().all(|(id, _)| id.0 > 2), "only SYN-only flows were evicted");
    // A SYN that goes on to carry data leaves the half-open budget.
    r.segment(&Segment { key: key_n(1099), ..cdata(0, b"x") }, &mut rec);
    r.segment(&syn_n(2000), &mut rec);
    assert_eq!(r.open_flows(), 7);
}

#[test]
fn a_full_table_evicts_the_lowest_class_first() {
    let cfg = ReassemblyConfig { max_flows: 3, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    r.segment(&Segment { key: key_n(1), ..cdata(0, b"a") }, &mut rec); // session, oldest
    r.segment(&Segment { key: key_n(2), ..cdata(0, b"b") }, &mut rec); // plain
    r.segment(&syn_n(3), &mut rec); // half-open, newest
    let ids: Vec<FlowId> = rec.opened().iter().map(|o| o.0).collect();
    r.promote(ids[0], &key_n(1).reversed());
    r.segment(&Segment { key: key_n(4), ..cdata(0, b"c") }, &mut rec);
    r.segment(&Segment { key: key_n(5), ..cdata(0, b"d") }, &mut rec);
    assert_eq!(rec.closes(), vec![(ids[2], Closing::Evicted), (ids[1], Closing::Evicted)]);
    // Only sessions and newer plain flows are left: the oldest plain flow goes next.
    r.segment(&Segment { key: key_n(6), ..cdata(0, b"e") }, &mut rec);
    assert_eq!(rec.closes().len(), 3);
    assert_ne!(rec.closes()[2].0, ids[0], "the session stays");
    let st = r.stats();
    assert_eq!((st.table_full_evictions, st.upgraded_evictions), (3, 0));
    // Sessions only: the least recently active session goes.
    let cfg = ReassemblyConfig { max_flows: 1, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    r.segment(&Segment { key: key_n(1), ..cdata(0, b"a") }, &mut rec);
    r.promote(rec.opened()[0].0, &key_n(1));
    r.segment(&Segment { key: key_n(2), ..cdata(0, b"b") }, &mut rec);
    assert_eq!(r.stats().upgraded_evictions, 1);
}

#[test]
fn the_memory_limit_holds_over_all_connections() {
    let cfg = ReassemblyConfig { memory_limit: 10_000, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    let chunk = bytes(1000);
    // 20 connections each leave a hole and send 5 KB after it: 100 KB to hold.
    for n in 0..20u16 {
        r.segment(&Segment { key: key_n(n), ..cdata(0, b"x") }, &mut rec);
        for i in 0..5u32 {
            r.segment(&Segment { key: key_n(n), ..cdata(100 + i * 1000, &chunk) }, &mut rec);
            let st = r.stats();
            assert!(st.buffered_bytes <= 10_000, "{} held", st.buffered_bytes);
        }
    }
    let st = *r.stats();
    assert!(st.peak_buffered_bytes <= 10_000 && st.peak_buffered_bytes > 5_000, "{st:?}");
    assert!(st.memory_limit_hits > 0);
    // What was given up is a gap for the buffer limit, and the data after it came through.
    let first = rec.opened()[19].0;
    assert_eq!(rec.gaps(first, ToServer), vec![(1, 99)]);
    assert_eq!(rec.losses.get(&Loss::BufferLimit).copied(), Some(st.bytes_lost));
    r.finish(0, &mut rec);
    assert_eq!(r.stats().buffered_bytes, 0);
}

#[test]
fn gaps_say_why() {
    // Acknowledged hole: capture loss. Eviction: the holes still open.
    let cfg = ReassemblyConfig { max_flows: 1, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
    r.segment(&cdata(0, b"a"), &mut rec);
    r.segment(&cdata(5, b"f"), &mut rec);
    r.segment(&sack(3), &mut rec);
    r.segment(&Segment { key: key_n(9), ..cdata(0, b"z") }, &mut rec);
    assert_eq!(rec.losses.get(&Loss::Capture).copied(), Some(2));
    assert_eq!(rec.losses.get(&Loss::Eviction).copied(), Some(2));
}

#[test]
fn an_evicted_session_that_goes_on_is_resumed_where_it_stopped() {
    let cfg = ReassemblyConfig { idle_timeout_ns: 100, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = handshake_with(cfg, C, S);
    r.segment(&cdata(0, b"abc"), &mut rec);
    r.segment(&sdata(0, b"xy"), &mut rec);
    let first = rec.only_flow();
    r.promote(first, &key());
    r.tick(1_000, &mut rec);
    assert_eq!(rec.closes(), vec![(first, Closing::Evicted)]);
    // The server goes on first, then the client: one resumed connection, both
    // streams from where they stopped.
    r.segment(&Segment { ts_ns: 2_000, ..sdata(2, b"z") }, &mut rec);
    r.segment(&Segment { ts_ns: 2_000, ..cdata(3, b"d") }, &mut rec);
    let opened = rec.opened();
    assert_eq!(opened.len(), 2);
    let second = opened[1].0;
    assert_eq!(opened[1].1, Opening::Resumed);
    assert_eq!(rec.flows[&second].key, key(), "oriented as it was");
    assert_eq!(rec.data(second, ToClient), b"z");
    assert_eq!(rec.data(second, ToServer), b"d");
    assert!(rec.gaps(second, ToServer).is_empty());
    // Evicted again without being a session: it comes back mid-stream.
    r.tick(3_000, &mut rec);
    r.segment(&Segment { ts_ns: 4_000, ..cdata(4, b"e") }, &mut rec);
    assert_eq!(rec.opened()[2].1, Opening::MidStream);
}

#[test]
fn a_resumption_far_from_where_the_session_stopped_is_mid_stream() {
    let cfg = ReassemblyConfig { idle_timeout_ns: 100, ..ReassemblyConfig::default() };
    let (mut r, mut rec) = handshake_with(cfg, C, S);
    r.segment(&cdata(0, b"abc"), &mut rec);
    r.promote(rec.only_flow(), &key());
    r.tick(1_000, &mut rec);
    r.segment(&Segment { ts_ns: 2_000, ..cdata(3 + (64 << 20), b"d") }, &mut rec);
    assert_eq!(rec.opened()[1].1, Opening::MidStream);
}

/// A loss note: `n` bytes at client offset `off` (`flags` as in [`mk`]).
fn clost(off: u32, n: u32, flags: &str) -> Segment<'static> {
    Segment { skip: n, ..mk(ToServer, C + 1 + off, Some(S + 1), flags, b"") }
}

#[test]
fn loss_notes_become_exact_gaps_and_a_lost_fin_still_ends_the_stream() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"ab"), &mut rec);
    // The note of bytes 5..8 comes before the record of 2..5 (another ring).
    r.lost(&clost(5, 3, ""), &mut rec);
    r.segment(&cdata(2, b"cde"), &mut rec);
    r.lost(&clost(8, 2, "F"), &mut rec);
    r.segment(&mk(ToClient, S + 1, Some(C + 12), "F", b""), &mut rec);
    let id = rec.only_flow();
    assert_eq!(rec.data(id, ToServer), b"abcde");
    assert_eq!(rec.gaps(id, ToServer), vec![(5, 3), (8, 2)]);
    assert_eq!(rec.closes(), vec![(id, Closing::Fin)], "both FINs, one of them lost");
    assert_eq!(rec.losses.get(&Loss::Capture).copied(), Some(5));
    // A note for the connection just closed opens nothing.
    r.lost(&clost(3, 2, ""), &mut rec);
    assert_eq!(r.open_flows(), 0);
    // A connection whose every record was lost is still accounted.
    r.lost(&Segment { key: key_n(7), ..clost(0, 100, "") }, &mut rec);
    r.finish(0, &mut rec);
    let last = rec.opened()[1].0;
    assert_eq!(rec.gaps(last, ToServer), vec![(0, 100)]);
    assert_eq!(r.stats().loss_notes, 4);
}

#[test]
fn port_reuse_with_a_new_syn() {
    let (mut r, mut rec) = handshake();
    r.segment(&cdata(0, b"a"), &mut rec);
    // Retransmitted SYN: same connection.
    r.segment(&mk(ToServer, C, None, "S", b""), &mut rec);
    assert_eq!(rec.opened().len(), 1);
    // Half closed, then a new SYN with another ISN: old one evicted, new id.
    r.segment(&mk(ToServer, C + 2, Some(S + 1), "F", b""), &mut rec);
    r.segment(&mk(ToServer, 777, None, "S", b""), &mut rec);
    let opened = rec.opened();
    assert_eq!(opened.len(), 2);
    assert_ne!(opened[0].0, opened[1].0);
    assert_eq!(opened[1].1, Opening::Handshake);
    assert_eq!(rec.closes(), vec![(opened[0].0, Closing::Evicted)]);
    // Both FINs seen but a hole left: a new SYN closes it as Fin after a gap.
    r.segment(&mk(ToClient, 50, Some(778), "S", b""), &mut rec);
    r.segment(&mk(ToServer, 778, Some(51), "F", b""), &mut rec);
    r.segment(&mk(ToClient, 53, Some(779), "F", b""), &mut rec);
    r.segment(&mk(ToServer, 778, None, "S", b""), &mut rec);
    let opened = rec.opened();
    assert_eq!(opened.len(), 3);
    assert_eq!(rec.closes()[1], (opened[1].0, Closing::Fin));
    assert_eq!(rec.gaps(opened[1].0, ToClient), vec![(0, 2)]);
    assert_eq!(r.open_flows(), 1);
    let st = r.stats();
    assert_eq!((st.flows_opened, st.flows_closed, st.flows_evicted), (3, 1, 1));
}

#[test]
fn empty_segments_never_open_flows() {
    let (mut r, mut rec) = (Reassembler::new(ReassemblyConfig::default()), Rec::default());
    for flags in ["", "F", "R", "FR"] {
        r.segment(&mk(ToServer, 1, Some(2), flags, b""), &mut rec);
        r.segment(&mk(ToClient, 1, None, flags, b""), &mut rec);
    }
    assert_eq!(r.open_flows(), 0);
    assert!(rec.events.is_empty());
    assert_eq!(r.stats().segments, 8);
    // A SYN does open one, even empty.
    r.segment(&mk(ToServer, 1, None, "S", b""), &mut rec);
    assert_eq!(r.open_flows(), 1);
}

#[test]
fn syn_with_payload_starts_after_the_syn() {
    let (mut r, mut rec) = (Reassembler::new(ReassemblyConfig::default()), Rec::default());
    r.segment(&mk(ToServer, C, None, "S", b"fast"), &mut rec);
    r.segment(&cdata(4, b"open"), &mut rec);
    assert_eq!(rec.data(rec.only_flow(), ToServer), b"fastopen");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Small deterministic generator for layouts (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Pieces `(dir, start, end)` covering both streams, cut at random, with random
    /// re-sent sub-slices, shuffled.
    fn layout(rng: &mut Rng, lens: [usize; 2]) -> Vec<(Direction, usize, usize)> {
        let mut pieces = Vec::new();
        for dir in Direction::BOTH {
            let n = lens[dir.index()];
            let mut at = 0;
            while at < n {
                let len = 1 + if rng.below(8) == 0 { rng.below(4000) } else { rng.below(1500) };
                let end = (at + len).min(n);
                pieces.push((dir, at, end));
                at = end;
            }
            for _ in 0..rng.below(12) {
                if n > 0 {
                    let start = rng.below(n);
                    pieces.push((dir, start, (start + 1 + rng.below(3000)).min(n)));
                }
            }
        }
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.below(i + 1));
        }
        pieces
    }

    fn isn() -> impl Strategy<Value = u32> {
        prop_oneof![any::<u32>(), (u32::MAX - 30_000)..=u32::MAX]
    }

    /// Feeds a whole connection: SYN, SYN-ACK, the pieces not in `dropped`, then (if
    /// `ack_end`) ACKs of each whole stream, then FINs and the last ACK.
    fn feed(
        streams: &[Vec<u8>; 2],
        isns: [u32; 2],
        pieces: &[(Direction, usize, usize)],
        dropped: &[bool],
        ack_end: bool,
        fins: bool,
    ) -> (Reassembler, Rec) {
        let (mut r, mut rec) = handshake_with(ReassemblyConfig::default(), isns[0], isns[1]);
        let seq = |dir: Direction, off: usize| isns[dir.index()].wrapping_add(1).wrapping_add(off as u32);
        let end = |dir: Direction| seq(dir, streams[dir.index()].len());
        for (i, &(dir, a, b)) in pieces.iter().enumerate() {
            if !dropped.get(i).copied().unwrap_or(false) {
                let data = &streams[dir.index()][a..b];
                r.segment(&mk(dir, seq(dir, a), Some(seq(dir.reverse(), 0)), "", data), &mut rec);
            }
        }
        if ack_end {
            for dir in Direction::BOTH {
                r.segment(&mk(dir.reverse(), seq(dir.reverse(), 0), Some(end(dir)), "", b""), &mut rec);
            }
        }
        if fins {
            let (c, s) = (end(ToServer), end(ToClient));
            r.segment(&mk(ToServer, c, Some(s), "F", b""), &mut rec);
            r.segment(&mk(ToClient, s, Some(c.wrapping_add(1)), "F", b""), &mut rec);
            r.segment(&mk(ToServer, c.wrapping_add(1), Some(s.wrapping_add(1)), "", b""), &mut rec);
        } else {
            r.finish(0, &mut rec);
        }
        (r, rec)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn reordered_duplicated_streams_rebuild_exactly(
            c in proptest::collection::vec(any::<u8>(), 0..20_000),
            s in proptest::collection::vec(any::<u8>(), 0..20_000),
            isns in (isn(), isn()),
            seed in any::<u64>(),
        ) {
            let streams = [c, s];
            let mut rng = Rng(seed | 1);
            let pieces = layout(&mut rng, [streams[0].len(), streams[1].len()]);
            let (r, rec) = feed(&streams, [isns.0, isns.1], &pieces, &[], false, true);
            let id = rec.only_flow();
            prop_assert_eq!(rec.data(id, ToServer), streams[0].clone());
            prop_assert_eq!(rec.data(id, ToClient), streams[1].clone());
            prop_assert_eq!(r.stats().gaps, 0);
            prop_assert_eq!(rec.closes(), vec![(id, Closing::Fin)]);
            prop_assert_eq!(r.open_flows(), 0);
        }

        #[test]
        fn dropped_segments_become_exact_gaps(
            c in proptest::collection::vec(any::<u8>(), 0..20_000),
            s in proptest::collection::vec(any::<u8>(), 0..20_000),
            isns in (isn(), isn()),
            seed in any::<u64>(),
            drop_rate in 0usize..5,
            fins in any::<bool>(),
        ) {
            let streams = [c, s];
            let mut rng = Rng(seed | 1);
            let pieces = layout(&mut rng, [streams[0].len(), streams[1].len()]);
            let dropped: Vec<bool> = pieces.iter().map(|_| rng.below(5) < drop_rate).collect();
            let (r, rec) = feed(&streams, [isns.0, isns.1], &pieces, &dropped, true, fins);
            let id = rec.only_flow();
            let mut lost = 0;
            for dir in Direction::BOTH {
                let original = &streams[dir.index()];
                let mut seen = vec![false; original.len()];
                for (&(d, a, b), &gone) in pieces.iter().zip(&dropped) {
                    if d == dir && !gone {
                        seen[a..b].iter_mut().for_each(|x| *x = true);
                    }
                }
                let tiles = rec.tiles(id, dir);
                prop_assert_eq!(tiles.len(), original.len());
                for (i, tile) in tiles.iter().enumerate() {
                    let expected = if seen[i] { Some(original[i]) } else { None };
                    prop_assert_eq!(*tile, expected, "{:?} offset {}", dir, i);
                }
                lost += seen.iter().filter(|x| !**x).count() as u64;
            }
            prop_assert_eq!(r.stats().bytes_lost, lost);
            let closing = if fins { Closing::Fin } else { Closing::CaptureEnded };
            prop_assert_eq!(rec.closes(), vec![(id, closing)]);
        }

        #[test]
        fn arbitrary_segments_keep_the_contract(
            segs in proptest::collection::vec(
                (0u16..3, any::<bool>(), 0u32..64, any::<u32>(), 0u8..64,
                 proptest::collection::vec(any::<u8>(), 0..24), 0u64..50, any::<bool>()),
                0..200),
            base in any::<u32>(),
        ) {
            let cfg = ReassemblyConfig {
                max_flows: 2,
                max_buffered_per_direction: 16,
                idle_timeout_ns: 20,
                ..ReassemblyConfig::default()
            };
            let (mut r, mut rec) = (Reassembler::new(cfg), Rec::default());
            let mut ts = 0;
            for (k, to_server, seq, ack, flags, data, dt, tick) in segs {
                ts += dt;
                let seg = Segment {
                    key: key_n(k),
                    dir: if to_server { ToServer } else { ToClient },
                    // Mostly near one another, sometimes anywhere.
                    seq: if flags & 32 != 0 { ack } else { base.wrapping_add(seq) },
                    ack: if flags & 16 != 0 { ack } else { base.wrapping_add(seq / 2) },
                    flags: TcpFlags { syn: flags & 1 != 0, ack: flags & 2 != 0, fin: flags & 4 != 0, rst: flags & 8 != 0 },
                    data: &data,
                    skip: 0,
                    ts_ns: ts,
                    iface: 0,
                };
                r.segment(&seg, &mut rec);
                if tick {
                    r.tick(ts, &mut rec);
                }
                prop_assert!(r.open_flows() <= 2);
            }
            r.finish(ts, &mut rec);
            let st = *r.stats();
            prop_assert_eq!(r.open_flows(), 0);
            prop_assert_eq!(rec.opened().len() as u64, st.flows_opened);
            prop_assert_eq!(rec.closes().len() as u64, st.flows_opened);
            prop_assert_eq!(st.flows_opened, st.flows_closed + st.flows_evicted + st.flows_open_at_end);
            let (mut data, mut gaps, mut lost) = (0, 0, 0);
            for e in &rec.events {
                match e {
                    Ev::Data(_, _, _, b) => data += b.len() as u64,
                    Ev::Gap(_, _, _, n) => { gaps += 1; lost += n; }
                    _ => {}
                }
            }
            prop_assert_eq!(data, st.bytes_client + st.bytes_server);
            prop_assert_eq!((gaps, lost), (st.gaps, st.bytes_lost));
        }
    }
}
