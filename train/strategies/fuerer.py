"""Fürer et al. (paper 000): late-fusion projection heads with pairwise InfoNCE.

``joint`` trains the heads of all modalities in play together (Sec. III-D: the tri-modal
run uses text, image and audio, the quad-modal run all four), with the loss of eq. 2
over every ordered pair on class-aligned batches (Sec. III-A).
"""

from __future__ import annotations

import torch
from torch import nn

from mmx.train.heads import Heads
from mmx.train.losses import pairwise_info_nce
from mmx.train.samplers import ClassAlignedSampler
from mmx.train.strategies.base import Strategy


class JointStrategy(Strategy):
    name = "joint"

    def build_model(self) -> nn.Module:
        dims = {m.value: self.data.dims[m] for m in self.modalities}
        return Heads(dims, self.cfg.embed_dim, self.cfg.dropout)

    def batches(self, split, epoch, train):
        # held-out batches use a fixed seed so the early-stopping loss is comparable across epochs
        seed = self.cfg.seed * 100_003 + epoch if train else self.cfg.seed + 7
        sampler = ClassAlignedSampler(
            {m: split.classes[m].cpu().numpy() for m in self.modalities}, self.cfg.batch_size, seed
        )
        for rows, _ in sampler:
            yield {m.value: split.pooled(m)[torch.as_tensor(rows[m], device=split.pooled(m).device)] for m in self.modalities}

    def step(self, model, batch):
        embs = {m: model(m, x) for m, x in batch.items()}  # each (B, embed_dim)
        return pairwise_info_nce(embs, self.cfg.tau)

    @torch.no_grad()
    def embed(self, model, split):
        out = {}
        for m in self.modalities:
            x = split.pooled(m)
            out[m.value] = torch.cat([model(m, x[i : i + 4096]) for i in range(0, len(x), 4096)]) if len(x) else x.new_zeros((0, self.cfg.embed_dim))
        return out
