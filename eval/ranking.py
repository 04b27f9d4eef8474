"""Ranks of the relevant items in one chunk of sorted gallery rows: the engine of
:func:`mmx.eval.metrics.per_query_metrics`.

A block is one modality (or fused subset) of a split: its L2-normalised embeddings on the
device and integer codes of its relevance keys (:func:`prepare`). For a chunk of queries the
similarities of each gallery block are sorted once (:func:`sort_rows`); ``searchsorted`` then
counts the items at or above each relevant score (:func:`count_at_least`), and
:func:`query_stats` turns those counts into the tie-averaged rank, AP@R and full AP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

# the field of a block that decides relevance, per relevance mode
KEY_OF = {"class": "label", "instance": "group"}


def codes_of(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Shared integer codes for string keys across blocks; '' (unknown) -> -1."""
    flat = np.concatenate([np.asarray(a).astype(str) for a in arrays]) if arrays else np.array([], str)
    uniq, inv = np.unique(flat, return_inverse=True)
    inv = inv.astype(np.int64)
    if len(uniq) and uniq[0] == "":
        inv = inv - 1  # '' sorts first: it becomes -1, the rest 0..n-1
    out, start = [], 0
    for a in arrays:
        out.append(inv[start : start + len(a)])
        start += len(a)
    return out


@dataclass
class Index:
    """Rows of one block grouped by key code (a CSR table), to list a query's relevant rows."""

    order: Any  # (n,) rows sorted by code
    starts: Any  # (n_codes,)
    counts: Any  # (n_codes,)

    @classmethod
    def build(cls, codes, n_codes: int, device):
        import torch

        c = torch.as_tensor(codes, dtype=torch.int64, device=device)
        keep = c >= 0
        rows = torch.arange(len(c), device=device)[keep]
        c = c[keep]
        order = rows[torch.argsort(c, stable=True)]
        counts = torch.bincount(c, minlength=n_codes)
        starts = torch.cumsum(counts, 0) - counts
        return cls(order, starts, counts)

    def lookup(self, qcodes):
        """(c,) query codes -> relevant rows (c, m) and their validity mask (c, m)."""
        import torch

        known = qcodes >= 0
        safe = qcodes.clamp(min=0)
        cnt = torch.where(known, self.counts[safe], torch.zeros_like(qcodes)) if len(self.counts) else torch.zeros_like(qcodes)
        m = int(cnt.max()) if len(cnt) else 0
        ar = torch.arange(m, device=qcodes.device)
        valid = ar[None, :] < cnt[:, None]
        if m == 0 or len(self.order) == 0:
            return torch.zeros((len(qcodes), m), dtype=torch.int64, device=qcodes.device), valid
        start = self.starts[safe] if len(self.starts) else torch.zeros_like(qcodes)
        pos = (start[:, None] + ar[None, :]).clamp(max=len(self.order) - 1)
        return torch.where(valid, self.order[pos], torch.zeros_like(pos)), valid


@dataclass
class Block:
    name: str
    emb: Any  # (n, d) float32, L2-normalised, on the device
    codes: dict  # relevance -> (n,) int64 codes (numpy)
    index: dict = field(default_factory=dict)  # relevance -> Index

    @property
    def single(self) -> bool:
        return "+" not in self.name


def normalise(emb, device=None):
    """L2-normalised float32 rows (a zero row stays zero: it ties with everything)."""
    import torch

    x = torch.as_tensor(np.asarray(emb, dtype=np.float32) if not isinstance(emb, torch.Tensor) else emb)
    x = x.detach().to(device=device, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, d], got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def prepare(data: Mapping[str, Mapping[str, Any]], names: list[str], relevances, device) -> dict[str, Block]:
    """One :class:`Block` per name of ``data``, in the order of ``names``; bad input is a ValueError."""
    dims = {n: np.shape(data[n]["emb"]) for n in names}
    widths = {d[1] for n, d in dims.items() if len(d) == 2 and d[0] > 0}
    if len(widths) > 1:
        raise ValueError("embeddings of one split must share one dimension; got " + ", ".join(f"{n}: {dims[n]}" for n in names))
    blocks = {}
    codes = {}
    for rel in relevances:
        key = KEY_OF[rel]
        arrays = []
        for n in names:
            if key not in data[n]:
                raise ValueError(f"{n}: no {key!r} array, needed for {rel} relevance")
            a = np.asarray(data[n][key])
            if len(a) != dims[n][0]:
                raise ValueError(f"{n}: {len(a)} {key}s for {dims[n][0]} embeddings")
            arrays.append(a)
        codes[rel] = codes_of(arrays)
    width = next(iter(widths), 1)
    for i, n in enumerate(names):
        emb = data[n]["emb"]
        emb = emb if np.shape(emb)[0] else np.zeros((0, width), np.float32)
        try:
            normalised = normalise(emb, device)
        except ValueError as exc:
            raise ValueError(f"{n}: {exc}") from None
        blocks[n] = Block(n, normalised, {rel: codes[rel][i] for rel in relevances})
    for rel in relevances:
        n_codes = max([int(b.codes[rel].max()) + 1 for b in blocks.values() if len(b.codes[rel])] + [0])
        for b in blocks.values():
            b.index[rel] = Index.build(b.codes[rel], n_codes, device)
    return blocks


def sort_rows(parts: dict) -> dict:
    """Row-wise ascending sort (values only) of each gallery block of one chunk.

    On CPU numpy's SIMD sort is ~15x faster than torch's and releases the GIL, so the
    row halves of every block are sorted on as many threads as torch uses.
    """
    import torch

    if not parts or next(iter(parts.values())).device.type != "cpu":
        return {t: torch.sort(s, dim=1).values for t, s in parts.items()}
    from concurrent.futures import ThreadPoolExecutor

    # threads pay off only on big chunks (small ones come from the per-epoch quick recall)
    workers = max(1, torch.get_num_threads()) if sum(s.numel() for s in parts.values()) > (1 << 20) else 1
    out = {t: np.empty(tuple(s.shape), np.float32) for t, s in parts.items()}
    jobs = []
    for t, s in parts.items():
        bounds = np.linspace(0, s.shape[0], workers + 1).astype(int)
        jobs += [(t, a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def work(job):
        t, a, b = job
        out[t][a:b] = np.sort(parts[t][a:b].numpy(), axis=1)

    if workers == 1:
        for job in jobs:
            work(job)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, jobs))
    return {t: torch.from_numpy(v) for t, v in out.items()}


def count_at_least(sorted_rows, values):
    """(c, m) number of entries of each sorted row that are >= each value (int32)."""
    import torch

    n = sorted_rows.shape[1]
    if n == 0 or values.shape[1] == 0:
        return torch.zeros(values.shape, dtype=torch.int32, device=values.device)
    return n - torch.searchsorted(sorted_rows, values.contiguous(), side="left", out_int32=True)


def masked_max(scores, valid):
    """(c, 1) best score among valid entries; -inf where there is none."""
    import torch

    if scores.shape[1] == 0:
        return scores.new_full((scores.shape[0], 1), float("-inf"))
    return torch.where(valid, scores, torch.tensor(float("-inf"), device=scores.device)).max(1, keepdim=True).values


def query_stats(ge, valid, above_best, map_r: int):
    """Per-query rank (tie-averaged), AP@R and full AP (pessimistic ties) of one gallery.

    ge (c, m): for each relevant item, the gallery items scoring >= it (itself included);
    valid (c, m): which entries are relevant items; above_best (c,): gallery items scoring
    strictly above the best relevant one. ``ge`` orders the relevant items exactly as their
    scores do (a higher score has a strictly smaller ``ge``; equal scores, equal ``ge``), so
    no score is needed here. Returns float64 numpy arrays (c,): rank (nan: no relevant
    item), AP@R, AP, and the tie counts of the best relevant item: ``above`` (a), ``tied`` (t),
    ``tied_rel`` (m), from which :func:`mmx.eval.metrics.expected_hits` gives Recall@K under a random tie order.
    """
    import torch

    c, m = ge.shape
    if m == 0:
        return tuple(np.full(c, np.nan) for _ in range(6))
    big = torch.iinfo(torch.int32).max
    g = torch.sort(torch.where(valid, ge, big), dim=1).values  # best relevant first; padding last
    n_rel = valid.sum(1)
    rel_ge = torch.searchsorted(g, g, side="right", out_int32=True)  # relevant items scoring >= each
    has = n_rel > 0
    # rank: a above, t tied with the best relevant item, m_best of them relevant
    first = g[:, 0]
    m_best = rel_ge[:, 0]
    tied = first - above_best
    rank = 1 + above_best.double() + (tied - m_best).double() / (m_best + 1).double()
    # AP: positions in the order where tied irrelevant items come first
    k = torch.arange(1, m + 1, device=ge.device, dtype=torch.int32)[None, :]
    is_rel = k <= n_rel[:, None]
    pos = (g - rel_ge + k).double()
    prec = torch.where(is_rel, k.double() / pos, torch.zeros_like(pos))
    # a running sum (left to right) so that the padding width of a chunk cannot change the
    # rounding: chunked results are bit-identical to dense ones
    ap_full = prec.cumsum(1)[:, -1] / n_rel.clamp_min(1).double()
    in_r = is_rel & (pos <= map_r)
    ap_r = torch.where(in_r, prec, torch.zeros_like(prec)).cumsum(1)[:, -1] / in_r.sum(1).clamp_min(1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=ge.device)
    ties = (above_best.double(), tied.double(), m_best.double())
    return tuple(torch.where(has, x, nan).cpu().numpy() for x in (rank, ap_r, ap_full) + ties)


def chunk_rows(n_gallery: int, chunk_bytes: int) -> int:
    # the similarities, their sorted copy and temporaries: about 3 float32 (rows, gallery) blocks
    return max(1, int(chunk_bytes // max(1, 12 * n_gallery)))
