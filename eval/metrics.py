"""Retrieval metrics of the papers: Recall@K, xR@K, mAP@R, full mAP, median and mean rank.

* :func:`retrieval_metrics`: a summary row per query->target pair and per ``query->any`` of a
  split (``{name: {"emb", "label", "group"}}``); :func:`per_query_metrics` gives the values per
  query and :func:`summarise` the means.
* :func:`mean_average_precision`: mAP@k or full mAP of one (queries x gallery) similarity matrix.
* :func:`reference_metrics`: the same definitions query by query in float64, for tests.

Cosine similarity, class or instance relevance, tie-averaged ranks, expected Recall@K over a
random order of tied items, AP@R as paper 002 eq. 7 with pessimistic ties; the definitions and
the papers they follow are in docs/notes/eval.md.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Mapping

import numpy as np

from mmx.eval.ranking import (
    KEY_OF,
    Index,
    chunk_rows,
    codes_of,
    count_at_least,
    masked_max,
    normalise,
    prepare,
    query_stats,
    sort_rows,
)

__all__ = [
    "LATE", "NO_RELEVANT", "RELEVANCES", "STAT_KEYS", "expected_hits", "mean_average_precision", "modalities_of",
    "name_order", "normalise", "pairs_of", "parse_ks", "per_query_metrics", "reference_metrics", "retrieval_metrics",
    "summarise",
]

RELEVANCES = ("class", "instance")
NO_RELEVANT = ("exclude", "miss")

# per-query values of one gallery (mmx.eval.ranking.query_stats); ``x_*``: the cross-modal Any (xR@K)
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
    is a name or ``"any"``; the definitions are in docs/notes/eval.md.
    """
    import torch

    relevances = tuple(relevances)
    for rel in relevances:
        if rel not in RELEVANCES:
            raise ValueError(f"unknown relevance {rel!r}; known: {', '.join(RELEVANCES)}")
    if map_r < 1:
        raise ValueError(f"map_r must be a positive integer, got {map_r}")
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    blocks = prepare(data, sorted(data, key=name_order), relevances, device)
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
        step = chunk_rows(len(gallery), chunk_bytes)
        for lo in range(0, nq, step):
            hi = min(nq, lo + step)
            rows = torch.arange(lo, hi, device=device)
            sims = blocks[q].emb[lo:hi] @ gallery.T  # (c, n_all)
            if blocks[q].single:
                sims[torch.arange(hi - lo, device=device), offsets[q] + rows] = float("-inf")  # not its own neighbour
            part = {t: sims[:, offsets[t] : offsets[t] + len(blocks[t].emb)] for t in needed}
            srt = sort_rows(part)  # (c, n_t) ascending, per block
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
                    best[rel, t] = masked_max(sc, ok)
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
                counts = torch.split(count_at_least(srt[b], torch.cat(vals, 1)), [v.shape[1] for v in vals], dim=1)
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
                    acc[rel][t].append(query_stats(g, valid[rel, t], above[rel, t, t][:, 0], map_r))
                if do_any:
                    g = sum(ge[rel, "any", b] for b in singles)
                    a = sum(above[rel, "any", b] for b in singles)[:, 0]
                    ax = sum(above[rel, "anyx", b] for b in singles)[:, 0]
                    acc[rel]["any"].append(query_stats(g, valid[rel, "any"], a, map_r)
                                           + query_stats(g, valid[rel, "anyx"], ax, map_r))
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

    ``xR@K`` (the cross-modal recall, consistent with paper 000's -> Any tables) equals ``R@K``
    for a pair; for ``-> Any`` it counts only hits of another modality (docs/notes/eval.md).
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


def mean_average_precision(similarity, query_labels, gallery_labels, k: int | None = None,
                           no_relevant: str = "exclude", chunk_bytes: int = 256 << 20) -> float:
    """mAP@k (paper 002 eq. 7) or, with ``k=None``, full mAP of a (queries x gallery) similarity.

    A gallery item is relevant to a query when their labels are equal (an empty string label
    matches nothing). ``AP@k = 1/N * sum_{r<=k} P(r) rel(r)`` with ``N`` the relevant items in
    the top ``k`` (0 when there is none); full AP divides by all relevant items. Ties are
    pessimistic: among equal scores, irrelevant items rank before relevant ones, so a constant
    similarity scores the base rate, never 1. Queries with no relevant item in the gallery are
    left out of the mean (``no_relevant="exclude"``) or count as AP 0 (``"miss"``); NaN when no
    query counts. The same numbers as ``summarise(...)["mAP@k"]`` / ``["mAP"]`` of a pair.
    """
    import torch

    if no_relevant not in NO_RELEVANT:
        raise ValueError(f"unknown no_relevant policy {no_relevant!r}; known: {', '.join(NO_RELEVANT)}")
    if k is not None and k < 1:
        raise ValueError(f"k must be a positive integer or None, got {k}")
    sims = torch.as_tensor(similarity).detach()
    if sims.ndim != 2:
        raise ValueError(f"similarity must be 2-D (queries, gallery), got shape {tuple(sims.shape)}")
    sims = sims.float().contiguous()  # compared in float32, as the embeddings of a run are
    labels = [np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x) for x in (query_labels, gallery_labels)]
    if [len(x) for x in labels] != list(sims.shape):
        raise ValueError(f"{len(labels[0])} query and {len(labels[1])} gallery labels for a similarity of shape {tuple(sims.shape)}")
    qcodes, gcodes = codes_of(labels)
    n_codes = max([int(c.max()) + 1 for c in (qcodes, gcodes) if len(c)] + [0])
    index = Index.build(gcodes, n_codes, sims.device)
    n_gallery = sims.shape[1]
    step = chunk_rows(n_gallery, chunk_bytes)
    aps = []
    for lo in range(0, sims.shape[0], step):
        part = sims[lo : lo + step]
        idx, valid = index.lookup(torch.as_tensor(qcodes[lo : lo + len(part)], device=sims.device))
        scores = part.gather(1, idx) if idx.shape[1] else part.new_zeros(idx.shape)
        srt = sort_rows({"g": part})["g"]
        ge = count_at_least(srt, scores)
        best = masked_max(scores, valid)
        above = count_at_least(srt, torch.nextafter(best, torch.tensor(float("inf"), dtype=best.dtype, device=best.device)))
        _, ap_r, ap = query_stats(ge, valid, above[:, 0], k or max(1, n_gallery))[:3]
        aps.append(ap if k is None else ap_r)
    values = np.concatenate(aps) if aps else np.zeros(0)
    has = ~np.isnan(values)
    counted = int(has.sum()) if no_relevant == "exclude" else len(values)
    return float(values[has].sum() / counted) if counted else math.nan


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
    key = KEY_OF[relevance]
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
