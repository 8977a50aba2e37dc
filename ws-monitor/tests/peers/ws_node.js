#!/usr/bin/env node
// Conformant WebSocket peers built on the `ws` library (pinned in package.json and
// package-lock.json; `npm ci` in this directory installs it), for the end-to-end protocol
// tests.
//
// server: an echo server on --port (every message sent back as one message); prints
//         "listening" once bound; exits after --expect connections have closed.
// client: connects to each of --hosts in turn and runs the same script as ws_python.py:
//         text messages (ASCII and multi-byte UTF-8), binary messages of 0, 125, 126,
//         65535, 65536 and 200000 bytes, a fragmented text message (cut inside multi-byte
//         characters) and a fragmented binary message (send with fin: false), pings (each
//         awaiting its pong), then close with 1000.
//         Prints one JSON object: message counts, and the frames the script makes each
//         side send per connection.
//
// --compression deflate|none sets perMessageDeflate on both roles (ws compresses only
// messages of at least 1024 bytes; frame counts do not depend on it).
'use strict';

const { WebSocket, WebSocketServer } = require('ws');
const wsVersion = require('ws/package.json').version;

const TEXTS = ['hello', 'ünïcödé — ✓ 日本語 🚀', 'x'.repeat(1000), '€'.repeat(5000)];
const BINARY_SIZES = [0, 125, 126, 65535, 65536, 200000];
// A text message sent in three frames cut inside multi-byte characters (valid UTF-8 only
// as a whole, as RFC 6455 allows).
const TEXT_WHOLE = Buffer.from('frag-1 ✓ frag-2 日本 frag-3 🚀');
const TEXT_CUTS = [TEXT_WHOLE.indexOf(Buffer.from('✓')) + 1, TEXT_WHOLE.indexOf(Buffer.from('🚀')) + 2];
const TEXT_FRAGMENTS = [
  TEXT_WHOLE.subarray(0, TEXT_CUTS[0]),
  TEXT_WHOLE.subarray(TEXT_CUTS[0], TEXT_CUTS[1]),
  TEXT_WHOLE.subarray(TEXT_CUTS[1]),
];
const BINARY_FRAGMENTS = [Buffer.concat(Array(4).fill(Buffer.from([...Array(256).keys()]))), Buffer.alloc(3000, 1)];
const PINGS = [Buffer.from('ping-0'), Buffer.from('ping-1'), Buffer.from([0xff, 0x00, 0x41])];

function parseArgs(argv) {
  const a = { role: argv[0], port: 0, hosts: '127.0.0.1', compression: 'none', expect: 0, timeout: 60 };
  for (let i = 1; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`${k} needs a value`);
    if (k === '--port') a.port = Number(v);
    else if (k === '--hosts') a.hosts = v;
    else if (k === '--compression') a.compression = v;
    else if (k === '--expect') a.expect = Number(v);
    else if (k === '--timeout') a.timeout = Number(v);
    else throw new Error(`unknown option ${k}`);
  }
  if (!['server', 'client'].includes(a.role) || !a.port || !['deflate', 'none'].includes(a.compression)) {
    throw new Error('usage: ws_node.js server|client --port P [--hosts H1,H2] [--compression deflate|none] [--expect N]');
  }
  return a;
}

function payload(n, seed) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

function server(a) {
  let closed = 0;
  const wss = new WebSocketServer({ port: a.port, perMessageDeflate: a.compression === 'deflate', maxPayload: 1 << 21 });
  wss.on('listening', () => console.log('listening'));
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('close', () => {
      closed += 1;
      if (a.expect && closed >= a.expect) {
        // Let the TCP close finish, then go.
        setTimeout(() => wss.close(() => process.exit(0)), 200);
      }
    });
  });
}

// Resolves with the next message (data, isBinary) or rejects on error/close.
function nextMessage(ws) {
  return new Promise((resolve, reject) => {
    const onMsg = (data, isBinary) => { cleanup(); resolve({ data, isBinary }); };
    const onErr = (e) => { cleanup(); reject(e); };
    const onClose = () => { cleanup(); reject(new Error('closed while waiting for a message')); };
    const cleanup = () => { ws.off('message', onMsg); ws.off('error', onErr); ws.off('close', onClose); };
    ws.on('message', onMsg);
    ws.on('error', onErr);
    ws.on('close', onClose);
  });
}

function once(ws, event) {
  return new Promise((resolve, reject) => {
    ws.once(event, (...args) => resolve(args));
    if (event !== 'error') ws.once('error', reject);
  });
}

function send(ws, data, opts) {
  return new Promise((resolve, reject) => ws.send(data, opts, (e) => (e ? reject(e) : resolve())));
}

async function expectEcho(ws, sent, binary, what) {
  const { data, isBinary } = await nextMessage(ws);
  const want = Buffer.isBuffer(sent) ? sent : Buffer.from(sent);
  if (isBinary !== binary || !Buffer.from(data).equals(want)) throw new Error(`${what}: echo differs`);
}

async function oneConnection(host, a) {
  const url = host.includes(':') ? `ws://[${host}]:${a.port}/echo` : `ws://${host}:${a.port}/echo`;
  const ws = new WebSocket(url, { perMessageDeflate: a.compression === 'deflate', maxPayload: 1 << 21 });
  await once(ws, 'open');
  for (const t of TEXTS) {
    await send(ws, t, { binary: false });
    await expectEcho(ws, t, false, 'text');
  }
  for (const [i, n] of BINARY_SIZES.entries()) {
    const b = payload(n, i);
    await send(ws, b, { binary: true });
    await expectEcho(ws, b, true, `binary of ${n} bytes`);
  }
  for (const [frags, binary] of [[TEXT_FRAGMENTS, false], [BINARY_FRAGMENTS, true]]) {
    for (const [i, f] of frags.entries()) await send(ws, f, { binary, fin: i === frags.length - 1 });
    const whole = Buffer.concat(frags);
    await expectEcho(ws, whole, binary, binary ? 'fragmented binary' : 'fragmented text');
  }
  for (const p of PINGS) {
    const pong = once(ws, 'pong');
    ws.ping(p);
    const [data] = await pong;
    if (!Buffer.from(data).equals(p)) throw new Error('pong payload differs');
  }
  const closed = once(ws, 'close');
  ws.close(1000, 'done');
  const [code] = await closed;
  return code;
}

async function client(a) {
  const hosts = a.hosts.split(',').filter(Boolean);
  const codes = [];
  for (const h of hosts) codes.push(await oneConnection(h, a));
  const fragments = TEXT_FRAGMENTS.length + BINARY_FRAGMENTS.length;
  const text = TEXTS.length + 1;
  const binary = BINARY_SIZES.length + 1;
  console.log(JSON.stringify({
    library: `ws ${wsVersion}`,
    compression: a.compression,
    connections: hosts.length,
    text_messages: text,
    binary_messages: binary,
    pings: PINGS.length,
    close_codes: codes,
    reject_statuses: [],
    frames_per_connection: {
      // ws sends a fragmented message as its first frame then continuations (the last
      // with FIN=1): one continuation fewer than fragments per message.
      client: { text, binary, continuation: fragments - 2, close: 1, ping: PINGS.length, pong: 0, reserved: 0 },
      // The echo server sends every message back in one frame and answers each ping.
      server: { text, binary, continuation: 0, close: 1, ping: 0, pong: PINGS.length, reserved: 0 },
    },
  }));
}

function main() {
  let a;
  try {
    a = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`ws_node.js: ${e.message}`);
    process.exit(2);
  }
  setTimeout(() => {
    console.error(`ws_node.js ${a.role}: not done within ${a.timeout} s`);
    process.exit(1);
  }, a.timeout * 1000).unref();
  if (a.role === 'server') server(a);
  else client(a).then(() => process.exit(0), (e) => { console.error(`ws_node.js client: ${e.stack || e}`); process.exit(1); });
}

main();
