"""Batch samplers over in-memory features.

:class:`ClassAlignedSampler` (paper 000, Sec. III-A): a batch is distinct classes with items
of each modality per class (P classes x K items when there are fewer classes than the batch
holds items). :class:`InstanceAlignedSampler` (paper 001, Sec. 3.1, 4.1): a batch is ``B``
groups, a modality a group lacks marked ``-1``. ``plan()`` draws a whole seeded pass at once
(:class:`Epoch`), whose index arrays go to the device once per pass. Epoch lengths and the
draws in detail: docs/notes/train.md.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


class ClassAlignedSampler:
    """``batch_size`` items of every modality per batch: P distinct classes, K items each.

    ``P = min(classes, batch_size // per_class)``; ``per_class`` > 1 asks for at least that
    many items of a class (FaceNet's P x K): the intra-modal triplet terms of CVS (thesis
    3.1.6) need two items of one modality and one class in a batch. ``allowed``
    restricts the classes (stage-wise learning); ``size_by`` names the modalities whose item
    count sets the epoch length (a stage that adds a modality sizes its epoch by it).

    A pass is drawn whole by :meth:`plan`, vectorised (no Python per item):
    the classes of every batch at once, then per modality the items every (class, slot)
    needs, taken in order from per-class queues, each a run of fresh permutations of the
    class's items. A queue's unused tail carries over to the next pass of this sampler.
    """

    def __init__(self, classes: dict, batch_size: int, seed: int = 0, per_class: int = 1,
                 allowed=None, size_by=None, max_per_class: int = 0):
        """``classes``: modality -> int array (N_m,) of class indices (-1 = unlabelled, ignored).
        ``max_per_class`` > 0 caps the items of one class in a batch (the batch shrinks to
        ``classes x max_per_class`` when fewer classes than ``batch_size`` exist): with one
        positive per row (paper 000's InfoNCE), a second item of a class is a false negative."""
        self.modalities = list(classes)
        cls = {m: np.asarray(c) for m, c in classes.items()}
        common = set.intersection(*(set(np.unique(c).tolist()) for c in cls.values())) - {-1}
        if allowed is not None:
            common &= {int(a) for a in allowed}
        if not common:
            raise ValueError("no class has items in every modality in play; class-aligned batches are impossible")
        self.classes = np.array(sorted(common))
        # items of classes some modality lacks are never drawn, so they do not count for the epoch
        self.n_max = max(int(np.isin(c, self.classes).sum()) for m, c in cls.items() if not size_by or m in size_by)
        # a batch never holds more rows than the largest modality has items: beyond that it would
        # only repeat items, each repeat a false negative of itself
        self.batch_size = min(max(1, batch_size), self.n_max)
        if max_per_class > 0:
            self.batch_size = min(self.batch_size, len(self.classes) * max(max_per_class, per_class))
        self.n_classes = max(1, min(len(self.classes), self.batch_size // max(1, per_class)))
        base, extra = divmod(self.batch_size, self.n_classes)
        self.counts = np.array([base + 1] * extra + [base] * (self.n_classes - extra))  # items of the i-th class drawn
        self.rng = np.random.default_rng(seed)
        # per modality: its items of the drawable classes sorted by class, and each class's segment
        self._members = {m: _segments(np.searchsorted(self.classes, c), np.isin(c, self.classes), len(self.classes))
                         for m, c in cls.items()}
        # per modality: the queues' unused tails, (items, class position) in queue order
        self._left = {m: (np.zeros(0, np.int64), np.zeros(0, np.int64)) for m in self.modalities}

    def __len__(self) -> int:
        return -(-self.n_max // self.batch_size)

    @property
    def composition(self) -> dict:
        """What every batch holds, per modality (the ``batch/...`` fields of ``metrics.jsonl``)."""
        return {"batch/items": self.batch_size, "batch/classes": self.n_classes,
                "batch/per_class_min": int(self.counts.min()), "batch/per_class_max": int(self.counts.max())}

    def plan(self) -> "Epoch":
        """One pass: ``len(self)`` batches of ``batch_size`` rows per modality, drawn at once."""
        nb = len(self)
        # P distinct classes per batch, in random order: the first P of a random permutation per row
        chosen = self.rng.random((nb, len(self.classes))).argsort(1)[:, : self.n_classes]  # (nb, P) class positions
        slots = np.repeat(chosen, self.counts, axis=1).ravel()  # (nb * B,) class position of every row
        rows = {m: self._draw(m, slots) for m in self.modalities}
        return Epoch(rows, np.arange(nb + 1) * self.batch_size, self.classes[chosen])

    def _draw(self, m, slots: np.ndarray) -> np.ndarray:
        """Items of modality ``m`` for ``slots`` (class positions), each class's from its queue in order."""
        order, start, count = self._members[m]
        n_cls = len(self.classes)
        need = np.bincount(slots, minlength=n_cls)
        left_items, left_cls = self._left[m]
        have = np.bincount(left_cls, minlength=n_cls)
        rounds = -(-np.maximum(need - have, 0) // np.maximum(count, 1))  # fresh permutations per class
        # fresh queue entries: per class, ``rounds`` permutations of its items, one after another
        size = rounds * count
        cls_of = np.repeat(np.arange(n_cls), size)
        at = np.arange(len(cls_of)) - np.repeat(np.cumsum(size) - size, size)  # position within the class's run
        fresh = order[np.repeat(start, size) + at % np.repeat(np.maximum(count, 1), size)]
        perm = np.lexsort((self.rng.random(len(fresh)), at // np.repeat(np.maximum(count, 1), size), cls_of))
        fresh = fresh[perm]
        # each class's queue: its carried tail, then its fresh permutations
        queue_cls = np.concatenate([left_cls, cls_of])
        by_cls = np.argsort(queue_cls, kind="stable")
        queue = np.concatenate([left_items, fresh])[by_cls]
        queue_cls = queue_cls[by_cls]
        first = np.cumsum(have + size) - (have + size)  # where each class's queue starts
        # the j-th slot of a class (in batch order) takes that class's j-th queue entry
        by_slot = np.argsort(slots, kind="stable")
        j = np.empty(len(slots), np.int64)
        j[by_slot] = np.arange(len(slots)) - np.repeat(np.cumsum(need) - need, need)
        out = queue[first[slots] + j]
        used = np.arange(len(queue)) - np.repeat(first, have + size) < np.repeat(need, have + size)
        self._left[m] = (queue[~used], queue_cls[~used])
        return out

    def __iter__(self):
        epoch = self.plan()
        for b in range(len(epoch)):
            yield epoch.batch(b), epoch.keys[b]


def _segments(code: np.ndarray, ok: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, start, count)``: indices of the ``ok`` items sorted by ``code`` (0..n-1), and each code's segment."""
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(code[idx], kind="stable")]
    count = np.bincount(code[idx], minlength=n)
    return order, np.cumsum(count) - count, count


class Epoch:
    """A pass of a sampler drawn at once: ``rows[m]`` (n,) item indices of modality ``m`` of every
    batch one after another (-1 = absent), batch ``b`` being ``bounds[b]:bounds[b + 1]``, and
    ``keys[b]`` the classes or groups of batch ``b``."""

    def __init__(self, rows: dict, bounds: np.ndarray, keys):
        self.rows, self.bounds, self.keys = rows, np.asarray(bounds), keys

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def batch(self, b: int) -> dict:
        lo, hi = self.bounds[b], self.bounds[b + 1]
        return {m: r[lo:hi] for m, r in self.rows.items()}

    def on_device(self, device, limit: int | None = None) -> Iterator[tuple[dict, dict]]:
        """``(host rows, device rows)`` of the first ``limit`` batches (default all); the device rows
        are views of one copy per modality made now, on the call, absent rows there being 0 (the
        host rows keep -1), so no step copies anything to the device or waits for it."""
        n = len(self) if limit is None else min(limit, len(self))
        end = int(self.bounds[n])
        dev = {m: to_device(np.maximum(r[:end], 0), device) for m, r in self.rows.items()}
        spans = [(int(self.bounds[b]), int(self.bounds[b + 1])) for b in range(n)]
        return (({m: r[lo:hi] for m, r in self.rows.items()}, {m: r[lo:hi] for m, r in dev.items()}) for lo, hi in spans)


def to_device(a: np.ndarray, device) -> torch.Tensor:
    """A host array on ``device`` without waiting for it: CUDA gets a pinned, non-blocking copy
    (a plain copy from pageable memory makes the host wait until the device has drained)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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

    def plan(self) -> Epoch:
        """One pass: every kept group once, in random order, with one item of each modality it has
        (drawn afresh among its items), ``-1`` where it has none; one array per modality."""
        perm = self.rng.permutation(self.keep)
        rows = {}
        for m in self.modalities:
            order, start, count = self._members[m]
            c = count[perm]
            pick = start[perm] + (self.rng.random(len(perm)) * np.maximum(c, 1)).astype(np.int64)
            rows[m] = np.where(c > 0, order[np.minimum(pick, max(len(order) - 1, 0))] if len(order) else -1, -1)
        bounds = np.append(np.arange(0, len(perm), self.batch_size), len(perm))
        return Epoch(rows, bounds, [perm[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])])

    def __iter__(self) -> Iterator:
        epoch = self.plan()
        for b in range(len(epoch)):
            yield epoch.batch(b), epoch.keys[b]


def make_sampler(split, modalities: list, alignment: str, batch_size: int, seed: int, max_per_class: int = 0):
    """The sampler the data needs: class-aligned or instance-aligned over ``modalities`` of ``split``
    (``max_per_class``: see :class:`ClassAlignedSampler`)."""
    if alignment == "class":
        return ClassAlignedSampler({m: split.host_classes(m) for m in modalities}, batch_size, seed,
                                   max_per_class=max_per_class)
    if alignment == "instance":
        return InstanceAlignedSampler({m: split.features[m].groups for m in modalities}, batch_size, seed)
    raise ValueError(f"alignment must be 'class' or 'instance', not {alignment!r}")
