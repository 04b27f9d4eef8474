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

The peer (``--peer-items N``, 0 skips it): img2dataset, installed by this script into a
temporary venv (never a dependency of mmx), fetches the same N URLs from the same server beside
``mmx fetch`` (the command, same thread count), interleaved over ``--rounds`` rounds, each command
timed whole (start-up included) and the medians and ratios printed: against img2dataset's
default (decode, resize to 256, re-encode) and its no-decode mode (``--resize_mode no
--skip_reencode True``).
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


def peer_python(tmp: str) -> str | None:
    if os.environ.get("MMX_BENCH_PEER"):  # an img2dataset already installed (a temporary venv kept between runs)
        return os.environ["MMX_BENCH_PEER"]
    """A temporary venv with img2dataset; None, with a line saying why, when it cannot be made."""
    env = os.path.join(tmp, "peer-venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", env], check=True, capture_output=True)
        subprocess.run([os.path.join(env, "bin", "python"), "-m", "pip", "install", "-q", "img2dataset"],
                       check=True, capture_output=True, timeout=900)
        return os.path.join(env, "bin", "img2dataset")
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"img2dataset: could not be installed ({type(exc).__name__}); the peer comparison is skipped")
        return None


def compare_with_peer(peer: str, base: str, n: int, threads: int, rounds: int, tmp: Path) -> None:
    """mmx fetch and img2dataset (two modes) on the same n URLs, interleaved; medians of whole-command wall time."""
    import statistics

    import pandas as pd

    from mmx.extract.manifest import write_manifest

    urls = [f"{base}/i{i}.jpg" for i in range(n)]
    (tmp / "urls.txt").write_text("\n".join(urls) + "\n")
    manifest = write_manifest(pd.DataFrame({"id": [f"i{i}" for i in range(n)], "modality": "image", "uri": urls,
                                            "label": ""}), tmp / "peer-manifest.csv")
    mmx = [sys.executable, "-m", "mmx.pipeline.cli", "fetch", str(manifest), "--workers", str(threads),
           "--per-host", str(threads), "--retries", "2", "--backoff-base", "0.01", "--max-retry-after", "1",
           "--no-progress", "--quiet"]
    i2d = [peer, "--url_list", str(tmp / "urls.txt"), "--input_format", "txt", "--output_format", "files",
           "--processes_count", "1", "--thread_count", str(threads), "--retries", "2", "--enable_wandb", "False"]
    runs = {"mmx": lambda out: mmx + ["--out", out],
            "img2dataset (decode, resize 256)": lambda out: i2d + ["--output_folder", out],
            "img2dataset (no decode)": lambda out: i2d + ["--output_folder", out, "--resize_mode", "no",
                                                          "--skip_reencode", "True"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times = {name: [] for name in runs}
    inner = {name: [] for name in runs}  # past start-up: the downloads themselves
    for r in range(rounds):
        for k, (name, cmd) in enumerate(runs.items()):
            out = tmp / f"peer-{r}-{k}"
            t0 = time.perf_counter()
            subprocess.run(cmd(str(out)), check=True, capture_output=True, env=env)
            times[name].append(time.perf_counter() - t0)
            inner[name].append(_inner_seconds(out, name == "mmx"))
    med = {name: statistics.median(t) for name, t in times.items()}
    med_in = {name: statistics.median(t) for name, t in inner.items()}
    print(f"peer comparison, {n} URLs, {threads} threads, medians of {rounds} interleaved rounds; whole commands, "
          "then past start-up (mmx: first to last media file written, per item; img2dataset: its stats' duration):")
    for name in runs:
        ratio = "" if name == "mmx" else f"  mmx x{med[name] / med['mmx']:.2f}, past start-up x{med_in[name] / med_in['mmx']:.2f}"
        print(f"  {name:34s} {n / med[name]:7.0f} items/s ({med[name]:.1f} s), past start-up {n / med_in[name]:.0f} items/s{ratio}")


def _inner_seconds(out: Path, mmx: bool) -> float:
    """Seconds from the first to the last download: mmx's media files' modification times (each
    is written as it downloads and renamed into place, nanosecond stamps; the journal's are whole
    seconds), scaled by items over files placed so the broken items count too; img2dataset's own
    figure."""
    if mmx:
        stamps = sorted(p.stat().st_mtime_ns for p in (out / "media").rglob("*") if p.is_file())
        items = sum(1 for _ in (out / "fetch" / "journal.jsonl").open())
        return (stamps[-1] - stamps[0]) / 1e9 * items / max(1, len(stamps) - 1)
    return sum(json.loads(p.read_text())["duration"] for p in out.glob("*_stats.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--peer-items", type=int, default=3000, help="URLs for the img2dataset comparison (0: skip it)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the peer comparison")
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
            print(f"machine: {os.cpu_count()} CPU cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"server in its own process on {base}")
            peer = peer_python(tmp) if args.peer_items else None
            if peer:
                compare_with_peer(peer, base, args.peer_items, args.workers, args.rounds, Path(tmp))
            base_rate = baseline(base, 1000)
            print(f"baseline (sequential httpx.Client, no validation, 1000 items): {base_rate:.0f} items/s")
            peaks = {}
            for n in [int(s) for s in args.sizes.split(",") if s]:
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
            print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
