#!/usr/bin/env python3
"""Real TCP peers for the end-to-end capture tests.

server: accepts --expect connections, and on each sends --send-bytes while reading
        everything the client sends; writes per-connection results as JSON.
client: opens --pre connections, prints "pre-connected", waits for the --go file, opens
        --post more, then on every connection sends --send-bytes while reading the reply.

Data is either seeded random bytes (--pattern random) or self-locating 8-byte words
(--pattern counter: word i of a stream is (seed << 40) | i, little-endian), so a test can
check bytes seen mid-stream. Seeds: client->server = 2*client_port, server->client = 2*client_port+1.
Results are keyed "<client ip>_<client port>" and hold sha256 and length per direction.
"""
import argparse, hashlib, json, os, random, socket, struct, sys, threading, time

def data_for(seed, n, pattern):
    if pattern == "random":
        return random.Random(seed).randbytes(n)
    words = (n + 7) // 8
    return b"".join(struct.pack("<Q", (seed << 40) | i) for i in range(words))[:n]

def pump(sock, payload, wait_first=False):
    """Send payload and read until EOF, concurrently. Returns received bytes.
    With wait_first, nothing is sent before the first bytes arrive (so a connection
    opened before the monitor starts carries no data until the test says go)."""
    received = []
    if wait_first:
        first = sock.recv(1 << 16)
        if first:
            received.append(first)
    def reader():
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return
            received.append(chunk)
    t = threading.Thread(target=reader)
    t.start()
    view = memoryview(payload)
    step = 48 * 1024
    for i in range(0, len(view), step):
        sock.sendall(view[i:i + step])
    sock.shutdown(socket.SHUT_WR)
    t.join()
    return b"".join(received)

def record(results, lock, key, sent, got):
    with lock:
        results[key] = {
            "sent_len": len(sent), "sent_sha": hashlib.sha256(sent).hexdigest(),
            "recv_len": len(got), "recv_sha": hashlib.sha256(got).hexdigest(),
        }

def norm(ip):
    return ip[7:] if ip.startswith("::ffff:") else ip

def server(a):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", a.port))
    s.listen(64)
    print("listening", flush=True)
    results, lock, threads = {}, threading.Lock(), []
    def handle(c, addr):
        key = f"{norm(addr[0])}_{addr[1]}"
        sent = data_for(2 * addr[1] + 1, a.send_bytes, a.pattern)
        got = pump(c, sent, wait_first=True)
        c.close()
        record(results, lock, key, sent, got)
    for _ in range(a.expect):
        c, addr = s.accept()
        t = threading.Thread(target=handle, args=(c, addr))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    with open(a.out, "w") as f:
        json.dump(results, f)

def client(a):
    hosts = a.hosts.split(",")
    results, lock = {}, threading.Lock()
    def connect(i):
        host = hosts[i % len(hosts)]
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        c = socket.socket(fam)
        c.connect((host, a.port))
        return c
    conns = [connect(i) for i in range(a.pre)]
    print("pre-connected", flush=True)
    deadline = time.time() + 60
    while not os.path.exists(a.go):
        if time.time() > deadline:
            sys.exit("no go signal within 60 s")
        time.sleep(0.02)
    conns += [connect(a.pre + i) for i in range(a.post)]
    def run(c):
        ip, port = c.getsockname()[:2]
        sent = data_for(2 * port, a.send_bytes, a.pattern)
        got = pump(c, sent)
        c.close()
        record(results, lock, f"{norm(ip)}_{port}", sent, got)
    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(a.out, "w") as f:
        json.dump(results, f)

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hosts", default="127.0.0.1")
    p.add_argument("--expect", type=int, default=1)
    p.add_argument("--pre", type=int, default=0)
    p.add_argument("--post", type=int, default=1)
    p.add_argument("--send-bytes", type=int, default=1 << 20)
    p.add_argument("--pattern", choices=["random", "counter"], default="random")
    p.add_argument("--go", default="/nonexistent")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    server(a) if a.mode == "server" else client(a)
