//! The kernel program on crafted packets (BPF_PROG_TEST_RUN) and on a real 64 KiB
//! GSO segment over loopback in a private network namespace. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test or benchmark fails loudly")]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use etherparse::PacketBuilder;
use ws_monitor::sources::capture::{decode, EBPF_OBJECT};
use ws_monitor_common::{
    Anchor, ChunkHeader, Counter, FlowDir, Liveness, WalkState, CHUNK_SIZE, COUNTER_COUNT, DIR_TO_CLIENT,
    DIR_TO_SERVER, HEADER_SIZE, MSG_NONE, ORPHAN_AFTER_NS, TCP_ACK, TCP_FIN, TCP_SYN,
};

const PORT: u16 = 8001;
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

struct Loaded {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

fn load(ring_size: u32) -> Loaded {
    let mut ebpf = EbpfLoader::new().map_max_entries("EVENTS", ring_size).load(EBPF_OBJECT).expect("load object");
    let mut ports: Array<_, u8> = Array::try_from(ebpf.map_mut("PORTS").unwrap()).unwrap();
    ports.set(u32::from(PORT), 1, 0).unwrap();
    // A heartbeat that never ages: these tests are about packets, not the owner.
    set_heartbeat(&mut ebpf, u64::MAX);
    for name in ["ws_monitor_ingress", "ws_monitor_egress"] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("verifier accepts the program");
    }
    ws_monitor::sources::capture::load_tail_programs(&mut ebpf).expect("verifier accepts the walk and emit programs");
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").unwrap()).unwrap();
    Loaded { ebpf, ring }
}

fn set_heartbeat(ebpf: &mut Ebpf, heartbeat_ns: u64) {
    let mut live: Array<_, Liveness> = Array::try_from(ebpf.map_mut("LIVENESS").unwrap()).unwrap();
    live.set(0, Liveness { heartbeat_ns, ..Default::default() }, 0).unwrap();
}

impl Loaded {
    fn run(&mut self, packet: &[u8]) {
        let p: &SchedClassifier = self.ebpf.program("ws_monitor_ingress").unwrap().try_into().unwrap();
        let opts = TestRunOptions { data_in: Some(packet), ..Default::default() };
        let result = p.test_run(opts).expect("test_run");
        assert_eq!(result.return_value, u32::MAX, "TC_ACT_UNSPEC: the packet is never altered");
    }

    fn records(&mut self) -> Vec<(ChunkHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            let (h, p) = decode(&item).expect("well-formed record");
            out.push((h, p.to_vec()));
        }
        out
    }

    fn counters(&self) -> Vec<u64> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map("COUNTERS").unwrap()).unwrap();
        (0..COUNTER_COUNT).map(|i| map.get(&i, 0).unwrap().iter().sum()).collect()
    }

    fn counter(&self, c: Counter) -> u64 {
        self.counters()[c as usize]
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn v4_tcp(sport: u16, dport: u16, seq: u32, data: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(sport, dport, seq, 1000)
        .ack(77);
    let mut v = Vec::new();
    b.write(&mut v, data).unwrap();
    v
}

fn v6_tcp(sport: u16, dport: u16, seq: u32, data: &[u8]) -> Vec<u8> {
    let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(src, dst, 64).tcp(sport, dport, seq, 1000).ack(5);
    let mut v = Vec::new();
    b.write(&mut v, data).unwrap();
    v
}

#[test]
fn crafted_packets_give_exactly_the_expected_records() {
    if !common::require_root("crafted_packets_give_exactly_the_expected_records") {
        return;
    }
    let mut l = load(1 << 20);

    // IPv4 to the monitored port: one record, every field right.
    let data = payload(100);
    l.run(&v4_tcp(40000, PORT, 1_000_000, &data));
    let recs = l.records();
    assert_eq!(recs.len(), 1);
    let (h, p) = &recs[0];
    assert_eq!((h.family, h.direction, h.sport, h.dport), (4, DIR_TO_SERVER, 40000, PORT));
    assert_eq!(&h.saddr[..4], &[10, 0, 0, 1]);
    assert_eq!(&h.daddr[..4], &[10, 0, 0, 2]);
    assert_eq!((h.seq, h.ack, h.payload_len, h.offset, h.len), (1_000_000, 77, 100, 0, 100));
    assert_eq!(h.flags & TCP_ACK, TCP_ACK);
    assert!(h.ts_ns > 0);
    assert_eq!(p, &data);

    // From the monitored port: direction flips.
    l.run(&v4_tcp(PORT, 40000, 5, b"hi"));
    let recs = l.records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].0.direction, DIR_TO_CLIENT);

    // IPv6 to the monitored port.
    l.run(&v6_tcp(40001, PORT, 9, b"hello6"));
    let recs = l.records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].0.family, 6);
    assert_eq!(recs[0].0.saddr[15], 1);
    assert_eq!(recs[0].1, b"hello6");

    // A payload bigger than one chunk: consecutive chunks, exact bytes.
    let big = payload(3000);
    l.run(&v4_tcp(40000, PORT, u32::MAX - 10, &big));
    let recs = l.records();
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].0.offset, recs[0].0.len as usize), (0, CHUNK_SIZE));
    assert_eq!((recs[1].0.offset as usize, recs[1].0.len as usize), (CHUNK_SIZE, 3000 - CHUNK_SIZE));
    assert!(recs.iter().all(|(h, _)| h.payload_len == 3000 && h.seq == u32::MAX - 10));
    let joined: Vec<u8> = recs.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(joined, big);

    // SYN without payload: a header-only record with the flag.
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40002, PORT, 42, 1000)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    l.run(&syn);
    let recs = l.records();
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].0.flags & (TCP_SYN | TCP_FIN), recs[0].0.len, recs[0].0.payload_len), (TCP_SYN, 0, 0));

    // VLAN-tagged frame (tag not offloaded).
    let mut vlan = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(etherparse::VlanId::try_new(7).unwrap())
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40003, PORT, 1, 1000)
        .write(&mut vlan, b"tagged")
        .unwrap();
    l.run(&vlan);
    let recs = l.records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].1, b"tagged");

    let before = l.counters();
    let delta = |l: &Loaded, c: Counter| l.counter(c) - before[c as usize];

    // Not matched or skipped: no record, one counter each.
    l.run(&v4_tcp(40000, 9999, 1, b"other"));
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(40000, PORT)
        .write(&mut udp, b"udp")
        .unwrap();
    l.run(&udp);
    let mut arp = v4_tcp(40000, PORT, 1, b"x");
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    l.run(&arp);
    // IPv4 header promising TCP, but the frame ends inside the TCP header.
    let mut truncated = v4_tcp(40000, PORT, 1, b"");
    truncated.truncate(14 + 20 + 10);
    l.run(&truncated);
    // IPv4 fragment (more-fragments bit).
    let mut frag = v4_tcp(40000, PORT, 1, b"frag");
    frag[14 + 6] |= 0x20;
    l.run(&frag);
    // IPv6 with a hop-by-hop extension header before TCP.
    let mut ext = v6_tcp(40001, PORT, 9, b"ext");
    ext[14 + 6] = 0; // next header: hop-by-hop
    l.run(&ext);

    assert!(l.records().is_empty(), "skipped packets give no record");
    assert_eq!(delta(&l, Counter::OtherPort), 1);
    assert_eq!(delta(&l, Counter::SkipNotTcp), 1);
    assert_eq!(delta(&l, Counter::SkipNotIp), 1);
    assert_eq!(delta(&l, Counter::SkipTruncated), 1);
    assert_eq!(delta(&l, Counter::SkipFragment), 1);
    assert_eq!(delta(&l, Counter::SkipIpv6Ext), 1);
    assert_eq!(delta(&l, Counter::PacketsMatched), 0);
    assert_eq!(delta(&l, Counter::PacketsSeen), 6);
}

#[test]
fn full_ring_counts_lost_records_and_bytes() {
    if !common::require_root("full_ring_counts_lost_records_and_bytes") {
        return;
    }
    // One page of ring, not read while packets arrive: the first packet's two records
    // (2,048 + 952 bytes in records of 2,048 and 1,024, 3,232 bytes with headers) fit,
    // the second packet's do not.
    let mut l = load(4096);
    let big = payload(3000);
    l.run(&v4_tcp(40000, PORT, 1, &big));
    l.run(&v4_tcp(40000, PORT, 3001, &big));
    let recs = l.records();
    assert_eq!(recs.len(), 2, "the first packet fits");
    assert!(recs.iter().all(|(h, _)| h.seq == 1));
    assert_eq!(l.counter(Counter::RingFullRecords), 2);
    assert_eq!(l.counter(Counter::RingFullBytes), 3000);
    assert_eq!(l.counter(Counter::BytesCopied), 3000);
}

#[test]
fn an_orphan_whose_heartbeat_stopped_does_nothing() {
    if !common::require_root("an_orphan_whose_heartbeat_stopped_does_nothing") {
        return;
    }
    let mut l = load(1 << 20);
    let packet = v4_tcp(40000, PORT, 1, &payload(100));
    // A heartbeat just now: the packet is captured.
    set_heartbeat(&mut l.ebpf, ws_monitor::sources::capture::liveness::monotonic_ns());
    l.run(&packet);
    assert_eq!(l.records().len(), 1);
    assert_eq!(l.counter(Counter::PacketsSeen), 1);
    // Older than ORPHAN_AFTER_NS (its owner was killed): the program returns at once,
    // before it counts or copies anything.
    let stale = ws_monitor::sources::capture::liveness::monotonic_ns() - ORPHAN_AFTER_NS - 1_000_000_000;
    set_heartbeat(&mut l.ebpf, stale);
    for _ in 0..10 {
        l.run(&packet);
    }
    assert!(l.records().is_empty(), "an orphan must not fill the ring");
    assert_eq!(
        l.counters().iter().sum::<u64>(),
        1 + 1 + 100 + (HEADER_SIZE as u64 + 128),
        "only the first run counted: seen, matched, copied, ring bytes"
    );
}

/// A real 64 KiB segment: on loopback (MTU 64 KiB, GSO) a single write becomes one
/// super-packet whose payload lives in non-linear skb data.
#[test]
fn gso_sized_segment_on_loopback_comes_out_in_exact_chunks() {
    if !common::require_root("gso_sized_segment_on_loopback_comes_out_in_exact_chunks") {
        return;
    }
    let ns = common::Netns::new("gso");
    let records = ns.run(|| {
        let mut l = load(8 << 20);
        let p: &mut SchedClassifier = l.ebpf.program_mut("ws_monitor_ingress").unwrap().try_into().unwrap();
        p.attach("lo", TcAttachType::Ingress).expect("attach to lo");
        let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        // A large receive window so the sender may put 64 KiB in flight at once.
        set_rcvbuf(&listener, 8 << 20);
        let mut client = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let data = payload(2 << 20);
        client.write_all(&data).unwrap();
        let mut got = vec![0u8; data.len()];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, data);
        drop(client);
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(100));
        (l.records(), data)
    });
    let (records, data) = records;
    // Ring order is wire order here: one connection on loopback, no loss.
    let data_records: Vec<_> = records.iter().filter(|(h, _)| h.payload_len > 0 && h.dport == PORT).collect();
    let biggest = data_records.iter().map(|(h, _)| h.payload_len).max().unwrap();
    assert!(biggest > 60_000, "expected one GSO super-packet, largest was {biggest} bytes");
    // Every packet comes out as ceil(len / CHUNK_SIZE) chunks at consecutive offsets.
    let mut stream = Vec::new();
    for (h, p) in &data_records {
        assert_eq!(h.offset as usize % CHUNK_SIZE, 0);
        assert_eq!(h.len as usize, (h.payload_len - h.offset).min(CHUNK_SIZE as u32) as usize);
        stream.extend_from_slice(p);
    }
    let biggest_packets = data_records.iter().filter(|(h, _)| h.payload_len == biggest && h.offset == 0).count();
    let chunks_of_biggest = data_records.iter().filter(|(h, _)| h.payload_len == biggest).count();
    assert_eq!(chunks_of_biggest, biggest_packets * (biggest as usize).div_ceil(CHUNK_SIZE));
    assert_eq!(stream, data);
}

fn set_rcvbuf(listener: &TcpListener, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: valid socket fd and a pointer to an i32 of the given length.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0);
}

/// (offset, copied length, skip) of each record.
fn spans(recs: &[(ChunkHeader, Vec<u8>)]) -> Vec<(u32, u16, u32)> {
    recs.iter().map(|(h, _)| (h.offset, h.len, h.skip)).collect()
}

const RESPONSE_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

#[test]
fn after_a_101_frame_headers_are_walked_and_binary_payload_skipped() {
    if !common::require_root("after_a_101_frame_headers_are_walked_and_binary_payload_skipped") {
        return;
    }
    let mut l = load(1 << 20);
    let server = |seq: u32, data: &[u8]| v4_tcp(PORT, 40000, seq, data);

    // The 101 is copied whole; the server's frames start right after it.
    let mut seq = 7_000;
    l.run(&server(seq, RESPONSE_101));
    assert_eq!(spans(&l.records()), [(0, RESPONSE_101.len() as u16, 0)]);
    seq += RESPONSE_101.len() as u32;

    // Binary 3000 bytes (copied: header + 64), text "hello" (copied), then the first byte
    // of a 64-bit-length binary header that goes on in the next packet.
    let mut p2 = vec![0x82, 0x7e, 0x0b, 0xb8];
    p2.extend(payload(3000));
    p2.extend([0x81, 0x05]);
    p2.extend(b"hello");
    p2.push(0x82);
    l.run(&server(seq, &p2));
    let recs = l.records();
    assert_eq!(spans(&recs), [(0, 68, 2936), (3004, 8, 0)]);
    assert_eq!(recs[0].1, p2[..68]);
    assert_eq!(recs[1].1, p2[3004..]);
    let seq2 = seq;
    seq += p2.len() as u32;

    // The rest of that header (4096 bytes of payload), and 1000 bytes of it.
    let mut p3 = vec![0x7f, 0, 0, 0, 0, 0, 0, 0x10, 0x00];
    p3.extend(payload(1000));
    l.run(&server(seq, &p3));
    assert_eq!(spans(&l.records()), [(0, 73, 936)]);
    seq += p3.len() as u32;

    // The payload's last 3096 bytes (all skipped), and a text frame.
    let mut p4 = payload(3096);
    p4.extend([0x81, 0x02, b'o', b'k']);
    l.run(&server(seq, &p4));
    let recs = l.records();
    assert_eq!(spans(&recs), [(0, 0, 3096), (3096, 4, 0)]);
    assert_eq!(recs[1].1, b"\x81\x02ok");
    seq += p4.len() as u32;
    assert_eq!(l.counter(Counter::BytesSkipped), 2936 + 936 + 3096);
    assert_eq!(l.counter(Counter::PacketsWalked), 4, "the 101's packet and the three after it");
    assert_eq!(l.counter(Counter::WalkStarts), 1, "the server's direction (the client's has no state yet)");

    // A retransmission of what was handed on: its header only, and the walk stays in step.
    l.run(&server(seq2, &p2));
    let recs = l.records();
    assert_eq!(spans(&recs), [(0, 0, 0)]);
    assert_eq!(recs[0].0.payload_len as usize, p2.len());
    assert_eq!(l.counter(Counter::RetransmittedBytes), p2.len() as u64);
    let mut p5 = vec![0x82, 0x7e, 0x01, 0x00];
    p5.extend(payload(256));
    l.run(&server(seq, &p5));
    assert_eq!(spans(&l.records()), [(0, 68, 192)]);
    seq += p5.len() as u32;

    // Once a record of the direction was lost (ring full), retransmissions are copied.
    let key = FlowDir {
        saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sport: PORT,
        dport: 40000,
        family: 4,
        _pad: [0; 3],
    };
    let mut flows: aya::maps::HashMap<_, FlowDir, WalkState> =
        aya::maps::HashMap::try_from(l.ebpf.map_mut("FLOWS").unwrap()).unwrap();
    let mut st = flows.get(&key, 0).expect("the server's direction has state");
    st.lost = 1;
    flows.insert(key, st, 0).unwrap();
    l.run(&server(seq2, &p2));
    assert_eq!(spans(&l.records()), [(0, 2048, 0), (2048, (p2.len() - 2048) as u16, 0)]);

    // A hole: copied whole from then on.
    l.run(&server(seq + 100, &p5));
    assert_eq!(spans(&l.records()), [(0, p5.len() as u16, 0)]);
    assert_eq!(l.counter(Counter::WalkStops), 1);
    l.run(&server(seq + 100 + p5.len() as u32, &p5));
    assert_eq!(spans(&l.records()), [(0, p5.len() as u16, 0)]);
}

#[test]
fn an_anchor_from_userspace_starts_the_walk_where_it_points() {
    if !common::require_root("an_anchor_from_userspace_starts_the_walk_where_it_points") {
        return;
    }
    let mut l = load(1 << 20);
    let client = |seq: u32, data: &[u8]| v4_tcp(40000, PORT, seq, data);
    // Masked binary frames of 200 bytes, copied whole while there is no anchor.
    let mut frame = vec![0x82, 0xfe, 0x00, 0xc8, 1, 2, 3, 4];
    frame.extend(payload(200));
    let two: Vec<u8> = [frame.clone(), frame.clone()].concat();
    l.run(&client(100, &two));
    assert_eq!(spans(&l.records()), [(0, two.len() as u16, 0)]);

    // Userspace: the header after the next one starts at 100 + 3 * 208.
    let key = FlowDir {
        saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sport: 40000,
        dport: PORT,
        family: 4,
        _pad: [0; 3],
    };
    let mut anchors: aya::maps::HashMap<_, FlowDir, Anchor> =
        aya::maps::HashMap::try_from(l.ebpf.map_mut("ANCHORS").unwrap()).unwrap();
    anchors.insert(key, Anchor { hdr_seq: 100 + 3 * 208, msg: MSG_NONE, _pad: [0; 3] }, 0).unwrap();
    l.run(&client(100 + 416, &two));
    // Copied up to the anchor, then header + 4 key bytes... + 64, the rest skipped.
    assert_eq!(spans(&l.records()), [(0, 208 + 8 + 64, 136)]);
    assert_eq!(l.counter(Counter::WalkStarts), 1);
    let anchors: aya::maps::HashMap<_, FlowDir, Anchor> =
        aya::maps::HashMap::try_from(l.ebpf.map("ANCHORS").unwrap()).unwrap();
    assert!(anchors.get(&key, 0).is_err(), "an anchor is used once");
}

/// The kernel's log lines, as aya-log's reader gives them: (level, message).
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

#[test]
fn rare_events_are_logged_at_most_ten_a_second_per_cpu() {
    if !common::require_root("rare_events_are_logged_at_most_ten_a_second_per_cpu") {
        return;
    }
    pin_to_one_cpu();
    let mut l = load(1 << 20);
    let lines = Lines::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut l.ebpf, lines.clone()).unwrap();
    let server = |seq: u32, data: &[u8]| v4_tcp(PORT, 40000, seq, data);

    // Every packet in sequence: nothing to log.
    let mut seq = 1_000;
    l.run(&server(seq, RESPONSE_101));
    seq += RESPONSE_101.len() as u32;
    l.run(&server(seq, b"\x81\x02ok"));
    seq += 4;
    logger.flush();
    assert!(lines.0.lock().unwrap().is_empty(), "{:?}", lines.0.lock().unwrap());

    // A hole in the sequence: the walk stops, one line.
    l.run(&server(seq + 10, b"\x81\x02ok"));
    logger.flush();
    assert_eq!(
        lines.0.lock().unwrap().as_slice(),
        [(
            log::Level::Debug,
            format!(
                "frame walk resync: [::ffff:10.0.0.1]:{PORT} -> [::ffff:10.0.0.2]:40000 hole or overlap, expected seq {seq} got {}",
                seq + 10
            )
        )]
    );
    seq += 14;

    // Each 101 starts the walk again and the next header stops it: a line each, ten a
    // second on this CPU, the rest counted.
    for _ in 0..15 {
        l.run(&server(seq, RESPONSE_101));
        seq += RESPONSE_101.len() as u32;
        l.run(&server(seq, b"\x7f\xffno header"));
        seq += 12;
    }
    logger.flush();
    let got = lines.0.lock().unwrap().clone();
    let doubts: Vec<_> = got.iter().filter(|(_, m)| m.contains("implausible frame header 7fff at offset 0")).collect();
    assert_eq!((got.len(), doubts.len()), (10, 9), "ten lines within the second: {got:?}");
    assert_eq!(l.counter(Counter::LogLinesSuppressed), 16 - 10);
    assert_eq!(l.counter(Counter::LogLinesLost), 0);
    assert_eq!(l.counter(Counter::WalkStops), 16);
}

/// Keeps this thread (and the BPF_PROG_TEST_RUNs it makes) on the CPU it is on.
fn pin_to_one_cpu() {
    // SAFETY: no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu: {}", std::io::Error::last_os_error());
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is a CPU number the kernel just gave, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: a valid set of the size given; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
}
