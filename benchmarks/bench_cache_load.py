"""Benchmark: load an XMediaNet-scale cache into memory.

Builds the XMediaNet-scale synthetic cache (paper 000, Sec. III-A: 200 classes; 40000 text
512-d, 35268 image 2048-d, 8280 audio 128-d, 7876 video 600-d; pooled only) unless it is
already there, then times :meth:`FeatureStore.load` of all four modalities (pooled, all
splits) into memory, against ``np.load`` of the same features saved as raw float32
``.npy`` (the baseline, in the same run). Reports first and best-of-N seconds, the ratio to
the baseline, and the disk size of the stores against raw float32 (sum of N * D * 4).

    python benchmarks/bench_cache_load.py                # in a temporary folder
    python benchmarks/bench_cache_load.py --cache DIR    # build once into DIR, reuse later
    python benchmarks/bench_cache_load.py --checksums    # also: the cost of the chunk checksums

``--checksums`` builds the same cache a second time the way mmx wrote stores before chunk
checksums (no ``crc32c`` codec on the chunks) and times the two loads alternately in one run,
so their ratio is the checksum's cost (presence and marker checks run for both).
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
    ap.add_argument("--checksums", action="store_true", help="Also time stores without chunk checksums (A/B).")
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
        if args.checksums:
            _checksum_cost(root, cfg, stores, args.repeats)
        print(f"machine: {os.cpu_count()} CPU cores, torch threads {__import__('torch').get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f} (timings inflate when other jobs share the cores)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _checksum_cost(root: Path, cfg, stores, repeats: int) -> None:
    """Time loads of ``stores`` against the same cache written without chunk checksums."""
    from unittest import mock

    import mmx.cache.store.write as store_mod  # where new stores get their codecs
    from mmx.cache import open_store
    from mmx.cache.synthesize import synthesize

    plain_root = root.parent / f"{root.name}-no-crc"
    with mock.patch.object(store_mod, "_checked", lambda *codecs: list(codecs)), \
            mock.patch.object(store_mod, "INTEGRITY", None):
        plain = [open_store(s.path) for s in synthesize(plain_root, cfg).values()]
    try:
        with_crc, without = [], []
        for _ in range(repeats):  # alternate, so load changes on the machine hit both alike
            with_crc.append(_load_all([open_store(s.path) for s in stores]))
            without.append(_load_all([open_store(s.path) for s in plain]))
        print(f"checksums: load best of {repeats} with crc32c {min(with_crc):.2f} s, without {min(without):.2f} s; "
              f"ratio with/without {min(with_crc) / min(without):.2f}")
    finally:
        shutil.rmtree(plain_root, ignore_errors=True)


if __name__ == "__main__":
    main()
