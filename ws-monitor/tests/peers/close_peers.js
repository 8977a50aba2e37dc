#!/usr/bin/env node
// How WebSocket connections end, with the `ws` library on both sides, for the connection
// log and close-analysis tests (tests/close_analysis.rs).
//
// server: on --port, three paths: /echo echoes every message (compressed, even a short
//         one, with --deflate yes: permessage-deflate with no threshold); /limit has maxPayload
//         --limit, so ws closes 1009 on a bigger message; /text accepts text only and
//         closes 1003 "text only" on a binary message. Prints "listening"; exits after
//         --expect connections have closed. A request that is not an upgrade gets 426.
// client: runs each scenario on its own connection, one after the other, and prints one
//         JSON object: per scenario, the client port it used, what it sent, and the close
//         code and reason it received.
//   normal:  /echo, "hello" and its echo, then close(1000, "bye"): a close handshake,
//            the client first.
//   big:     /limit, a binary message of --big bytes: the server closes 1009.
//   binary:  /text, a binary message of 10 bytes: the server closes 1003.
//   abrupt:  /echo, "hello" and its echo, then the socket is ended without a close frame.
//   idle:    /echo, "hello" and its echo, then nothing: waits up to --idle seconds for the
//            connection to be closed by someone else (a proxy's idle timeout).
//   echo:    /echo, "hello", then whatever comes first: its echo (then close 1000), the
//            connection closed, or a refused handshake (its status).
// --scenarios picks and orders them (default: normal,big,binary,abrupt).
'use strict';

const { WebSocket, WebSocketServer } = require('ws');

function parseArgs(argv) {
  const a = {
    role: argv[0], port: 8001, host: '127.0.0.1', limit: 1000, big: 5000, expect: 4, idle: 10,
    scenarios: 'normal,big,binary,abrupt', deflate: 'no',
  };
  for (let i = 1; i < argv.length; i += 2) {
    const [k, v] = [argv[i].replace(/^--/, ''), argv[i + 1]];
    a[k] = ['port', 'limit', 'big', 'expect', 'idle'].includes(k) ? Number(v) : v;
  }
  return a;
}

function server(a) {
  const http = require('http').createServer();
  const echo = new WebSocketServer({ noServer: true, perMessageDeflate: a.deflate === 'yes' ? { threshold: 0 } : false });
  const limit = new WebSocketServer({ noServer: true, maxPayload: a.limit });
  const text = new WebSocketServer({ noServer: true });
  let closed = 0;
  const done = () => {
    if (++closed >= a.expect) setTimeout(() => process.exit(0), 200);
  };
  echo.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('close', done);
    ws.on('error', () => {});
  });
  limit.on('connection', (ws) => {
    ws.on('close', done);
    ws.on('error', () => {}); // ws reports the 1009 it sends as an error
  });
  text.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => (isBinary ? ws.close(1003, 'text only') : ws.send(data)));
    ws.on('close', done);
    ws.on('error', () => {});
  });
  const paths = { '/echo': echo, '/limit': limit, '/text': text };
  http.on('request', (req, res) => {
    res.writeHead(426, { Connection: 'close', 'Content-Type': 'text/plain' });
    res.end('upgrade required');
    done();
  });
  http.on('upgrade', (req, socket, head) => {
    const wss = paths[req.url];
    if (!wss) return socket.destroy();
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  http.listen(a.port, '0.0.0.0', () => console.log('listening'));
}

function open(a, path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${a.host}:${a.port}${path}`, { headers: { Origin: 'http://test.example' } });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (req, res) => reject(new Error(`status ${res.statusCode}`)));
    ws.once('error', reject);
  });
}

const once = (ws, ev) => new Promise((resolve) => ws.once(ev, (...args) => resolve(args)));

async function scenario(a, name) {
  const path = { normal: '/echo', big: '/limit', binary: '/text', abrupt: '/echo', idle: '/echo', echo: '/echo' }[name];
  let ws;
  try {
    ws = await open(a, path);
  } catch (e) {
    if (name !== 'echo') throw e;
    return { refused: e.message };
  }
  const port = ws._socket.localPort;
  const closed = once(ws, 'close');
  const out = { port };
  if (name === 'echo') {
    ws.on('error', () => {}); // a frame the client refuses ends the connection with 1002
    ws.send('hello');
    const first = await Promise.race([once(ws, 'message').then(() => 'message'), closed.then(() => 'close')]);
    if (first === 'message') ws.close(1000);
    const [code, reason] = await closed;
    await new Promise((r) => setTimeout(r, 200));
    return { port, first, code, reason: reason.toString() };
  }
  if (name === 'idle') {
    ws.send('hello');
    await once(ws, 'message');
    const timer = setTimeout(() => ws.terminate(), a.idle * 1000);
    const [code, reason] = await closed;
    clearTimeout(timer);
    return { port, code, reason: reason.toString() };
  }
  if (name === 'normal' || name === 'abrupt') {
    ws.send('hello');
    await once(ws, 'message');
    if (name === 'normal') {
      ws.close(1000, 'bye');
    } else {
      // No close frame: end the TCP connection as a crashing client would.
      ws._socket.end();
    }
  } else if (name === 'big') {
    ws.send(Buffer.alloc(a.big, 7));
    out.sent = a.big;
  } else {
    ws.send(Buffer.alloc(10, 1));
    out.sent = 10;
  }
  const [code, reason] = await closed;
  out.code = code;
  out.reason = reason.toString();
  // Let the TCP connection finish closing before the next one.
  await new Promise((r) => setTimeout(r, 200));
  return out;
}

async function client(a) {
  const result = {};
  for (const name of a.scenarios.split(',')) {
    result[name] = await scenario(a, name);
  }
  console.log(JSON.stringify(result));
  // A refused handshake leaves its HTTP connection open (keep-alive): do not wait for it.
  process.exit(0);
}

const a = parseArgs(process.argv.slice(2));
if (a.role === 'server') server(a);
else client(a).catch((e) => {
  console.error(e);
  process.exit(1);
});
