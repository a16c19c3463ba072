// Node's cluster module: a primary forks one worker per requested core and re-forks dead
// ones. NODE_CLUSTER_SCHED_POLICY=none makes workers share the listen handle.
'use strict';
const cluster = require('cluster');
const workers = Number(process.env.WORKERS || 2);
if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', () => cluster.fork());
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill('SIGTERM');
    process.exit(0);
  });
} else {
  require('./app.js');
}
