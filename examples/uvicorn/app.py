"""A small ASGI app for uvicorn under preforkd.

GET /            -> "worker=<id> pid=<pid> gen=<generation>"
GET /sleep?ms=N  -> answers after N ms (a slow request)
"""
import asyncio
import os
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/":
        body = "worker={} pid={} gen={}\n".format(
            os.environ.get("PREFORKD_WORKER_ID", "-"),
            os.getpid(),
            os.environ.get("PREFORKD_GENERATION", "-"),
        )
    elif path == "/sleep":
        ms = int(parse_qs(scope["query_string"].decode()).get("ms", ["1000"])[0])
        await asyncio.sleep(ms / 1000)
        body = f"slept {ms}ms\n"
    else:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    data = body.encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})
