"""A test worker for the cgroup scenario: serves HTTP on the socket at fd 3.
GET / answers its pid; /grow allocates until the OOM killer ends it; /spawn starts a
grandchild in a session of its own (it left the worker's process group) and answers its pid."""
import os
import signal
import socket
import subprocess
import sys

sock = socket.socket(fileno=3)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    conn, _ = sock.accept()
    with conn:
        request = conn.recv(4096).decode(errors="replace")
        path = request.split(" ")[1] if " " in request else "/"
        if path == "/grow":
            hog = []
            while True:
                hog.append(bytearray(16 << 20))
        elif path == "/spawn":
            child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
            body = str(child.pid)
        else:
            body = str(os.getpid())
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
