#!/usr/bin/env node
// socket.io peers (pinned in package.json and package-lock.json; `npm ci` in this
// directory installs them) for the end-to-end precision tests: socket.io's default
// transport is HTTP long-polling first (plain GET and POST requests on the WebSocket
// port, kept alive), then an upgrade to WebSocket on a new connection, probed with
// "2probe"/"3probe" before the switch.
//
// server: a socket.io server on --port that acknowledges every "echo" event with its
//         argument; prints "listening" once bound; exits after --expect clients have
//         disconnected.
// client: connects to --host:--port with the default transports (polling, then
//         websocket), waits for the upgrade, sends --events "echo" events awaiting each
//         acknowledgement, disconnects, and prints one JSON object.
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const { io } = require('socket.io-client');
const version = JSON.parse(require('fs').readFileSync(require('path').join(__dirname, 'node_modules/socket.io/package.json'))).version;

function parseArgs(argv) {
  const a = { role: argv[0], port: 0, host: '127.0.0.1', expect: 1, events: 20, timeout: 60 };
  for (let i = 1; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`${k} needs a value`);
    if (k === '--port') a.port = Number(v);
    else if (k === '--host') a.host = v;
    else if (k === '--expect') a.expect = Number(v);
    else if (k === '--events') a.events = Number(v);
    else if (k === '--timeout') a.timeout = Number(v);
    else throw new Error(`unknown option ${k}`);
  }
  if (!['server', 'client'].includes(a.role) || !a.port) {
    throw new Error('usage: socketio_peer.js server|client --port P [--host H] [--expect N] [--events N]');
  }
  return a;
}

function server(a) {
  const httpServer = http.createServer();
  const sio = new Server(httpServer);
  let gone = 0;
  sio.on('connection', (socket) => {
    socket.on('echo', (msg, ack) => ack(msg));
    socket.on('disconnect', () => {
      gone += 1;
      if (gone >= a.expect) setTimeout(() => sio.close(() => process.exit(0)), 200);
    });
  });
  httpServer.listen(a.port, () => console.log('listening'));
}

async function client(a) {
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  const socket = io(`http://${host}:${a.port}`, { reconnection: false });
  const upgraded = new Promise((resolve, reject) => {
    socket.on('connect_error', reject);
    socket.io.engine.on('upgrade', (t) => resolve(t.name));
  });
  const transport = await upgraded;
  let acked = 0;
  for (let i = 0; i < a.events; i++) {
    const msg = `message ${i} ✓`;
    const back = await socket.timeout(10000).emitWithAck('echo', msg);
    if (back !== msg) throw new Error(`echo ${i} differs`);
    acked += 1;
  }
  socket.disconnect();
  console.log(JSON.stringify({ library: `socket.io ${version}`, transport, acked }));
}

const a = parseArgs(process.argv.slice(2));
setTimeout(() => { console.error(`${a.role}: not done within ${a.timeout} s`); process.exit(1); }, a.timeout * 1000).unref();
if (a.role === 'server') server(a);
else client(a).catch((e) => { console.error(`client: ${e.stack || e}`); process.exit(1); });
