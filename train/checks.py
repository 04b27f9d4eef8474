"""What a run is about to do, said before the first step: the run header, and data it cannot learn from.

A run on degenerate data trains without error and reports perfect figures: with one class
every pair is a positive (loss 0, R@1 1.0), and a held-out gallery of ten items gives R@10 =
1.0 by chance alone. So, before any step, :func:`learnability` refuses data with nothing to
tell apart and warns about data whose figures will mean little; :func:`header` states the
dataset, modalities, strategy, device, threads, items per split and the batch actually drawn.
The papers set no such limits; the thresholds are our choice and are stated in the messages.
"""

from __future__ import annotations

import numpy as np
import torch

from mmx.train.config import TrainConfig

# A held-out gallery below this many items per modality gets a warning: chance Recall@10 is
# then at least 10 / SMALL_HOLDOUT = 0.2 (far more with class relevance over a few classes:
# :func:`chance_recall`), too high for the figure (or early stopping) to mean much.
SMALL_HOLDOUT = 50
PLURAL = {"class": "classes", "group": "groups"}


def _units(split, modalities, alignment: str) -> tuple[list[np.ndarray], str]:
    """Per modality, the class (or group) key of each item, and the word for those units."""
    if alignment == "instance":
        return [np.asarray([str(g) for g in split.features[m].groups]) for m in modalities], "group"
    return [split.classes[m].cpu().numpy() for m in modalities], "class"


def _shared(keys: list[np.ndarray], blank) -> set:
    """Units with items in at least two modalities: the only ones a cross-modal loss can use."""
    seen: dict = {}
    for k in keys:
        for u in set(k.tolist()) - {blank}:
            seen[u] = seen.get(u, 0) + 1
    return {u for u, n in seen.items() if n >= 2}


def learnability(cfg: TrainConfig, data) -> tuple[list[str], list[str]]:
    """``(refusals, warnings)`` about the loaded data; refusals mean nothing can be learnt."""
    refuse, warn = [], []
    train = data.splits["train"]
    keys, unit = _units(train, train.modalities, cfg.alignment)
    blank = "" if unit == "group" else -1
    shared = _shared(keys, blank)
    if len(shared) < 2:
        refuse.append(
            f"nothing to learn: the train split has {len(shared)} {PLURAL[unit]} with items in two or more modalities; "
            f"contrastive training needs at least 2 to tell apart (loss 0 and R@1 1.0 otherwise). "
            f"Check the {'group' if unit == 'group' else 'label'} column of the manifest and re-extract")
    elif unit == "class" and all(np.bincount(k[k >= 0]).max(initial=0) <= 1 for k in keys):
        warn.append(
            "every class has one item per modality in the train split, so labels act as item ids (pairs): "
            "nothing generalises across items of a class. If that is not meant, check the label column")
    if clipped := clipped_batch(cfg, data):
        warn.append(clipped)
    hold = data.splits[cfg.holdout]
    if small := small_holdout(cfg, hold):
        warn.append(small)
    hold_keys, _ = _units(hold, hold.modalities, cfg.alignment)
    if len(_shared(hold_keys, blank)) < 2:
        warn.append(f"the {cfg.holdout} split has fewer than 2 {PLURAL[unit]} shared between modalities: "
                    f"its retrieval figures are 1.0 or n/a by construction")
    return refuse, warn


def hit_chance(n: int, relevant: int, k: int) -> float:
    """Probability that a uniformly random ranking of ``n`` gallery items puts at least one of
    ``relevant`` items in its top ``k`` (Recall@K as a hit rate): :mod:`mmx.eval.chance`'s figure."""
    from mmx.eval.chance import chance_of_counts

    if relevant <= 0 or n <= 0:
        return 0.0
    return float(chance_of_counts([n], [relevant], (k,))[f"R@{k}"][0])


def chance_recall(query_keys, gallery_keys, k: int) -> float | None:
    """Expected Recall@K (hit rate) of a random ranking, averaged over the queries as the
    evaluation averages them: a query's relevant items are the gallery items with its key
    (its class, or its group for instance relevance); queries with none are left out (as
    ``mmx.eval.metrics.summarise`` does by default); None when no query has one."""
    from mmx.eval.chance import chance_of_counts

    query = np.asarray([str(x) for x in query_keys])
    values, counts = np.unique(np.asarray([str(x) for x in gallery_keys]), return_counts=True)
    m = np.array([counts[i] if i < len(values) and values[i] == key else 0
                  for key, i in zip(query, np.searchsorted(values, query))], np.int64)
    m[np.isin(query, ("", "-1"))] = 0
    has = m > 0
    if not has.any():
        return None
    return float(chance_of_counts(np.full(int(has.sum()), counts.sum()), m[has], (k,))[f"R@{k}"].mean())


def holdout_chance(cfg: TrainConfig, hold, k: int = 10) -> list[float]:
    """Chance Recall@K of every cross-modal pair of ``hold`` (modalities with items), for the
    relevance the run is trained with: class labels, or groups when instance-aligned."""
    keys, _ = _units(hold, hold.modalities, cfg.alignment)
    by = dict(zip(hold.modalities, keys))
    out = []
    for q in hold.modalities:
        for g in hold.modalities:
            if q != g and len(by[q]) and len(by[g]):
                c = chance_recall(by[q], by[g], k)
                if c is not None:
                    out.append(c)
    return out


def small_holdout(cfg: TrainConfig, hold) -> str | None:
    """One caution naming every modality of the held-out split with fewer than
    :data:`SMALL_HOLDOUT` items, with the chance Recall@10 of its pairs for the relevance in
    use (class relevance on a few classes makes chance high whatever the size), or None."""
    small = [(m.value, len(hold.features[m])) for m in hold.modalities if 0 < len(hold.features[m]) < SMALL_HOLDOUT]
    if not small:
        return None
    chance = sorted(holdout_chance(cfg, hold)) or [1.0]
    said = f"{chance[0]:.2f}" if chance[-1] - chance[0] < 0.005 else f"{chance[0]:.2f} to {chance[-1]:.2f}"
    relevance = "group" if cfg.alignment == "instance" else "class"
    return (f"the {cfg.holdout} split has only {', '.join(f'{n} {m}' for m, n in small)} item(s): chance Recall@10 is "
            f"{said} ({relevance} relevance, a random ranking), so its figures and early stopping mean little "
            f"(give it {SMALL_HOLDOUT}+ items per modality)")


def clipped_batch(cfg: TrainConfig, data) -> str | None:
    """A caution when ``batch_size`` asks for more rows than the train split holds: the samplers
    draw at most that many (a larger batch would only repeat items, each repeat a false negative
    of itself), so an epoch is one step unless ``min_steps`` asks for more."""
    train = data.splits["train"]
    mods = train.modalities
    if cfg.alignment == "instance":
        from mmx.train.samplers import group_table

        _, first, _ = group_table({m: train.features[m].groups for m in mods})
        rows, what = int((np.stack([first[m] >= 0 for m in mods]).sum(0) >= min(2, len(mods))).sum()), "groups"
    else:
        rows, what = max(len(train.features[m]) for m in mods), "items of its largest modality"
    if cfg.batch_size <= rows:
        return None
    steps = f"min_steps {cfg.min_steps} sets the steps per epoch" if cfg.min_steps > 1 else \
        "so an epoch is one step; --set min_steps=N gives it N"
    return (f"batch_size {cfg.batch_size} is more than the train split holds ({rows} {what}): each step draws {rows}, "
            f"{steps}")


def effective_batch(cfg: TrainConfig, data) -> str:
    """The batch a training step draws, as the sampler will build it (its own seeded RNG: nothing drawn here)."""
    from mmx.train.samplers import ClassAlignedSampler, InstanceAlignedSampler
    from mmx.train.strategies import get_strategy

    train = data.splits["train"]
    try:
        if cfg.alignment == "instance":
            sampler = InstanceAlignedSampler({m: train.features[m].groups for m in train.modalities}, cfg.batch_size)
            return f"{sampler.composition['batch/groups']} groups per step"
        opts = {**get_strategy(cfg.strategy).option_defaults(), **cfg.options}
        per_class = opts.get("per_class", 1)  # CVS: 2
        sampler = ClassAlignedSampler({m: train.host_classes(m) for m in train.modalities}, cfg.batch_size,
                                      per_class=int(per_class), max_per_class=int(opts.get("items_per_class", 0)))
    except ValueError as exc:  # the strategy says it better when it builds its batches
        return f"not drawable over all modalities at once ({exc})"
    c = sampler.composition
    k = f"{c['batch/per_class_min']}" + (f"-{c['batch/per_class_max']}" if c["batch/per_class_max"] != c["batch/per_class_min"] else "")
    return f"{c['batch/items']} items per modality per step ({c['batch/classes']} classes x {k} items)"


def header(cfg: TrainConfig, data, device: torch.device, n_stages: int) -> list[str]:
    """The run header: everything that decides what a run means, before its first step."""
    synthetic = any(meta.get("backbone", {}).get("name") == "synthetic" for meta in data.meta.values())
    note = " (SYNTHETIC features from 'mmx cache synthesize', not media; pass --dataset NAME for yours)" if synthetic else ""
    counts = "; ".join(
        f"{name} " + ", ".join(f"{m.value} {len(f)}" for m, f in split.features.items())
        for name, split in data.splits.items())
    stages = f", {n_stages} stages" if n_stages > 1 else ""
    return [
        f"dataset {cfg.dataset}{note} in cache {cfg.cache}",
        f"strategy {cfg.strategy}{stages}, modalities {','.join(cfg.modalities)}, alignment {cfg.alignment}",
        f"device {device}, {torch.get_num_threads()} torch thread(s)",
        f"items: {counts}",
        f"batch: {effective_batch(cfg, data)}; " + (
            f"a fixed {cfg.epochs} epochs, the last kept" if cfg.keep == "last" else
            f"up to {cfg.epochs} epochs, stop after {cfg.patience} without a better {cfg.holdout} {cfg.monitor}"),
    ]
