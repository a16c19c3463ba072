#!/bin/bash
# Runs inside the VM (tests/vm_cgroups.rs): systemd as PID 1, cgroup v2. preforkd under
# myapp.socket, myapp-metrics.socket and a myapp.service of its own with the
# preforkd-cgroups.conf drop-in, then under the shipped units alone.
# Prints one line per check; exits 1 if any failed.
set -u
share=/share
fail=0
check() { # name, then a command; prints ok or FAIL with the command's output
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then echo "CHECK $name: ok ${out:0:300}"; else echo "CHECK $name: FAIL $out"; fail=1; fi
}
wait_until() { # seconds, command...
  local limit=$1; shift
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  "$@"
}

install -m 755 "$share/preforkd" /usr/local/bin/preforkd
install -m 644 "$share/cgroup_worker.py" /usr/local/lib/worker.py
mkdir -p /etc/preforkd /etc/systemd/system/myapp.service.d
cat >/etc/preforkd/myapp.toml <<'TOML'
command = ["python3", "/usr/local/lib/worker.py"]
workers = 2
ready = "exec"
stop_timeout = "5s"
worker_memory_max = "64M"
TOML
cat >/etc/systemd/system/myapp.socket <<'UNIT'
[Socket]
ListenStream=127.0.0.1:8080
[Install]
WantedBy=sockets.target
UNIT
# The metrics socket as README's snippet has it: systemd binds it, preforkd keeps it.
cat >/etc/systemd/system/myapp-metrics.socket <<'UNIT'
[Socket]
ListenStream=127.0.0.1:9464
FileDescriptorName=metrics
Service=myapp.service
UNIT
cat >/etc/systemd/system/myapp.service <<'UNIT'
[Unit]
Requires=myapp.socket myapp-metrics.socket
After=myapp.socket myapp-metrics.socket
[Service]
Sockets=myapp.socket myapp-metrics.socket
Type=notify
ExecStart=/usr/local/bin/preforkd --config /etc/preforkd/myapp.toml
ExecReload=/usr/local/bin/preforkd reload
KillMode=mixed
RuntimeDirectory=preforkd/myapp
UNIT
cp "$share/preforkd-cgroups.conf" /etc/systemd/system/myapp.service.d/
systemctl daemon-reload
systemctl start myapp.socket myapp-metrics.socket
curl -s --max-time 5 127.0.0.1:8080/ >/dev/null
wait_until 20 curl -sf --max-time 2 127.0.0.1:8080/
cg=/sys/fs/cgroup/system.slice/myapp.service

echo "== the metrics socket from systemd"
check "metrics answer on the socket systemd passed" bash -c "curl -sf --max-time 5 127.0.0.1:9464/metrics | grep -x 'preforkd_workers_ready 2'"
check "workers got only the app's socket" bash -c "for p in \$(cat $cg/worker-*/cgroup.procs); do tr '\\0' '\\n' </proc/\$p/environ | grep -qx 'LISTEN_FDS=1' || exit 1; done"
echo "== delegation"
getfattr -n trusted.delegate "$cg" 2>&1 | sed 's/^/  /'
journalctl -u myapp.service --no-pager -o cat | grep -i cgroup | sed 's/^/  /'
check "preforkd moved into the supervisor leaf" grep -qx "$(systemctl show -p MainPID --value myapp.service)" "$cg/supervisor/cgroup.procs"
check "two worker cgroups, a worker in each" bash -c "ls -d $cg/worker-* | wc -l | grep -qx 2 && for d in $cg/worker-*; do test -n \"\$(cat \$d/cgroup.procs)\" || exit 1; done; for d in $cg/*/; do basename \$d; done | tr '\\n' ' '"
check "memory.max of each worker is 64M" bash -c "for d in $cg/worker-*; do test \$(cat \$d/memory.max) = 67108864 || { cat \$d/memory.max; exit 1; }; done"
echo "== systemd-cgls"
systemd-cgls --no-pager -u myapp.service | sed 's/^/  /'

echo "== a worker's grandchild that left its group goes with it"
gc=$(curl -sf --max-time 5 127.0.0.1:8080/spawn)
check "the grandchild runs in its own session" bash -c "kill -0 $gc && test \$(ps -o sid= -p $gc) = $gc"
check "systemctl reload completes (ExecReload= runs beside the delegated tree)" systemctl reload myapp.service
check "the grandchild is gone after its worker was replaced" wait_until 10 bash -c "! kill -0 $gc"
check "old worker cgroups removed" wait_until 10 bash -c "test \$(ls -d $cg/worker-* | wc -l) = 2"

echo "== a crashed worker's grandchild goes with it, and its cgroup"
gc=$(curl -sf --max-time 5 127.0.0.1:8080/spawn)
worker=$(ps -o ppid= -p "$gc" | tr -d ' ')
check "the grandchild's worker is found" bash -c "test -n '$worker' && kill -0 $worker"
kill -9 "$worker"
check "the grandchild is gone once its worker crashed" wait_until 10 bash -c "! kill -0 $gc"
check "the crashed worker's cgroup is removed, the pool whole again" wait_until 10 bash -c "test \$(ls -d $cg/worker-* | wc -l) = 2 && test \$(curl -sf 127.0.0.1:9464/metrics | awk '/^preforkd_workers_ready /{print \$2}') = 2"

echo "== a worker over worker_memory_max is OOM-killed alone"
before=$(cat $cg/worker-*/cgroup.procs | sort | tr '\n' ' ')
curl -s --max-time 10 127.0.0.1:8080/grow >/dev/null
check "the death is logged as the OOM killer's" wait_until 10 bash -c "journalctl -u myapp.service --no-pager -o cat | grep -F 'killed by the OOM killer (worker_memory_max 64M)'"
check "the service stays active" systemctl is-active myapp.service
check "the pool is whole again" wait_until 10 bash -c "test \$(curl -sf 127.0.0.1:9464/metrics | awk '/^preforkd_workers_ready /{print \$2}') = 2"
check "metrics count it as oom" wait_until 5 bash -c "curl -sf 127.0.0.1:9464/metrics | grep -x 'preforkd_worker_restarts_total{reason=\"oom\"} 1'"
check "metrics read the cgroups" wait_until 5 bash -c "curl -sf 127.0.0.1:9464/metrics | grep -c '^preforkd_worker_cgroup_memory_bytes' | grep -qx 2"
check "NRestarts of the service is 0" bash -c "test \$(systemctl show -p NRestarts --value myapp.service) = 0"
echo "  workers before: $before after: $(cat $cg/worker-*/cgroup.procs | sort | tr '\n' ' ')"

echo "== stop leaves no cgroup and no process"
systemctl stop myapp.service
check "no worker cgroup is left" bash -c "! ls -d $cg/worker-* 2>/dev/null"

echo "== without the drop-in, today's behaviour, said once"
rm /etc/systemd/system/myapp.service.d/preforkd-cgroups.conf
systemctl daemon-reload
systemctl start myapp.service
wait_until 20 curl -sf --max-time 2 127.0.0.1:8080/ >/dev/null
check "the start log says worker_memory_max is not applied" bash -c "journalctl -u myapp.service --no-pager -o cat | grep -F 'worker_memory_max is not applied'"
systemctl stop myapp.service myapp.socket myapp-metrics.socket

echo "== the shipped units alone (Delegate=yes, DynamicUser=yes, PrivateUsers=yes, the sandbox)"
install -m 755 "$share/preforkd" /usr/bin/preforkd
rm -f /etc/systemd/system/myapp-metrics.socket
cp "$share/shipped/myapp.service" "$share/shipped/myapp.socket" /etc/systemd/system/
systemctl daemon-reload
systemctl start myapp.socket
wait_until 20 curl -sf --max-time 2 127.0.0.1:8080/ >/dev/null
check "preforkd runs as the dynamic user and owns its delegated cgroup" bash -c "u=\$(stat -c %u $cg); test \$u != 0 && test \$(stat -c %u /proc/\$(systemctl show -p MainPID --value myapp.service)) = \$u"
check "a cgroup per worker under the shipped units" bash -c "ls -d $cg/worker-* | wc -l | grep -qx 2"
curl -s --max-time 10 127.0.0.1:8080/grow >/dev/null
check "an OOM kill under the shipped units" wait_until 10 bash -c "journalctl -u myapp.service --no-pager -o cat | grep -cF 'killed by the OOM killer (worker_memory_max 64M)' | grep -qx 2"
check "systemctl reload under the shipped units" systemctl reload myapp.service
check "the shipped service stays active" systemctl is-active myapp.service
systemctl stop myapp.service myapp.socket
journalctl -u myapp.service --no-pager -o short-monotonic | tail -40 | sed 's/^/  journal: /'
exit $fail
