//! The kernel program on crafted packets (BPF_PROG_TEST_RUN) and on a real 64 KiB
//! GSO segment over loopback in a private network namespace. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use etherparse::PacketBuilder;
use ws_monitor::capture::{decode, EBPF_OBJECT};
use ws_monitor_common::{
    ChunkHeader, Counter, Liveness, CHUNK_SIZE, COUNTER_COUNT, DIR_TO_CLIENT, DIR_TO_SERVER,
    ORPHAN_AFTER_NS, TCP_ACK, TCP_FIN, TCP_SYN,
};

const PORT: u16 = 8001;
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

struct Loaded {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

fn load(ring_size: u32) -> Loaded {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("EVENTS", ring_size)
        .load(EBPF_OBJECT)
        .expect("load object");
    let mut ports: HashMap<_, u16, u8> = HashMap::try_from(ebpf.map_mut("PORTS").unwrap()).unwrap();
    ports.insert(PORT, 1, 0).unwrap();
    // A heartbeat that never ages: these tests are about packets, not the owner.
    set_heartbeat(&mut ebpf, u64::MAX);
    for name in ["ws_monitor_ingress", "ws_monitor_egress"] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("verifier accepts the program");
    }
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").unwrap()).unwrap();
    Loaded { ebpf, ring }
}

fn set_heartbeat(ebpf: &mut Ebpf, heartbeat_ns: u64) {
    let mut live: Array<_, Liveness> = Array::try_from(ebpf.map_mut("LIVENESS").unwrap()).unwrap();
    live.set(0, Liveness { heartbeat_ns, ..Default::default() }, 0).unwrap();
}

impl Loaded {
    fn run(&mut self, packet: &[u8]) {
        let p: &SchedClassifier =
            self.ebpf.program("ws_monitor_ingress").unwrap().try_into().unwrap();
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
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").unwrap()).unwrap();
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
    // (3,160 bytes with headers) fit, the second packet's do not.
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
    set_heartbeat(&mut l.ebpf, ws_monitor::liveness::monotonic_ns());
    l.run(&packet);
    assert_eq!(l.records().len(), 1);
    assert_eq!(l.counter(Counter::PacketsSeen), 1);
    // Older than ORPHAN_AFTER_NS (its owner was killed): the program returns at once,
    // before it counts or copies anything.
    let stale = ws_monitor::liveness::monotonic_ns() - ORPHAN_AFTER_NS - 1_000_000_000;
    set_heartbeat(&mut l.ebpf, stale);
    for _ in 0..10 {
        l.run(&packet);
    }
    assert!(l.records().is_empty(), "an orphan must not fill the ring");
    assert_eq!(l.counters().iter().sum::<u64>(), 1 + 1 + 100, "only the first run counted: seen, matched, copied");
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
