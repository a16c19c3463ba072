"""Start-up: from running a setup's command to its first answer, and to READY=1.

usage: startup.py TRIALS PORT NOTIFY STOP -- COMMAND...

Runs COMMAND (in its own session) TRIALS times. Each time, from just before the command is
spawned: the time until `GET /` on 127.0.0.1:PORT first answers 200 (a fresh connection every
2 ms; refused connections are retried, a connection the kernel queued waits for its answer),
and, when NOTIFY is 1, the time until READY=1 arrives on a NOTIFY_SOCKET this script binds,
as systemd would see it. Then the setup is stopped: with STOP (a shell command) if it is not
"-", and SIGTERM to the session's leader; after 10 s, SIGKILL to every process left in the
session (preforkd's workers lead process groups of their own, so a group kill would miss
them). A trial starts only once the port refuses connections again.

Prints "FIRST_MS READY_MS" (medians; "-" for none).
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

trials, port, notify, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
command = sys.argv[sys.argv.index("--") + 1 :]


def answers():
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            status = s.recv(64)
            return status.startswith(b"HTTP/1.") and status[9:12] == b"200"
    except OSError:
        return False


def port_free(limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def session_members(sid):
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            members.append(int(entry))
    return members


def listen(sock, ready_at, done):
    """Records when READY=1 first arrives on sock, until done is set."""
    while not done.is_set():
        try:
            msg = sock.recv(4096)
        except OSError:
            continue
        if b"READY=1" in msg.split(b"\n") and not ready_at:
            ready_at.append(time.monotonic())


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return "-"
    n = len(values)
    return str(values[n // 2] if n % 2 else round((values[n // 2 - 1] + values[n // 2]) / 2))


firsts, readies = [], []
for _ in range(trials):
    if not port_free(15):
        print(f"startup.py: port {port} still answers; trial skipped", file=sys.stderr)
        continue
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        ready_at = []
        done = threading.Event()
        listener = None
        if notify:
            path = os.path.join(tmp, "notify")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(path)
            listener.settimeout(0.2)
            env["NOTIFY_SOCKET"] = path
            threading.Thread(target=listen, args=(listener, ready_at, done), daemon=True).start()
        else:
            env.pop("NOTIFY_SOCKET", None)
        t0 = time.monotonic()
        proc = subprocess.Popen(command, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = None
        while time.monotonic() < t0 + 30:
            if answers():
                first = time.monotonic()
                break
            time.sleep(0.002)
        if notify:
            wait_until = time.monotonic() + 10
            while not ready_at and time.monotonic() < wait_until:
                time.sleep(0.002)
        firsts.append(round((first - t0) * 1000) if first else None)
        readies.append(round((ready_at[0] - t0) * 1000) if ready_at else None)
        done.set()
        if stop != "-":
            subprocess.run(["sh", "-c", stop], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        if listener:
            listener.close()
print(median(firsts), median(readies))
