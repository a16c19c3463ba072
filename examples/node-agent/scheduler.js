// A scheduler agent: work that must run once per host, beside a pool of web workers (Egg.js
// calls this process the agent). preforkd runs exactly one of it and restarts it alone if it
// dies; on a reload the old one stops before the new one starts.
//   Every INTERVAL_MS (default 5000) it runs a job and says so in its STATUS=.
// It says READY=1 once started, and on SIGTERM lets a job in progress finish, then exits.
'use strict';
const { execFile } = require('child_process');

const INTERVAL_MS = Number(process.env.INTERVAL_MS ?? 5000);
let runs = 0;
let busy = false;
let stopping = false;

// Node has no unix datagram sockets: systemd-notify sends for it. preforkd accepts a datagram
// from a process in the agent's process group.
const notify = (...args) => {
  if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', args, () => {});
};

const job = async () => {
  busy = true;
  await new Promise((done) => setTimeout(done, 200)); // the work: a report, a cleanup...
  runs += 1;
  busy = false;
  console.log(`scheduler (pid ${process.pid}, gen ${process.env.PREFORKD_GENERATION ?? '-'}): run ${runs} done`);
  notify(`--status=${runs} runs, last at ${new Date().toISOString()}`);
  if (stopping) process.exit(0);
};

const timer = setInterval(job, INTERVAL_MS);
process.on('SIGTERM', () => {
  stopping = true;
  clearInterval(timer);
  if (!busy) process.exit(0);
});
console.log(`scheduler ${process.env.PREFORKD_AGENT ?? '-'} (pid ${process.pid}) started`);
notify('--ready', '--status=waiting for the first run');
