"""A small WSGI app for gunicorn under preforkd.

GET /            -> "worker=<id> pid=<pid> gen=<generation>"
GET /sleep?ms=N  -> answers after N ms (a slow request)
"""
import os
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        body = "worker={} pid={} gen={}\n".format(
            os.environ.get("PREFORKD_WORKER_ID", "-"),
            os.getpid(),
            os.environ.get("PREFORKD_GENERATION", "-"),
        )
    elif path == "/sleep":
        ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["1000"])[0])
        time.sleep(ms / 1000)
        body = f"slept {ms}ms\n"
    else:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
