"""Retrieval metrics of the papers: Recall@K, mAP@R, full mAP, median and mean rank.

Every number comes from one ranking per query: the cosine similarity (embeddings are
L2-normalised first) of the query against a gallery, best first.

* **Galleries.** A *pair* ``Q->T`` ranks the items of target ``T`` for every query of ``Q``
  (paper 000 Tables I, III, V; paper 002 Tables III-IV; thesis 004 Table 8). ``Q->Any`` ranks every
  item of every (single) modality of the split except the query itself (paper 000 Tables II, IV,
  VI). A fused subset such as ``audio+video`` (rows are groups, paper 001) is a gallery, or a
  query set, of its own: ``text->audio+video`` is paper 001's t->va. Pairs are formed only
  between names with disjoint modalities (no ``audio->audio+video``); fused rows are not items
  of the ``Any`` gallery.
* **Relevance.** ``class``: a gallery item is relevant when its class label equals the query's
  (papers 000, 002). ``instance``: when its group equals the query's (paper 001: the caption's own
  clip). An empty label or group matches nothing.
* **Rank of a query** (for Recall@K, MedR, MeanR) is the 1-based position of its first relevant
  item. Tied scores are averaged as in the reference code of paper 001 (ninatu/everything_at_once,
  ``retrieval_metrics(break_ties='averaging')``): the rank is the expected position of the first
  relevant item when tied items are put in random order, ``1 + a + (t - m) / (m + 1)`` with ``a``
  items scoring strictly higher, ``t`` items tied at the best relevant score and ``m`` of them
  relevant (for one relevant item: the mean of the tied positions, exactly the reference code).
  **Recall@K** is the expected hit under a uniformly random order of the tied items: the
  probability that a relevant item is in the top K, ``1 - C(t - m, j) / C(t, j)`` with
  ``j = K - a`` places left for the tied block (0 when ``j <= 0``, 1 when ``j > t - m``;
  :func:`expected_hits`). Without ties it is 1 when a relevant item is in the top K, else 0
  (paper 000); with all embeddings tied it is the random-ranking chance, not 0 (testing the
  tie-averaged rank against K would give R@10 = 0 for 10 relevant items among 100 tied, where a
  random order gives 0.67; issue 13 item 6).
* **Cross-modal recall ``xR@K``** (paper 000 Tables II, IV, VI). For a pair it is ``R@K``; for
  ``Q->Any`` only items of *another* modality are hits, while the query's own modality stays in
  the gallery as competitors. This is the reading that reproduces paper 000's ``-> Any`` tables:
  (1) the hit-rate ``R@K`` cannot fall below chance (about 0.049 at R@10 with 200 balanced
  classes), yet Table II reports R@10 0.01 for every query modality; (2) recall as the fraction
  of relevant items retrieved bounds R@1 by 1 / (relevant items), which contradicts the pair
  tables under the same definition (Table V: Image->Text R@1 0.17 with dozens of test texts per
  class); (3) with cross-modal hits a query's own modality, which training never pulls towards
  the others (the modality gap), fills the top ranks: ``-> Any`` falls far below the pairs
  (Table VI: Image->Any R@10 0.21 vs Image->Video 0.64) and to about 0 when modalities are
  aligned only pair by pair (Table II, round-robin), as reported. One definition then serves
  every table of the paper. ``mmx eval`` prints both; ``R@K`` stays the default column.
* **AP@R** follows paper 002 eq. 7 (thesis 004 eq. 4.2.1)::

      AP@R = 1/N * sum_{r=1..R} P(r) * rel(r),   N = number of relevant items in the top R

  i.e. the normalisation of the standard cross-modal retrieval code (ACMR, DSCMR): divide by
  the relevant items *retrieved* in the top R, not by all relevant items of the gallery; AP@R is
  0 when none is in the top R. **Full mAP** is the same with R = the gallery size (N = all
  relevant items), the protocol of the older benchmarks. For AP the order among tied scores is
  the pessimistic one (irrelevant items before relevant ones), so a degenerate embedding that
  ties everything scores the base rate and never 1.
* **Queries without any relevant item** in the gallery (a class with one item queried against
  Any, a class absent from the target modality, a caption whose clip has no features) are
  *excluded* from the means by default and counted in the output as ``no_relevant``; with
  ``no_relevant="miss"`` they count as misses (recall 0, AP 0) as the reference code does for
  MSR-VTT (``complete_dataset_size``). Ranks (MedR, MeanR) are always over queries that have one.

The work is done in chunks of queries against the whole gallery on the device (GPU when
present): one matrix product and one sort per gallery modality per chunk; the positions of the
(few) relevant items then come from ``searchsorted`` in the sorted rows, so both relevance
modes, every pair and Any share one similarity matrix and memory stays bounded by the chunk.
``reference_metrics`` is a plain per-query implementation of the same definitions for tests.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

RELEVANCES = ("class", "instance")
NO_RELEVANT = ("exclude", "miss")
_KEY_OF = {"class": "label", "instance": "group"}
# per-query values of one gallery (see _query_stats); ``x_*``: the cross-modal Any (xR@K)
STAT_KEYS = ("rank", "ap_r", "ap", "above", "tied", "tied_rel")


def parse_ks(value: str | Iterable[int]) -> tuple[int, ...]:
    """``"1,5,10"`` -> ``(1, 5, 10)``; K must be positive integers."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        ks = tuple(int(str(k).strip()) for k in items if str(k).strip())
    except ValueError:
        raise ValueError(f"--k: expected comma-separated positive integers, got {value!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"--k: expected comma-separated positive integers, got {value!r}")
    return tuple(sorted(set(ks)))


# Suffix of a late-fused subset: ``audio+video.late`` is the mean of the separately embedded
# audio and video (paper 001 Table 4's "v+a"); plain ``audio+video`` is one joint pass ("va").
LATE = ".late"


def modalities_of(name: str) -> frozenset[str]:
    """``"audio+video"`` (or ``"audio+video.late"``) -> ``{"audio", "video"}``."""
    return frozenset(name.removesuffix(LATE).split("+"))


def name_order(name: str) -> tuple:
    """Paper order (text, image, audio, video), fused subsets after single modalities."""
    from mmx.cache.modality import NAMES

    parts = name.removesuffix(LATE).split("+")
    return (len(parts), [NAMES.index(p) if p in NAMES else len(NAMES) for p in parts], name.endswith(LATE), name)


def pairs_of(names: Iterable[str]) -> list[tuple[str, str]]:
    """Ordered query->target pairs between names with disjoint modalities, in paper order."""
    names = sorted(names, key=name_order)
    return [(q, t) for q in names for t in names if q != t and not (modalities_of(q) & modalities_of(t))]


def _codes(arrays: list[np.ndarray]) -> list[np.ndarray]:
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
class _Index:
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
class _Block:
    name: str
    emb: Any  # (n, d) float32, L2-normalised, on the device
    codes: dict  # relevance -> (n,) int64 codes (numpy)
    index: dict = field(default_factory=dict)  # relevance -> _Index

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


def _prepare(data: Mapping[str, Mapping[str, Any]], relevances, device) -> dict[str, _Block]:
    names = sorted(data, key=name_order)
    dims = {n: np.shape(data[n]["emb"]) for n in names}
    widths = {d[1] for n, d in dims.items() if len(d) == 2 and d[0] > 0}
    if len(widths) > 1:
        raise ValueError("embeddings of one split must share one dimension; got " + ", ".join(f"{n}: {dims[n]}" for n in names))
    blocks = {}
    codes = {}
    for rel in relevances:
        key = _KEY_OF[rel]
        arrays = []
        for n in names:
            if key not in data[n]:
                raise ValueError(f"{n}: no {key!r} array, needed for {rel} relevance")
            a = np.asarray(data[n][key])
            if len(a) != dims[n][0]:
                raise ValueError(f"{n}: {len(a)} {key}s for {dims[n][0]} embeddings")
            arrays.append(a)
        codes[rel] = _codes(arrays)
    width = next(iter(widths), 1)
    for i, n in enumerate(names):
        emb = data[n]["emb"]
        emb = emb if np.shape(emb)[0] else np.zeros((0, width), np.float32)
        try:
            normalised = normalise(emb, device)
        except ValueError as exc:
            raise ValueError(f"{n}: {exc}") from None
        blocks[n] = _Block(n, normalised, {rel: codes[rel][i] for rel in relevances})
    for rel in relevances:
        n_codes = max([int(b.codes[rel].max()) + 1 for b in blocks.values() if len(b.codes[rel])] + [0])
        for b in blocks.values():
            b.index[rel] = _Index.build(b.codes[rel], n_codes, device)
    return blocks


def _sort_blocks(parts: dict) -> dict:
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


def _count_at_least(sorted_rows, values):
    """(c, m) number of entries of each sorted row that are >= each value (int32)."""
    import torch

    n = sorted_rows.shape[1]
    if n == 0 or values.shape[1] == 0:
        return torch.zeros(values.shape, dtype=torch.int32, device=values.device)
    return n - torch.searchsorted(sorted_rows, values.contiguous(), side="left", out_int32=True)


def _masked_max(scores, valid):
    """(c, 1) best score among valid entries; -inf where there is none."""
    import torch

    if scores.shape[1] == 0:
        return scores.new_full((scores.shape[0], 1), float("-inf"))
    return torch.where(valid, scores, torch.tensor(float("-inf"), device=scores.device)).max(1, keepdim=True).values


def _query_stats(ge, valid, above_best, map_r: int):
    """Per-query rank (tie-averaged), AP@R and full AP (pessimistic ties) of one gallery.

    ge (c, m): for each relevant item, the gallery items scoring >= it (itself included);
    valid (c, m): which entries are relevant items; above_best (c,): gallery items scoring
    strictly above the best relevant one. ``ge`` orders the relevant items exactly as their
    scores do (a higher score has a strictly smaller ``ge``; equal scores, equal ``ge``), so
    no score is needed here. Returns float64 numpy arrays (c,): rank (nan: no relevant
    item), AP@R, AP, and the tie counts of the best relevant item: ``above`` (a), ``tied`` (t),
    ``tied_rel`` (m), from which :func:`expected_hits` gives Recall@K under a random tie order.
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


def _chunk_rows(n_gallery: int, chunk_bytes: int) -> int:
    # the similarities, their sorted copy and temporaries: about 3 float32 (rows, gallery) blocks
    return max(1, int(chunk_bytes // max(1, 12 * n_gallery)))


def per_query_metrics(
    data: Mapping[str, Mapping[str, Any]],
    relevances: Iterable[str] = ("class",),
    map_r: int = 50,
    any_gallery: bool = True,
    device=None,
    chunk_bytes: int = 256 << 20,
    pairs: Iterable[tuple[str, str]] | None = None,
) -> dict[str, dict[tuple[str, str], dict[str, np.ndarray]]]:
    """``{relevance: {(query, target): {"rank", "ap_r", "ap"}}}``, one value per query row.

    ``data`` maps a modality or fused-subset name to ``{"emb", "label", "group"}``; ``target``
    is a name or ``"any"``. See the module docstring for every definition.
    """
    import torch

    relevances = tuple(relevances)
    for rel in relevances:
        if rel not in RELEVANCES:
            raise ValueError(f"unknown relevance {rel!r}; known: {', '.join(RELEVANCES)}")
    if map_r < 1:
        raise ValueError(f"map_r must be a positive integer, got {map_r}")
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    blocks = _prepare(data, relevances, device)
    names = list(blocks)
    pairs = pairs_of(names) if pairs is None else list(pairs)
    singles = [n for n in names if blocks[n].single]
    offsets, off = {}, 0
    for n in names:
        offsets[n] = off
        off += len(blocks[n].emb)
    width = blocks[names[0]].emb.shape[1] if names else 1
    gallery = torch.cat([blocks[n].emb for n in names]) if names else torch.zeros((0, width), device=device)
    out: dict = {rel: {} for rel in relevances}
    for q in names:
        targets = [t for (qq, t) in pairs if qq == q]
        do_any = any_gallery and blocks[q].single and len(singles) > 0
        if not targets and not do_any:
            continue
        # every gallery block this query set needs, in a fixed order (Any's blocks first)
        needed = (singles if do_any else []) + [t for t in targets if not (do_any and t in singles)]
        nq = len(blocks[q].emb)
        acc = {rel: {t: [] for t in targets + (["any"] if do_any else [])} for rel in relevances}
        step = _chunk_rows(len(gallery), chunk_bytes)
        for lo in range(0, nq, step):
            hi = min(nq, lo + step)
            rows = torch.arange(lo, hi, device=device)
            sims = blocks[q].emb[lo:hi] @ gallery.T  # (c, n_all)
            if blocks[q].single:
                sims[torch.arange(hi - lo, device=device), offsets[q] + rows] = float("-inf")  # not its own neighbour
            part = {t: sims[:, offsets[t] : offsets[t] + len(blocks[t].emb)] for t in needed}
            srt = _sort_blocks(part)  # (c, n_t) ascending, per block
            # relevant items per relevance and block; their scores and the best of them
            scores, valid, best = {}, {}, {}
            for rel in relevances:
                qcodes = torch.as_tensor(blocks[q].codes[rel][lo:hi], device=device)
                for t in needed:
                    idx, ok = blocks[t].index[rel].lookup(qcodes)
                    if t == q:
                        ok = ok & (idx != rows[:, None])  # the query is not its own relevant item
                    sc = part[t].gather(1, idx) if idx.shape[1] else part[t].new_zeros(idx.shape)
                    scores[rel, t], valid[rel, t] = sc, ok
                    best[rel, t] = _masked_max(sc, ok)
                if do_any:
                    scores[rel, "any"] = torch.cat([scores[rel, t] for t in singles], 1)
                    valid[rel, "any"] = torch.cat([valid[rel, t] for t in singles], 1)
                    best[rel, "any"] = torch.cat([best[rel, t] for t in singles], 1).max(1, keepdim=True).values
                    # cross-modal Any: the query's own modality stays in the gallery but is never a hit
                    valid[rel, "anyx"] = torch.cat([valid[rel, t] & (t != q) for t in singles], 1)
                    best[rel, "anyx"] = torch.cat([best[rel, t] if t != q else torch.full_like(best[rel, t], float("-inf"))
                                                   for t in singles], 1).max(1, keepdim=True).values
            # one searchsorted per block and chunk (its cost is dominated by the sorted rows):
            # counts of items >= each relevant score, and > each best score (>= its successor)
            ge, above = {}, {}
            for b in needed:
                segs = []
                for rel in relevances:
                    if do_any and b in singles:
                        segs += [("ge", rel, "any"), ("above", rel, "any"), ("above", rel, "anyx")]
                    if b in targets:
                        if not (do_any and b in singles):
                            segs.append(("ge", rel, b))
                        segs.append(("above", rel, b))
                vals = [scores[r, t] if kind == "ge" else torch.nextafter(best[r, t], torch.tensor(float("inf"), device=device))
                        for kind, r, t in segs]
                counts = torch.split(_count_at_least(srt[b], torch.cat(vals, 1)), [v.shape[1] for v in vals], dim=1)
                for (kind, r, t), cnt in zip(segs, counts):
                    store = ge if kind == "ge" else above
                    store[r, t, b] = cnt
            for rel in relevances:
                for t in targets:
                    if (rel, t, t) in ge:
                        g = ge[rel, t, t]
                    else:  # a single-modality target: its columns of the Any entries
                        start = sum(scores[rel, s].shape[1] for s in singles[: singles.index(t)])
                        g = ge[rel, "any", t][:, start : start + scores[rel, t].shape[1]]
                    acc[rel][t].append(_query_stats(g, valid[rel, t], above[rel, t, t][:, 0], map_r))
                if do_any:
                    g = sum(ge[rel, "any", b] for b in singles)
                    a = sum(above[rel, "any", b] for b in singles)[:, 0]
                    ax = sum(above[rel, "anyx", b] for b in singles)[:, 0]
                    acc[rel]["any"].append(_query_stats(g, valid[rel, "any"], a, map_r)
                                           + _query_stats(g, valid[rel, "anyx"], ax, map_r))
        for rel in relevances:
            for t, parts in acc[rel].items():
                keys = STAT_KEYS + (tuple(f"x_{k}" for k in STAT_KEYS) if t == "any" else ())
                cols = list(zip(*parts)) if parts else [[] for _ in keys]
                out[rel][(q, t)] = {k: np.concatenate(x) if len(x) else np.zeros(0) for k, x in zip(keys, cols)}
    return out


def expected_hits(above, tied, tied_rel, k: int) -> np.ndarray:
    """Per query, the probability that a relevant item is in the top ``k`` when the items tied
    with the best relevant one are put in a uniformly random order.

    ``above`` items score strictly higher, ``tied`` items share the best relevant score and
    ``tied_rel`` of them are relevant. With ``j = k - above`` places left for the tied block,
    the chance that none of its first ``j`` is relevant is ``C(t - m, j) / C(t, j)``.
    """
    from scipy.special import gammaln

    a, t, m = (np.asarray(x, np.float64) for x in (above, tied, tied_rel))
    j = k - a
    miss_possible = (j > 0) & (j <= t - m)
    jj = np.where(miss_possible, j, 0.0)
    tt, mm = np.where(miss_possible, t, 1.0), np.where(miss_possible, m, 0.0)
    log_miss = gammaln(tt - mm + 1) - gammaln(tt - mm - jj + 1) - gammaln(tt + 1) + gammaln(tt - jj + 1)
    return np.where(j <= 0, 0.0, np.where(miss_possible, 1.0 - np.exp(log_miss), 1.0))


def summarise(per_query: Mapping[str, np.ndarray], ks=(1, 5, 10), map_r: int = 50, no_relevant: str = "exclude") -> dict:
    """Means over queries of one gallery: ``R@K``, ``xR@K``, ``mAP@R``, ``mAP``, ``MedR``, ``MeanR``.

    ``xR@K`` (the cross-modal recall that reproduces paper 000's -> Any tables) equals ``R@K``
    for a pair; for ``-> Any`` it counts only hits of another modality (module docstring).
    Metrics are ``None`` when no query counts (empty split, no relevant item anywhere).
    """
    if no_relevant not in NO_RELEVANT:
        raise ValueError(f"unknown no_relevant policy {no_relevant!r}; known: {', '.join(NO_RELEVANT)}")
    rank = np.asarray(per_query["rank"], dtype=np.float64)
    has = ~np.isnan(rank)
    n_total, n_has = len(rank), int(has.sum())
    counted = n_has if no_relevant == "exclude" else n_total
    row: dict[str, Any] = {"queries": n_total, "evaluated": counted, "no_relevant": n_total - n_has}

    def mean_of(values_of_has):
        return float(np.sum(values_of_has) / counted) if counted else None

    def hits(prefix: str, k: int):
        ok = ~np.isnan(np.asarray(per_query[prefix + "rank"], np.float64))
        denom = int(ok.sum()) if no_relevant == "exclude" else n_total
        ties = (np.asarray(per_query[prefix + n])[ok] for n in ("above", "tied", "tied_rel"))
        return float(np.sum(expected_hits(*ties, k)) / denom) if denom else None

    cross = "x_" if "x_rank" in per_query else ""
    for k in ks:
        row[f"R@{k}"] = hits("", k)
    for k in ks:
        row[f"xR@{k}"] = hits(cross, k)
    row[f"mAP@{map_r}"] = mean_of(np.asarray(per_query["ap_r"])[has])
    row["mAP"] = mean_of(np.asarray(per_query["ap"])[has])
    row["MedR"] = float(np.median(rank[has])) if n_has else None
    row["MeanR"] = float(np.mean(rank[has])) if n_has else None
    return row


def retrieval_metrics(
    data: Mapping[str, Mapping[str, Any]],
    relevances: Iterable[str] = ("class",),
    ks=(1, 5, 10),
    map_r: int = 50,
    no_relevant: str = "exclude",
    device=None,
    chunk_bytes: int = 256 << 20,
) -> dict[str, dict[tuple[str, str], dict]]:
    """``{relevance: {(query, target): summary row}}`` for every pair and every ``query->any``."""
    per = per_query_metrics(data, relevances, map_r=map_r, device=device, chunk_bytes=chunk_bytes)
    return {rel: {key: summarise(v, ks, map_r, no_relevant) for key, v in d.items()} for rel, d in per.items()}


# ----------------------------------------------------------------------------------------------
# Brute-force reference: one query at a time, straight from the definitions (for tests).


def _reference_one(scores: np.ndarray, rel: np.ndarray, map_r: int, ks=(1, 5, 10)) -> dict:
    nan = {"rank": math.nan, "ap_r": math.nan, "ap": math.nan, **{f"hit@{k}": math.nan for k in ks}}
    if not rel.any():
        return nan
    # rank: expected position of the first relevant item over every order of the tied block
    best = scores[rel].max()
    above = int((scores > best).sum())
    tied = scores == best
    t, m = int(tied.sum()), int((tied & rel).sum())
    firsts = np.array([min(c) for c in itertools.combinations(range(1, t + 1), m)])
    out = {"rank": above + float(np.mean(firsts)), **{f"hit@{k}": float(np.mean(above + firsts <= k)) for k in ks}}
    # AP: sort by score descending, irrelevant before relevant among ties (pessimistic)
    order = np.lexsort((rel.astype(int), -scores.astype(np.float64)))
    r_sorted = rel[order]
    hits, ap_terms = 0, []
    for pos, is_rel in enumerate(r_sorted, start=1):
        if is_rel:
            hits += 1
            ap_terms.append((pos, hits / pos))
    out["ap"] = float(np.mean([p for _, p in ap_terms]))
    top = [p for pos, p in ap_terms if pos <= map_r]
    out["ap_r"] = float(np.mean(top)) if top else 0.0
    return out


def reference_metrics(data, relevance: str = "class", map_r: int = 50, any_gallery: bool = True, ks=(1, 5, 10)):
    """``{(query, target): {"rank", "ap_r", "ap", "hit@K"...}}`` computed query by query in float64.

    ``hit@K`` is the probability of a relevant item in the top K over every order of the tied
    items, by enumeration; ``-> Any`` also has ``x_rank`` and ``x_hit@K`` (hits of another
    modality only, the query's modality still in the gallery).
    """
    key = _KEY_OF[relevance]
    names = sorted(data, key=name_order)
    emb = {}
    for n in names:
        x = np.asarray(data[n]["emb"], dtype=np.float64).reshape(len(data[n][key]), -1)
        emb[n] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    keys = {n: np.asarray(data[n][key]).astype(str) for n in names}
    singles = [n for n in names if "+" not in n]
    out = {}
    targets_of = {q: [t for (qq, t) in pairs_of(names) if qq == q] for q in names}
    for q in names:
        todo = list(targets_of[q]) + (["any"] if any_gallery and q in singles and singles else [])
        for t in todo:
            res = []
            for i in range(len(emb[q])):
                if t == "any":
                    g_emb = np.concatenate([emb[n] for n in singles])
                    g_key = np.concatenate([keys[n] for n in singles])
                    g_mod = np.concatenate([[n] * len(emb[n]) for n in singles])
                    me = sum(len(emb[n]) for n in singles[: singles.index(q)]) + i
                    keep = np.arange(len(g_emb)) != me
                    g_emb, g_key, g_mod = g_emb[keep], g_key[keep], g_mod[keep]
                else:
                    g_emb, g_key, g_mod = emb[t], keys[t], np.array([t] * len(emb[t]))
                scores = g_emb @ emb[q][i]
                rel = (g_key == keys[q][i]) & (keys[q][i] != "")
                one = _reference_one(scores, rel, map_r, ks)
                if t == "any":
                    cross = _reference_one(scores, rel & (g_mod != q), map_r, ks)
                    one.update({f"x_{k}": v for k, v in cross.items() if k == "rank" or k.startswith("hit@")})
                res.append(one)
            out[(q, t)] = {k: np.array([r[k] for r in res], dtype=np.float64) for k in (res[0] if res else ("rank", "ap_r", "ap"))}
    return out
