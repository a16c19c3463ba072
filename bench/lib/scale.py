"""Scale: preforkd's demo with N workers. For each N prints start -> READY=1, preforkd's RSS
once ready, and how long a reload takes to roll every worker (SIGHUP -> READY=1), as
Markdown table rows: | N | ready ms | RSS MiB | reload ms |, then, after a blank line, how each
cost grows from the smallest N of at least 8 (below that, fixed costs dominate) to the largest,
as a power of N (1 = linear, 0 = flat).

usage: scale.py PREFORKD_BIN N...
"""
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

binary, counts = sys.argv[1], [int(n) for n in sys.argv[2:]]


def wait_ready(sock, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode(errors="replace")
        except socket.timeout:
            break
        if "READY=1" in msg.split("\n"):
            return time.monotonic()
    return None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


rows = {}
for n in counts:
    with tempfile.TemporaryDirectory() as tmp:
        notify = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = dict(os.environ, NOTIFY_SOCKET=notify)
        env.pop("RUNTIME_DIRECTORY", None)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [binary, "demo", "--workers", str(n), "--listen", f"127.0.0.1:{port}",
             "--runtime-dir", os.path.join(tmp, "run"), "--stop-timeout", "10s"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            ready = wait_ready(sock, 60)
            ready_ms = f"{(ready - t0) * 1000:.0f}" if ready else "-"
            rss_mib = rss_kib(proc.pid) / 1024
            rss = f"{rss_mib:.1f}"
            t1 = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            rolled = wait_ready(sock, 120) if ready else None
            reload_ms = f"{(rolled - t1) * 1000:.0f}" if rolled else "-"
            print(f"| {n} | {ready_ms} | {rss} | {reload_ms} |", flush=True)
            if ready and rolled:
                rows[n] = ((ready - t0) * 1000, rss_mib, (rolled - t1) * 1000)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            sock.close()

big = sorted(n for n in rows if n >= 8)
if len(big) >= 2:
    lo, hi = big[0], big[-1]
    (r0, m0, l0), (r1, m1, l1) = rows[lo], rows[hi]

    def power(growth):
        """k such that the cost grew as N^k while N grew hi/lo times: 1 is linear, 0 flat."""
        return math.log(growth) / math.log(hi / lo)

    print()
    print(f"From {lo} to {hi} workers ({hi / lo:.0f}x): start -> READY=1 grows {r1 / r0:.1f}x "
          f"(as N^{power(r1 / r0):.2f}; {(r1 - r0) / (hi - lo):.2f} ms per added worker), a reload "
          f"rolling every worker {l1 / l0:.1f}x (as N^{power(l1 / l0):.2f}; "
          f"{(l1 - l0) / (hi - lo):.2f} ms per added worker), preforkd's RSS {m1 / m0:.2f}x "
          f"(as N^{power(m1 / m0):.2f}).")
