"""``mmx search``'s exact ranking at 100k and 1M gallery items: queries/s and peak memory.

The gallery (256-d float32, random) is written to a ``.npy`` file and read chunk by chunk by
:func:`mmx.eval.search.top_k` (through :class:`FileRows`, so no part of the file stays mapped). Each size
runs in a fresh process so its peak resident memory (ru_maxrss) is its own; the gallery
file itself is 100 MB / 1 GB, so a peak well below that shows the memory bound.

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py [--sizes 100000,1000000] [--queries 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time

import numpy as np

DIM = 256


def write_gallery(path: str, n: int, block: int = 8192) -> None:
    """Written a block at a time with plain writes, never mapped: a child process inherits its
    parent's peak resident memory (Linux keeps ru_maxrss across fork and exec), so a gallery
    mapped here would show up in the measured peak."""
    rng = np.random.default_rng(0)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, DIM)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for s in range(0, n, block):
            f.write(rng.standard_normal((min(block, n - s), DIM), dtype=np.float32).tobytes())


class FileRows:
    """Rows of a ``.npy`` file read on demand (no mapping stays resident, so ru_maxrss is search's own)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            self.shape, _, self.dtype = read(f)
            self.offset = f.tell()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        width = self.shape[1]
        return np.fromfile(self.path, self.dtype, (stop - start) * width,
                           offset=self.offset + start * width * self.dtype.itemsize).reshape(-1, width)


def measure(path: str, queries: int, device: str, chunk: int, out) -> None:
    import torch

    from mmx.eval.search import top_k

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    gallery = FileRows(path)
    q = np.random.default_rng(1).standard_normal((queries, DIM), dtype=np.float32)
    q[0] = gallery[12345:12346][0]  # one query is a gallery row: it must come first
    top_k(q[:1], gallery[:1000], 10, chunk=chunk, device=device)  # warm-up
    t0 = time.perf_counter()
    scores, rows = top_k(q, gallery, 10, chunk=chunk, device=device)
    seconds = time.perf_counter() - t0
    out.put({"items": len(gallery), "queries": queries, "seconds": round(seconds, 3),
             "queries_per_s": round(queries / seconds, 1), "self_first": bool(rows[0, 0] == 12345),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "gallery_file_mb": round(os.path.getsize(path) / 2**20, 1), "chunk": chunk, "device": device})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            path = os.path.join(tmp, f"gallery-{n}.npy")
            write_gallery(path, n)
            out = ctx.Queue()
            p = ctx.Process(target=measure, args=(path, args.queries, args.device, args.chunk, out))
            p.start()
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"{n} items: the measuring process failed (exit {p.exitcode})")
            print(json.dumps(out.get()))
            os.remove(path)


if __name__ == "__main__":
    main()
