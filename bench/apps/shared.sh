#!/bin/sh
# The limit: two demo workers sharing the socket systemd-socket-activate passed at fd 3, with
# no supervisor at all (no restart, nothing in between). Each gets LISTEN_PID = its own pid.
for i in 0 1; do
  sh -c 'LISTEN_PID=$$ PREFORKD_WORKER_ID='"$i"' exec "$0" hello-worker' "$PREFORKD_BIN" &
done
wait
