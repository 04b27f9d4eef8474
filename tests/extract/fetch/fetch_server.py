"""A loopback HTTP server for the ``mmx fetch`` tests and benchmark.

Routes map a path to a behaviour ``(handler, hit) -> None`` where ``hit`` counts the requests
to that path (1 for the first), so a route can fail first and recover later. ``hits`` records
every request, which is how the tests prove that an ``ok`` item was never downloaded twice.
The server binds 127.0.0.1 on a free port, serves from daemon threads and is stopped by
:meth:`LoopbackServer.stop` (the fixtures call it on teardown).
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Behaviour = Callable[[BaseHTTPRequestHandler, int], None]


def send(handler, code: int, body: bytes = b"", ctype: str = "application/octet-stream", headers=None,
         length: int | None = None) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def serve(body: bytes, ctype: str = "application/octet-stream", delay: float = 0.0) -> Behaviour:
    def behave(h, hit):
        if delay:
            time.sleep(delay)
        send(h, 200, body, ctype)
    return behave


def status(code: int, headers=None, body: bytes = b"error") -> Behaviour:
    return lambda h, hit: send(h, code, body, "text/plain", headers)


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The n-th request gets the n-th behaviour; the last one repeats."""
    return lambda h, hit: behaviours[min(hit, len(behaviours)) - 1](h, hit)


def truncated(body: bytes, ctype: str = "image/jpeg") -> Behaviour:
    """Announces the full length, sends half, closes the connection."""
    def behave(h, hit):
        send(h, 200, body[: len(body) // 2], ctype, length=len(body))
        h.close_connection = True
    return behave


def stall(seconds: float, body: bytes = b"", ctype: str = "image/jpeg") -> Behaviour:
    """Sends headers, then nothing for ``seconds`` (longer than the client's read timeout)."""
    def behave(h, hit):
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body) or 1000))
        h.end_headers()
        h.wfile.flush()
        time.sleep(seconds)
        h.close_connection = True
    return behave


def redirect(location: str, code: int = 302) -> Behaviour:
    return lambda h, hit: send(h, code, b"", "text/plain", {"Location": location})


def reset() -> Behaviour:
    """Closes the socket with a TCP RST before answering."""
    def behave(h, hit):
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        h.connection.close()
    return behave


def unbounded(chunk: bytes, chunks: int, ctype: str = "image/jpeg") -> Behaviour:
    """A body without Content-Length, bigger than any small cap (HTTP/1.0-style close-delimited)."""
    def behave(h, hit):
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            for _ in range(chunks):
                h.wfile.write(chunk)
        except OSError:
            pass  # the client hung up at its size cap, as it should
    return behave


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

    def do_GET(self):  # noqa: N802 - http.server's naming
        server: LoopbackServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        with server.lock:
            server.hits[path] += 1
            hit = server.hits[path]
        behaviour = server.routes.get(path) or server.fallback
        if behaviour is None:
            send(self, 404, b"<html><body>not here</body></html>", "text/html")
        else:
            behaviour(self, hit)

    def log_message(self, *args):  # keep test output clean
        pass


class LoopbackServer:
    def __init__(self, routes: dict[str, Behaviour] | None = None, fallback: Behaviour | None = None):
        self.routes = dict(routes or {})
        self.fallback = fallback
        self.hits: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.httpd.handle_error = lambda request, address: None  # clients hanging up are part of the tests
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
