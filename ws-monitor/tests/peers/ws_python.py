#!/usr/bin/env python3
"""Conformant WebSocket peers built on the `websockets` library (asyncio API, pinned to
websockets==14.2 by `cargo xtask setup --tests`), for the end-to-end protocol tests.

server: an echo server on --port (every message sent back as one message); prints
        "listening" once bound; exits after --expect connections have closed.
client: connects to each of --hosts in turn and runs a fixed script on each connection:
        text messages (ASCII and multi-byte UTF-8), binary messages of 0, 125, 126, 65535,
        65536 and 200000 bytes, a fragmented text and a fragmented binary message (async
        iterators of fragments), pings (each awaiting its pong), then close with 1000.
        With --expect-reject the upgrade must be refused instead (status printed).
        Prints one JSON object: message counts, and the frames the script makes each side
        send per connection where the library makes them deterministic.

--compression deflate|deflate-nct|none selects permessage-deflate on both roles
(deflate-nct: no context takeover either way, 10-bit windows). Keepalive pings are off,
so every ping on the wire is one of the script's.
"""
import argparse, asyncio, json, sys

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory

TEXTS = [
    "hello",
    "ünïcödé — ✓ 日本語 🚀",
    "x" * 1000,
    "€" * 5000,
]
BINARY_SIZES = [0, 125, 126, 65535, 65536, 200000]
TEXT_FRAGMENTS = ["frag-1 ✓ ", "frag-2 日本 ", "frag-3 🚀"]
BINARY_FRAGMENTS = [bytes(range(256)) * 4, b"\x01" * 3000]
PINGS = [b"ping-0", b"ping-1", b"\xff\x00 binary ping"]


def payload(n, seed):
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


async def aiter_of(items):
    for it in items:
        yield it


def compression_kwargs(name, server):
    """websockets arguments for --compression: none, deflate (the library's defaults), or
    deflate-nct (no context takeover both ways and 10-bit windows, so every message is
    compressed on its own)."""
    if name == "deflate":
        return {"compression": "deflate"}
    if name == "deflate-nct":
        params = dict(server_no_context_takeover=True, client_no_context_takeover=True,
                      server_max_window_bits=10, client_max_window_bits=10)
        factory = ServerPerMessageDeflateFactory if server else ClientPerMessageDeflateFactory
        return {"compression": None, "extensions": [factory(**params)]}
    return {"compression": None}


async def run_server(a):
    done = asyncio.Event()
    closed = 0

    async def echo(ws):
        nonlocal closed
        try:
            async for msg in ws:
                await ws.send(msg)
        finally:
            closed += 1
            if a.expect and closed >= a.expect:
                done.set()

    async with serve(echo, host=None, port=a.port, ping_interval=None, max_size=1 << 21,
                     **compression_kwargs(a.compression, server=True)):
        print("listening", flush=True)
        if not a.expect:
            await asyncio.Event().wait()  # until killed
        await done.wait()
        # Let the last close handshake and TCP close finish.
        await asyncio.sleep(0.2)


def uri(host, port):
    return f"ws://[{host}]:{port}/echo" if ":" in host else f"ws://{host}:{port}/echo"


async def one_connection(host, a):
    async with connect(uri(host, a.port), ping_interval=None, max_size=1 << 21, open_timeout=10, close_timeout=10,
                       **compression_kwargs(a.compression, server=False)) as ws:
        for t in TEXTS:
            await ws.send(t)
            assert await ws.recv() == t, "text echo differs"
        for i, n in enumerate(BINARY_SIZES):
            b = payload(n, i)
            await ws.send(b)
            assert await ws.recv() == b, f"binary echo of {n} bytes differs"
        await ws.send(aiter_of(TEXT_FRAGMENTS))
        assert await ws.recv() == "".join(TEXT_FRAGMENTS), "fragmented text echo differs"
        await ws.send(aiter_of(BINARY_FRAGMENTS))
        assert await ws.recv() == b"".join(BINARY_FRAGMENTS), "fragmented binary echo differs"
        for p in PINGS:
            pong = await ws.ping(p)
            await asyncio.wait_for(pong, timeout=10)
        await ws.close(1000, "done")
        code = ws.close_code
    return code


async def run_client(a):
    hosts = [h for h in a.hosts.split(",") if h]
    codes, statuses = [], []
    for h in hosts:
        if a.expect_reject:
            try:
                async with connect(uri(h, a.port), ping_interval=None, open_timeout=10,
                                   **compression_kwargs(a.compression, server=False)):
                    pass
            except InvalidStatus as e:
                statuses.append(e.response.status_code)
                continue
            raise SystemExit(f"the upgrade through {h} was accepted, a refusal was expected")
        codes.append(await one_connection(h, a))
    # websockets sends a fragmented message as: first fragment (text/binary, FIN=0),
    # the other fragments as continuations (FIN=0), then an empty continuation (FIN=1).
    frags = len(TEXT_FRAGMENTS) + len(BINARY_FRAGMENTS)
    messages_text = len(TEXTS) + 1
    messages_binary = len(BINARY_SIZES) + 1
    per_conn = {
        "client": {"text": messages_text, "binary": messages_binary, "continuation": frags,
                   "close": 1, "ping": len(PINGS), "pong": 0, "reserved": 0},
        # The echo server sends every message back in one frame and answers each ping.
        "server": {"text": messages_text, "binary": messages_binary, "continuation": 0,
                   "close": 1, "ping": 0, "pong": len(PINGS), "reserved": 0},
    }
    print(json.dumps({
        "library": f"websockets {websockets.__version__}",
        "compression": a.compression,
        "connections": len(hosts),
        "text_messages": messages_text,
        "binary_messages": messages_binary,
        "pings": len(PINGS),
        "close_codes": codes,
        "reject_statuses": statuses,
        "frames_per_connection": per_conn,
    }), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hosts", default="127.0.0.1", help="client: comma-separated hosts, one connection each")
    p.add_argument("--compression", choices=["deflate", "deflate-nct", "none"], default="none")
    p.add_argument("--expect", type=int, default=0,
                   help="server: exit after this many connections have closed (0: run until killed)")
    p.add_argument("--expect-reject", action="store_true", help="client: the upgrade must be refused")
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    coro = run_server(a) if a.role == "server" else run_client(a)
    try:
        asyncio.run(asyncio.wait_for(coro, timeout=a.timeout))
    except TimeoutError:
        raise SystemExit(f"{a.role}: not done within {a.timeout} s")


if __name__ == "__main__":
    main()
