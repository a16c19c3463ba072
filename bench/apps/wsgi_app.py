"""The same tiny HTTP app for gunicorn."""
import os
import time

BODY = b"Hello, World!\n"
# How long this code takes to boot (import): bench/run rewrites it to deploy a slow version.
BOOT_S = 0
time.sleep(BOOT_S)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/pid":
        body = f"{os.getpid()}\n".encode()
    else:
        body = BODY
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
