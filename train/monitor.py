"""What a run watches on its held-out split: the monitored signal, the quick per-epoch recall, improvement.

``cfg.monitor`` is ``loss`` (the held-out loss) or a retrieval mean over the split's
query->target pairs (``R@K``, ``mAP@R`` of paper 002 eq. 7, ``mAP``; :mod:`mmx.eval.metrics`):
:func:`parse_monitor` names its field in ``metrics.jsonl``; :func:`improved` is the relative
early-stopping test; :func:`quick_recall` is the cheap per-epoch Recall@K;
:func:`watched` is the strategy the held-out figures are computed by (the run's own, or a view
of it without the modalities the held-out split has no items of).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import torch

from mmx.train.config import TrainConfig
from mmx.train.data import SplitData

QUICK_ROWS = 2000  # per-epoch recall: at most this many rows per embedding (a fixed subset)

MONITOR_KEYS = {"R": "recall/mean@{}", "mAP@": "map@{}/mean", "mAP": "map/mean"}


def parse_monitor(name: str) -> tuple[str | None, int | None]:
    """``cfg.monitor`` -> (key of its value in the epoch record, or None for the loss; mAP's R).

    ``loss``: the held-out loss, lower is better. ``R@K``: mean Recall@K, ``mAP@R``: mean
    mAP@R (paper 002 eq. 7), ``mAP``: mean full mAP, each over the query->target pairs of the
    held-out split (:mod:`mmx.eval.metrics`), higher is better.
    """
    if name == "loss":
        return None, None
    m = re.fullmatch(r"(R@|mAP@)([1-9][0-9]*)|mAP", name)
    if not m:
        raise ValueError(f"monitor must be loss, mAP, mAP@R or R@K (e.g. mAP@50, R@10), not {name!r}")
    if name == "mAP":
        return MONITOR_KEYS["mAP"], None
    k = int(m.group(2))
    return (MONITOR_KEYS["R"].format(k), None) if m.group(1) == "R@" else (MONITOR_KEYS["mAP@"].format(k), k)


def quick_recall(strategy, model, split: SplitData, ks=(1, 5, 10), cap: int | None = None,
                 map_r: int | None = None) -> dict[str, float]:
    """Recall@K per query->target pair of ``split`` and its mean (a cheap per-epoch signal).

    ``cap``: rank only a fixed, seeded subset of at most ``cap`` rows of each embedding (the
    same rows every epoch), so the per-epoch figure stays cheap on large splits; a smaller
    gallery makes it higher than the full figure, which ``untrained``/``final`` and ``mmx eval`` give.
    With ``map_r`` also the means over pairs of mAP@R and full mAP (``map@R/mean``, ``map/mean``).
    """
    from mmx.eval.metrics import per_query_metrics, summarise

    model.eval()
    embs = strategy.embed(model, split)
    field = "groups" if strategy.cfg.alignment == "instance" else "labels"
    keys = {k: np.asarray(getattr(strategy.rows(split, k), field)) for k in embs}
    if cap:
        for k in embs:
            if len(keys[k]) > cap:
                rows = np.sort(np.random.default_rng(strategy.cfg.seed).choice(len(keys[k]), cap, replace=False))
                embs[k], keys[k] = embs[k][torch.as_tensor(rows, device=embs[k].device)], keys[k][rows]
    data = {n: {"emb": embs[n], "label": keys[n]} for n in embs}
    per = per_query_metrics(data, ("class",), map_r=map_r or 50, any_gallery=False)["class"]
    rows = {f"{q}->{t}": summarise(v, ks, map_r or 50) for (q, t), v in per.items()}
    out: dict[str, float] = {}
    wanted = [(f"R@{k}", "recall/{}@" + str(k), f"recall/mean@{k}") for k in ks]
    if map_r:
        wanted += [(f"mAP@{map_r}", None, MONITOR_KEYS["mAP@"].format(map_r)), ("mAP", None, MONITOR_KEYS["mAP"])]
    for metric, per_pair, mean_key in wanted:
        vals = {p: r[metric] for p, r in rows.items() if r[metric] is not None}
        if per_pair:
            out.update({per_pair.format(p): v for p, v in vals.items()})
        if vals:
            out[mean_key] = float(np.mean(list(vals.values())))
    return out


def quick_recall_note(cfg: TrainConfig, hold: SplitData) -> str:
    """Why the per-epoch R@10 is not the figure ``mmx eval`` prints (said once, in the run header)."""
    capped = any(len(f) > QUICK_ROWS for f in hold.features.values())
    gallery = f"a fixed sub-gallery of at most {QUICK_ROWS} rows per modality of" if capped else "the whole"
    return (f"per-epoch R@10: mean over modality pairs on {gallery} {cfg.holdout} split "
            f"(class or group relevance as trained); 'mmx eval RUN' gives the full per-pair tables")


def improved(loss: float, best: float, min_delta: float) -> bool:
    """``loss`` (a lower-is-better score) counts as a fall when it is below ``best`` by more than
    the fraction ``min_delta`` of ``|best|`` (metrics enter negated, so a rise counts the same way).

    Relative, like ``ReduceLROnPlateau(threshold_mode="rel")``, so one tolerance fits the
    InfoNCE of paper 000, EAO's weighted sums and CVS's triplet losses alike.
    """
    return loss < best - min_delta * abs(best) if math.isfinite(best) else not math.isnan(loss)


def signal_name(cfg: TrainConfig) -> str:
    """The monitored signal's name in ``metrics.json`` (``best_<name>``), e.g. ``loss_val``."""
    return f"{'loss' if cfg.monitor == 'loss' else cfg.monitor}_{cfg.holdout}"


def signal_value(cfg: TrainConfig, score: float) -> float:
    """The monitored value from its score (scores are lower-is-better: metrics are negated)."""
    return score if cfg.monitor == "loss" or not math.isfinite(score) else -score


def watched(cfg: TrainConfig, strategy, data, device, log=lambda s: None):
    """The strategy whose held-out loss and recall the run watches: ``strategy`` itself, or,
    when the derived val split has no items of some modality (``split_info["val"]["left_out"]``),
    a second instance of its class over the other modalities, sharing the model (a modality's
    head is the same module whichever pairs are scored). Says once which modalities it leaves out."""
    left = data.split_info.get(cfg.holdout, {}).get("left_out") or []
    if not left:
        return strategy
    kept = [m for m in cfg.modalities if m not in left]
    if not getattr(strategy, "monitor_subset", False):
        raise ValueError(f"no val items could be derived for {', '.join(left)} (at most one train item per class), and "
                         f"strategy {cfg.strategy!r} cannot watch a subset of its modalities; add items, or watch the "
                         "test split with --set holdout=test")
    log(f"{', '.join(left)}: no val items (each class has at most one train item, none to spare), so the monitor "
        f"leaves {'it' if len(left) == 1 else 'them'} out and watches {', '.join(kept)}; "
        f"{', '.join(left)} still train{'s' if len(left) == 1 else ''}")
    return type(strategy)(dataclasses.replace(cfg, modalities=kept), data, device)
