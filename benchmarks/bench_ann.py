"""Approximate search (eval/ann.py, FAISS IVF-Flat) beside exact search (eval/search.py top_k) and
FAISS's own exact IndexFlatIP, on the same gallery: recall@10 against exact, queries/s, build time.

The gallery is written to a ``.npy`` file and read memory-mapped by every method (the 10M
gallery is 10 GB: ``df -h`` the folder first). Rows are clustered (``--centres`` random
centres plus unit Gaussian noise in 256 dimensions), as trained embeddings cluster by
class; queries are fresh draws from the same distribution, never gallery rows. Searching
runs on ``--threads`` threads (torch and FAISS alike), building on ``--build-threads``.
FAISS's flat index holds the gallery in memory up to ``--flat-max`` rows; past that it is
FAISS's streaming exact search (faiss.contrib.exhaustive_search.knn_ground_truth: an
IndexFlatIP per block, results merged). The files are deleted afterwards unless ``--keep``.

    OMP_NUM_THREADS=1 python benchmarks/bench_ann.py --sizes 1000000 --dir /work/tmp-ann
    OMP_NUM_THREADS=1 python benchmarks/bench_ann.py --sizes 10000000 --queries 50 --nlist 1024 --dir /work/tmp-ann
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

DIM = 256


def write_gallery(path: Path, n: int, centres: np.ndarray, seed: int, block: int = 1 << 16) -> np.memmap:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for s in range(0, n, block):
        m = min(block, n - s)
        out[s : s + m] = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, DIM), dtype=np.float32)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got.tolist(), truth.tolist())]))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def flat(faiss, gallery, q, k: int, flat_max: int):
    """FAISS's exact inner-product search on normalised rows: in memory, or block by block past ``flat_max``."""
    from mmx.eval.ann import _normalized

    qn = _normalized(q)
    if len(gallery) <= flat_max:
        index = faiss.IndexFlatIP(DIM)
        for s in range(0, len(gallery), 1 << 16):
            index.add(_normalized(gallery[s : s + (1 << 16)]))
        (scores, rows), seconds = timed(lambda: index.search(qn, k))
        return rows, seconds, "IndexFlatIP (in memory)"
    from faiss.contrib.exhaustive_search import knn_ground_truth

    blocks = (_normalized(gallery[s : s + (1 << 20)]) for s in range(0, len(gallery), 1 << 20))
    (scores, rows), seconds = timed(lambda: knn_ground_truth(qn, blocks, k, metric_type=faiss.METRIC_INNER_PRODUCT))
    return rows, seconds, "IndexFlatIP per 1M-row block (streamed)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000")
    ap.add_argument("--dir", default="bench-ann", help="Folder for the gallery and index files (deleted afterwards).")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--flat-max", type=int, default=2_000_000)
    ap.add_argument("--on-disk-from", type=int, default=5_000_000, help="Build the index on disk from this many rows.")
    ap.add_argument("--nlist", type=int, default=0, help="Cells of the index (default: eval/ann.py's, 4 sqrt(rows) up to 4096).")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    import faiss
    import torch

    from mmx.eval import ann
    from mmx.eval.search import top_k

    torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.centres, DIM), dtype=np.float32)
    q = centres[rng.integers(0, args.centres, args.queries)] + rng.standard_normal((args.queries, DIM), dtype=np.float32)
    print(json.dumps({"load": os.getloadavg(), "cores": os.cpu_count(), "faiss": faiss.__version__,
                      "torch": torch.__version__, "threads": args.threads}), flush=True)
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            path = folder / f"gallery-{n}.npy"
            gallery, wrote = timed(lambda: write_gallery(path, n, centres, seed=n))
            row = {"items": n, "gallery_gb": round(path.stat().st_size / 1e9, 2), "write_s": round(wrote, 1),
                   "load_before": os.getloadavg()[0]}
            (_, truth), exact_s = timed(lambda: top_k(q, gallery, 10, device="cpu"))
            row.update(exact_qps=round(args.queries / exact_s, 2))
            faiss.omp_set_num_threads(args.threads)
            rows, flat_s, flat_kind = flat(faiss, gallery, q, 10, args.flat_max)
            row.update(flat_qps=round(args.queries / flat_s, 2), flat=flat_kind, flat_recall=recall(rows, truth))
            faiss.omp_set_num_threads(args.build_threads)
            on_disk = n >= args.on_disk_from
            index, built = timed(lambda: ann.build(gallery, folder / "index", nlist=args.nlist or None, on_disk=on_disk, log=lambda m: print("  " + m, flush=True)))
            faiss.omp_set_num_threads(args.threads)
            row.update(build_s=round(built, 1), on_disk=on_disk, nlist=index.meta["nlist"], nprobe=index.meta["nprobe"])
            for nprobe in sorted({max(1, index.meta["nprobe"] // 2), index.meta["nprobe"], index.meta["nprobe"] * 2}):
                index.search(q[:4], 10, nprobe)  # warm the pages it maps
                (_, got), s = timed(lambda: index.search(q, 10, nprobe))
                row[f"ann_nprobe{nprobe}"] = {"recall_at_10": round(recall(got, truth), 4), "qps": round(args.queries / s, 1)}
            row["ann_speedup_over_exact"] = round(row[f"ann_nprobe{index.meta['nprobe']}"]["qps"] / row["exact_qps"], 1)
            row.update(load_after=os.getloadavg()[0], peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
            print(json.dumps(row), flush=True)
            del gallery, index
            path.unlink()
            shutil.rmtree(folder / "index", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
