"""Exact nearest-neighbour search over a gallery of embeddings, in chunks, on the device.

Cosine similarity (rows L2-normalised as ``mmx eval`` ranks them); the gallery is read
``chunk`` rows at a time (a NumPy array, or a memory-mapped ``.npy`` so it need not fit in
memory), each chunk scored on the device and merged into a running top-k. Memory beyond the
gallery's own storage is ``O(queries x chunk + chunk x d)``, whatever the gallery size. At
1M items exact search is fast enough (see benchmarks/RESULTS.md), so no approximate index
is offered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_CHUNK = 65536


def top_k(queries: np.ndarray, gallery: Any, k: int = 10, chunk: int = DEFAULT_CHUNK,
          device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (Q, k'), rows (Q, k'))`` of the ``k' = min(k, N)`` most similar gallery rows per query, best first.

    Ties keep the earlier gallery row first (stable across chunk sizes).
    """
    import torch

    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(queries, np.float32), device=dev), dim=-1)
    n = len(gallery)
    best_s = torch.full((len(q), 0), -float("inf"), device=dev)
    best_i = torch.zeros((len(q), 0), dtype=torch.long, device=dev)
    for start in range(0, n, chunk):
        g = torch.as_tensor(np.array(gallery[start : start + chunk], np.float32), device=dev)  # a copy: memmaps are read-only
        s = q @ torch.nn.functional.normalize(g, dim=-1).T  # (Q, chunk)
        s_top, i_top = torch.topk(s, min(k, s.shape[1]), dim=1)
        cat_s = torch.cat([best_s, s_top], 1)
        cat_i = torch.cat([best_i, i_top + start], 1)
        # sort by score, then by row, so equal scores keep gallery order
        order = torch.argsort(cat_i, dim=1, stable=True)
        cat_s, cat_i = cat_s.gather(1, order), cat_i.gather(1, order)
        order = torch.argsort(-cat_s, dim=1, stable=True)[:, :k]
        best_s, best_i = cat_s.gather(1, order), cat_i.gather(1, order)
    return best_s.cpu().numpy(), best_i.cpu().numpy()
