#!/usr/bin/env python3
"""A raw-socket WebSocket peer that commits every ws-monitor violation kind a known number
of times (plain `socket`, no WebSocket library), for the end-to-end protocol tests.

server: listens on --port, prints "listening", serves one connection per scenario (the
        client names the scenario in its request path, /case/NAME; a connection that
        starts with a TLS record is the "tls_on_plain_port" scenario), then exits.
client: runs every scenario on its own connection, one after the other, and prints one
        JSON object: what a monitor of --port must report (connections, upgrades_ok,
        violations_by_direction with every kind, frames, close_codes) and, per scenario,
        the client port it used and the kinds it expects there.

Each side commits only the violations attributed to it ("client" = bytes from the
connecting side). Every connection is closed in an orderly way (each side half-closes
after its last byte and reads until the other's FIN), so nothing is ever reset. A client
waits for the response head before it sends frames, as a real client does. The expected
counts are declared by hand with each step (see SCENARIOS) and follow ws-monitor's
counting rules: frame kinds once per frame, invalid_utf8_text once per message,
handshake kinds, http_in_stream and tls_on_plain_port once per connection; nothing is
reported in a direction after length_msb_set or http_in_stream (it is unsynced), so
those come last in their direction.
"""
import argparse, base64, hashlib, json, socket, struct, sys, threading, zlib

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 20.0

KINDS = [
    "handshake_rejected", "upgrade_missing", "accept_mismatch", "bad_handshake", "extension_not_offered",
    "handshake_too_large", "frame_before_upgrade", "rsv_without_extension", "rsv1_invalid", "reserved_opcode", "unmasked_client_frame", "masked_server_frame",
    "control_too_long", "control_fragmented", "orphan_continuation", "interleaved_data_frame", "non_minimal_length",
    "length_msb_set", "oversized_frame", "oversized_message", "invalid_utf8_text", "invalid_compressed_data", "invalid_close_payload", "invalid_close_code",
    "invalid_close_reason", "data_after_close", "http_in_stream", "tls_on_plain_port",
]
# Kinds of the 101 (or of a connection never upgraded) that keep it out of upgrades_ok.
HANDSHAKE_KINDS = {"handshake_rejected", "upgrade_missing", "accept_mismatch", "bad_handshake", "extension_not_offered",
                   "handshake_too_large"}

# The monitor runs with --max-frame-size MAX_FRAME and --max-message-size MAX_MESSAGE: only
# the oversized_frame and oversized_message scenarios go beyond them.
MAX_FRAME = 64 * 1024
MAX_MESSAGE = 128 * 1024

CONT, TEXT, BIN, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPNAMES = {CONT: "continuation", TEXT: "text", BIN: "binary", CLOSE: "close", PING: "ping", PONG: "pong"}

# Fixed, distinct masking keys (the monitor's resync logic dislikes repeated keys; the
# sequence also keeps every run byte-identical).
_key_counter = [0]


def next_key():
    _key_counter[0] += 1
    return struct.pack(">I", (0x9E3779B1 * _key_counter[0]) & 0xFFFFFFFF or 1)


def mask_bytes(data, key):
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


class Frame:
    """One frame and the findings it must raise (kinds listed by hand)."""

    def __init__(self, op, payload=b"", fin=True, rsv=0, masked=None, form=None, claim=None, kinds=()):
        if isinstance(payload, str):
            payload = payload.encode()
        self.op, self.payload, self.fin, self.rsv = op, payload, fin, rsv
        self.masked, self.form, self.claim, self.kinds = masked, form, claim, list(kinds)

    def encode(self, masked_default):
        masked = self.masked if self.masked is not None else masked_default
        b0 = (0x80 if self.fin else 0) | (self.rsv << 4) | self.op
        n = self.claim if self.claim is not None else len(self.payload)
        form = self.form or ("short" if n < 126 else "16" if n < 65536 else "64")
        mbit = 0x80 if masked else 0
        if form == "short":
            head = bytes([b0, mbit | n])
        elif form == "16":
            head = bytes([b0, mbit | 126]) + struct.pack(">H", n)
        else:
            head = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
        if masked:
            key = next_key()
            return head + key + mask_bytes(self.payload, key)
        return head + self.payload

    def close_code(self):
        if self.op == CLOSE and len(self.payload) >= 2 and len(self.payload) <= 125:
            return struct.unpack(">H", self.payload[:2])[0]
        return None


class Raw:
    """Bytes sent as they are (not a frame)."""

    def __init__(self, data, kinds=(), desync=False):
        self.data = data.encode() if isinstance(data, str) else data
        self.kinds, self.desync = list(kinds), desync


def close_body(code, reason=b""):
    return struct.pack(">H", code) + (reason.encode() if isinstance(reason, str) else reason)


def deflate_message(comp, data):
    """permessage-deflate payload of one message with a kept context."""
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def new_deflater():
    return zlib.compressobj(6, zlib.DEFLATED, -15)


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def request(name, key, version="13", upgrade=True, extra=""):
    lines = [f"GET /case/{name} HTTP/1.1", "Host: violator.test"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
    lines += [f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}"]
    head = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    return head.encode()


def response_101(key, accept=None, upgrade_header=True, extra=""):
    lines = ["HTTP/1.1 101 Switching Protocols"]
    if upgrade_header:
        lines.append("Upgrade: websocket")
    lines += ["Connection: Upgrade", f"Sec-WebSocket-Accept: {accept or accept_for(key)}"]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def plain_response(status, body=b"", extra="", keep_alive=False):
    conn = "keep-alive" if keep_alive else "close"
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: {conn}\r\n{extra}\r\n"
    return head.encode() + body


def plain_request(name, what):
    """A request without any WebSocket header (a health check, a page)."""
    return f"GET /case/{name}/{what} HTTP/1.1\r\nHost: violator.test\r\nUser-Agent: check/1\r\n\r\n".encode()


PMD = "Sec-WebSocket-Extensions: permessage-deflate\r\n"

# --- scenarios ---------------------------------------------------------------------------
# Each scenario is one TCP connection:
#   request(key) -> bytes  (or the "tls" marker),
#   response(key) -> bytes  (server's head),
#   upgraded: a 101 puts both directions in frame parsing,
#   client / server: steps (Frame or Raw) sent after the handshake, with the kinds each
#   must raise, plus handshake kinds as ("client"|"server", kind) in `hs`;
#   pre: HTTP exchanges [(request(key), response(key), plain)] on the same connection
#   before the final request (keep-alive responses with a Content-Length body); `plain`
#   ones have no WebSocket header and count as http_requests;
#   early: the client sends its frames right behind the request, before the response.


def S(name, request, response, upgraded, client=(), server=(), hs=(), deflate=False, pre=(), early=False):
    return dict(name=name, request=request, response=response, upgraded=upgraded, client=list(client),
                server=list(server), hs=list(hs), deflate=deflate, pre=list(pre), early=early)


def client_close():
    return [Frame(CLOSE, close_body(1000))]


def server_close():
    return [Frame(CLOSE, close_body(1000))]


def build_scenarios():
    sc = []
    ok101 = lambda key: response_101(key)

    # A clean connection among the violations: nothing may be reported on it.
    sc.append(S("clean", lambda k: request("clean", k), ok101, True,
                client=[Frame(TEXT, "hello ✓ ünïcödé"), Frame(BIN, bytes(range(200))), Frame(PING, "p"),
                        Frame(TEXT, "frag-", fin=False), Frame(PING, "mid"), Frame(CONT, "ment ✓")] + client_close(),
                server=[Frame(TEXT, "hi €"), Frame(PONG, "p"), Frame(BIN, b"\x00" * 300)] + server_close()))

    # --- handshake kinds -----------------------------------------------------------------
    sc.append(S("handshake_rejected", lambda k: request("handshake_rejected", k),
                lambda k: plain_response("403 Forbidden", b"forbidden"), False,
                hs=[("server", "handshake_rejected")]))
    sc.append(S("upgrade_missing", lambda k: request("upgrade_missing", k, upgrade=False),
                lambda k: plain_response("200 OK", b"ok"), False,
                hs=[("client", "upgrade_missing")]))
    sc.append(S("accept_mismatch", lambda k: request("accept_mismatch", k),
                lambda k: response_101(k, accept=accept_for(k + "x")), True,
                client=[Frame(TEXT, "still parsed")] + client_close(),
                server=[Frame(TEXT, "frames follow")] + server_close(),
                hs=[("server", "accept_mismatch")]))
    # A client speaking an old protocol version; the server refuses it (426).
    sc.append(S("bad_handshake_version", lambda k: request("bad_handshake_version", k, version="8"),
                lambda k: plain_response("426 Upgrade Required", extra="Sec-WebSocket-Version: 13\r\n"), False,
                hs=[("client", "bad_handshake"), ("server", "handshake_rejected")]))
    # A 101 without the Upgrade header.
    sc.append(S("bad_handshake_101", lambda k: request("bad_handshake_101", k),
                lambda k: response_101(k, upgrade_header=False), True,
                client=client_close(), server=[Frame(BIN, b"\x01\x02\x03")] + server_close(),
                hs=[("server", "bad_handshake")]))
    # 300 header fields: beyond the monitor's 256; the server refuses it (431).
    many = "".join(f"X-Filler-{i}: x\r\n" for i in range(300))
    sc.append(S("handshake_too_large", lambda k: request("handshake_too_large", k, extra=many),
                lambda k: plain_response("431 Request Header Fields Too Large"), False,
                hs=[("client", "handshake_too_large")]))
    # Frames right behind the request, before the 101: still parsed as frames.
    sc.append(S("frame_before_upgrade", lambda k: request("frame_before_upgrade", k), ok101, True, early=True,
                client=[Frame(TEXT, "too early"), Frame(PING, "p")] + client_close(),
                server=[Frame(TEXT, "hello")] + server_close(),
                hs=[("client", "frame_before_upgrade")]))
    # Keep-alive HTTP before the upgrade (health checks, a page, a 401 and an authenticated
    # retry): counted as http_requests, one handshake_rejected, and a fully analysed session.
    sc.append(S("http_then_upgrade", lambda k: request("http_then_upgrade", k), ok101, True,
                pre=[(lambda k: plain_request("http_then_upgrade", "health"),
                      lambda k: plain_response("200 OK", b"healthy", keep_alive=True), True),
                     (lambda k: plain_request("http_then_upgrade", "index"),
                      lambda k: plain_response("200 OK", b"GET / HTTP/1.1 \x81\x05", keep_alive=True), True),
                     (lambda k: request("http_then_upgrade", k),
                      lambda k: plain_response("401 Unauthorized", b"who?", keep_alive=True,
                                               extra='WWW-Authenticate: Basic realm="ws"\r\n'), False)],
                client=[Frame(TEXT, "after the retry"), Frame(PING, b"\x07" * 126, kinds=["control_too_long"])]
                + client_close(),
                server=[Frame(TEXT, "welcome"), Frame(CLOSE, close_body(1005), kinds=["invalid_close_code"])],
                hs=[("server", "handshake_rejected")]))
    # permessage-deflate accepted although the client offered no extension; the server
    # then compresses (legal once it is in force).
    sc.append(S("extension_not_offered", lambda k: request("extension_not_offered", k),
                lambda k: response_101(k, extra=PMD), True,
                client=[Frame(TEXT, "plain")] + client_close(),
                server=["DEFLATE_TEXT:compressed ✓ text"] + server_close(),
                hs=[("server", "extension_not_offered")]))
    sc.append(S("subprotocol_not_offered",
                lambda k: request("subprotocol_not_offered", k, extra="Sec-WebSocket-Protocol: chat\r\n"),
                lambda k: response_101(k, extra="Sec-WebSocket-Protocol: mqtt\r\n"), True,
                client=client_close(), server=server_close(),
                hs=[("server", "extension_not_offered")]))

    # --- frame kinds -------------------------------------------------------------------
    sc.append(S("rsv_plain", lambda k: request("rsv_plain", k), ok101, True,
                client=[Frame(TEXT, "x", rsv=0b100, kinds=["rsv_without_extension"]), Frame(TEXT, "fine"),
                        # No deflate: RSV1 on control and continuation frames is rsv_without_extension too.
                        Frame(PING, "p", rsv=0b100, kinds=["rsv_without_extension"]),
                        Frame(TEXT, "a", fin=False), Frame(CONT, "b", rsv=0b100, kinds=["rsv_without_extension"])]
                + client_close(),
                server=[Frame(BIN, b"\x01", rsv=0b010, kinds=["rsv_without_extension"]),
                        Frame(TEXT, "y", rsv=0b001, kinds=["rsv_without_extension"])] + server_close()))
    # permessage-deflate negotiated: RSV1 on a control frame and on a continuation,
    # RSV2 still unknown.
    sc.append(S("rsv_deflate", lambda k: request("rsv_deflate", k, extra=PMD), lambda k: response_101(k, extra=PMD),
                True, deflate=True,
                client=[Frame(PING, "p", rsv=0b100, kinds=["rsv1_invalid"]),
                        Frame(BIN, b"\x05\x06", rsv=0b010, kinds=["rsv_without_extension"])] + client_close(),
                server=["DEFLATE_FRAGMENTED_RSV1_CONT:hello hello hello fragmented ✓",
                        Frame(PONG, "q", rsv=0b100, kinds=["rsv1_invalid"])] + server_close()))
    sc.append(S("reserved_opcode", lambda k: request("reserved_opcode", k), ok101, True,
                client=[Frame(0x3, "x", kinds=["reserved_opcode"]), Frame(TEXT, "after")] + client_close(),
                server=[Frame(0xB, "", kinds=["reserved_opcode"]), Frame(TEXT, "after")] + server_close()))
    sc.append(S("unmasked_client_frame", lambda k: request("unmasked_client_frame", k), ok101, True,
                client=[Frame(TEXT, "no mask", masked=False, kinds=["unmasked_client_frame"]),
                        Frame(PING, "p", masked=False, kinds=["unmasked_client_frame"])] + client_close(),
                server=[Frame(PONG, "p")] + server_close()))
    sc.append(S("masked_server_frame", lambda k: request("masked_server_frame", k), ok101, True,
                client=client_close(),
                server=[Frame(BIN, b"\x09" * 10, masked=True, kinds=["masked_server_frame"])] + server_close()))
    sc.append(S("control_too_long", lambda k: request("control_too_long", k), ok101, True,
                client=[Frame(PING, b"\x07" * 126, kinds=["control_too_long"])] + client_close(),
                server=[Frame(PONG, b"\x08" * 200, kinds=["control_too_long"])] + server_close()))
    sc.append(S("control_fragmented", lambda k: request("control_fragmented", k), ok101, True,
                client=[Frame(PING, "a", fin=False, kinds=["control_fragmented"])] + client_close(),
                server=[Frame(PONG, "x", fin=False, kinds=["control_fragmented"])] + server_close()))
    # One frame raising three kinds at once.
    sc.append(S("three_kinds_one_frame", lambda k: request("three_kinds_one_frame", k), ok101, True,
                client=[Frame(PING, b"\x01" * 126, fin=False, masked=False,
                              kinds=["unmasked_client_frame", "control_too_long", "control_fragmented"])] + client_close(),
                server=server_close()))
    # An orphan continuation with FIN = 0 opens an (unchecked) message: its continuation
    # is not reported again.
    sc.append(S("orphan_continuation", lambda k: request("orphan_continuation", k), ok101, True,
                client=[Frame(CONT, "x", kinds=["orphan_continuation"]), Frame(TEXT, "fine")] + client_close(),
                server=[Frame(CONT, "lost", fin=False, kinds=["orphan_continuation"]), Frame(CONT, "rest"),
                        Frame(TEXT, "fine")] + server_close()))
    sc.append(S("interleaved_data_frame", lambda k: request("interleaved_data_frame", k), ok101, True,
                client=[Frame(BIN, b"\x01", fin=False), Frame(TEXT, "t", kinds=["interleaved_data_frame"])] + client_close(),
                server=[Frame(TEXT, "part", fin=False), Frame(BIN, b"\x01\x02", kinds=["interleaved_data_frame"])]
                + server_close()))
    sc.append(S("non_minimal_length", lambda k: request("non_minimal_length", k), ok101, True,
                client=[Frame(BIN, b"\x00" * 1000, form="64", kinds=["non_minimal_length"]),
                        Frame(TEXT, "ten bytes!", form="64", kinds=["non_minimal_length"]),
                        Frame(TEXT, "in sync")] + client_close(),
                server=[Frame(BIN, b"\x00" * 5, form="16", kinds=["non_minimal_length"]),
                        Frame(BIN, b"\x00" * 200)] + server_close()))
    # The length is unusable: the direction is unsynced, so it is the last thing sent.
    sc.append(S("length_msb_set", lambda k: request("length_msb_set", k), ok101, True,
                client=[Frame(TEXT, "ok"), Frame(BIN, b"", claim=1 << 63, kinds=["length_msb_set"])],
                server=[Frame(TEXT, "ok"), Frame(BIN, b"", claim=(1 << 63) | 5, kinds=["length_msb_set"])]))
    sc.append(S("oversized_frame", lambda k: request("oversized_frame", k), ok101, True,
                client=[Frame(BIN, bytes(i & 0xFF for i in range(100_000)), kinds=["oversized_frame"]),
                        Frame(BIN, b"\x02" * MAX_FRAME), Frame(TEXT, "after")] + client_close(),
                server=[Frame(BIN, b"\x03" * 70_000, kinds=["oversized_frame"]), Frame(TEXT, "after")] + server_close()))

    # Three fragments under the frame limit, together over the message limit (once).
    sc.append(S("oversized_message", lambda k: request("oversized_message", k), ok101, True,
                client=[Frame(BIN, b"\x01" * 60_000, fin=False), Frame(CONT, b"\x02" * 60_000, fin=False),
                        Frame(CONT, b"\x03" * 60_000, fin=False, kinds=["oversized_message"]),
                        Frame(CONT, b"\x04" * 100), Frame(TEXT, "after")] + client_close(),
                server=[Frame(TEXT, "a" * 50_000, fin=False), Frame(CONT, "b" * 50_000, fin=False),
                        Frame(CONT, "c" * 50_000, kinds=["oversized_message"])] + server_close()))

    # --- payload kinds -------------------------------------------------------------------
    sc.append(S("invalid_utf8_text", lambda k: request("invalid_utf8_text", k), ok101, True,
                client=[Frame(TEXT, b"a\xffb", kinds=["invalid_utf8_text"]),
                        # Cut inside a character at the end of the message.
                        Frame(TEXT, "ok €".encode()[:4], fin=False),
                        Frame(CONT, "€".encode()[:2], kinds=["invalid_utf8_text"]),
                        Frame(TEXT, "valid ✓")] + client_close(),
                # Once per message, however many fragments are bad (the finding comes
                # with the frame where the text turns invalid: listed there).
                server=[Frame(TEXT, b"\xff", fin=False, kinds=["invalid_utf8_text"]), Frame(CONT, b"\xfe", fin=False),
                        Frame(CONT, "ok"), Frame(TEXT, "valid ✓")] + server_close()))
    sc.append(S("invalid_utf8_deflate", lambda k: request("invalid_utf8_deflate", k, extra=PMD),
                lambda k: response_101(k, extra=PMD), True, deflate=True,
                client=["DEFLATE_TEXT:fine ✓", "DEFLATE_BAD_TEXT", "DEFLATE_TEXT:fine again ✓"] + client_close(),
                server=["DEFLATE_TEXT:fine ✓", "DEFLATE_BAD_TEXT", "DEFLATE_TEXT:fine again ✓"] + server_close()))
    # Compressed messages that do not inflate (binary and text), then fine ones with a
    # fresh window (no_context_takeover).
    nct = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    sc.append(S("invalid_compressed_data", lambda k: request("invalid_compressed_data", k, extra=nct),
                lambda k: response_101(k, extra=nct), True, deflate=True,
                client=[Frame(BIN, b"\xff\xff\xff\xff", rsv=0b100, kinds=["invalid_compressed_data"]),
                        "DEFLATE_TEXT_FRESH:fine ✓"] + client_close(),
                server=[Frame(TEXT, b"\x07\xff\x00\x12\xff", rsv=0b100, kinds=["invalid_compressed_data"]),
                        "DEFLATE_TEXT_FRESH:fine too ✓"] + server_close()))
    sc.append(S("invalid_close_payload", lambda k: request("invalid_close_payload", k), ok101, True,
                client=[Frame(CLOSE, b"\x03", kinds=["invalid_close_payload"])],
                server=[Frame(CLOSE, b"\x03", kinds=["invalid_close_payload"])]))
    sc.append(S("invalid_close_code", lambda k: request("invalid_close_code", k), ok101, True,
                client=[Frame(CLOSE, close_body(999), kinds=["invalid_close_code"])],
                server=[Frame(CLOSE, close_body(1005), kinds=["invalid_close_code"])]))
    sc.append(S("invalid_close_reason", lambda k: request("invalid_close_reason", k), ok101, True,
                client=[Frame(CLOSE, close_body(1000, b"b\xff"), kinds=["invalid_close_reason"])],
                server=[Frame(CLOSE, close_body(1001, b"\xc3"), kinds=["invalid_close_reason"])]))
    sc.append(S("data_after_close", lambda k: request("data_after_close", k), ok101, True,
                client=client_close() + [Frame(TEXT, "late", kinds=["data_after_close"]), Frame(PING, ""),
                                 Frame(BIN, b"\x01", kinds=["data_after_close"])],
                server=server_close() + [Frame(BIN, b"\x01", kinds=["data_after_close"])]))

    # --- stream kinds ------------------------------------------------------------------
    sc.append(S("http_in_stream_client", lambda k: request("http_in_stream_client", k), ok101, True,
                client=[Frame(TEXT, "hi"),
                        Raw("GET /next HTTP/1.1\r\nHost: violator.test\r\n\r\n", kinds=["http_in_stream"], desync=True)],
                server=[Frame(TEXT, "hello")] + server_close()))
    sc.append(S("http_in_stream_server", lambda k: request("http_in_stream_server", k), ok101, True,
                client=[Frame(TEXT, "hi")] + client_close(),
                server=[Frame(TEXT, "a"),
                        Raw("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", kinds=["http_in_stream"], desync=True)]))
    sc.append(S("tls_on_plain_port", "tls", None, False, hs=[("client", "tls_on_plain_port")]))
    return sc


def tls_client_hello():
    body = b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00" + b"\x00\x00"
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def expand(steps, masked, comp):
    """Turns the symbolic deflate steps into frames (compressed with this side's context)."""
    out = []
    for st in steps:
        if isinstance(st, str) and st.startswith("DEFLATE_TEXT:"):
            out.append(Frame(TEXT, deflate_message(comp, st.split(":", 1)[1].encode()), rsv=0b100))
        elif isinstance(st, str) and st.startswith("DEFLATE_TEXT_FRESH:"):
            out.append(Frame(TEXT, deflate_message(new_deflater(), st.split(":", 1)[1].encode()), rsv=0b100))
        elif st == "DEFLATE_BAD_TEXT":
            out.append(Frame(TEXT, deflate_message(comp, b"x\xc3\x28 not utf-8"), rsv=0b100,
                             kinds=["invalid_utf8_text"]))
        elif isinstance(st, str) and st.startswith("DEFLATE_FRAGMENTED_RSV1_CONT:"):
            body = deflate_message(comp, st.split(":", 1)[1].encode())
            a, b = body[:3], body[3:]
            out.append(Frame(TEXT, a, fin=False, rsv=0b100))
            out.append(Frame(CONT, b, rsv=0b100, kinds=["rsv1_invalid"]))
        else:
            out.append(st)
    return out


def encode_steps(steps, masked):
    return b"".join(st.encode(masked) if isinstance(st, Frame) else st.data for st in steps)


# --- expectations ------------------------------------------------------------------------


def zero_kinds():
    return {k: 0 for k in KINDS}


def empty_frames():
    return {k: 0 for k in ["text", "binary", "continuation", "close", "ping", "pong", "reserved"]}


def expectations(scenarios):
    exp = {
        "connections": len(scenarios), "upgrades_ok": 0,
        "violations_by_direction": {"client": zero_kinds(), "server": zero_kinds()},
        "frames": {"client": empty_frames(), "server": empty_frames()},
        "close_codes": {}, "http_requests": 0,
    }
    per = {}
    for sc in scenarios:
        kinds = {"client": {}, "server": {}}

        def add(d, k):
            assert k in KINDS, k
            exp["violations_by_direction"][d][k] += 1
            kinds[d][k] = kinds[d].get(k, 0) + 1

        for d, k in sc["hs"]:
            add(d, k)
        exp["http_requests"] += sum(1 for p in sc["pre"] if p[2])
        # A rejection before a retry does not spoil the retry's 101.
        spoilt = [k for _, k in sc["hs"] if k in HANDSHAKE_KINDS and not (sc["pre"] and k == "handshake_rejected")]
        if sc["upgraded"] and not spoilt:
            exp["upgrades_ok"] += 1
        for d in ("client", "server"):
            synced = sc["upgraded"]
            for st in sc[d]:
                for k in st.kinds:
                    add(d, k)
                if not synced:
                    continue
                if isinstance(st, Raw):
                    synced = not st.desync
                    continue
                f = exp["frames"][d]
                f[OPNAMES.get(st.op, "reserved")] += 1
                code = st.close_code()
                if code is not None:
                    exp["close_codes"][str(code)] = exp["close_codes"].get(str(code), 0) + 1
                if st.claim is not None and st.claim >> 63:
                    synced = False
        per[sc["name"]] = kinds
    return exp, per


def materialize(scenarios):
    """Expands symbolic steps with fresh compressors (same bytes on both roles)."""
    for sc in scenarios:
        sc["client"] = expand(sc["client"], True, new_deflater())
        sc["server"] = expand(sc["server"], False, new_deflater())
    return scenarios


# --- I/O -----------------------------------------------------------------------------------


def read_head(sock, first=b""):
    buf = bytearray(first)
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF before the end of an HTTP head ({bytes(buf[:80])!r})")
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("HTTP head too long")
    end = buf.index(b"\r\n\r\n") + 4
    return bytes(buf[:end]), bytes(buf[end:])


def drain_in_background(sock):
    done = threading.Event()

    def run():
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def finish(sock, drained):
    """Half-close, then wait for the peer's FIN (orderly close, never a reset)."""
    sock.shutdown(socket.SHUT_WR)
    if not drained.wait(TIMEOUT):
        raise TimeoutError("the peer did not close")
    sock.close()


def serve(a):
    scenarios = {sc["name"]: sc for sc in materialize(build_scenarios())}
    ls = socket.socket(socket.AF_INET6)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::", a.port))
    ls.listen(16)
    ls.settimeout(60.0)
    print("listening", flush=True)
    served = []
    for _ in range(len(scenarios)):
        c, _addr = ls.accept()
        c.settimeout(TIMEOUT)
        first = c.recv(65536)
        if first[:1] == b"\x16":
            served.append("tls_on_plain_port")
            finish(c, drain_in_background(c))
            continue
        head, rest = read_head(c, first)
        lines = head.decode("latin-1").split("\r\n")
        name = lines[0].split(" ")[1].split("/")[2]
        key = next((l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("sec-websocket-key:")), "")
        sc = scenarios[name]
        for _req, resp, _plain in sc["pre"]:
            c.sendall(resp(key))
            head, rest = read_head(c, rest)
            lines = head.decode("latin-1").split("\r\n")
            key = next((l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("sec-websocket-key:")), "")
        drained = drain_in_background(c)
        c.sendall(sc["response"](key))
        if sc["upgraded"]:
            c.sendall(encode_steps(sc["server"], masked=False))
        finish(c, drained)
        served.append(name)
    print(json.dumps({"served": served}), flush=True)


def run_client(a):
    scenarios = materialize(build_scenarios())
    exp, per = expectations(scenarios)
    ports = {}
    for i, sc in enumerate(scenarios):
        c = socket.create_connection((a.host, a.port), timeout=TIMEOUT)
        ports[sc["name"]] = c.getsockname()[1]
        if sc["request"] == "tls":
            c.sendall(tls_client_hello())
            finish(c, drain_in_background(c))
            continue
        key = base64.b64encode(hashlib.sha256(f"key-{i}".encode()).digest()[:16]).decode()
        rest = b""
        for req, _resp, _plain in sc["pre"]:
            c.sendall(req(key))
            head, rest = read_head(c, rest)
            length = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
            while len(rest) < length:
                rest += c.recv(65536)
            rest = rest[length:]
        if sc["early"]:
            c.sendall(sc["request"](key) + encode_steps(sc["client"], masked=True))
        else:
            c.sendall(sc["request"](key))
        head, rest = read_head(c, rest)
        while head.split(b" ", 2)[1].startswith(b"1") and head.split(b" ", 2)[1] != b"101":
            head, rest = read_head(c, rest)  # an interim response (100 Continue)
        status = head.split(b" ", 2)[1]
        if sc["upgraded"] != (status == b"101"):
            raise RuntimeError(f"{sc['name']}: unexpected response {head[:40]!r}")
        drained = drain_in_background(c)
        if sc["upgraded"] and not sc["early"]:
            c.sendall(encode_steps(sc["client"], masked=True))
        finish(c, drained)
    exp["http_requests"] = {str(a.port): exp["http_requests"]} if exp["http_requests"] else {}
    exp["scenarios"] = {n: {"client_port": ports[n], "expect": per[n]} for n in per}
    print(json.dumps(exp), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["server", "client", "expected"])
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()
    if a.role == "server":
        serve(a)
    elif a.role == "client":
        run_client(a)
    else:
        exp, per = expectations(materialize(build_scenarios()))
        exp["scenarios"] = {n: {"expect": per[n]} for n in per}
        print(json.dumps(exp, indent=1))


if __name__ == "__main__":
    main()
