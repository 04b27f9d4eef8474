"""Approximate nearest-neighbour search for large galleries: a FAISS inverted-file index (IVF-Flat).

:func:`build` writes ``<folder>/<digest>.faiss`` (+ ``.json``, + ``.ivfdata`` when built
on disk) for a gallery; :func:`load` reads it back memory-mapped and checks it belongs to
that gallery; :func:`for_gallery` finds the gallery's index by its digest and builds it when
missing, so a changed gallery gets a fresh index and never an old one. :func:`search`
returns ``(scores, rows)`` like :func:`mmx.eval.search.top_k` (cosine, best first).

IVF-Flat keeps the full vectors, so a query's scores are exact for the rows it visits; only
the rows in unvisited cells are missed. ``nprobe`` (cells visited) is calibrated at build
time on sample gallery rows until recall@10 against exact search reaches
:data:`TARGET_RECALL`. FAISS is optional (``pip install 'mmx[ann]'``): below
:data:`EXACT_BELOW` rows exact search is as fast, so it stays the default there
(figures: benchmarks/RESULTS.md, "Approximate search").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "mmx-ann/1"
TARGET_RECALL = 0.97  # calibrated on gallery rows; queries from elsewhere land a little lower (>= 0.95 measured)
# Rows from which ``auto`` ranks through an index: below a million, exact search answers a query in
# under 30 ms on one quiet core (34.5 q/s at 1M, RESULTS.md), so a build of minutes and an
# approximation buy nothing a user would notice.
EXACT_BELOW = 1_000_000
CHUNK = 1 << 16


def faiss_module():
    """FAISS, or one line saying how to get it."""
    try:
        import faiss
    except ImportError:
        raise ValueError("an approximate index needs FAISS: pip install 'mmx[ann]' (faiss-cpu); "
                         "or search exactly (--index exact)") from None
    return faiss


def digest(gallery: Any, chunk: int = CHUNK) -> str:
    """SHA-256 of the gallery's shape and float32 rows (read ``chunk`` rows at a time, so a memmap streams)."""
    h = hashlib.sha256(f"{len(gallery)}x{gallery.shape[1]}".encode())
    for start in range(0, len(gallery), chunk):
        h.update(np.ascontiguousarray(gallery[start : start + chunk], np.float32).tobytes())
    return h.hexdigest()


def _normalized(rows: Any) -> np.ndarray:
    x = np.array(rows, np.float32)  # a copy: memmaps are read-only
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


@dataclasses.dataclass
class Index:
    """A loaded index and its record (``format``, ``digest``, ``n``, ``d``, ``nlist``, ``nprobe``, ...)."""

    faiss_index: Any
    meta: dict
    path: Path

    def search(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k'), rows (Q, k'))``, ``k' = min(k, n)``, best first; rows the index did not reach are dropped."""
        if k < 1:
            raise ValueError(f"--top must be at least 1, got {k}")
        self.faiss_index.nprobe = int(nprobe or self.meta["nprobe"])
        scores, rows = self.faiss_index.search(_normalized(queries), min(k, self.meta["n"]))
        return scores, rows


MAX_NLIST = 4096  # building costs rows x cells; past this the fill of 10M rows takes hours on two cores


def default_nlist(n: int) -> int:
    """Cells for ``n`` rows: about 4 sqrt(n) (FAISS's guideline), at most :data:`MAX_NLIST` and n / 39 (its training minimum)."""
    return int(max(1, min(4 * math.sqrt(n), MAX_NLIST, n // 39)))


def _paths(folder: Path, key: str) -> tuple[Path, Path, Path]:
    return folder / f"{key}.faiss", folder / f"{key}.json", folder / f"{key}.ivfdata"


def build(gallery: Any, folder: str | os.PathLike, nlist: int | None = None, on_disk: bool = False,
          shard: int = 1 << 20, seed: int = 0, key: str | None = None, log=None) -> Index:
    """Train and fill an IVF-Flat index of ``gallery`` (N, d) and write it under ``folder``, named by its digest.

    ``on_disk`` fills it one ``shard`` of rows at a time and merges the cells into one
    ``.ivfdata`` file (FAISS's on-disk inverted lists), so memory stays about one shard:
    the way to index a gallery larger than memory (a memory-mapped ``.npy``)."""
    faiss = faiss_module()
    from mmx.cache.atomic import atomic_path, atomic_write_bytes

    log = log or (lambda _msg: None)
    n, d = len(gallery), int(gallery.shape[1])
    if n < 1:
        raise ValueError("cannot index an empty gallery")
    key = key or digest(gallery)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path, meta_path, data_path = _paths(folder, key)
    nlist = int(nlist or default_nlist(n))
    rng = np.random.default_rng(seed)
    # 64 rows a cell train k-means well (FAISS warns below 39) at a quarter of its default cost
    sample = np.sort(rng.choice(n, size=min(n, max(64 * nlist, 10_000)), replace=False))
    log(f"training {nlist} cells on {len(sample)} of {n} rows")
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    index.train(_normalized(gallery[sample]))
    if not on_disk:
        for start in range(0, n, CHUNK):
            index.add(_normalized(gallery[start : start + CHUNK]))
        with atomic_path(index_path) as tmp:
            faiss.write_index(index, str(tmp))
    else:
        from faiss.contrib.ondisk import merge_ondisk

        shard_paths = []
        try:
            for si, start in enumerate(range(0, n, shard)):
                part = faiss.clone_index(index)
                for s in range(start, min(n, start + shard), CHUNK):
                    rows = _normalized(gallery[s : min(s + CHUNK, start + shard, n)])
                    part.add_with_ids(rows, np.arange(s, s + len(rows), dtype=np.int64))
                shard_paths.append(folder / f"{key}.shard{si}.tmp")
                faiss.write_index(part, str(shard_paths[-1]))
                log(f"filled rows {start}-{min(n, start + shard)} of {n}")
                del part
            data_path.unlink(missing_ok=True)
            here = os.getcwd()
            try:
                os.chdir(folder)  # the index records its .ivfdata by this name: the folder can move
                merge_ondisk(index, [str(p.resolve()) for p in shard_paths], data_path.name)
            finally:
                os.chdir(here)
            with atomic_path(index_path) as tmp:
                faiss.write_index(index, str(tmp))
        finally:
            for p in shard_paths:
                p.unlink(missing_ok=True)
    meta = {"format": FORMAT, "digest": key, "n": n, "d": d, "kind": "ivf-flat", "nlist": nlist,
            "on_disk": on_disk, "faiss": faiss.__version__, "nprobe": 1}
    loaded = Index(index, meta, index_path)
    meta["nprobe"] = calibrate(loaded, gallery, seed=seed)
    log(f"nprobe {meta['nprobe']} reaches recall@10 >= {TARGET_RECALL} on sample rows")
    atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    return load(folder, key, expect_n=n, expect_d=d)


def calibrate(index: Index, gallery: Any, queries: int = 200, k: int = 10, seed: int = 0) -> int:
    """The fewest cells to visit (doubling) for recall@``k`` >= :data:`TARGET_RECALL` against exact search.

    Half the probe queries are gallery rows (each row's own hit left out of both sides: an
    index always finds a row in its own cell and would flatter itself), half the midpoints of
    two random rows: a query from another modality lies off the gallery's clusters, where a
    cell's nearest rows often sit in the next cell."""
    from mmx.eval.search import top_k

    n, nlist = index.meta["n"], index.meta["nlist"]
    rng = np.random.default_rng(seed + 1)
    picks = rng.choice(n, size=min(queries, n), replace=False)
    half = len(picks) // 2
    rows = _normalized(gallery[np.sort(picks)])
    others = _normalized(gallery[np.sort(rng.choice(n, size=half, replace=True))])
    q = np.concatenate([rows[: len(picks) - half], rows[len(picks) - half :] + others])
    own = np.concatenate([np.sort(picks)[: len(picks) - half], np.full(half, -1)])  # -1: no own row
    _, truth = top_k(q, gallery, min(k + 1, n), device="cpu")
    truth = [(set(t) - {p}) if p >= 0 else set(t[:k]) for t, p in zip(truth.tolist(), own)]
    nprobe = 1
    while True:
        _, got = index.search(q, min(k + 1, n), nprobe)
        hits = sum(len(t & set(g)) for t, g in zip(truth, got.tolist()))
        if hits >= TARGET_RECALL * max(1, sum(len(t) for t in truth)) or nprobe >= nlist:
            return nprobe
        nprobe = min(nlist, nprobe * 2)


def load(folder: str | os.PathLike, key: str, expect_n: int | None = None, expect_d: int | None = None) -> Index:
    """The index named ``key`` under ``folder``, memory-mapped; a corrupt or foreign file is one line naming it."""
    faiss = faiss_module()
    from mmx.cache import files

    index_path, meta_path, _ = _paths(Path(folder), key)
    fix = f"delete {index_path} and {meta_path.name} to rebuild it ('mmx index build')"
    try:
        meta = files.read_json(meta_path, what="index record")
    except ValueError as exc:
        raise ValueError(f"{exc}; {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("digest") != key:
        raise ValueError(f"{meta_path}: not an mmx index record for gallery {key[:12]} "
                         f"(format {meta.get('format') if isinstance(meta, dict) else '?'!r}); {fix}")
    if (expect_n is not None and meta.get("n") != expect_n) or (expect_d is not None and meta.get("d") != expect_d):
        raise ValueError(f"{meta_path}: the index holds {meta.get('n')} x {meta.get('d')} rows, the gallery "
                         f"{expect_n} x {expect_d}; {fix}")
    try:
        files.check_regular(index_path, "index file")
    except FileNotFoundError:
        raise ValueError(f"{index_path}: missing beside its record {meta_path.name}; {fix}") from None
    here = os.getcwd()
    try:
        os.chdir(index_path.parent)  # an on-disk index names its .ivfdata relative to its own folder
        # in-memory cells are mapped from the index file; on-disk ones map their .ivfdata themselves
        # (FAISS crashes when asked to map those twice)
        flags = faiss.IO_FLAG_READ_ONLY if meta.get("on_disk") else faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
        index = faiss.read_index(index_path.name, flags)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"{index_path}: not a readable FAISS index ({first[-1] if first else 'unreadable'}); {fix}") from None
    finally:
        os.chdir(here)
    if index.ntotal != meta["n"] or index.d != meta["d"]:
        raise ValueError(f"{index_path}: holds {index.ntotal} x {index.d} rows, its record says "
                         f"{meta['n']} x {meta['d']}; {fix}")
    return Index(index, meta, index_path)


def for_gallery(gallery: Any, folder: str | os.PathLike, log=None, **build_options) -> Index:
    """The index of ``gallery`` under ``folder`` (keyed by its digest), built when there is none."""
    key = digest(gallery)
    if _paths(Path(folder), key)[1].exists():
        return load(folder, key, expect_n=len(gallery), expect_d=int(gallery.shape[1]))
    (log or (lambda _m: None))(f"no index for this gallery ({key[:12]}) yet: building it under {folder}")
    return build(gallery, folder, key=key, log=log, **build_options)
