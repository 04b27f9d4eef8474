"""Benchmark: CPU start-up of ``mmx train`` and the epoch time per torch thread count.

Start-up: seconds from launching ``python -c 'mmx train ...'`` to the first training step
(process start, imports, loading a small synthetic cache, the untrained quick recall, the
model and the optimiser), read in a child process that stops at the first step. ``before``
builds the optimiser with ``torch.optim.AdamW`` (which imports torch's compiler), ``after``
with ``mmx.train.optim.AdamW``; the two alternate, ``--repeats`` times each, and the medians
are reported with their ratio.

Threads: seconds per epoch of a small joint run (4 modalities, 200 classes, 2000 items
each, 256-d heads, batch 128) at each of ``--threads`` (default 1,2), alternating, medians.

    python benchmarks/bench_startup.py [--repeats 5] [--threads 1,2] [--skip-threads]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
import mmx.train.loop as loop
import mmx.train.optim as optim
if {before!r}:
    import torch
    optim.AdamW = torch.optim.AdamW
def first_step(self, *a, **k):
    print("FIRST_STEP", time.time(), flush=True)
    raise SystemExit(0)
if {stop!r}:
    loop.Runner.train_epoch = first_step
from mmx.pipeline.cli import main
main({args!r}, standalone_mode=False)
"""


def _child(code: str) -> tuple[float, str]:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return t0, out.stdout


def startup(cache: Path, out: Path, before: bool) -> float:
    args = ["train", "--modalities", "text,image,audio,video", "--cache", str(cache), "--dataset", "synthetic",
            "--out", str(out), "--epochs", "1", "--quiet"]
    t0, stdout = _child(CHILD.format(before=before, stop=True, args=args))
    line = next(x for x in stdout.splitlines() if x.startswith("FIRST_STEP"))
    return float(line.split()[1]) - t0


def epoch_seconds(cache: Path, out: Path, threads: int) -> float:
    args = ["train", "--modalities", "text,image,audio,video", "--cache", str(cache), "--dataset", "bench",
            "--out", str(out), "--epochs", "2", "--quiet", "--threads", str(threads), "--name", f"t{threads}-{time.time_ns()}"]
    _, stdout = _child(CHILD.format(before=False, stop=False, args=args))
    run = Path(stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["seconds"] for r in rows if r["epoch"] > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--skip-threads", action="store_true")
    args = ap.parse_args()

    from mmx.cache.synthesize import SyntheticConfig, synthesize

    with tempfile.TemporaryDirectory(prefix="mmx-bench-startup-") as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "cache", SyntheticConfig())  # the "small" preset: what `mmx demo` trains on
        times = {"before": [], "after": []}
        for _ in range(args.repeats):
            for label in times:
                times[label].append(startup(tmp / "cache", tmp / "runs", before=label == "before"))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({"startup_s": med, "startup_runs": times, "after/before": med["after"] / med["before"]}))
        print(f"start-up to the first step: before {med['before']:.2f} s, after {med['after']:.2f} s "
              f"(x{med['after'] / med['before']:.2f}; medians of {args.repeats})", flush=True)
        if args.skip_threads:
            return
        synthesize(tmp / "cache", SyntheticConfig(dataset="bench", classes=200, items={m: 2000 for m in ("text", "image", "audio", "video")},
                                                  dims={"text": 512, "image": 2048, "audio": 128, "video": 600}, tokens=None))
        counts = [int(t) for t in args.threads.split(",")]
        per = {t: [] for t in counts}
        for _ in range(max(1, args.repeats // 2)):
            for t in counts:
                per[t].append(epoch_seconds(tmp / "cache", tmp / "runs", t))
        for t in counts:
            print(f"threads {t}: {statistics.median(per[t]):.2f} s/epoch (runs: {', '.join(f'{x:.2f}' for x in per[t])})", flush=True)


if __name__ == "__main__":
    main()
