"""Fürer et al. (paper 000): late-fusion projection heads with pairwise InfoNCE.

``joint`` trains the heads of all modalities in play together (Sec. III-D) with the loss of
eq. 2 over every ordered pair of each batch; ``roundrobin`` (Sec. III-D, first scenario)
gives every batch exactly two modalities, the pairs' batches interleaved within an epoch.
Batches are class- or instance-aligned (``cfg.alignment``). ``options.positives``: ``pair``
(eq. 1) or ``class`` (Khosla et al. 2020, eq. 2, across modalities).
:data:`FUERER_PAPER_SETTINGS` are the paper's settings where it gives them, the rest (stopping,
steps per epoch) chosen on real data. Readings: docs/notes/train.md.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from mmx.train.heads import Heads
from mmx.train.losses import pairwise_info_nce, pairwise_info_nce_sums
from mmx.train.samplers import make_sampler, to_device
from mmx.train.strategies.base import Strategy


# Paper 000: 256-d space, tau 0.05 (Sec. III-B/C). It stops "once the loss on the test set stops
# decreasing" (Sec. III-D) and states no batch size or learning rate. The stopping rule and the
# batch below were chosen on real data (the digits sources as quad-modal media, and a second,
# disjoint digits set: benchmarks/bench_defaults.py, RESULTS.md "Defaults chosen on real data"):
# the val loss bottoms out while val and test mAP still rise, so a loss monitor at a 2% tolerance
# stopped at epoch 3-4, 0.18 test mAP below the peak; the val mAP with no tolerance stops after
# the peak with patience 10 at tau 0.05 and with patience 15 at tau 0.2, where val mAP peaks
# earlier and plateaus (patience 10 ended one run type 0.004 below its peak). An epoch of at
# least 20 steps: at batch 128 a small split is 2 steps an epoch, and 20 reach in 25 epochs
# what 2 do not in 60. AdamW 1e-3 is our choice.
# The paper's own rule: --set monitor=loss --set patience=1 --set min_delta=0.02 --set holdout=test.
# tau (auto): 0.2 on class-aligned data, where a batch pairs random same-class items and its other
# same-class items are negatives, pushed away the harder the lower tau is while retrieval is
# scored by class; chosen on val over 0.05-0.5 on both digits sets (benchmarks/bench_tau.py):
# +0.02-0.04 test mAP over the paper's 0.05, and above a CCA baseline where 0.05 was below it
# (benchmarks/bench_cca.py). On instance-aligned data (true pairs) the paper's 0.05, not measured
# here. The paper's temperature on class-aligned data: --set tau=0.05.
FUERER_PAPER_SETTINGS = {"embed_dim": 256, "tau": "auto", "dropout": 0.1, "batch_size": 128, "lr": 1e-3, "epochs": 60,
                         "min_steps": 20, "monitor": "mAP", "keep": "best", "patience": 15, "min_delta": 0.0}


class JointStrategy(Strategy):
    name = "joint"
    alignment = "any"  # class- or instance-aligned, as cfg.alignment says
    paper_settings = FUERER_PAPER_SETTINGS
    taus = {"instance": 0.05, "class": 0.2}  # tau: auto (above)
    # positives: "pair" (paper 000 eq. 1: a row's own partner only) or "class" (every
    # same-class item of the other modality, Khosla et al. 2020; class-aligned data only)
    # items_per_class: at most this many items of one class in a class-aligned batch (1: every
    # in-batch negative a true negative); 0 fills batch_size with several per class, which
    # measured no worse on the digits sets (the extra same-class negatives cost nothing there)
    options = {"positives": "pair", "items_per_class": 0}
    graphable = True  # heads and InfoNCE of fixed-shape batches (rows with absent modalities run eagerly)
    # the held-out figures can be computed over a subset of the modalities (one head per modality)
    monitor_subset = True

    @classmethod
    def check(cls, cfg) -> list[str]:
        problems = super().check(cfg)
        positives = {**cls.option_defaults(), **cfg.options}["positives"]
        if positives not in ("pair", "class"):
            problems.append(f"options.positives must be pair (paper 000) or class (all same-class items), not {positives!r}")
        elif positives == "class" and cfg.alignment == "instance":
            problems.append("options.positives=class needs class-aligned data (alignment: class), not instance-aligned groups")
        per = {**cls.option_defaults(), **cfg.options}["items_per_class"]
        if isinstance(per, bool) or not isinstance(per, int) or per < 0:
            problems.append(f"options.items_per_class must be a whole number >= 0 (0: fill the batch), got {per!r}")
        return problems

    def __init__(self, cfg, data, device):
        super().__init__(cfg, data, device)
        if self.opt["positives"] == "class" and cfg.alignment != "class":
            raise ValueError(f"options.positives=class needs class-aligned data; this run is {cfg.alignment}-aligned")

    def build_model(self) -> nn.Module:
        dims = {m.value: self.data.dims[m] for m in self.modalities}
        return Heads(dims, self.cfg.embed_dim, self.cfg.dropout)

    def _seed(self, epoch: int, train: bool, stream: int = 0) -> int:
        """The epoch's seed, spread per stream (round-robin has one per pair)."""
        return self.batch_seed(epoch, train) * 31 + stream

    def _gather(self, split, host: dict, rows: dict, source=None) -> dict:
        """Sampler rows -> rows of ``source(m)`` (default the pooled features; (B, D_m)), presence
        masks and, for class positives, the class of every row. ``rows``: device views of the
        pass's indices (absent rows read row 0); ``host``: the same rows on the host (-1 =
        absent), whose masks the loss counts there."""
        x, present, classes = {}, {}, {}
        for m, idx in rows.items():
            x[m.value] = (source or split.pooled)(m).index_select(0, idx)
            absent = host[m] < 0
            if absent.any():
                present[m.value] = ~absent  # stays on the host: the loss counts rows there (losses._both)
            if self.opt["positives"] == "class":
                classes[m.value] = split.classes[m].index_select(0, idx)
        return {"x": x, "present": present, "classes": classes or None}

    def _streams(self, epoch: int, train: bool) -> list[tuple[list, int, float]]:
        """``(modalities, sampler seed, share of the sampler's pass)`` of each stream of batches."""
        return [(self.modalities, self._seed(epoch, train), 1.0)]

    def _passes(self, split, epoch: int, train: bool) -> list[tuple]:
        """``(pass, batch count)`` of every stream, drawn now (the samplers are seeded per epoch)."""
        out = []
        for mods, seed, share in self._streams(epoch, train):
            sampler = make_sampler(split, mods, self.cfg.alignment, self.cfg.batch_size, seed, self.opt["items_per_class"])
            if train:
                self.composition = {**sampler.composition, "batch/modalities": len(mods)}
            out.append((sampler.plan(), math.ceil(len(sampler) * share)))
        return out

    def batches(self, split, epoch, train):
        """The streams' batches in turn (one stream for joint; round-robin: pair 1, pair 2, ..., pair 1, ...).
        Every pass is drawn and copied to the device before the first batch."""
        device = split.pooled(self.modalities[0]).device
        streams = [(self._gather(split, host, rows) for host, rows in plan.on_device(device, n))
                   for plan, n in self._passes(split, epoch, train)]
        while streams:
            alive = []
            for s in streams:
                batch = next(s, None)
                if batch is not None:
                    yield batch
                    alive.append(s)
            streams = alive

    def step(self, model, batch):
        embs = {m: model(m, x) for m, x in batch["x"].items()}  # each (B, embed_dim)
        return pairwise_info_nce(embs, self.cfg.tau, batch["present"], batch["classes"])

    @torch.no_grad()
    def held_out(self, model, split, epoch):
        """The held-out loss of :meth:`step` over the held-out batches, from one pass of each head
        over the split: eval mode has no dropout, so an item's embedding does
        not depend on its batch, and each batch's loss is taken from its rows of the embeddings.
        A stream of equal batches where every row is present (class-aligned, pair positives) has
        all its batches' losses computed at once and is reported as one sum over its batches."""
        embs = self.embed(model, split)
        device = split.pooled(self.modalities[0]).device
        for plan, n in self._passes(split, epoch, train=False):
            end = int(plan.bounds[n])
            size = np.diff(plan.bounds[: n + 1])
            if self.opt["positives"] == "pair" and (size == size[0]).all() and all((r[:end] >= 0).all() for r in plan.rows.values()):
                batched = {m.value: embs[m.value].index_select(0, to_device(r[:end], device)).view(n, int(size[0]), -1)
                           for m, r in plan.rows.items()}
                yield pairwise_info_nce_sums(batched, self.cfg.tau), n
                continue
            for host, rows in plan.on_device(device, n):
                batch = self._gather(split, host, rows, source=lambda m: embs[m.value])
                yield pairwise_info_nce(batch["x"], self.cfg.tau, batch["present"], batch["classes"]), 1

    @torch.no_grad()
    def embed(self, model, split):
        return {m.value: self.embed_chunks(lambda x, m=m: model(m, x), split.pooled(m)) for m in self.modalities}


class RoundRobinStrategy(JointStrategy):
    name = "roundrobin"

    def pairs(self) -> list[tuple]:
        return list(itertools.combinations(self.modalities, 2))

    def _streams(self, epoch, train):
        """One stream per pair, each batch holding exactly that pair, a ``1/(M-1)`` share of its pass."""
        share = 1.0 / (len(self.modalities) - 1)
        return [(list(p), self._seed(epoch, train, i), share) for i, p in enumerate(self.pairs())]
