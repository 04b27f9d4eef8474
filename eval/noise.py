"""Is a difference between two groups of runs (seeds) larger than the noise? A paired bootstrap.

* :func:`query_values`: one value per query of a run's split for a metric (``R@K`` and ``xR@K``
  as the expected hit over tied orders, ``mAP@R``, ``mAP``, ``MeanR``), keyed by ``(query, target)``
  with the query ids, so runs on the same data pair up query by query.
* :func:`bootstrap_difference`: the difference of two groups' means (group B minus group A) over
  one row or a table's rows, with an interval ``diff ± t * sqrt(var_queries + var_seeds)``:
  ``var_queries`` from a paired bootstrap over the test queries (each replicate draws each row's
  queries with replacement, the same draw for both groups), ``var_seeds`` from the spread of the
  runs' means (Welch: ``sd_a²/n_a + sd_b²/n_b``, with its degrees of freedom for ``t``). A
  percentile bootstrap over 3 seeds is too narrow (a small-sample t is not a normal): it called
  equal groups different 13-15% of the time in the calibration test. A group of one run has no
  seed spread, so its interval covers query sampling only (normal quantile) and says so.
  ``exceeds`` is True when the interval leaves out 0.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["bootstrap_difference", "query_values", "values_of"]


def values_of(per_query: Mapping[str, np.ndarray], metric: str, no_relevant: str = "exclude") -> np.ndarray:
    """Per-query values of ``metric`` from :func:`mmx.eval.metrics.per_query_metrics` arrays; NaN
    for a query without a relevant item (``exclude``) or 0 there (``miss``), as ``summarise`` counts it."""
    from mmx.eval.metrics import expected_hits

    cross = metric.startswith("xR@")
    prefix = "x_" if cross and "x_rank" in per_query else ""
    rank = np.asarray(per_query[prefix + "rank"], np.float64)
    has = ~np.isnan(rank)
    if metric.startswith(("R@", "xR@")):
        k = int(metric.split("@")[1])
        vals = np.zeros(len(rank))
        ties = (np.asarray(per_query[prefix + n], np.float64)[has] for n in ("above", "tied", "tied_rel"))
        vals[has] = expected_hits(*ties, k)
    elif metric.startswith("mAP@"):
        vals = np.asarray(per_query["ap_r"], np.float64).copy()
    elif metric == "mAP":
        vals = np.asarray(per_query["ap"], np.float64).copy()
    elif metric in ("MeanR", "MedR"):
        return np.where(has, rank, np.nan)  # ranks have no "miss" value; MedR's noise is read on the mean
    else:
        raise ValueError(f"no per-query values for metric {metric!r}")
    if no_relevant == "exclude":
        vals[~has] = np.nan
    else:
        vals[~has] = 0.0
    return vals


def query_values(run, split: str, relevance: str, metrics: Iterable[str], map_r: int = 50,
                 no_relevant: str = "exclude", device=None) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(query, target): {"ids": query ids, metric: per-query values}}`` of one run's split."""
    from mmx.eval.metrics import per_query_metrics
    from mmx.eval.runs import load_embeddings

    data = load_embeddings(run, split)
    per = per_query_metrics(data, (relevance,), map_r=map_r, device=device)[relevance]
    out = {}
    for (q, t), arrays in per.items():
        out[(q, t)] = {"ids": np.asarray(data[q]["id"]).astype(str),
                       **{m: values_of(arrays, m, no_relevant) for m in metrics}}
    return out


def _aligned(runs: Sequence[Mapping[str, Any]], metric: str, ids: np.ndarray) -> np.ndarray:
    """(runs, queries) values, each run's rows put in the order of ``ids``."""
    rows = []
    for r in runs:
        order = np.argsort(r["ids"], kind="stable")
        sorted_ids = r["ids"][order]
        pos = np.searchsorted(sorted_ids, ids)
        if len(sorted_ids) != len(ids) or not np.array_equal(sorted_ids[np.minimum(pos, len(ids) - 1)], ids):
            raise ValueError("the runs were evaluated on different queries; a paired comparison needs the same "
                             "test items (the same dataset and split)")
        rows.append(np.asarray(r[metric], np.float64)[order][pos])
    return np.stack(rows)


def bootstrap_difference(group_a: Sequence[Mapping], group_b: Sequence[Mapping], metric: str,
                         rows: Iterable | None = None, replicates: int = 2000, level: float = 0.95,
                         seed: int = 0) -> dict[str, Any]:
    """``{"diff", "low", "high", "exceeds", "noise", "queries"}`` for ``mean(B) - mean(A)``.

    Each group is a list of runs, a run ``{(query, target): {"ids", metric: per-query values}}``
    (:func:`query_values`). The statistic is the mean over ``rows`` (default: the rows every run
    has) of each row's mean over its queries, as a table's Mean row; queries are drawn within
    each row (a stratified, paired draw).
    """
    if not group_a or not group_b:
        raise ValueError("each group needs at least one run")
    runs = list(group_a) + list(group_b)
    rows = [r for r in (rows if rows is not None else runs[0]) if all(r in run for run in runs)]
    rng = np.random.default_rng(seed)
    stat_a, stat_b, mean_a, mean_b, point, counted = [], [], [], [], [], 0
    for key in rows:
        ids = np.sort(np.asarray(group_a[0][key]["ids"]).astype(str))
        a = _aligned([run[key] for run in group_a], metric, ids)
        b = _aligned([run[key] for run in group_b], metric, ids)
        ok = ~(np.isnan(a).any(0) | np.isnan(b).any(0))  # a query one run leaves out is left out of all
        a, b = a[:, ok], b[:, ok]
        n = a.shape[1]
        if n == 0:
            continue
        counted += n
        point.append(b.mean() - a.mean())
        mean_a.append(a.mean(1))
        mean_b.append(b.mean(1))
        sa, sb = np.empty((len(a), replicates)), np.empty((len(b), replicates))
        step = max(1, (1 << 22) // n)  # replicates per draw: bounded memory for large test sets
        for lo in range(0, replicates, step):
            c = min(step, replicates - lo)
            weights = rng.multinomial(n, np.full(n, 1.0 / n), size=c).T / n  # (queries, c), shared: paired
            sa[:, lo:lo + c], sb[:, lo:lo + c] = a @ weights, b @ weights  # each run's row mean over the draw
        stat_a.append(sa)
        stat_b.append(sb)
    if not point:
        return {"diff": None, "low": None, "high": None, "exceeds": False, "noise": "no query", "queries": 0}
    from scipy import stats

    run_a, run_b = np.mean(stat_a, 0), np.mean(stat_b, 0)  # (runs, B): mean over rows, per query draw
    var_query = float(np.var(run_b.mean(0) - run_a.mean(0), ddof=1))
    diff = float(np.mean(point))
    # seed noise: the spread of the runs' own means (all queries), Welch's variance and degrees of freedom
    seed_a, seed_b = np.mean(mean_a, 0), np.mean(mean_b, 0)  # (runs,): each run's mean over rows
    parts = [np.var(x, ddof=1) / len(x) for x in (seed_a, seed_b) if len(x) > 1]
    var_seed = float(sum(parts))
    if len(parts) == 2 and var_seed > 0:
        df = var_seed ** 2 / sum(p ** 2 / (len(x) - 1) for p, x in zip(parts, (seed_a, seed_b)))
        crit = float(stats.t.ppf(0.5 + level / 2, df))
        noise = "queries and seeds"
    else:
        crit = float(stats.norm.ppf(0.5 + level / 2))
        noise = "queries only (a group of one run)" if len(parts) < 2 else "queries and seeds"
    half = crit * np.sqrt(var_query + var_seed)
    low, high = diff - half, diff + half
    return {"diff": diff, "low": float(low), "high": float(high), "exceeds": bool(low > 0 or high < 0),
            "noise": noise, "queries": counted, "sd_queries": float(np.sqrt(var_query)), "sd_seeds": float(np.sqrt(var_seed))}
