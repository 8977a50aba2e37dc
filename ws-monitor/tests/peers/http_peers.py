#!/usr/bin/env python3
"""Real HTTP-and-WebSocket traffic on one port, built on aiohttp (pinned by `cargo xtask
setup --tests`), for the end-to-end precision tests: what production ports carry besides
upgrades (health checks, plain requests, refusals and retries on kept-alive connections).

server: one aiohttp application on --port; prints "listening" once bound, runs until
        killed; prints "request PATH from CLIENT_PORT" for every request. Every
        HTTP/1.1 connection is kept alive, refusals included.
          GET  /health   200 "ok" (a load balancer's health check)
          GET  /index    200, a chunked body
          POST /submit   200, the length of the request body
          GET  /ws       WebSocket echo; 403 when Origin is http://evil.example
          GET  /private  WebSocket echo; 401 without the Basic credentials user:pass
        --max-field-size raises aiohttp's header line limit (8190 by default).
client: one scenario, against --host:--port, then one JSON object:
  keepalive   one aiohttp session with a single pooled connection (what a browser page
              or a proxy's keep-alive pool sends): GET /index, POST /submit, an upgrade
              refused for its Origin (403), then an upgrade that succeeds and runs SCRIPT.
  retry401    one TCP connection written by hand: an upgrade to /private without
              credentials (401), then the same upgrade with them on the same connection
              (101), then SCRIPT's frames, masked, and a close with 1000.
  session     an aiohttp upgrade, then SCRIPT.
  bigcookie   an aiohttp upgrade carrying a 20 KB Cookie header (a browser's worst case),
              then SCRIPT.
  The JSON object says the statuses the refusals got, the close codes, and the frames
  each side sends per WebSocket session.

SCRIPT: text messages, binary messages, pings (each awaiting its pong), close 1000;
nothing is compressed (both sides' frame counts are then deterministic).
"""
import argparse, asyncio, base64, hashlib, json, os, struct, sys

import aiohttp
from aiohttp import web

EVIL_ORIGIN = "http://evil.example"
CREDENTIALS = "Basic " + base64.b64encode(b"user:pass").decode()
TEXTS = ["hello", "ünïcödé — ✓ 日本語 🚀", "x" * 1000]
BINARIES = [b"", bytes(range(256)), bytes(70000)]
PINGS = [b"ping-0", b"ping-1"]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frames_per_session():
    return {
        "client": {"text": len(TEXTS), "binary": len(BINARIES), "continuation": 0, "close": 1,
                   "ping": len(PINGS), "pong": 0, "reserved": 0},
        "server": {"text": len(TEXTS), "binary": len(BINARIES), "continuation": 0, "close": 1,
                   "ping": 0, "pong": len(PINGS), "reserved": 0},
    }


# ----- server ---------------------------------------------------------------------------

async def echo(request):
    ws = web.WebSocketResponse(compress=False, autoping=True, max_msg_size=1 << 21)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def ws_handler(request):
    if request.headers.get("Origin") == EVIL_ORIGIN:
        return web.Response(status=403, text="origin not allowed")
    return await echo(request)


async def private_handler(request):
    if request.headers.get("Authorization") != CREDENTIALS:
        return web.Response(status=401, text="credentials needed", headers={"WWW-Authenticate": 'Basic realm="ws"'})
    return await echo(request)


async def health(request):
    return web.Response(text="ok")


async def index(request):
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"<html>", b"<body>index</body>", b"</html>"):
        await resp.write(part)
    await resp.write_eof()
    return resp


async def submit(request):
    body = await request.read()
    return web.Response(text=str(len(body)))


@web.middleware
async def log_request(request, handler):
    # Which connection each request came on (a test checks that a proxy reused one).
    peer = request.transport.get_extra_info("peername") if request.transport else None
    print(f"request {request.path} from {peer[1] if peer else 0}", flush=True)
    return await handler(request)


async def run_server(a):
    app = web.Application(middlewares=[log_request])
    app.router.add_get("/health", health)
    app.router.add_get("/index", index)
    app.router.add_post("/submit", submit)
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/private", private_handler)
    runner = web.AppRunner(app, access_log=None, max_field_size=a.max_field_size, max_line_size=a.max_field_size)
    await runner.setup()
    await web.TCPSite(runner, host=None, port=a.port).start()
    print("listening", flush=True)
    await asyncio.Event().wait()


# ----- clients --------------------------------------------------------------------------

def url(a, path, scheme="http"):
    host = f"[{a.host}]" if ":" in a.host else a.host
    return f"{scheme}://{host}:{a.port}{path}"


async def script_aiohttp(ws):
    for t in TEXTS:
        await ws.send_str(t)
        assert (await ws.receive_str()) == t, "text echo differs"
    for b in BINARIES:
        await ws.send_bytes(b)
        assert (await ws.receive_bytes()) == b, "binary echo differs"
    for p in PINGS:
        await ws.ping(p)
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.PONG and msg.data == p, f"pong expected, got {msg}"
    await ws.close(code=1000, message=b"done")
    return ws.close_code


def session():
    # One pooled connection: every request of the scenario goes over the same TCP
    # connection (aiohttp returns it to the pool after each complete response).
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=False))


async def keepalive(a):
    statuses, codes = [], []
    async with session() as s:
        async with s.get(url(a, "/index")) as r:
            assert r.status == 200 and (await r.text()).startswith("<html>"), "GET /index"
        async with s.post(url(a, "/submit"), data=b"k=v" * 100) as r:
            assert r.status == 200 and (await r.text()) == "300", "POST /submit"
        try:
            async with s.ws_connect(url(a, "/ws", "ws"), origin=EVIL_ORIGIN, autoping=False, compress=0):
                raise SystemExit("the upgrade with a foreign Origin was accepted")
        except aiohttp.WSServerHandshakeError as e:
            statuses.append(e.status)
        async with s.ws_connect(url(a, "/ws", "ws"), autoping=False, compress=0, max_msg_size=1 << 21) as ws:
            codes.append(await script_aiohttp(ws))
    return {"reject_statuses": statuses, "close_codes": codes, "sessions": 1}


async def session_only(a):
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url(a, "/ws", "ws"), autoping=False, compress=0, max_msg_size=1 << 21) as ws:
            code = await script_aiohttp(ws)
    return {"reject_statuses": [], "close_codes": [code], "sessions": 1}


async def bigcookie(a):
    cookie = "; ".join(f"c{i}={'v' * 200}" for i in range(100))  # 100 cookies, about 20.6 KB
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url(a, "/ws", "ws"), headers={"Cookie": cookie}, autoping=False, compress=0,
                                max_msg_size=1 << 21) as ws:
            code = await script_aiohttp(ws)
    return {"reject_statuses": [], "close_codes": [code], "sessions": 1, "cookie_bytes": len(cookie)}


def mask_frame(opcode, payload):
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    assert not b1 & 0x80, "the server masked a frame"
    return b0 & 0x0F, await reader.readexactly(n)


async def retry401(a):
    reader, writer = await asyncio.open_connection(a.host, a.port)
    key = base64.b64encode(os.urandom(16))
    upgrade = (b"GET /private HTTP/1.1\r\nHost: " + a.host.encode() + b"\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n")
    writer.write(upgrade + b"\r\n")
    status, headers = await read_head(reader)
    assert status == 401, f"401 expected, got {status}"
    await reader.readexactly(int(headers["content-length"]))
    writer.write(upgrade + b"Authorization: " + CREDENTIALS.encode() + b"\r\n\r\n")
    status2, headers = await read_head(reader)
    assert status2 == 101, f"101 expected after the retry, got {status2}"
    want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    assert headers["sec-websocket-accept"] == want, "accept value"
    for t in TEXTS:
        writer.write(mask_frame(1, t.encode()))
        assert await read_frame(reader) == (1, t.encode()), "text echo"
    for b in BINARIES:
        writer.write(mask_frame(2, b))
        assert await read_frame(reader) == (2, b), "binary echo"
    for p in PINGS:
        writer.write(mask_frame(9, p))
        assert await read_frame(reader) == (10, p), "pong"
    writer.write(mask_frame(8, struct.pack("!H", 1000) + b"done"))
    op, body = await read_frame(reader)
    assert op == 8, "close expected"
    code = struct.unpack("!H", body[:2])[0]
    # The server closes the TCP connection after the close handshake.
    await reader.read()
    writer.close()
    return {"reject_statuses": [status], "close_codes": [code], "sessions": 1}


SCENARIOS = {"keepalive": keepalive, "retry401": retry401, "bigcookie": bigcookie, "session": session_only}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--scenario", choices=sorted(SCENARIOS))
    p.add_argument("--max-field-size", type=int, default=8190)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    if a.role == "server":
        asyncio.run(run_server(a))
        return
    if not a.scenario:
        raise SystemExit("client: --scenario is required")

    async def client():
        out = await SCENARIOS[a.scenario](a)
        out.update({"scenario": a.scenario, "library": f"aiohttp {aiohttp.__version__}",
                    "frames_per_session": frames_per_session()})
        print(json.dumps(out), flush=True)

    try:
        asyncio.run(asyncio.wait_for(client(), timeout=a.timeout))
    except TimeoutError:
        raise SystemExit(f"client {a.scenario}: not done within {a.timeout} s")


if __name__ == "__main__":
    main()
