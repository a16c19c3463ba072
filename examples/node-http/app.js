// A small HTTP app on Node's standard library that runs under preforkd (or systemd alone).
//   GET /            -> "worker=<id> pid=<pid> gen=<generation>"
//   GET /sleep?ms=N  -> answers after N ms (a slow request)
// It serves the socket at fd 3 when LISTEN_FDS is set, else 127.0.0.1:8080; says READY=1
// once listening; and drains on SIGTERM.
'use strict';
const http = require('http');
const { execFile } = require('child_process');

const GRACE_MS = 1000; // how long keep-alive clients get to send their next request
let draining = false;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  // While draining, every answer closes its connection: the client sends its next request
  // to another worker instead of finding this connection closed under it.
  if (draining) res.setHeader('Connection', 'close');
  const send = (body) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };
  if (url.pathname === '/') {
    const env = process.env;
    send(`worker=${env.PREFORKD_WORKER_ID ?? '-'} pid=${process.pid} gen=${env.PREFORKD_GENERATION ?? '-'}\n`);
  } else if (url.pathname === '/sleep') {
    const ms = Number(url.searchParams.get('ms') ?? 1000);
    setTimeout(() => send(`slept ${ms}ms\n`), ms);
  } else {
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
  }
});

// SIGTERM (a reload retiring this worker, or a stop): stop accepting at once, answer what
// still arrives on open connections for GRACE_MS with "Connection: close", then close the
// idle connections; the process exits when the last request has been answered.
// Node 19+ closes idle keep-alive connections inside server.close(), which races a client
// that is sending its next request on one: that close waits for the grace here.
const closeIdleConnections = server.closeIdleConnections.bind(server);
server.closeIdleConnections = () => {};
const stop = () => {
  if (draining) return;
  draining = true;
  server.close(() => process.exit(0)); // called once every connection has closed
  setTimeout(closeIdleConnections, GRACE_MS).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

// Retirement: a worker that has to go (an error it cannot recover from, or its request budget
// spent) says STOPPING=1 before it drains. preforkd starts its replacement at once, so the pool
// keeps its capacity, and does not count it as a crash.
const retire = (why) => {
  if (draining) return;
  console.error(`worker ${process.env.PREFORKD_WORKER_ID ?? '-'} retiring: ${why}`);
  if (!process.env.NOTIFY_SOCKET) return stop();
  execFile('systemd-notify', ['STOPPING=1'], stop);
};
process.on('uncaughtException', (err) => {
  console.error(err);
  retire('uncaught exception');
});
// RETIRE_AFTER=N: recycle after N requests, as gunicorn's max_requests (0 or unset: never).
const retireAfter = Number(process.env.RETIRE_AFTER ?? 0);
let served = 0;
server.on('request', (req, res) => {
  res.on('finish', () => {
    if (retireAfter > 0 && ++served === retireAfter) retire(`served ${served} requests`);
  });
});

// READY=1: Node has no unix datagram sockets, so systemd-notify (from the systemd package)
// sends it; preforkd accepts it from a process in the worker's process group.
const listening = () => {
  console.log(`worker ${process.env.PREFORKD_WORKER_ID ?? '-'} (pid ${process.pid}) listening`);
  if (process.env.NOTIFY_SOCKET) {
    execFile('systemd-notify', ['--ready'], (err) => {
      if (err) console.error(`systemd-notify --ready failed: ${err.message}`);
    });
  }
};
if (process.env.LISTEN_FDS) server.listen({ fd: 3 }, listening); // the socket preforkd passed
else server.listen(8080, '127.0.0.1', listening);
