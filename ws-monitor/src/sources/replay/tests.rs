//! Tests of [`super`].

use super::*;
use etherparse::PacketBuilder;
use std::net::{Ipv4Addr, Ipv6Addr};

fn tcp_v4(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(src_port, dst_port, 1000, 4096)
        .ack(77)
        .psh();
    let mut out = Vec::new();
    builder.write(&mut out, payload).unwrap();
    out
}

#[test]
fn port_set_and_direction_rule() {
    let ports = PortSet::new(&[80, 8080, 0, 65535]);
    assert!(ports.contains(0) && ports.contains(80) && ports.contains(65535));
    assert!(!ports.contains(81) && !ports.contains(1));
    assert_eq!(ports.direction(50000, 8080), Some(Direction::ToServer));
    assert_eq!(ports.direction(8080, 50000), Some(Direction::ToClient));
    // Both ends monitored: the destination wins, like the kernel program.
    assert_eq!(ports.direction(80, 8080), Some(Direction::ToServer));
    assert_eq!(ports.direction(1, 2), None);
    assert_eq!(PortSet::new(&[]).direction(80, 80), None);
}

#[test]
fn websocket_upgrade_detection() {
    let req = b"GET /chat HTTP/1.1\r\nHost: x\r\nUPGRADE:  WebSocket \r\nConnection: Upgrade\r\n\r\n";
    assert!(is_websocket_upgrade(req));
    assert!(is_websocket_upgrade(b"GET / HTTP/1.1\nupgrade: h2c, websocket\n\n"));
    assert!(!is_websocket_upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(!is_websocket_upgrade(b"POST / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
    assert!(!is_websocket_upgrade(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"));
    // After the end of the headers it is body, not a header.
    assert!(!is_websocket_upgrade(b"GET / HTTP/1.1\r\n\r\nUpgrade: websocket\r\n"));
    // The request line itself is not a header.
    assert!(!is_websocket_upgrade(b"GET /Upgrade: websocket HTTP/1.1\r\n\r\n"));
    assert!(!is_websocket_upgrade(b""));
    // A head the packet cuts short: read up to its last complete line.
    assert!(is_websocket_upgrade(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Ke"));
    assert!(!is_websocket_upgrade(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: webso"));
    assert!(!is_websocket_upgrade(b"GET /chat HTTP/1.1"));
    // A line that is not a header field is passed over.
    assert!(is_websocket_upgrade(b"GET / HTTP/1.1\r\nnot a field\r\nUpgrade: websocket\r\n\r\n"));
}

#[test]
fn decodes_ethernet_ipv4_tcp() {
    let frame = tcp_v4(40000, 8080, b"hello");
    let tcp = decode(Link::Ethernet, &frame).unwrap();
    assert_eq!(tcp.src, (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000));
    assert_eq!(tcp.dst, (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080));
    assert_eq!((tcp.seq, tcp.ack), (1000, 77));
    assert_eq!(tcp.flags, TcpFlags { syn: false, ack: true, fin: false, rst: false });
    assert_eq!(tcp.payload, b"hello");
    assert_eq!(tcp.missing, 0);
}

#[test]
fn padding_is_not_payload_and_cut_payload_is_measured() {
    let mut frame = tcp_v4(1, 2, b"ab");
    frame.extend_from_slice(&[0xEE; 6]); // pad a 60-byte minimum frame
    assert_eq!(decode(Link::Ethernet, &frame).unwrap().payload, b"ab");

    let frame = tcp_v4(1, 2, &[7u8; 100]);
    let cut = &frame[..frame.len() - 30];
    let tcp = decode(Link::Ethernet, cut).unwrap();
    assert_eq!(tcp.payload.len(), 70);
    assert_eq!(tcp.missing, 30);
}

#[test]
fn ipv6_extension_headers() {
    let builder = PacketBuilder::ipv6([1; 16], [2; 16], 64).tcp(5, 6, 9, 100);
    let mut raw = Vec::new();
    builder.write(&mut raw, b"xyz").unwrap();
    let tcp = decode(Link::RawIp, &raw).unwrap();
    assert_eq!(tcp.src.0, IpAddr::V6(Ipv6Addr::from([1; 16])));
    assert_eq!(tcp.payload, b"xyz");

    // Insert a destination options header (followed by etherparse) before TCP.
    let mut with_opts = raw.clone();
    with_opts[6] = 60; // next header: destination options
    with_opts.splice(40..40, [6u8, 0, 1, 4, 0, 0, 0, 0]); // next = TCP, len 8, PadN
    let plen = u16::from_be_bytes([with_opts[4], with_opts[5]]) + 8;
    with_opts[4..6].copy_from_slice(&plen.to_be_bytes());
    assert_eq!(decode(Link::RawIp, &with_opts).unwrap().payload, b"xyz");

    // ESP cannot be followed.
    let mut esp = raw.clone();
    esp[6] = 50;
    assert_eq!(decode(Link::RawIp, &esp), Err(Skip::Ipv6Ext));

    // A fragment header that really fragments.
    let mut frag = raw.clone();
    frag[6] = 44;
    frag.splice(40..40, [6u8, 0, 0, 1, 0, 0, 0, 9]); // offset 0, more fragments
    let plen = u16::from_be_bytes([frag[4], frag[5]]) + 8;
    frag[4..6].copy_from_slice(&plen.to_be_bytes());
    assert_eq!(decode(Link::RawIp, &frag), Err(Skip::Fragment));
}

#[test]
fn link_layers() {
    let eth = tcp_v4(1, 2, b"p");
    let ip = &eth[14..];
    // SLL with ARPHRD_LOOPBACK, which etherparse's own SLL parser rejects.
    let mut sll = vec![0, 0, 0x03, 0x04, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
    sll.extend_from_slice(ip);
    assert_eq!(decode(Link::LinuxSll, &sll).unwrap().payload, b"p");
    let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 1, 0x03, 0x04, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
    sll2.extend_from_slice(ip);
    assert_eq!(decode(Link::LinuxSll2, &sll2).unwrap().payload, b"p");
    let mut netlink = sll.clone();
    netlink[2..4].copy_from_slice(&ARPHRD_NETLINK.to_be_bytes());
    assert_eq!(decode(Link::LinuxSll, &netlink), Err(Skip::NotIp));
    assert_eq!(decode(Link::LinuxSll, &sll[..10]), Err(Skip::Truncated));

    for family in [[2, 0, 0, 0], [0, 0, 0, 2]] {
        let mut null = family.to_vec();
        null.extend_from_slice(ip);
        assert_eq!(decode(Link::Null, &null).unwrap().payload, b"p");
    }
    let mut other_family = vec![7, 0, 0, 0];
    other_family.extend_from_slice(ip);
    assert_eq!(decode(Link::Null, &other_family), Err(Skip::NotIp));

    assert_eq!(decode(Link::RawIp, &[0x50; 30]), Err(Skip::NotIp));
    assert_eq!(decode(Link::RawIp, &[]), Err(Skip::Truncated));
    assert_eq!(decode(Link::Unsupported(105), ip), Err(Skip::UnsupportedLink));
}

#[test]
fn timestamps() {
    let micro = Interface { link: Link::Ethernet, units_per_sec: 1_000_000, offset_sec: 0, snaplen: 0 };
    assert_eq!(micro.ts_ns(0, 1_500_000), 1_500_000_000);
    let nano = Interface { units_per_sec: ts_units_per_sec(9), ..micro };
    assert_eq!(nano.ts_ns(1, 5), ((1u64 << 32) + 5));
    let binary = Interface { units_per_sec: ts_units_per_sec(0x80 | 10), ..micro };
    assert_eq!(binary.ts_ns(0, 1024), 1_000_000_000);
    let shifted = Interface { offset_sec: 10, ..micro };
    assert_eq!(shifted.ts_ns(0, 0), 10_000_000_000);
    let before_epoch = Interface { offset_sec: -10, ..micro };
    assert_eq!(before_epoch.ts_ns(0, 0), 0);
    assert_eq!(ts_units_per_sec(6), 1_000_000);
    assert_eq!(ts_units_per_sec(0x7F), 1_000_000); // 10^127: invalid
    assert_eq!(micro.ts_ns(u32::MAX, u32::MAX), u64::MAX); // saturates
}

#[test]
fn sniffing_and_quoting() {
    assert_eq!(sniff(&[]), Sniffed::Empty);
    assert_eq!(sniff(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0]), Sniffed::Pcap);
    assert_eq!(sniff(&[0xa1, 0xb2, 0x3c, 0x4d]), Sniffed::Pcap);
    assert_eq!(sniff(&[0x0a, 0x0d, 0x0d, 0x0a]), Sniffed::PcapNg);
    assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Sniffed::Compressed("gzip"));
    assert_eq!(sniff(b"<html>"), Sniffed::Other);
    assert_eq!(quote_bytes(b"GET / HTTP/1.1"), "47 45 54 20 2f 20 48 54 \"GET / HT\"");
    assert_eq!(quote_bytes(&[0, 1]), "00 01");
}
