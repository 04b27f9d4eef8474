"""``mmx sweep`` on real data: the demo's digits set (four modalities, 10 classes), joint and cvs.

Fetches and extracts the embedded digits set once (as ``mmx demo`` does) into ``--work``, then
runs the sweep: ``--trials`` per strategy on val mAP, the best setting over ``--seeds`` seeds,
the report (test mean ± sd, paired bootstrap intervals of cvs - joint). Torch threads pinned;
load recorded before and after. One command:

    python benchmarks/bench_sweep.py --work /tmp/sweepbench --trials 6 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/mmx-sweep-bench")
    ap.add_argument("--strategies", default="joint,cvs")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=30, help="cap on every run's epochs (early stopping may end sooner)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from mmx.pipeline.demo.run import DATASET, Layout, extract_stage, fetch_stage
    from mmx.train.sweep import SweepSpec, sweep

    work = Path(args.work)
    layout = Layout(work / "demo")
    if not (layout.cache).is_dir() or not any(layout.cache.rglob("*.zarr")):
        t0 = time.perf_counter()
        fetched = fetch_stage(layout, lambda s: None, progress=False)
        extract_stage(layout, fetched.layout.manifest, lambda s: None, progress=False)
        print(f"extracted the digits set in {time.perf_counter() - t0:.0f}s")
    print(f"load before: {load()}")
    t0 = time.perf_counter()
    spec = SweepSpec(folder=str(work / "sweep"), strategies=args.strategies.split(","), dataset=DATASET,
                     cache=str(layout.cache), trials=args.trials, seeds=args.seeds, jobs=args.jobs,
                     sets=[f"epochs={args.epochs}"], device="cpu", threads=args.threads)
    report = sweep(spec, log=print)
    print(f"sweep: {time.perf_counter() - t0:.0f}s; load after: {load()}")
    print(json.dumps({s: {"params": v["params"], "val": v["val"], "test": v["test"]}
                      for s, v in report["strategies"].items()}, indent=1))


if __name__ == "__main__":
    main()
