"""Benchmark of ``mmx fetch`` against a loopback server.

    python benchmarks/bench_fetch.py                # 10 000 and 50 000 items (about 3 minutes)
    python benchmarks/bench_fetch.py --sizes 10000,50000,100000   # add 100 000 (about 7 minutes)
    python benchmarks/bench_fetch.py --sizes 2000   # a quick look

A server process on 127.0.0.1 serves small JPEGs, 15% of them broken in assorted ways (404,
410, persistent 500, HTML with status 200, truncated body, a JPEG cut short at the source,
429 then success). Each size is fetched in a fresh child process, which reports items/s and
its peak resident memory (ru_maxrss), so the figures of 10 000 and 50 000 items can be
compared; the last line gives the growth of the peak per extra item. Baseline in the same run: a plain sequential ``httpx.Client`` loop over the first
1 000 items with no validation, journal or retries.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "extract" / "fetch"))

# path number mod 100 -> how the item is broken (15 of 100)
BROKEN = {0: "404", 1: "404", 2: "404", 3: "404", 4: "410", 5: "410", 6: "500", 7: "500", 8: "html",
          9: "html", 10: "html", 11: "short", 12: "short", 13: "cut", 14: "cut"}
RATE_LIMITED_ONCE = 15  # 429 with Retry-After: 0, then fine (counts as ok)


def _jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")).save(buf, "JPEG")
    return buf.getvalue()


def serve(port_file: str) -> None:
    """Run the loopback server until killed; writes its port to ``port_file``."""
    from fetch_server import LoopbackServer, send, status, truncated

    body = _jpeg()
    html = b"<!DOCTYPE html><html><body>This image has been removed.</body></html>"

    def behave(h, hit):
        n = int(h.path.strip("/").split(".")[0][1:])
        kind = BROKEN.get(n % 100)
        if kind in ("404", "410", "500"):
            status(int(kind))(h, hit)
        elif kind == "html":
            send(h, 200, html, "text/html")
        elif kind == "short":
            truncated(body)(h, hit)
        elif kind == "cut":
            send(h, 200, body[: len(body) // 2], "image/jpeg")
        elif n % 100 == RATE_LIMITED_ONCE and hit == 1:
            send(h, 429, b"slow down", "text/plain", {"Retry-After": "0"})
        else:
            send(h, 200, body, "image/jpeg")

    srv = LoopbackServer(fallback=behave)
    srv.httpd.request_queue_size = 256
    Path(port_file).write_text(str(srv.httpd.server_address[1]))
    srv.thread.run()  # serve in the main thread of this process


def fetch_child(manifest: str, out: str, workers: int) -> None:
    """Runs in a fresh process: fetch, then print items/s and peak memory as JSON."""
    import resource

    from mmx.extract.fetch import FetchConfig, fetch_manifest

    cfg = FetchConfig(workers=workers, per_host=workers, retries=2, backoff_base=0.01, backoff_max=0.05,
                      max_retry_after=1.0, progress=False)
    start = time.perf_counter()
    summary = fetch_manifest(manifest, out, cfg)
    elapsed = time.perf_counter() - start
    print(json.dumps({"items": summary.items, "seconds": elapsed, "items_per_s": summary.items / elapsed,
                      "ok": summary.totals.get("ok", 0), "statuses": summary.totals,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def baseline(base: str, n: int) -> float:
    """Sequential httpx.Client, no validation: items/s."""
    import httpx

    start = time.perf_counter()
    with httpx.Client() as client:
        for i in range(n):
            try:
                client.get(f"{base}/i{i}.jpg")
            except httpx.TransportError:
                pass  # the truncated items
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.child:
        return fetch_child(*args.child, workers=args.workers)

    import pandas as pd

    from mmx.extract.manifest import write_manifest

    with tempfile.TemporaryDirectory(prefix="mmx-bench-fetch-") as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the benchmark server did not start")
                time.sleep(0.05)
            base = f"http://127.0.0.1:{port_file.read_text()}"
            print(f"machine: {os.cpu_count()} CPU cores; server in its own process on {base}")
            base_rate = baseline(base, 1000)
            print(f"baseline (sequential httpx.Client, no validation, 1000 items): {base_rate:.0f} items/s")
            peaks = {}
            for n in [int(s) for s in args.sizes.split(",")]:
                frame = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "modality": "image",
                                      "uri": [f"{base}/i{i}.jpg" for i in range(n)],
                                      "label": [f"c{i % 200}" for i in range(n)]})
                manifest = write_manifest(frame, Path(tmp) / f"m{n}.csv")
                out = subprocess.run([sys.executable, __file__, "--workers", str(args.workers), "--child",
                                      str(manifest), str(Path(tmp) / f"ds{n}")],
                                     capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"mmx fetch {n:>6} items: {res['items_per_s']:.0f} items/s ({res['seconds']:.1f} s, "
                      f"{res['items_per_s'] / base_rate:.2f}x baseline), ok {res['ok']} "
                      f"({100 * res['ok'] / n:.1f}%), peak RSS {res['peak_rss_mib']:.0f} MiB; {res['statuses']}")
                peaks[n] = res["peak_rss_mib"]
            if len(peaks) > 1:
                (small, lo), (big, hi) = min(peaks.items()), max(peaks.items())
                print(f"peak RSS {big} vs {small} items: {hi - lo:+.1f} MiB, "
                      f"{(hi - lo) * 2**20 / (big - small):+.0f} bytes per extra item")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
