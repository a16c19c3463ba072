// The same tiny HTTP app for every Node setup: on fd 3 when socket-activated (preforkd,
// systemd), else on $PORT. SIGTERM/SIGINT: stop accepting, finish, exit.
'use strict';
const http = require('http');
const body = 'Hello, World!\n';
const server = http.createServer((req, res) => {
  if (req.url === '/pid') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end(`${process.pid}\n`);
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
  res.end(body);
});
const stop = () => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (process.env.LISTEN_FDS) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT), '127.0.0.1');
}
