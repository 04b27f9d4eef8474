"""Exact nearest-neighbour search over a gallery of embeddings, in chunks, on the device.

Cosine similarity (rows L2-normalised as ``mmx eval`` ranks them). :func:`unit_rows` scales a
gallery's rows to unit length once, in place, a chunk at a time; :func:`top_k` then ranks it with
``unit_norm=True`` at the cost of the bare product (a gallery of unknown state is scaled chunk by
chunk instead, through its row norms, at a small extra cost). The gallery is read ``chunk`` rows
at a time (a NumPy array, or a memory-mapped ``.npy`` so it need not fit in memory), each chunk
scored on the device into one reused buffer and merged into a running top-k. Memory beyond the
gallery's own storage is ``O(queries x chunk + chunk x d)``, ``chunk`` shrunk for many queries so
the score buffer stays under :data:`SCORE_BUDGET` floats. At 1M items exact search is fast enough
(see benchmarks/RESULTS.md), so no approximate index is offered.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

DEFAULT_CHUNK = 65536
SCORE_BUDGET = 1 << 24  # floats in the (queries x chunk) score buffer: 64 MiB
UNIT_NORM_KEY = "unit_norm"  # a gallery file's flag: its emb rows are unit length already


def unit_rows(emb: np.ndarray, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """``emb`` (float32) with every row scaled to unit L2 length, in place when it is a writable
    float32 array, a chunk at a time (so no second full-size array); zero rows stay zero."""
    emb = np.asarray(emb)
    if emb.dtype != np.float32 or not emb.flags.writeable or not emb.flags.c_contiguous:
        emb = np.array(emb, np.float32, order="C")  # one copy, then scaled in place
    for start in range(0, len(emb), chunk):
        part = emb[start : start + chunk]
        norms = np.sqrt(np.einsum("ij,ij->i", part, part))
        np.maximum(norms, 1e-12, out=norms)
        part /= norms[:, None]
    return emb


def _rows(gallery: Any, start: int, stop: int, dev: Any):
    """Rows ``start:stop`` as a float32 tensor on ``dev``; a view of the array when it is one already."""
    import torch

    part = np.asarray(gallery[start:stop])
    if part.dtype != np.float32 or not part.flags.c_contiguous:
        part = np.ascontiguousarray(part, np.float32)
    with warnings.catch_warnings():  # a read-only memmap: the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(part)
    return t.to(dev, non_blocking=True) if t.device != dev else t


def _chunk_top(s, k: int):
    """``(scores, rows)`` of the ``k`` best columns of ``s`` per row, equal scores in column order.

    ``torch.topk`` picks among equal scores arbitrarily; one extra candidate tells whether a tie
    crosses the cut, and only such rows are ranked again in full (stable, so the earlier row wins)."""
    import torch

    n = s.shape[1]
    if k >= n:
        order = torch.argsort(-s, dim=1, stable=True)
        return s.gather(1, order), order
    top_s, top_i = torch.topk(s, k + 1, dim=1)
    tied = top_s[:, k - 1] == top_s[:, k]
    top_s, top_i = top_s[:, :k].contiguous(), top_i[:, :k].contiguous()
    for r in torch.nonzero(tied).flatten().tolist():
        cand = torch.nonzero(s[r] >= top_s[r, k - 1]).flatten()  # ascending column order
        order = torch.argsort(-s[r, cand], stable=True)[:k]
        top_s[r], top_i[r] = s[r, cand[order]], cand[order]
    return top_s, top_i


def top_k(queries: np.ndarray, gallery: Any, k: int = 10, chunk: int = DEFAULT_CHUNK,
          device: Any = None, unit_norm: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (Q, k'), rows (Q, k'))`` of the ``k' = min(k, N)`` most similar gallery rows per query, best first.

    ``unit_norm``: the gallery's rows are unit length already (:func:`unit_rows`), so they are
    not scaled again. Ties keep the earlier gallery row first (stable across chunk sizes).
    """
    import torch

    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(queries, np.float32), device=dev), dim=-1)
    n = len(gallery)
    chunk = max(1, min(chunk, SCORE_BUDGET // max(1, len(q))))
    best_s = torch.full((len(q), 0), -float("inf"), device=dev)
    best_i = torch.zeros((len(q), 0), dtype=torch.long, device=dev)
    buf = None
    for start in range(0, n, chunk):
        g = _rows(gallery, start, start + chunk, dev)
        if buf is None or buf.shape[1] != len(g):
            buf = torch.empty((len(q), len(g)), device=dev)
        s = torch.mm(q, g.T, out=buf)  # (Q, chunk), into the one buffer: no allocation per chunk
        if not unit_norm:
            s.div_(torch.linalg.vector_norm(g, dim=1).clamp_min_(1e-12))
        s_top, i_top = _chunk_top(s, min(k, s.shape[1]))
        cat_s = torch.cat([best_s, s_top], 1)
        cat_i = torch.cat([best_i, i_top + start], 1)
        # sort by score, then by row, so equal scores keep gallery order
        order = torch.argsort(cat_i, dim=1, stable=True)
        cat_s, cat_i = cat_s.gather(1, order), cat_i.gather(1, order)
        order = torch.argsort(-cat_s, dim=1, stable=True)[:, :k]
        best_s, best_i = cat_s.gather(1, order), cat_i.gather(1, order)
    return best_s.cpu().numpy(), best_i.cpu().numpy()
