// The same tiny HTTP app for every Node setup: on fd 3 when socket-activated (preforkd,
// systemd), else on $PORT. SIGTERM/SIGINT: stop accepting, drain politely, exit.
'use strict';
const http = require('http');
const { execFile } = require('child_process');
const body = 'Hello, World!\n';
let draining = false;
const server = http.createServer((req, res) => {
  // While draining, every answer closes its connection: a keep-alive client moves to a new
  // worker after this answer instead of racing a close of its idle connection.
  if (draining) res.setHeader('Connection', 'close');
  if (req.url === '/pid') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end(`${process.pid}\n`);
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
  res.end(body);
});
// SIGTERM/SIGINT: stop accepting at once (the supervisor's new workers take new connections),
// give keep-alive clients a second to send their next request and get "Connection: close",
// then close what is idle and exit.
const stop = () => {
  if (draining) return;
  draining = true;
  // Node 19+ would drop idle keep-alive connections inside close(): not yet.
  server.closeIdleConnections = () => {};
  server.close(() => process.exit(0));
  setTimeout(() => {
    for (const s of idle) s.destroy();
  }, 1000).unref();
  setTimeout(() => process.exit(0), 3000).unref();
};
// Connections, so idle ones can be dropped after the grace above.
const idle = new Set();
server.on('connection', (s) => {
  idle.add(s);
  s.on('close', () => idle.delete(s));
});
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// How long this code takes to boot before it listens: bench/run rewrites it to deploy a slow
// version.
const BOOT_MS = 0;
// Under preforkd (or systemd), say READY=1 once listening: node cannot send a datagram on a
// unix socket itself, so systemd-notify does, as a child in this worker's process group.
const listening = () => {
  if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', ['--ready'], () => {});
};
setTimeout(() => {
  if (process.env.LISTEN_FDS) {
    server.listen({ fd: 3 }, listening);
  } else {
    server.listen(Number(process.env.PORT), '127.0.0.1', listening);
  }
}, BOOT_MS);
