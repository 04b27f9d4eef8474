"""From a run folder's saved embeddings to one results dict (what ``mmx eval`` reports).

Reads only the run folder (see ``mmx.eval.runs``): ``embeddings/<split>/<name>.npz`` and,
when present, ``config.yaml`` for the strategy, the modalities and the alignment. The default
relevance follows the alignment the run was trained with: ``instance`` for ``alignment:
instance`` (paper 001), otherwise ``class`` (papers 000, 002).

Results layout (JSON-ready)::

    {"run", "strategy", "modalities", "alignment", "relevance", "relevance_source", "ks", "map_r",
     "no_relevant", "splits": {split: {"sizes": {name: rows},
                                       "pairs": [row, ...], "pairs_mean": row,
                                       "any": [row, ...], "any_mean": row}}}

with ``row = {"query", "target", "queries", "evaluated", "no_relevant", "R@1", ..., "xR@1", ...,
"mAP@50", "mAP", "MedR", "MeanR", "chance": {metric: value}}`` (``chance``: the expectation of a
random ranking for the relevance in use, :mod:`mmx.eval.chance`; no MedR) (``xR@K``: the cross-modal recall of paper 000's -> Any
tables, equal to ``R@K`` for a pair; see ``mmx.eval.metrics``) (``None`` where no query counts). A ``*_mean`` row is the mean of
the rows that have a value, as paper 000's "Mean" row; ``rows`` says how many.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from mmx.eval.chance import chance_levels
from mmx.eval.metrics import NO_RELEVANT, RELEVANCES, name_order, retrieval_metrics

DEFAULT_SPLITS = ("test", "train")


def metric_names(ks: Iterable[int], map_r: int) -> list[str]:
    return [f"R@{k}" for k in ks] + [f"xR@{k}" for k in ks] + [f"mAP@{map_r}", "mAP", "MedR", "MeanR"]


def read_config(run: Path) -> dict:
    """The run's ``config.yaml`` as a dict; ``{}`` when absent or empty."""
    from mmx.cache import files

    path = Path(run) / "config.yaml"
    if not path.exists() and not path.is_symlink():
        return {}
    data = files.read_yaml(path, what="config file") or {}
    return data if isinstance(data, dict) else {}


def _config_value(cfg: dict, key: str):
    """A key at the top of the config or one level down (e.g. ``data: {alignment: ...}``)."""
    if key in cfg:
        return cfg[key]
    for v in cfg.values():
        if isinstance(v, dict) and key in v:
            return v[key]
    return None


def default_relevance(cfg: dict) -> str:
    return "instance" if str(_config_value(cfg, "alignment") or "").lower() == "instance" else "class"


def mean_row(rows: list[dict], names: list[str], label: str = "mean") -> dict:
    """Paper 000's Mean row: the mean over rows of each metric that has a value."""
    out: dict[str, Any] = {"query": label, "target": ""}
    used = 0
    for name in names:
        vals = [r[name] for r in rows if r.get(name) is not None]
        out[name] = sum(vals) / len(vals) if vals else None
        used = max(used, len(vals))
    out["rows"] = used
    return out


def evaluate_split(
    data: dict,
    relevances: Iterable[str] = ("class",),
    ks=(1, 5, 10),
    map_r: int = 50,
    no_relevant: str = "exclude",
    device=None,
    chunk_bytes: int = 256 << 20,
) -> dict[str, dict]:
    """``{relevance: split results}`` for one split's ``{name: {"emb", "label", "group"}}``."""
    names = metric_names(ks, map_r)
    res = retrieval_metrics(data, relevances, ks=ks, map_r=map_r, no_relevant=no_relevant,
                            device=device, chunk_bytes=chunk_bytes)
    sizes = {n: int(len(data[n]["emb"])) for n in sorted(data, key=name_order)}
    out = {}
    for rel, by_key in res.items():
        chance = chance_levels(data, rel, ks, map_r, no_relevant)
        pairs = [{"query": q, "target": t, **row, "chance": chance.get((q, t), {})} for (q, t), row in by_key.items() if t != "any"]
        anys = [{"query": q, "target": "any", **row, "chance": chance.get((q, t), {})} for (q, t), row in by_key.items() if t == "any"]
        out[rel] = {
            "sizes": sizes,
            "pairs": pairs,
            "pairs_mean": _with_chance(mean_row(pairs, names), pairs, names),
            "any": anys,
            "any_mean": _with_chance(mean_row(anys, names), anys, names),
        }
    return out


def _with_chance(mean: dict, rows: list[dict], names: list[str]) -> dict:
    """A Mean row with the mean of its rows' chance levels (over the rows that have a value)."""
    mean["chance"] = {k: v for k, v in mean_row([r.get("chance", {}) for r in rows], names).items()
                      if k in names}
    return mean


def evaluate_run(
    run: str | os.PathLike,
    splits: Iterable[str] | None = None,
    relevance: str | None = None,
    ks=(1, 5, 10),
    map_r: int = 50,
    no_relevant: str = "exclude",
    device=None,
) -> dict:
    """Every metric of every split of ``run``; see the module docstring for the layout.

    ``splits=None`` evaluates the default splits (test, train) that the run has; naming a
    split it lacks is an error. ``relevance=None`` follows the run's alignment.
    """
    from mmx.eval.runs import load_embeddings, splits_of

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    available = splits_of(run)
    if not available:
        raise FileNotFoundError(
            f"{run}: no embeddings (expected {run}/embeddings/<split>/<modality>.npz; "
            "a run gets them when 'mmx train' finishes)")
    if splits is None:
        chosen = [s for s in DEFAULT_SPLITS if s in available] or available
    else:
        chosen = [s for s in splits if s]
        missing = [s for s in chosen if s not in available]
        if missing:
            raise ValueError(f"{run}: no split {', '.join(map(repr, missing))}; it has {', '.join(available)}")
    if no_relevant not in NO_RELEVANT:
        raise ValueError(f"unknown no_relevant policy {no_relevant!r}; known: {', '.join(NO_RELEVANT)}")
    cfg = read_config(run)
    if relevance is None:
        relevance = default_relevance(cfg)
        source = "config alignment" if _config_value(cfg, "alignment") else "default (no alignment in config)"
    else:
        source = "option"
    if relevance not in RELEVANCES:
        raise ValueError(f"unknown relevance {relevance!r}; known: {', '.join(RELEVANCES)}")
    results = {
        "run": str(run),
        "strategy": _config_value(cfg, "strategy"),
        "modalities": _config_value(cfg, "modalities"),
        "alignment": _config_value(cfg, "alignment"),
        "relevance": relevance,
        "relevance_source": source,
        "ks": list(ks),
        "map_r": map_r,
        "no_relevant": no_relevant,
        "splits": {},
    }
    for split in chosen:
        data = load_embeddings(run, split)
        results["splits"][split] = evaluate_split(data, (relevance,), ks, map_r, no_relevant, device)[relevance]
        note = relevance_note(relevance, data)
        if note:
            results["note"] = note
    return results


def relevance_note(relevance: str, data: dict) -> str | None:
    """Why every figure is ``n/a`` when the chosen relevance has nothing to match on, else None.

    Instance relevance matches items of one group (paper 001's clips); a class-aligned
    dataset has no groups, so no query has a relevant item and nothing can be scored.
    """
    field = "group" if relevance == "instance" else "label"
    if any(str(x) for d in data.values() for x in d[field]):
        return None
    other = "class" if relevance == "instance" else "instance"
    column = "group" if relevance == "instance" else "label"
    return (f"every figure is n/a: {relevance} relevance matches items by their {column}, and no item of this run "
            f"has one (the manifest's '{column}' column is empty); use --relevance {other}")
