#!/usr/bin/env python3
"""Hostile traffic for the hardening tests (tests/hostile.rs), and a violator to watch
through it.

Spoofed packets are written whole (Ethernet, IPv4, TCP) to a packet socket on --iface,
addressed to --mac and to --dst, an address nobody holds: the monitor sees them at the
TC hook of the receiving veth, and that host drops them without an answer (no RST), as
it would drop a spoofed flood from the Internet.

ooo:       --flows connections from spoofed sources, each sending one byte, then leaving
           a hole of --hole bytes and sending --bytes after it in 1400-byte segments:
           everything after the hole can only wait in the monitor's out-of-order buffers.
syn:       --count SYNs from spoofed sources and ports, nothing after.
server:    a WebSocket server on --port: answers one upgrade, then reads to EOF.
violator:  a WebSocket client to --dst:--port that upgrades, then sends --frames unmasked
           text frames (each one unmasked_client_frame), --interval seconds apart, and
           closes; prints "done" at the end.
"""
import argparse, base64, hashlib, os, random, socket, struct, sys, time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(src_mac, dst_mac, src, dst, sport, dport, seq, flags, payload=b""):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp + payload)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp + payload


SYN, PSH_ACK = 0x02, 0x18


def packet_socket(args):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((args.iface, 0))
    src_mac = open(f"/sys/class/net/{args.iface}/address").read().strip()
    return s, bytes.fromhex(src_mac.replace(":", "")), bytes.fromhex(args.mac.replace(":", ""))


def spoofed_source(rng):
    return bytes([198, 18, rng.randrange(256), rng.randrange(1, 255)]), rng.randrange(1024, 65535)


def ooo(args):
    s, src_mac, dst_mac = packet_socket(args)
    dst = socket.inet_aton(args.dst)
    rng = random.Random(7)
    chunk = os.urandom(1400)
    for _ in range(args.flows):
        src, sport = spoofed_source(rng)
        seq = rng.randrange(1 << 32)
        s.send(frame(src_mac, dst_mac, src, dst, sport, args.port, seq, PSH_ACK, b"x"))
        at = seq + 1 + args.hole
        sent = 0
        while sent < args.bytes:
            part = chunk[: min(len(chunk), args.bytes - sent)]
            s.send(frame(src_mac, dst_mac, src, dst, sport, args.port, (at + sent) & 0xFFFFFFFF, PSH_ACK, part))
            sent += len(part)
    print("sent", flush=True)


def syn(args):
    s, src_mac, dst_mac = packet_socket(args)
    dst = socket.inet_aton(args.dst)
    rng = random.Random(11)
    for _ in range(args.count):
        src, sport = spoofed_source(rng)
        s.send(frame(src_mac, dst_mac, src, dst, sport, args.port, rng.randrange(1 << 32), SYN))
    print("sent", flush=True)


def server(args):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", args.port))
    ls.listen(1)
    print("listening", flush=True)
    c, _ = ls.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while c.recv(65536):
        pass
    c.close()


def violator(args):
    c = socket.create_connection((args.dst, args.port), timeout=30)
    key = base64.b64encode(os.urandom(16))
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    for i in range(args.frames):
        text = b"frame %d" % i
        c.sendall(bytes([0x81, len(text)]) + text)
        time.sleep(args.interval)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()
    print("done", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["ooo", "syn", "server", "violator"])
    p.add_argument("--iface")
    p.add_argument("--mac")
    p.add_argument("--dst")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--flows", type=int, default=40)
    p.add_argument("--hole", type=int, default=99)
    p.add_argument("--bytes", type=int, default=600_000)
    p.add_argument("--count", type=int, default=66_000)
    p.add_argument("--frames", type=int, default=225)
    p.add_argument("--interval", type=float, default=0.01)
    args = p.parse_args()
    {"ooo": ooo, "syn": syn, "server": server, "violator": violator}[args.mode](args)


if __name__ == "__main__":
    main()
