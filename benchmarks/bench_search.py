"""``mmx search``'s exact ranking against a bare ``torch`` matmul + topk, in the same run: queries/s, ratio, peak memory.

The gallery (256-d float32, random, rows of unit length as ``mmx embed -o`` writes them) is written
to a ``.npy`` file. One process per size loads it and times, interleaved round by round:
``bare`` (``torch.topk(q @ g.T, k)`` over the whole gallery: all scores in memory at once),
``mmx`` (:func:`mmx.eval.search.top_k` with ``unit_norm=True``, what ``mmx search`` runs) and
``mmx-unknown`` (a gallery of unknown state, scaled chunk by chunk through its norms); the
medians and ``mmx / bare`` are printed. A second, fresh process ranks the file read chunk by
chunk (:class:`FileRows`, nothing stays mapped) so its peak resident memory (ru_maxrss) shows the
memory bound. ``--faiss`` also times FAISS ``IndexFlatIP``, installed by this script into a
temporary venv (never a dependency of mmx); it is skipped with a line when it cannot be installed.

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py [--sizes 100000,1000000] [--queries 64] [--rounds 5] [--device cpu] [--faiss]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 256
K = 10


def write_gallery(path: str, n: int, block: int = 8192) -> None:
    """Written a block at a time with plain writes, never mapped: a child process inherits its
    parent's peak resident memory (Linux keeps ru_maxrss across fork and exec), so a gallery
    mapped here would show up in the measured peak."""
    rng = np.random.default_rng(0)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, DIM)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for s in range(0, n, block):
            rows = rng.standard_normal((min(block, n - s), DIM), dtype=np.float32)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            f.write(rows.tobytes())


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


def _queries(gallery, n: int) -> np.ndarray:
    q = np.random.default_rng(1).standard_normal((n, DIM), dtype=np.float32)
    q[0] = gallery[12345:12346][0]  # one query is a gallery row: it must come first
    return q


def compare(path: str, queries: int, device: str, chunk: int, rounds: int, out) -> None:
    """Interleaved rounds of bare, mmx and mmx-unknown over the gallery held in memory."""
    import torch

    from mmx.eval.search import top_k

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    g = np.load(path)
    q = _queries(g, queries)
    dev = torch.device(device)

    def bare():
        qt = torch.nn.functional.normalize(torch.from_numpy(q).to(dev), dim=-1)
        s, i = torch.topk(qt @ torch.from_numpy(g).to(dev).T, K, dim=1)
        return s.cpu().numpy(), i.cpu().numpy()

    runs = {"bare": bare,
            "mmx": lambda: top_k(q, g, K, chunk=chunk, device=device, unit_norm=True),
            "mmx-unknown": lambda: top_k(q, g, K, chunk=chunk, device=device, unit_norm=False)}
    for f in runs.values():  # warm-up (thread pools, allocator) and agreement
        f()
    want, got = bare()[1], runs["mmx"]()[1]
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    out.put({"items": len(g), "queries": queries, "rounds": rounds, "device": device, "chunk": chunk,
             **{f"{name}_q_per_s": round(queries / s, 1) for name, s in med.items()},
             "mmx_over_bare": round(med["bare"] / med["mmx"], 3),
             "mmx_unknown_over_bare": round(med["bare"] / med["mmx-unknown"], 3),
             "same_rows_as_bare": float((want == got).mean()), "self_first": bool(got[0, 0] == 12345)})


def bounded(path: str, queries: int, device: str, chunk: int, out) -> None:
    """mmx reading the file chunk by chunk, in a fresh process: its peak resident memory."""
    import torch

    from mmx.eval.search import top_k

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    gallery = FileRows(path)
    q = _queries(gallery, queries)
    top_k(q[:1], gallery[:1000], K, chunk=chunk, device=device, unit_norm=True)  # warm-up
    t0 = time.perf_counter()
    _, rows = top_k(q, gallery, K, chunk=chunk, device=device, unit_norm=True)
    seconds = time.perf_counter() - t0
    out.put({"items": len(gallery), "from_file_q_per_s": round(queries / seconds, 1), "self_first": bool(rows[0, 0] == 12345),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "gallery_file_mb": round(os.path.getsize(path) / 2**20, 1)})


FAISS_SCRIPT = """
import json, os, statistics, sys, time
import faiss, numpy as np
faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
g = np.load(sys.argv[1]); n = int(sys.argv[2]); rounds = int(sys.argv[3])
q = np.random.default_rng(1).standard_normal((n, g.shape[1]), dtype=np.float32); q[0] = g[12345]
q /= np.linalg.norm(q, axis=1, keepdims=True)
index = faiss.IndexFlatIP(g.shape[1]); index.add(g); index.search(q[:1], 10)
times = []
for _ in range(rounds):
    t0 = time.perf_counter(); index.search(q, 10); times.append(time.perf_counter() - t0)
print(json.dumps({"faiss_q_per_s": round(n / statistics.median(times), 1)}))
"""


def faiss_python(tmp: str) -> str | None:
    """A temporary venv with faiss-cpu (and numpy); None, with a line saying why, when it cannot be made."""
    env = os.path.join(tmp, "faiss-venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", env], check=True, capture_output=True)
        py = os.path.join(env, "bin", "python")
        subprocess.run([py, "-m", "pip", "install", "-q", "faiss-cpu", "numpy"], check=True, capture_output=True, timeout=600)
        return py
    except (subprocess.SubprocessError, OSError) as exc:
        print(json.dumps({"faiss": f"not installed ({type(exc).__name__}); skipped"}))
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--faiss", action="store_true", help="Also time FAISS IndexFlatIP (installed into a temporary venv).")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    print(json.dumps({"uptime": os.getloadavg(), "threads": os.environ.get("OMP_NUM_THREADS", "unset")}))
    with tempfile.TemporaryDirectory() as tmp:
        fpy = faiss_python(tmp) if args.faiss else None
        for n in [int(s) for s in args.sizes.split(",")]:
            path = os.path.join(tmp, f"gallery-{n}.npy")
            write_gallery(path, n)
            for target, extra in ((bounded, ()), (compare, (args.rounds,))):
                out = ctx.Queue()
                p = ctx.Process(target=target, args=(path, args.queries, args.device, args.chunk, *extra, out))
                p.start()
                result = out.get()
                p.join()
                if p.exitcode != 0:
                    raise SystemExit(f"{n} items: the measuring process failed (exit {p.exitcode})")
                print(json.dumps(result))
            if fpy:
                r = subprocess.run([fpy, "-c", FAISS_SCRIPT, path, str(args.queries), str(args.rounds)],
                                   capture_output=True, text=True)
                print(r.stdout.strip() or json.dumps({"faiss": f"failed: {r.stderr.strip()[-200:]}"}))
            os.remove(path)
    print(json.dumps({"uptime_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
