"""Chance levels: what each retrieval metric scores, in expectation, for a uniformly random ranking.

* :func:`chance_of_counts`: per query, from its gallery size ``N`` and relevant count ``m``:
  ``R@K = 1 - C(N-m, K) / C(N, K)`` (hypergeometric: no relevant item in the top K),
  full AP ``(m-1)/(N-1) + H_N (N-m) / (N (N-1))``, AP@R (paper 002 eq. 7, divided by the
  relevant items in the top R) exactly by conditioning on how many land there, and the mean
  rank of the first relevant item ``(N+1)/(m+1)``.
* :func:`chance_levels`: ``{(query, target): {"R@K", "xR@K", "mAP@R", "mAP", "MeanR"}}`` for one
  split's ``{name: {"emb", "label", "group"}}``, with the relevance in use (class: same label;
  instance: same group, where ``m = 1`` makes ``R@K = K/N``) and the same galleries as
  :func:`mmx.eval.metrics.per_query_metrics` (a query is never its own neighbour; ``-> Any``
  ranks every single modality, and ``xR@K`` counts only items of another modality).

Means over queries follow :func:`mmx.eval.metrics.summarise`: queries without a relevant item
are left out (``no_relevant="exclude"``) or count as 0 (``"miss"``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["chance_levels", "chance_of_counts"]


def _harmonic(n: np.ndarray) -> np.ndarray:
    from scipy.special import digamma

    return digamma(np.asarray(n, np.float64) + 1) + np.euler_gamma


def _ap_of_random(n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Expected AP over a random order of ``n`` items of which ``m >= 1`` are relevant.

    ``E[AP] = 1/m sum_k 1/k (P(rel k) + (k-1) P(rel k, rel j<k)) = (m-1)/(n-1) + H_n (n-m)/(n(n-1))``.
    """
    n, m = np.asarray(n, np.float64), np.asarray(m, np.float64)
    one = n <= 1
    nn = np.where(one, 2.0, n)
    return np.where(one, 1.0, (m - 1) / (nn - 1) + _harmonic(nn) * (nn - m) / (nn * (nn - 1)))


def chance_of_counts(n, m, ks: Iterable[int] = (1, 5, 10), map_r: int = 50) -> dict[str, np.ndarray]:
    """Per query, the expected metrics of a random ranking of ``n`` gallery items, ``m`` relevant.

    Queries with ``m == 0`` get 0 for the recalls and APs and NaN for the mean rank.
    """
    from scipy.special import gammaln
    from scipy.stats import hypergeom

    n = np.asarray(n, np.int64)
    m = np.minimum(np.asarray(m, np.int64), n)
    has = m > 0
    out: dict[str, np.ndarray] = {}
    for k in ks:
        kk = np.minimum(k, n)
        # log C(n-m, k) - log C(n, k); no miss possible when fewer than k irrelevant items exist
        possible = has & (kk <= n - m)
        nm, nn, kq = (np.where(possible, x, 0).astype(np.float64) for x in (n - m, n, kk))
        log_miss = gammaln(nm + 1) - gammaln(nm - kq + 1) - gammaln(nn + 1) + gammaln(nn - kq + 1)
        out[f"R@{k}"] = np.where(~has, 0.0, np.where(possible, 1.0 - np.exp(log_miss), 1.0))
    out["mAP"] = np.where(has, _ap_of_random(np.maximum(n, 1), np.maximum(m, 1)), 0.0)
    # AP@R: given j relevant items in the top R (hypergeometric), they sit in a random order there
    ap_r = np.zeros(len(n), np.float64)
    pairs, inverse = np.unique(np.stack([n, m]), axis=1, return_inverse=True)
    for idx, (nq, mq) in enumerate(pairs.T):
        if mq == 0:
            continue
        r = min(map_r, int(nq))
        j = np.arange(1, min(int(mq), r) + 1)
        value = float(np.sum(hypergeom.pmf(j, nq, mq, r) * _ap_of_random(np.full(len(j), r), j)))
        ap_r[np.asarray(inverse).reshape(-1) == idx] = value
    out[f"mAP@{map_r}"] = ap_r
    out["MeanR"] = np.where(has, (n + 1) / np.maximum(m + 1, 1), np.nan)
    return out


def _counts(query_keys: np.ndarray, gallery_keys: np.ndarray, self_in_gallery: bool) -> np.ndarray:
    """Relevant items per query: gallery items with the query's key, an empty key matching nothing."""
    values, counts = np.unique(gallery_keys, return_counts=True)
    pos = np.searchsorted(values, query_keys)
    pos = np.minimum(pos, max(len(values) - 1, 0))
    found = (values[pos] == query_keys) if len(values) else np.zeros(len(query_keys), bool)
    m = np.where(found, counts[pos] if len(values) else 0, 0)
    if self_in_gallery:
        m = m - found.astype(np.int64)
    return np.where(query_keys == "", 0, m)


def _mean(values: np.ndarray, has: np.ndarray, no_relevant: str) -> float | None:
    denom = int(has.sum()) if no_relevant == "exclude" else len(values)
    return float(np.sum(np.where(has, values, 0.0)) / denom) if denom else None


def chance_levels(
    data: Mapping[str, Mapping[str, Any]],
    relevance: str = "class",
    ks: Iterable[int] = (1, 5, 10),
    map_r: int = 50,
    no_relevant: str = "exclude",
    any_gallery: bool = True,
) -> dict[tuple[str, str], dict[str, float | None]]:
    """``{(query, target): {metric: chance}}`` for every pair and ``query -> any`` of one split."""
    from mmx.eval.metrics import NO_RELEVANT, RELEVANCES, name_order, pairs_of
    from mmx.eval.ranking import KEY_OF

    if relevance not in RELEVANCES:
        raise ValueError(f"unknown relevance {relevance!r}; known: {', '.join(RELEVANCES)}")
    if no_relevant not in NO_RELEVANT:
        raise ValueError(f"unknown no_relevant policy {no_relevant!r}; known: {', '.join(NO_RELEVANT)}")
    ks = tuple(ks)
    names = sorted(data, key=name_order)
    keys = {n: np.asarray(data[n][KEY_OF[relevance]]).astype(str) for n in names}
    singles = [n for n in names if "+" not in n]
    out: dict[tuple[str, str], dict[str, float | None]] = {}

    def row(per: dict, xper: dict | None, has: np.ndarray, xhas: np.ndarray) -> dict:
        r = {f"R@{k}": _mean(per[f"R@{k}"], has, no_relevant) for k in ks}
        src, shas = (xper, xhas) if xper is not None else (per, has)
        r.update({f"xR@{k}": _mean(src[f"R@{k}"], shas, no_relevant) for k in ks})
        r[f"mAP@{map_r}"] = _mean(per[f"mAP@{map_r}"], has, no_relevant)
        r["mAP"] = _mean(per["mAP"], has, no_relevant)
        r["MeanR"] = float(np.nanmean(per["MeanR"])) if has.any() else None
        return r

    for q, t in pairs_of(names):
        m = _counts(keys[q], keys[t], False)
        per = chance_of_counts(np.full(len(m), len(keys[t])), m, ks, map_r)
        out[(q, t)] = row(per, None, m > 0, m > 0)
    if any_gallery and singles:
        for q in singles:
            n_any = sum(len(keys[s]) for s in singles) - 1
            m = sum(_counts(keys[q], keys[s], s == q) for s in singles)
            mx = sum(_counts(keys[q], keys[s], False) for s in singles if s != q) if len(singles) > 1 else 0 * m
            n = np.full(len(m), n_any)
            out[(q, "any")] = row(chance_of_counts(n, m, ks, map_r), chance_of_counts(n, mx, ks, map_r), m > 0, mx > 0)
    return out
