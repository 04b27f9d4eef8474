"""Batch samplers over in-memory features.

Class-aligned (paper 000, Sec. III-A): modalities are aligned by class, not one to one,
so a batch is ``B`` distinct classes with one item of each modality per class. A batch
holds the asked number of items (issue 13 item 4): ``B`` counts items per modality, and
when there are fewer classes than that (10 digits, batch 128) the batch is P classes x K
items (FaceNet's P x K): all ``P`` classes, ``B / P`` items each (the first ``B mod P``
classes drawn get one more), never fewer than ``per_class``. Items of a (modality, class)
are drawn from a queue reshuffled each time it runs out, which over-samples modalities with
fewer items per class (with K above a class's item count, an item can recur in a batch).
An epoch has ``ceil(N_max / B)`` batches, where ``N_max`` is the item count of the largest
modality in play (counting only classes that every modality has), so each item of the
largest modality is seen about once per epoch. ``composition`` says what a batch holds,
for ``metrics.jsonl``.

Instance-aligned (paper 001, Sec. 3.1 and 4.1 "computed NCE only over non-empty
embeddings"): a batch is ``B`` groups (clips) with the item of each modality that belongs
to it; a group that lacks a modality gets row index ``-1`` there, which the strategies
mask, so the group still counts for the terms it can take part in. An epoch visits every
group that has at least ``min_present`` of the modalities in play once (groups with a single
modality take part in no term). A group with several items of one modality (several
captions of a clip) contributes one of them, drawn afresh each epoch.

Both samplers yield ``(rows, keys)``: ``rows[m]`` is an int array (B,) of item indices into
modality ``m`` of the split (``-1`` = absent), ``keys`` the classes or group indices drawn.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class ClassAlignedSampler:
    """``batch_size`` items of every modality per batch: P distinct classes, K items each.

    ``P = min(classes, batch_size // per_class)``; ``per_class`` > 1 asks for at least that
    many items of a class (FaceNet's P x K): the intra-modal triplet terms of CVS (thesis
    3.1.6) need two items of one modality and one class in a batch. ``allowed``
    restricts the classes (stage-wise learning); ``size_by`` names the modalities whose item
    count sets the epoch length (a stage that adds a modality sizes its epoch by it).
    """

    def __init__(self, classes: dict, batch_size: int, seed: int = 0, per_class: int = 1,
                 allowed=None, size_by=None):
        """``classes``: modality -> int array (N_m,) of class indices (-1 = unlabelled, ignored)."""
        self.modalities = list(classes)
        cls = {m: np.asarray(c) for m, c in classes.items()}
        common = set.intersection(*(set(np.unique(c).tolist()) for c in cls.values())) - {-1}
        if allowed is not None:
            common &= {int(a) for a in allowed}
        if not common:
            raise ValueError("no class has items in every modality in play; class-aligned batches are impossible")
        self.classes = np.array(sorted(common))
        self.batch_size = max(1, batch_size)
        self.n_classes = max(1, min(len(self.classes), self.batch_size // max(1, per_class)))
        base, extra = divmod(self.batch_size, self.n_classes)
        self.counts = np.array([base + 1] * extra + [base] * (self.n_classes - extra))  # items of the i-th class drawn
        # items of classes some modality lacks are never drawn, so they do not count for the epoch
        self.n_max = max(int(np.isin(c, self.classes).sum()) for m, c in cls.items() if not size_by or m in size_by)
        self.rng = np.random.default_rng(seed)
        self._members = {m: {int(k): np.flatnonzero(c == k) for k in self.classes} for m, c in cls.items()}
        self._queues: dict = {m: {} for m in self.modalities}

    def __len__(self) -> int:
        return -(-self.n_max // self.batch_size)

    @property
    def composition(self) -> dict:
        """What every batch holds, per modality (the ``batch/...`` fields of ``metrics.jsonl``)."""
        return {"batch/items": self.batch_size, "batch/classes": self.n_classes,
                "batch/per_class_min": int(self.counts.min()), "batch/per_class_max": int(self.counts.max())}

    def _next(self, m, k: int) -> int:
        q = self._queues[m].get(k)
        if not q:
            q = list(self.rng.permutation(self._members[m][k]))
            self._queues[m][k] = q
        return int(q.pop())

    def __iter__(self):
        for _ in range(len(self)):
            chosen = self.rng.choice(self.classes, size=self.n_classes, replace=False)
            rows = {m: np.array([self._next(m, int(k)) for k, n in zip(chosen, self.counts) for _ in range(n)])
                    for m in self.modalities}
            yield rows, chosen


def group_table(groups: dict) -> tuple[np.ndarray, dict, dict]:
    """The groups of a split: ``(names (G,), first (m -> (G,) first item or -1), members)``.

    ``groups``: modality -> array (N_m,) of group names ("" = no group, ignored).
    ``members[m]`` is ``(order, start, count)``: item indices of modality ``m`` sorted by
    group, and each group's segment in that order (count 0 when absent).
    """
    names = np.array(sorted({str(g) for gs in groups.values() for g in gs if str(g)}), dtype=str)
    first, members = {}, {}
    for m, gs in groups.items():
        gs = np.asarray([str(g) for g in gs], dtype=str)
        ok = np.flatnonzero(gs != "")
        code = np.searchsorted(names, gs[ok]) if len(names) else np.zeros(0, np.int64)
        order = ok[np.argsort(code, kind="stable")]
        count = np.bincount(code, minlength=len(names))
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        members[m] = (order, start, count)
        first[m] = np.where(count > 0, order[np.minimum(start, max(len(order) - 1, 0))] if len(order) else -1, -1)
    return names, first, members


class InstanceAlignedSampler:
    def __init__(self, groups: dict, batch_size: int, seed: int = 0, min_present: int = 2):
        """``groups``: modality -> array (N_m,) of group names."""
        self.modalities = list(groups)
        self.names, _, self._members = group_table(groups)
        present = np.stack([self._members[m][2] > 0 for m in self.modalities], 1) if len(self.names) else np.zeros((0, 1), bool)
        self.present = present  # (G, M)
        self.keep = np.flatnonzero(present.sum(1) >= min(min_present, len(self.modalities)))
        if len(self.keep) == 0:
            raise ValueError(
                f"no group has items of at least {min_present} of the modalities {[str(m) for m in self.modalities]}; "
                "instance-aligned batches are impossible"
            )
        self.batch_size = min(batch_size, len(self.keep))
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.keep) // self.batch_size)

    @property
    def composition(self) -> dict:
        return {"batch/groups": self.batch_size}

    def __iter__(self) -> Iterator:
        perm = self.rng.permutation(self.keep)
        for i in range(0, len(perm), self.batch_size):
            chosen = perm[i : i + self.batch_size]
            rows = {}
            for m in self.modalities:
                order, start, count = self._members[m]
                c = count[chosen]
                pick = start[chosen] + (self.rng.random(len(chosen)) * np.maximum(c, 1)).astype(np.int64)
                rows[m] = np.where(c > 0, order[np.minimum(pick, max(len(order) - 1, 0))] if len(order) else -1, -1)
            yield rows, chosen


def make_sampler(split, modalities: list, alignment: str, batch_size: int, seed: int):
    """The sampler the data needs: class-aligned or instance-aligned over ``modalities`` of ``split``."""
    if alignment == "class":
        return ClassAlignedSampler({m: split.classes[m].cpu().numpy() for m in modalities}, batch_size, seed)
    if alignment == "instance":
        return InstanceAlignedSampler({m: split.features[m].groups for m in modalities}, batch_size, seed)
    raise ValueError(f"alignment must be 'class' or 'instance', not {alignment!r}")
