"""The demo's web server: the embedded media on 127.0.0.1, plus a few links that rot on purpose.

``mmx demo`` fetches its media by URL like any dataset, so the fetch stage (validation,
statuses, the link-rot report) runs for real. :data:`BROKEN` lists the failures it shows,
one per common kind of link rot: a file that is gone (404), a download cut short (fewer
bytes than announced) and an HTML page served with status 200 where an image was expected.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path
from typing import Iterator

# id -> (url path on the server, modality, label, what the server does)
BROKEN = {
    "broken-missing": ("/rotten/missing.png", "image", "3", "404 Not Found"),
    "broken-truncated": ("/rotten/truncated.wav", "audio", "5", "cuts the body at half its announced length"),
    "broken-html": ("/rotten/parked.png", "image", "7", "an HTML page with status 200"),
}
_HTML = b"<!doctype html><html><head><title>Domain parked</title></head><body>This domain is for sale.</body></html>"
_FIXED_PORT = 8714  # stable URLs let a rerun reuse the fetch journal; any free port when taken


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the data folder; the ``/rotten/`` paths misbehave as :data:`BROKEN` says."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == BROKEN["broken-html"][0]:
            self._send(200, "image/png", _HTML)  # a parked domain lies about the type, too
        elif self.path == BROKEN["broken-truncated"][0]:
            body = sorted((Path(self.directory) / "media" / "audio").iterdir())[0].read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        else:
            super().do_GET()

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # keep the demo's output readable
        pass


@contextlib.contextmanager
def serve(folder: Path, port: int | None = None) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 in a thread; yields the base URL; stops on exit.

    ``port``: the one to try first (a rerun passes its previous run's, so its URLs and fetch
    journal still match when 8714 was taken then); else 8714; else any free port.
    """
    handler = functools.partial(_Handler, directory=str(folder))
    server = None
    for candidate in (port, _FIXED_PORT):
        if candidate and server is None:
            with contextlib.suppress(OSError):
                server = http.server.ThreadingHTTPServer(("127.0.0.1", candidate), handler)
    server = server or http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mmx-demo-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
