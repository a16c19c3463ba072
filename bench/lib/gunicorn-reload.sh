#!/usr/bin/env bash
# Reloads gunicorn the way its docs say (HUP to the arbiter) and returns once every worker is
# new and one of them answers: gunicorn has no command that waits for that itself.
#   gunicorn-reload.sh ARBITER_PID PORT
set -u
arbiter=$1 port=$2
workers() { cat /proc/"$arbiter"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d' | sort; }
old=$(workers)
kill -HUP "$arbiter" || exit 1
for _ in $(seq 1 1000); do
  # gunicorn halts when new workers cannot load the app: nothing left to wait for.
  kill -0 "$arbiter" 2>/dev/null || exit 1
  now=$(workers)
  if [ -n "$now" ] && [ -z "$(comm -12 <(echo "$old") <(echo "$now"))" ] &&
    [ "$(wc -l <<<"$now")" -ge "$(wc -l <<<"$old")" ]; then
    pid=$(curl -s -m 1 "http://127.0.0.1:$port/pid" 2>/dev/null)
    grep -qx "$pid" <<<"$now" && exit 0
  fi
  sleep 0.01
done
exit 1
