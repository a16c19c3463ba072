"""One healing trial: kills VICTIM, then measures what a client sees.

Prints "MS HUNG": MS is the time from the kill until a worker not in OLD_PIDS answers
GET /pid (or $PROBE_PATH) with 200 and its pid on a fresh connection (probed every
millisecond; "-" after 5 s); HUNG is how many of PROBES connections opened right after the
kill got no answer and no close within 2 s.
The kill happens here, once Python has started, so its start-up is not in the figure.

The PROBES connections are read and closed by a thread the moment their answer comes, as
a real client would: gunicorn's sync worker lingers after its answer until the client
closes, so a client that left them unread would stall it (and this figure).

usage: probe.py PORT VICTIM PROBES OLD_PID...
"""
import os
import selectors
import signal
import socket
import sys
import threading
import time

port, victim, probes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# The peers' apps answer GET /pid with their pid; the demo names its pid in GET /'s answer.
path = os.environ.get("PROBE_PATH", "/pid").encode()
old = set(sys.argv[4:])
hung = 0


def watch(sel, waiting, deadline):
    """Reads each connection until its answer ends; counts those still silent at the deadline."""
    global hung
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0, deadline - time.monotonic())):
            try:
                if key.fileobj.recv(4096):
                    continue  # more of the answer may follow; the close ends it
            except OSError:
                pass  # reset: answered with a failure, not hanging
            sel.unregister(key.fileobj)
            key.fileobj.close()
            waiting -= 1
    hung = waiting


t0 = time.monotonic()
os.kill(victim, signal.SIGKILL)

# Connections opened right after the kill; each must get an answer or a close.
sel = selectors.DefaultSelector()
waiting = 0
for _ in range(probes):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        waiting += 1
    except OSError:
        pass  # refused: a failure, but not a hang
watcher = threading.Thread(target=watch, args=(sel, waiting, t0 + 2))
watcher.start()

ms = "-"
deadline = t0 + 5
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
            s.sendall(b"GET " + path + b" HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        # Only a real answer counts: a 404 body is no pid.
        if not data.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
            raise OSError("not a 200 answer")
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
        pid = body.split("pid=", 1)[1].split()[0] if "pid=" in body else body.strip()
        if pid and pid not in old:
            ms = str(int((time.monotonic() - t0) * 1000))
            break
    except OSError:
        pass
    time.sleep(0.001)
watcher.join()
print(ms, hung)
