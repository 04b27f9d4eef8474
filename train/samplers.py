"""Batch samplers over in-memory features.

Class-aligned (paper 000, Sec. III-A): modalities are aligned by class, not one to one,
so a batch is ``B`` distinct classes with one item of each modality per class. Items of a
(modality, class) are drawn from a queue reshuffled each time it runs out, which
over-samples modalities with fewer items per class. An epoch has ``ceil(N_max / B)``
batches, where ``N_max`` is the item count of the largest modality in play, so each item
of the largest modality is seen about once per epoch.
"""

from __future__ import annotations

import numpy as np


class ClassAlignedSampler:
    def __init__(self, classes: dict, batch_size: int, seed: int = 0):
        """``classes``: modality -> int array (N_m,) of class indices (no -1)."""
        self.modalities = list(classes)
        cls = {m: np.asarray(c) for m, c in classes.items()}
        common = set.intersection(*(set(np.unique(c).tolist()) for c in cls.values()))
        if not common:
            raise ValueError("no class has items in every modality in play; class-aligned batches are impossible")
        self.classes = np.array(sorted(common))
        self.batch_size = min(batch_size, len(self.classes))
        self.n_max = max(len(c) for c in cls.values())
        self.rng = np.random.default_rng(seed)
        # per modality: item indices grouped by class, and each class's segment
        self._members = {m: {int(k): np.flatnonzero(c == k) for k in self.classes} for m, c in cls.items()}
        self._queues: dict = {m: {} for m in self.modalities}

    def __len__(self) -> int:
        return -(-self.n_max // self.batch_size)

    def _next(self, m, k: int) -> int:
        q = self._queues[m].get(k)
        if not q:
            q = list(self.rng.permutation(self._members[m][k]))
            self._queues[m][k] = q
        return int(q.pop())

    def __iter__(self):
        for _ in range(len(self)):
            chosen = self.rng.choice(self.classes, size=self.batch_size, replace=False)
            yield {m: np.array([self._next(m, int(k)) for k in chosen]) for m in self.modalities}, chosen
