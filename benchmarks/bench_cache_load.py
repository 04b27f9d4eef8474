"""Benchmark: load an XMediaNet-scale cache into memory (issue 2, "Benchmark").

Builds the XMediaNet-scale synthetic cache (paper 000, Sec. III-A: 200 classes; 40000 text
512-d, 35268 image 2048-d, 8280 audio 128-d, 7876 video 600-d; pooled only) unless it is
already there, then times :meth:`FeatureStore.load` of all four modalities (pooled, all
splits) into memory, against ``np.load`` of the same features saved as raw float32
``.npy`` (the baseline, in the same run). Reports first and best-of-N seconds, the ratio to
the baseline, and the disk size of the stores against raw float32 (sum of N * D * 4).

    python benchmarks/bench_cache_load.py                # in a temporary folder
    python benchmarks/bench_cache_load.py --cache DIR    # build once into DIR, reuse later
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _load_all(stores) -> float:
    t = time.perf_counter()
    for s in stores:
        s.load()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help="Cache root to build into / reuse (default: a temporary folder).")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import numpy as np
    import torch  # noqa: F401  (imported up front so the first load does not pay for it)

    from mmx.cache import open_store
    from mmx.cache.synthesize import SyntheticConfig, synthesize

    import_s = time.perf_counter() - t0
    tmp = None
    root = Path(args.cache) if args.cache else Path(tmp := tempfile.mkdtemp(prefix="mmx-bench-"))
    try:
        cfg = SyntheticConfig.preset("xmedianet", dataset="xmedianet-synthetic")
        t = time.perf_counter()
        built = synthesize(root, cfg)  # reuses complete stores when --cache already holds them
        build_s = time.perf_counter() - t
        # fresh handles, as a training process would open them
        stores = [open_store(s.path, expected=s.key) for s in built.values()]

        times = [_load_all(stores) for _ in range(args.repeats)]
        first, best = times[0], min(times)

        # baseline: the same features as raw float32 .npy files
        raw_dir = Path(tempfile.mkdtemp(prefix="mmx-bench-raw-"))
        try:
            raw_bytes, rows = 0, []
            for s in stores:
                x = s.load().pooled.numpy()
                np.save(raw_dir / f"{s.modality.value}.npy", x)
                raw_bytes += x.shape[0] * x.shape[1] * 4
                rows.append((s.modality.value, x.shape[0], x.shape[1], _disk(s.path)))
            del x
            base = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for s in stores:
                    np.load(raw_dir / f"{s.modality.value}.npy")
                base.append(time.perf_counter() - t)
        finally:
            shutil.rmtree(raw_dir, ignore_errors=True)

        disk = sum(r[3] for r in rows)
        print(f"cache root: {root}  (build {build_s:.1f} s, imports {import_s:.1f} s)")
        for mod, n, d, b in rows:
            print(f"  {mod:6s} {n:6d} x {d:5d}  store {b / 2**20:7.1f} MiB  raw f32 {n * d * 4 / 2**20:7.1f} MiB")
        print(f"load, 4 modalities pooled, all splits: first {first:.2f} s, best of {args.repeats} {best:.2f} s "
              f"(target <= 3 s)")
        print(f"baseline np.load raw float32 .npy: first {base[0]:.2f} s, best {min(base):.2f} s; "
              f"ratio load/baseline (best) {best / min(base):.2f}")
        print(f"disk: stores {disk / 2**20:.1f} MiB vs raw float32 {raw_bytes / 2**20:.1f} MiB "
              f"(ratio {disk / raw_bytes:.2f}); pooled float16, codecs as the stores were created")
        print(f"machine: {os.cpu_count()} CPU cores, torch threads {__import__('torch').get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f} (timings inflate when other jobs share the cores)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
