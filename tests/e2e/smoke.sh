#!/usr/bin/env bash
# Smoke test of the e2e harness itself: boots containers, checks systemd and a
# socket-activated demo unit inside, two containers at once, and a clean teardown.
# Usage: tests/e2e/smoke.sh        (exit 77 = containers not possible on this machine)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
H="$here/harness.sh"
A=smoke-a-$$
B=smoke-b-$$
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
teardown() { "$H" down "$A" 2>/dev/null; "$H" down "$B" 2>/dev/null; }
trap teardown EXIT
trap 'exit 130' INT TERM

"$H" prepare
rc=$?
[ "$rc" = 77 ] && exit 77
[ "$rc" = 0 ] || { echo "prepare failed ($rc)"; exit 1; }

tmp=$(mktemp -d)
cat >"$tmp/demo.socket" <<'EOF'
[Unit]
Description=demo socket
[Socket]
ListenStream=127.0.0.1:18080
[Install]
WantedBy=sockets.target
EOF
cat >"$tmp/demo.service" <<'EOF'
[Unit]
Description=demo service
[Service]
StartLimitIntervalSec=0
ExecStart=/usr/bin/python3 -u -c "import os,socket,sys; assert os.environ['LISTEN_FDS']=='1'; s=socket.socket(fileno=3); print('demo serving on', s.getsockname(), flush=True)\nwhile True:\n c,_=s.accept(); c.recv(4096); b=b'hello from '+socket.gethostname().encode()+b'\\n'; c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %%d\\r\\n\\r\\n' %% len(b)+b); c.close(); print('served a request', flush=True)"
EOF

check_container() {
  local n=$1 out
  "$H" up "$n" || { bad "$n: up"; return; }
  ok "$n: up"
  out=$("$H" exec "$n" -- systemctl --version | head -1)
  [[ $out == "systemd 252 "* ]] && ok "$n: systemctl --version: $out" || bad "$n: systemctl --version: $out"
  out=$("$H" exec "$n" -- systemctl is-system-running)
  [[ $out == running || $out == degraded ]] && ok "$n: is-system-running $out" || bad "$n: is-system-running $out"
  "$H" exec "$n" -- sh -c 'exit 7'
  [ $? = 7 ] && ok "$n: exit code passes through" || bad "$n: exit code"
  out=$(echo ping | "$H" exec "$n" -- cat)
  [ "$out" = ping ] && ok "$n: stdin passes through" || bad "$n: stdin: $out"
  "$H" cp "$n" "$tmp/demo.socket" /etc/systemd/system/ &&
    "$H" cp "$n" "$tmp/demo.service" /etc/systemd/system/demo.service &&
    ok "$n: cp" || bad "$n: cp"
  "$H" exec "$n" -- systemctl daemon-reload || bad "$n: daemon-reload"
  "$H" exec "$n" -- systemctl start demo.socket || bad "$n: start demo.socket"
  out=$("$H" exec "$n" -- systemctl show -P ActiveState demo.socket demo.service | xargs)
  [ "$out" = "active inactive" ] && ok "$n: socket active, service inactive" || bad "$n: states before: $out"
  out=$("$H" exec "$n" -- curl -sS --max-time 5 http://127.0.0.1:18080/)
  [ "$out" = "hello from $n" ] && ok "$n: curl through socket activation: $out" || bad "$n: curl: $out"
  out=$("$H" exec "$n" -- systemctl show -P ActiveState demo.service)
  [ "$out" = active ] && ok "$n: demo.service started by the connection" || bad "$n: service state $out"
  out=$("$H" exec "$n" -- journalctl -u demo --no-pager -o cat)
  [[ $out == *"demo serving on"* && $out == *"served a request"* ]] && ok "$n: journalctl -u demo" ||
    bad "$n: journal: $out"
  # A session left running must not hang `down` (the shutdown-hang pitfall).
  "$H" exec "$n" -- sleep 300 &
}

ms() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
t0=$EPOCHREALTIME
check_container "$A" >"$tmp/a.out" 2>&1 &
check_container "$B" >"$tmp/b.out" 2>&1 &
wait %1 %2 2>/dev/null
sleep 0.5 # let the background `sleep 300` sessions start
cat "$tmp/a.out" "$tmp/b.out"
echo "both containers checked in parallel in $(ms "$t0") s"
pass=$((pass + $(cat "$tmp/a.out" "$tmp/b.out" | grep -c '^ok:')))
fail=$((fail + $(cat "$tmp/a.out" "$tmp/b.out" | grep -c '^FAIL:')))
t1=$EPOCHREALTIME
"$H" down "$A" && "$H" down "$B" && ok "down of both, each with a leftover exec session, in $(ms "$t1") s" || bad "down"
"$H" down "$A" && ok "second down is a no-op" || bad "second down"
wait
left=$(ps -eo pid=,args= | grep -E "systemd-nspawn .*-M (${A}|${B}) |nsenter --target" | grep -v grep || true)
[ -z "$left" ] && ok "no nspawn/nsenter left" || bad "left behind: $left"
for c in /sys/fs/cgroup/*/preforkd-e2e-"$A" /sys/fs/cgroup/*/preforkd-e2e-"$B"; do
  [ -e "$c" ] && bad "cgroup left: $c"
done
[ -e "${PREFORKD_E2E_STATE:-/tmp/preforkd-e2e}/$A" ] && bad "state dir left"
rm -rf "$tmp"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
