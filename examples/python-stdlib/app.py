"""A small HTTP app on Python's standard library that runs under preforkd (or systemd alone).

GET /            -> "worker=<id> pid=<pid> gen=<generation>"
GET /sleep?ms=N  -> answers after N ms (a slow request)

It serves the socket at fd 3 when LISTEN_PID is its own pid, else 127.0.0.1:8080; says READY=1
on $NOTIFY_SOCKET once it serves; and drains on SIGTERM: stop accepting, answer what still
arrives on open connections with "Connection: close" for a second, finish every request in
flight, exit.
"""
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GRACE_S = 1.0  # how long keep-alive clients get to send their next request while draining

draining = threading.Event()
in_flight = 0
idle = threading.Condition()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 10  # an idle keep-alive connection is closed after this

    def do_GET(self):
        global in_flight
        with idle:
            in_flight += 1
        try:
            url = urlsplit(self.path)
            if url.path == "/":
                body = "worker={} pid={} gen={}\n".format(
                    os.environ.get("PREFORKD_WORKER_ID", "-"),
                    os.getpid(),
                    os.environ.get("PREFORKD_GENERATION", "-"),
                )
            elif url.path == "/sleep":
                ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
                time.sleep(ms / 1000)
                body = f"slept {ms}ms\n"
            else:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            if draining.is_set():
                # Tells a keep-alive client to take its next request elsewhere.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
        finally:
            with idle:
                in_flight -= 1
                idle.notify_all()

    def log_message(self, *args):
        pass  # no line per request


def notify(state):
    """sd_notify(3) in a few lines: one datagram to $NOTIFY_SOCKET ('@' = abstract)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), addr)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 8080), Handler, bind_and_activate=False)
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        server.socket.close()
        server.socket = socket.socket(fileno=3)  # the socket preforkd (or systemd) passed
        # Every worker waits on this socket: when a connection comes, select() wakes them all
        # and one accept() gets it. A blocking accept() would wait for the next connection
        # in the others, and serve_forever() could not return on a stop. Non-blocking, the
        # others just go back to select(). (The flag is the socket's: all workers share it.)
        server.socket.setblocking(False)
    else:
        server.server_bind()
        server.server_activate()

    def stop(signum, frame):
        draining.set()
        # shutdown() waits for serve_forever() to return: not from the thread that runs it.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    notify("READY=1")
    server.serve_forever()  # returns once stop() ran: nothing more is accepted
    server.socket.close()
    notify("STOPPING=1")
    time.sleep(GRACE_S)  # answers still carry "Connection: close"
    with idle:
        idle.wait_for(lambda: in_flight == 0)
    # What is left are idle keep-alive connections: exiting closes them.


if __name__ == "__main__":
    main()
