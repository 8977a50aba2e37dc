//! `replay` and `detect_ports` on capture files written here, byte by byte: legacy pcap
//! (both byte orders, micro- and nanosecond) and pcapng (both byte orders, several
//! interfaces), with packets built by etherparse. No tcpdump or tshark needed.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpHeader};
use proptest::prelude::*;
use ws_monitor::flow::{Direction, FlowKey, TcpFlags};
use ws_monitor::sources::replay::{detect_ports, replay, ReplayStats};

// ---------------------------------------------------------------------------------------
// File writers
// ---------------------------------------------------------------------------------------

/// One legacy pcap record.
struct Rec<'a> {
    sec: u32,
    frac: u32,
    data: &'a [u8],
    /// Original length on the wire (≥ data.len() when cut by the snapshot length).
    orig: u32,
}

fn rec(sec: u32, frac: u32, data: &[u8]) -> Rec<'_> {
    Rec { sec, frac, data, orig: data.len() as u32 }
}

/// A legacy pcap file.
fn pcap(linktype: u32, nanos: bool, big_endian: bool, snaplen: u32, recs: &[Rec<'_>]) -> Vec<u8> {
    let u32b = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
    let u16b = |v: u16| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
    let mut out = Vec::new();
    out.extend(u32b(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
    out.extend(u16b(2));
    out.extend(u16b(4));
    out.extend(u32b(0));
    out.extend(u32b(0));
    out.extend(u32b(snaplen));
    out.extend(u32b(linktype));
    for r in recs {
        out.extend(u32b(r.sec));
        out.extend(u32b(r.frac));
        out.extend(u32b(r.data.len() as u32));
        out.extend(u32b(r.orig));
        out.extend_from_slice(r.data);
    }
    out
}

/// A pcapng file, block by block.
struct Ng {
    be: bool,
    out: Vec<u8>,
}

impl Ng {
    fn new(be: bool) -> Ng {
        let mut ng = Ng { be, out: Vec::new() };
        ng.shb();
        ng
    }
    fn u32b(&self, v: u32) -> [u8; 4] {
        if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    fn u16b(&self, v: u16) -> [u8; 2] {
        if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    fn block(&mut self, kind: u32, body: &[u8]) -> &mut Ng {
        let mut body = body.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let len = 12 + body.len() as u32;
        let (k, l) = (self.u32b(kind), self.u32b(len));
        self.out.extend(k);
        self.out.extend(l);
        self.out.extend(body);
        self.out.extend(l);
        self
    }
    fn shb(&mut self) -> &mut Ng {
        let mut body = Vec::new();
        body.extend(self.u32b(0x1a2b_3c4d));
        body.extend(self.u16b(1));
        body.extend(self.u16b(0));
        body.extend(if self.be { (-1i64).to_be_bytes() } else { (-1i64).to_le_bytes() });
        self.block(0x0a0d_0d0a, &body)
    }
    /// Interface Description Block with optional if_tsresol and if_tsoffset.
    fn idb(&mut self, linktype: u16, snaplen: u32, tsresol: Option<u8>, tsoffset: Option<i64>) -> &mut Ng {
        let mut body = Vec::new();
        body.extend(self.u16b(linktype));
        body.extend(self.u16b(0));
        body.extend(self.u32b(snaplen));
        if let Some(r) = tsresol {
            body.extend(self.u16b(9));
            body.extend(self.u16b(1));
            body.extend([r, 0, 0, 0]);
        }
        if let Some(o) = tsoffset {
            body.extend(self.u16b(14));
            body.extend(self.u16b(8));
            body.extend(if self.be { o.to_be_bytes() } else { o.to_le_bytes() });
        }
        if tsresol.is_some() || tsoffset.is_some() {
            body.extend([0, 0, 0, 0]); // opt_endofopt
        }
        self.block(1, &body)
    }
    /// Enhanced Packet Block; `ts` in interface units.
    fn epb(&mut self, iface: u32, ts: u64, data: &[u8], orig: u32) -> &mut Ng {
        let mut body = Vec::new();
        body.extend(self.u32b(iface));
        body.extend(self.u32b((ts >> 32) as u32));
        body.extend(self.u32b(ts as u32));
        body.extend(self.u32b(data.len() as u32));
        body.extend(self.u32b(orig));
        body.extend_from_slice(data);
        self.block(6, &body)
    }
    /// Simple Packet Block.
    fn spb(&mut self, data: &[u8]) -> &mut Ng {
        let mut body = Vec::new();
        body.extend(self.u32b(data.len() as u32));
        body.extend_from_slice(data);
        self.block(3, &body)
    }
    fn bytes(&self) -> Vec<u8> {
        self.out.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const CLIENT4: [u8; 4] = [192, 168, 1, 10];
const SERVER4: [u8; 4] = [192, 168, 1, 20];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const SERVER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20];

/// TCP header fields of a crafted segment.
#[derive(Clone, Copy)]
struct T {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
}

fn t(sport: u16, dport: u16, seq: u32) -> T {
    T { sport, dport, seq, ack: None, syn: false, fin: false, rst: false }
}

impl T {
    fn ack(mut self, n: u32) -> T {
        self.ack = Some(n);
        self
    }
    fn syn(mut self) -> T {
        self.syn = true;
        self
    }
    fn fin(mut self) -> T {
        self.fin = true;
        self
    }
    fn rst(mut self) -> T {
        self.rst = true;
        self
    }
    fn header(&self) -> TcpHeader {
        let mut h = TcpHeader::new(self.sport, self.dport, self.seq, 65535);
        if let Some(a) = self.ack {
            h.ack = true;
            h.acknowledgment_number = a;
        }
        h.syn = self.syn;
        h.fin = self.fin;
        h.rst = self.rst;
        h
    }
    fn flags(&self) -> TcpFlags {
        TcpFlags { syn: self.syn, ack: self.ack.is_some(), fin: self.fin, rst: self.rst }
    }
}

fn finish(b: PacketBuilderStep<IpHeaders>, tcp: &T, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    b.tcp_header(tcp.header()).write(&mut out, payload).unwrap();
    out
}

fn eth4(from: [u8; 4], to: [u8; 4], tcp: T, payload: &[u8]) -> Vec<u8> {
    finish(PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(from, to, 64), &tcp, payload)
}

fn eth6(from: [u8; 16], to: [u8; 16], tcp: T, payload: &[u8]) -> Vec<u8> {
    finish(PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(from, to, 64), &tcp, payload)
}

fn ip4(from: [u8; 4], to: [u8; 4], tcp: T, payload: &[u8]) -> Vec<u8> {
    finish(PacketBuilder::ipv4(from, to, 64), &tcp, payload)
}

fn ip6(from: [u8; 16], to: [u8; 16], tcp: T, payload: &[u8]) -> Vec<u8> {
    finish(PacketBuilder::ipv6(from, to, 64), &tcp, payload)
}

fn udp4(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, SERVER4, 64)
        .udp(sport, dport)
        .write(&mut out, b"dns?")
        .unwrap();
    out
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(MAC_A);
    f.extend([0x08, 0x06]); // ARP
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4 request
    f.extend(MAC_A);
    f.extend(CLIENT4);
    f.extend([0; 6]);
    f.extend(SERVER4);
    f.resize(60, 0);
    f
}

// ---------------------------------------------------------------------------------------
// Running replay
// ---------------------------------------------------------------------------------------

/// A `Segment` with owned data.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seg {
    key: FlowKey,
    dir: Direction,
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    data: Vec<u8>,
    ts_ns: u64,
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

fn run(path: &Path, ports: &[u16]) -> (Vec<Seg>, ReplayStats) {
    let mut segs = Vec::new();
    let stats = replay(path, ports, |s| {
        segs.push(Seg {
            key: s.key,
            dir: s.dir,
            seq: s.seq,
            ack: s.ack,
            flags: s.flags,
            data: s.data.to_vec(),
            ts_ns: s.ts_ns,
        })
    })
    .unwrap();
    assert_eq!(
        stats.packets,
        stats.matched
            + stats.other_port
            + stats.not_ip
            + stats.not_tcp
            + stats.fragments
            + stats.ipv6_ext
            + stats.truncated
            + stats.unsupported_link,
        "every record in exactly one bucket: {stats:?}"
    );
    (segs, stats)
}

fn run_bytes(bytes: &[u8], ports: &[u16]) -> (Vec<Seg>, ReplayStats) {
    let dir = Dir::new();
    run(&dir.file("c.pcap", bytes), ports)
}

fn err_of(bytes: Option<&[u8]>, name: &str) -> String {
    let dir = Dir::new();
    let path = match bytes {
        Some(b) => dir.file(name, b),
        None => dir.0.path().join(name),
    };
    let err = replay(&path, &[80], |_| {}).unwrap_err().to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn key4(cport: u16, sport: u16) -> FlowKey {
    FlowKey { client: sa(Ipv4Addr::from(CLIENT4), cport), server: sa(Ipv4Addr::from(SERVER4), sport) }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn ethernet_ipv4_and_ipv6_exact_segments_and_counts() {
    let syn = t(40000, 8080, 100).syn();
    let synack = t(8080, 40000, 5000).syn().ack(101);
    let data = t(40000, 8080, 101).ack(5001);
    let reply = t(8080, 40000, 5001).ack(106).fin();
    let v6 = t(50000, 8080, 7).ack(9);
    let rst = t(8080, 40000, 5002).rst();
    let other = t(12345, 80, 1).ack(1);
    let frames = [
        eth4(CLIENT4, SERVER4, syn, b""),
        eth4(SERVER4, CLIENT4, synack, b""),
        eth4(CLIENT4, SERVER4, data, b"hello"),
        eth4(SERVER4, CLIENT4, reply, b"world!"),
        eth6(CLIENT6, SERVER6, v6, b"six"),
        eth4(SERVER4, CLIENT4, rst, b""),
        eth4(CLIENT4, SERVER4, other, b"GET / HTTP/1.1\r\n\r\n"),
    ];
    let recs: Vec<Rec<'_>> =
        frames.iter().enumerate().map(|(i, f)| rec(1_700_000_000 + i as u32, 250_000, f)).collect();
    let (segs, stats) = run_bytes(&pcap(1, false, false, 65535, &recs), &[8080]);

    let ts = |i: u64| (1_700_000_000 + i) * 1_000_000_000 + 250_000_000;
    let k = key4(40000, 8080);
    let k6 = FlowKey { client: sa(Ipv6Addr::from(CLIENT6), 50000), server: sa(Ipv6Addr::from(SERVER6), 8080) };
    let seg = |key, dir, tcp: T, data: &[u8], i| Seg {
        key,
        dir,
        seq: tcp.seq,
        ack: tcp.ack.unwrap_or(0),
        flags: tcp.flags(),
        data: data.to_vec(),
        ts_ns: ts(i),
    };
    use Direction::{ToClient, ToServer};
    assert_eq!(
        segs,
        vec![
            seg(k, ToServer, syn, b"", 0),
            seg(k, ToClient, synack, b"", 1),
            seg(k, ToServer, data, b"hello", 2),
            seg(k, ToClient, reply, b"world!", 3),
            seg(k6, ToServer, v6, b"six", 4),
            seg(k, ToClient, rst, b"", 5),
        ]
    );
    assert_eq!(stats, ReplayStats { packets: 7, matched: 6, other_port: 1, ..ReplayStats::default() });

    // Monitoring port 80 instead: only the last packet, towards the server.
    let (segs, stats) = run_bytes(&pcap(1, false, false, 65535, &recs), &[80]);
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].key, segs[0].dir), (key4(12345, 80), ToServer));
    assert_eq!((stats.matched, stats.other_port), (1, 6));

    // Monitoring the client's ephemeral port: the direction rule makes it the "server".
    let (segs, _) = run_bytes(&pcap(1, false, false, 65535, &recs), &[40000]);
    assert_eq!(segs.len(), 5);
    assert_eq!(segs[0].dir, ToClient);
    assert_eq!(segs[0].key.server, sa(Ipv4Addr::from(CLIENT4), 40000));
}

#[test]
fn link_types_vlan_sll_sll2_raw_null() {
    let tcp = t(40000, 8080, 1).ack(2);
    let ip = ip4(CLIENT4, SERVER4, tcp, b"payload");
    let ip_v6 = ip6(CLIENT6, SERVER6, tcp, b"payload");

    let mut vlan = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(42.try_into().unwrap())
        .ipv4(CLIENT4, SERVER4, 64)
        .tcp_header(tcp.header())
        .write(&mut vlan, b"payload")
        .unwrap();
    let mut qinq = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(1.try_into().unwrap(), 2.try_into().unwrap())
        .ipv6(CLIENT6, SERVER6, 64)
        .tcp_header(tcp.header())
        .write(&mut qinq, b"payload")
        .unwrap();
    // SLL: packet type (outgoing), ARPHRD_ETHER, address length 6, address, protocol.
    let mut sll = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
    sll.extend(&ip);
    // SLL2: protocol, reserved, ifindex, ARPHRD_LOOPBACK (772), packet type, addr len, addr.
    let mut sll2 = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 1, 0x03, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    sll2.extend(&ip_v6);
    let mut null = 2u32.to_le_bytes().to_vec(); // AF_INET, little-endian host
    null.extend(&ip);
    let mut null6 = 30u32.to_be_bytes().to_vec(); // AF_INET6 (macOS), big-endian host
    null6.extend(&ip_v6);

    let cases: [(u32, &[u8]); 11] = [
        (1, &vlan),
        (1, &qinq),
        (113, &sll),
        (276, &sll2),
        (101, &ip),
        (101, &ip_v6),
        (12, &ip),
        (14, &ip_v6),
        (228, &ip),
        (229, &ip_v6),
        (0, &null),
    ];
    for (linktype, frame) in cases.iter().chain([(108u32, null6.as_slice())].iter()) {
        let (segs, stats) = run_bytes(&pcap(*linktype, false, false, 65535, &[rec(1, 0, frame)]), &[8080]);
        assert_eq!(stats.matched, 1, "link type {linktype}: {stats:?}");
        assert_eq!(segs[0].data, b"payload", "link type {linktype}");
        assert_eq!((segs[0].seq, segs[0].ack, segs[0].dir), (1, 2, Direction::ToServer));
    }
}

#[test]
fn padding_snaplen_cut_and_cut_headers() {
    // A 2-byte payload in a minimum-size (60 byte) Ethernet frame: the rest is padding.
    let mut padded = eth4(CLIENT4, SERVER4, t(1000, 80, 1).ack(1), b"hi");
    assert!(padded.len() < 60);
    padded.resize(60, 0xAA);
    // A 1000-byte payload of which the capture kept 200.
    let full = eth4(CLIENT4, SERVER4, t(1000, 80, 3).ack(1), &[b'x'; 1000]);
    let headers = 14 + 20 + 20;
    let kept = &full[..headers + 200];
    // A frame cut in the middle of the TCP header.
    let cut_tcp = &full[..headers - 5];
    // IPv6, cut inside the payload.
    let full6 = eth6(CLIENT6, SERVER6, t(1000, 80, 9), &[b'y'; 300]);
    let kept6 = &full6[..14 + 40 + 20 + 100];
    let recs = [
        rec(1, 0, &padded),
        Rec { sec: 2, frac: 0, data: kept, orig: full.len() as u32 },
        Rec { sec: 3, frac: 0, data: cut_tcp, orig: full.len() as u32 },
        Rec { sec: 4, frac: 0, data: kept6, orig: full6.len() as u32 },
        rec(5, 0, &full[..10]),
    ];
    let (segs, stats) = run_bytes(&pcap(1, false, false, 254, &recs), &[80]);
    assert_eq!(segs.len(), 3);
    assert_eq!(segs[0].data, b"hi");
    assert_eq!(segs[1].data, vec![b'x'; 200]);
    assert_eq!(segs[1].seq, 3);
    assert_eq!(segs[2].data, vec![b'y'; 100]);
    assert_eq!(stats.snaplen_cut_bytes, 800 + 200);
    assert_eq!((stats.matched, stats.truncated), (3, 2));
}

#[test]
fn non_tcp_and_fragments_are_counted_not_delivered() {
    let tcp = t(1000, 80, 1).ack(1);
    // IPv4 first fragment (more-fragments set) and a later fragment.
    let mut first = eth4(CLIENT4, SERVER4, tcp, b"fragment one");
    first[14 + 6] = 0x20; // MF
    let mut later = eth4(CLIENT4, SERVER4, tcp, b"fragment two");
    later[14 + 6..14 + 8].copy_from_slice(&100u16.to_be_bytes()); // offset 800
                                                                  // IPv6 with ESP instead of TCP: cannot be followed.
    let mut esp = eth6(CLIENT6, SERVER6, tcp, b"sealed");
    esp[14 + 6] = 50;
    // An IPv6 fragment header that fragments.
    let mut frag6 = eth6(CLIENT6, SERVER6, tcp, b"sealed");
    frag6[14 + 6] = 44;
    frag6.splice(14 + 40..14 + 40, [6u8, 0, 0, 1, 0, 0, 0, 7]);
    let plen = u16::from_be_bytes([frag6[18], frag6[19]]) + 8;
    frag6[18..20].copy_from_slice(&plen.to_be_bytes());
    // IPv4 with a broken header length.
    let mut bad_ihl = eth4(CLIENT4, SERVER4, tcp, b"x");
    bad_ihl[14] = 0x43;
    let lldp = {
        let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
        f.extend(MAC_A);
        f.extend([0x88, 0xcc]);
        f.resize(60, 0);
        f
    };
    let frames = [udp4(5353, 80), arp(), first, later, esp, frag6, bad_ihl, lldp, vec![1, 2, 3]];
    let recs: Vec<Rec<'_>> = frames.iter().map(|f| rec(1, 0, f)).collect();
    let (segs, stats) = run_bytes(&pcap(1, false, false, 65535, &recs), &[80]);
    assert!(segs.is_empty());
    assert_eq!(
        stats,
        ReplayStats {
            packets: 9,
            not_tcp: 1,
            not_ip: 2,
            fragments: 3,
            ipv6_ext: 1,
            truncated: 2,
            ..ReplayStats::default()
        }
    );
}

#[test]
fn pcapng_two_interfaces_nanosecond_tsresol_and_sections() {
    for be in [false, true] {
        let a = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"on ethernet");
        let b = ip6(CLIENT6, SERVER6, t(50000, 8080, 2).ack(2), b"on raw ip");
        let c = eth4(SERVER4, CLIENT4, t(8080, 40000, 9).ack(12), b"simple");
        let mut ng = Ng::new(be);
        ng.idb(1, 0, None, None) // Ethernet, microseconds
            .idb(101, 65535, Some(9), Some(100)) // raw IP, nanoseconds, +100 s
            .block(0x0bad, b"an unknown block type is skipped")
            .epb(0, 1_700_000_000_123_456, &a, a.len() as u32)
            .epb(1, 5_000_000_007, &b, b.len() as u32)
            .spb(&c)
            .block(5, &[0; 16]); // interface statistics
                                 // A second section: interfaces start over.
        ng.shb().idb(228, 0, Some(0x80 | 10), None).epb(0, 3 * 1024 + 512, &a[14..], (a.len() - 14) as u32);
        let (segs, stats) = run_bytes(&ng.bytes(), &[8080]);
        assert_eq!(stats, ReplayStats { packets: 4, matched: 4, ..ReplayStats::default() }, "be={be}");
        assert_eq!(segs[0].data, b"on ethernet");
        assert_eq!(segs[0].ts_ns, 1_700_000_000_123_456_000);
        assert_eq!(segs[1].data, b"on raw ip");
        assert_eq!(segs[1].ts_ns, 105_000_000_007);
        assert_eq!(segs[1].key.client, sa(Ipv6Addr::from(CLIENT6), 50000));
        // The Simple Packet Block has no time of its own: it gets the last one.
        assert_eq!((segs[2].data.as_slice(), segs[2].dir), (&b"simple"[..], Direction::ToClient));
        assert_eq!(segs[2].ts_ns, 105_000_000_007);
        // 2^-10 s units.
        assert_eq!(segs[3].ts_ns, 3_500_000_000);
        assert_eq!(segs[3].data, b"on ethernet");
    }
}

#[test]
fn pcap_nanosecond_and_big_endian() {
    let f = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"x");
    for (nanos, be) in [(false, false), (true, false), (false, true), (true, true)] {
        let (segs, stats) = run_bytes(&pcap(1, nanos, be, 65535, &[rec(10, 999_999, &f)]), &[8080]);
        assert_eq!(stats.matched, 1);
        let frac = if nanos { 999_999 } else { 999_999_000 };
        assert_eq!(segs[0].ts_ns, 10_000_000_000 + frac, "nanos={nanos} be={be}");
    }
}

#[test]
fn unsupported_link_types() {
    let f = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"x");
    let err = err_of(Some(&pcap(127, false, false, 65535, &[rec(1, 0, &f)])), "wifi.pcap");
    assert!(err.contains("link-layer type 127") && err.contains("RADIOTAP"), "{err}");

    // pcapng whose only interface is USB: an error naming it.
    let mut ng = Ng::new(false);
    ng.idb(189, 0, None, None).epb(0, 0, &f, f.len() as u32);
    let err = err_of(Some(&ng.bytes()), "usb.pcapng");
    assert!(err.contains("link-layer type 189") && err.contains("USB_LINUX"), "{err}");

    // One decodable interface among others: the rest are only counted.
    let mut ng = Ng::new(false);
    ng.idb(189, 0, None, None).idb(1, 0, None, None).epb(0, 0, &f, f.len() as u32).epb(1, 0, &f, f.len() as u32);
    let (segs, stats) = run_bytes(&ng.bytes(), &[8080]);
    assert_eq!(segs.len(), 1);
    assert_eq!((stats.unsupported_link, stats.matched), (1, 1));
}

#[test]
fn file_errors_are_one_clear_line() {
    let dir = Dir::new();
    let missing = dir.0.path().join("nope.pcap");
    let err = replay(&missing, &[80], |_| {}).unwrap_err().to_string();
    assert_eq!(err, format!("cannot open {}: No such file or directory", missing.display()));
    assert_eq!(detect_ports(&missing).unwrap_err().to_string(), err);

    let err = replay(dir.0.path(), &[80], |_| {}).unwrap_err().to_string();
    assert!(err.starts_with("cannot open") && err.ends_with("Is a directory"), "{err}");

    let err = err_of(Some(b"<!DOCTYPE html><html>"), "page.pcap");
    assert!(
        err.contains("page.pcap is not a pcap or pcapng capture (starts with 3c 21 44 4f 43 54 59 50 \"<!DOCTYP\")"),
        "{err}"
    );
    assert!(err.ends_with("save captures with tcpdump -w or Wireshark"), "{err}");

    let err = err_of(Some(b""), "empty.pcap");
    assert!(err.contains("empty.pcap is empty"), "{err}");

    let err = err_of(Some(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), "c.pcap.gz");
    assert!(err.contains("gzip-compressed") && err.contains("decompress"), "{err}");

    // Cut inside the file header.
    let err = err_of(Some(&pcap(1, false, false, 65535, &[])[..10]), "short.pcap");
    assert!(err.contains("cut short inside its pcap file header"), "{err}");
    let err = err_of(Some(&Ng::new(false).bytes()[..20]), "short.pcapng");
    assert!(err.contains("cut short inside its pcapng file header"), "{err}");
}

#[test]
fn file_cut_mid_record_keeps_what_came_before() {
    let f = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"complete");
    let g = eth4(CLIENT4, SERVER4, t(40000, 8080, 9).ack(1), b"never seen");
    let full = pcap(1, false, false, 65535, &[rec(1, 0, &f), rec(2, 0, &g)]);
    for cut in [full.len() - 1, full.len() - g.len() - 3, 24 + 16 + f.len() + 1] {
        let (segs, stats) = run_bytes(&full[..cut], &[8080]);
        assert_eq!(segs.len(), 1, "cut at {cut}");
        assert_eq!(segs[0].data, b"complete");
        assert!(stats.truncated_file, "cut at {cut}");
        assert_eq!(stats.packets, 1);
    }
    // Exactly at a record boundary: complete, not truncated.
    let (_, stats) = run_bytes(&full[..24 + 16 + f.len()], &[8080]);
    assert!(!stats.truncated_file);
    // A header-only file is an empty capture.
    let (segs, stats) = run_bytes(&full[..24], &[8080]);
    assert!(segs.is_empty() && !stats.truncated_file && stats.packets == 0);

    let mut ng = Ng::new(false);
    ng.idb(1, 0, None, None).epb(0, 0, &f, f.len() as u32).epb(0, 1, &g, g.len() as u32);
    let bytes = ng.bytes();
    let (segs, stats) = run_bytes(&bytes[..bytes.len() - 4], &[8080]);
    assert_eq!((segs.len(), stats.truncated_file), (1, true));
}

#[test]
fn garbage_inside_the_file_is_an_error() {
    let f = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"x");
    // pcapng block with an impossible length.
    let mut bytes = Ng::new(false).idb(1, 0, None, None).bytes();
    bytes.extend([6, 0, 0, 0, 5, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    let err = err_of(Some(&bytes), "bad.pcapng");
    assert!(err.contains("bad.pcapng is corrupt at byte") && err.contains("pcapfix"), "{err}");

    // pcapng block whose trailing length does not match.
    let mut ng = Ng::new(false);
    ng.idb(1, 0, None, None).epb(0, 0, &f, f.len() as u32);
    let mut bytes = ng.bytes();
    let n = bytes.len();
    bytes[n - 4] ^= 0x40;
    let err = err_of(Some(&bytes), "bad2.pcapng");
    assert!(err.contains("corrupt at byte"), "{err}");

    // A packet length that overruns its (otherwise well-formed) block, in the middle of
    // a file that goes on: corrupt, not "cut short", and found without reading on.
    let mut ng = Ng::new(false);
    ng.idb(1, 0, None, None).epb(0, 0, &f, f.len() as u32);
    let epb_at = ng.out.len();
    ng.epb(0, 1, &f, f.len() as u32).epb(0, 2, &f, f.len() as u32);
    let mut bytes = ng.bytes();
    bytes[epb_at + 20..epb_at + 24].copy_from_slice(&4000u32.to_le_bytes());
    let err = err_of(Some(&bytes), "overrun.pcapng");
    assert!(err.contains(&format!("corrupt at byte {epb_at}")) && err.contains("overrun"), "{err}");

    // Packet on an interface that was never declared.
    let mut ng = Ng::new(false);
    ng.idb(1, 0, None, None).epb(3, 0, &f, f.len() as u32);
    let err = err_of(Some(&ng.bytes()), "iface.pcapng");
    assert!(err.contains("interface 3"), "{err}");

    // pcap record claiming more than any snapshot length.
    let mut bytes = pcap(1, false, false, 65535, &[rec(1, 0, &f)]);
    bytes.extend([0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f]);
    bytes.extend([0u8; 100]);
    let err = err_of(Some(&bytes), "huge.pcap");
    assert!(err.contains("corrupt at byte") && err.contains("2147483647"), "{err}");
}

#[test]
fn streams_files_larger_than_the_buffer() {
    // ~6 MB of records: several refills of the 1 MiB buffer.
    let payload = vec![b'z'; 1400];
    let frames: Vec<Vec<u8>> =
        (0..4000u32).map(|i| eth4(CLIENT4, SERVER4, t(40000, 8080, i * 1400).ack(1), &payload)).collect();
    let recs: Vec<Rec<'_>> = frames.iter().map(|f| rec(1, 0, f)).collect();
    let mut total = 0u64;
    let mut next_seq = 0u32;
    let dir = Dir::new();
    let path = dir.file("big.pcap", &pcap(1, false, false, 65535, &recs));
    let stats = replay(&path, &[8080], |s| {
        assert_eq!(s.seq, next_seq);
        next_seq += 1400;
        total += s.data.len() as u64;
    })
    .unwrap();
    assert_eq!((stats.matched, total), (4000, 4000 * 1400));

    // One pcapng block bigger than the buffer (a 3 MiB unknown block), then a packet.
    let f = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"after");
    let mut ng = Ng::new(false);
    ng.idb(1, 0, None, None).block(0x4000_0001, &vec![0x55; 3 << 20]).epb(0, 0, &f, f.len() as u32);
    let (segs, _) = run_bytes(&ng.bytes(), &[8080]);
    assert_eq!(segs[0].data, b"after");
}

#[test]
fn reads_from_a_pipe_written_in_dribbles() {
    use std::io::Write;
    let f = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"through a pipe");
    let mut ng = Ng::new(false);
    ng.idb(1, 0, None, None);
    for i in 0..50 {
        ng.epb(0, i, &f, f.len() as u32);
    }
    let bytes = ng.bytes();
    let dir = Dir::new();
    let fifo = dir.0.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mkfifo not available");
        return;
    }
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new().write(true).open(writer_path).unwrap();
        for chunk in bytes.chunks(7) {
            w.write_all(chunk).unwrap();
            w.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    });
    let (segs, stats) = run(&fifo, &[8080]);
    writer.join().unwrap();
    assert_eq!((segs.len(), stats.truncated_file), (50, false));
    assert!(segs.iter().all(|s| s.data == b"through a pipe"));
}

#[test]
fn detect_ports_finds_websocket_servers() {
    let upgrade = b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let plain = b"GET /index.html HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n";
    let response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let frames = [
        eth4(CLIENT4, SERVER4, t(40000, 80, 1).ack(1), plain),
        eth4(CLIENT4, SERVER4, t(40001, 8080, 1).ack(1), upgrade),
        eth4(SERVER4, CLIENT4, t(8080, 40001, 1).ack(1), response),
        eth6(CLIENT6, SERVER6, t(40002, 8080, 1).ack(1), upgrade),
        udp4(1, 2),
    ];
    let recs: Vec<Rec<'_>> = frames.iter().map(|f| rec(1, 0, f)).collect();
    let dir = Dir::new();
    let path = dir.file("ws.pcap", &pcap(1, false, false, 65535, &recs));
    assert_eq!(detect_ports(&path).unwrap(), vec![8080]);

    let mut ng = Ng::new(false);
    ng.idb(101, 0, None, None)
        .epb(0, 0, &ip4(CLIENT4, SERVER4, t(1, 9001, 1), upgrade), 0)
        .epb(0, 0, &ip4(CLIENT4, SERVER4, t(1, 443, 1), b"GET / HTTP/1.1\r\nupgrade: WebSocket\r\n\r\n"), 0)
        .epb(0, 0, &ip4(CLIENT4, SERVER4, t(1, 9001, 1), upgrade), 0);
    let path = dir.file("ws.pcapng", &ng.bytes());
    assert_eq!(detect_ports(&path).unwrap(), vec![443, 9001]);
}

/// A small valid pcap and pcapng, to mutate.
fn sample_files() -> (Vec<u8>, Vec<u8>) {
    let f = eth4(CLIENT4, SERVER4, t(40000, 8080, 1).ack(1), b"hello");
    let g = ip6(CLIENT6, SERVER6, t(40000, 8080, 1).ack(1), b"world");
    let p = pcap(1, false, false, 65535, &[rec(1, 0, &f), rec(2, 0, &f)]);
    let mut ng = Ng::new(false);
    ng.idb(1, 0, None, None).idb(101, 0, Some(9), None).epb(0, 1, &f, 0).epb(1, 2, &g, 0).spb(&f);
    (p, ng.bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let dir = Dir::new();
        let path = dir.file("r.bin", &bytes);
        let _ = replay(&path, &[80, 8080], |_| {});
        let _ = detect_ports(&path);
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        kind in 0..4u8,
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut file = match kind {
            0 => pcap(1, false, false, 65535, &[]),
            1 => pcap(113, true, true, 65535, &[]),
            2 => Ng::new(false).idb(1, 0, None, None).bytes(),
            _ => Ng::new(true).idb(276, 0, Some(9), None).bytes(),
        };
        file.extend(bytes);
        let dir = Dir::new();
        let path = dir.file("r.cap", &file);
        if let Ok(stats) = replay(&path, &[80, 8080], |_| {}) {
            prop_assert_eq!(
                stats.packets,
                stats.matched + stats.other_port + stats.not_ip + stats.not_tcp
                    + stats.fragments + stats.ipv6_ext + stats.truncated + stats.unsupported_link
            );
        }
    }

    #[test]
    fn mutated_captures_never_panic(
        which in any::<bool>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let (p, ng) = sample_files();
        let mut file = if which { p } else { ng };
        for (at, value) in edits {
            let i = at.index(file.len());
            file[i] = value;
        }
        let len = cut.index(file.len() + 1);
        file.truncate(len.max(file.len() / 2));
        let dir = Dir::new();
        let path = dir.file("m.cap", &file);
        let _ = replay(&path, &[8080], |_| {});
    }
}

#[test]
fn streams_dir_write_failures_fail_the_run_after_the_report() {
    use std::os::unix::process::CommandExt as _;
    let dir = Dir::new();
    // 40 connections open at once, a byte from each client: 80 stream files.
    let mut packets = Vec::new();
    for i in 0..40u16 {
        let c = 40000 + i;
        packets.push(eth4(CLIENT4, SERVER4, t(c, 8001, 100).syn(), &[]));
        packets.push(eth4(SERVER4, CLIENT4, t(8001, c, 900).syn().ack(101), &[]));
        packets.push(eth4(CLIENT4, SERVER4, t(c, 8001, 101).ack(901), b"x"));
    }
    let recs: Vec<Rec<'_>> = packets.iter().map(|p| rec(1, 0, p)).collect();
    let path = dir.0.path().join("many.pcap");
    std::fs::write(&path, pcap(1, false, false, 65535, &recs)).unwrap();
    let run = |limit: Option<libc::rlim_t>| {
        let streams = dir.0.path().join(format!("streams-{limit:?}"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ws-monitor"));
        cmd.arg("replay")
            .arg(&path)
            .args(["--port", "8001", "--json", "--log-interval", "0", "--streams-dir"])
            .arg(&streams);
        if let Some(n) = limit {
            // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = cmd.output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())
            .unwrap_or_else(|e| panic!("a report on stdout ({e}): {out:?}"));
        (out.status.success(), report["streams"]["errors"].as_u64(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, errors, stderr) = run(None);
    assert!(ok && errors == Some(0), "{stderr}");
    // Too few file descriptors for every stream file: counted, reported, a failed run.
    let (ok, errors, stderr) = run(Some(32));
    assert!(!ok, "{stderr}");
    assert!(errors.is_some_and(|n| n > 0), "{errors:?} {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("--streams-dir") && last.contains("writes failed") && last.contains("ulimit -n"), "{stderr}");
}
