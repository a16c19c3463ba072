"""The same tiny HTTP app for gunicorn."""
import os

BODY = b"Hello, World!\n"


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/pid":
        body = f"{os.getpid()}\n".encode()
    else:
        body = BODY
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
