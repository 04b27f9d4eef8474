"""The CVS-family model (paper 002 Sec. III-A/C; thesis 004 Sec. 3.1-3.3).

:class:`CommonSpaceModel`: per modality a :class:`TanhHead` (two D-unit layers with tanh
between them), aligned-attention blocks keyed ``"<i>-<s>"``, one softmax classifier over the
common space, and for RVS the shared reference weight ``w_ie``. No dropout (neither paper
has one). Readings: docs/notes/train.md.
"""

from __future__ import annotations

import torch
from torch import nn

from mmx.train.attention import AlignedAttention


class TanhHead(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)  # (B, D_m) -> (B, D)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def block_key(i, s) -> str:
    return f"{i}-{s}"


class CommonSpaceModel(nn.Module):
    def __init__(self, dims: dict, dim: int, n_classes: int, blocks: list, ablation: dict, shared_reference: bool):
        """``dims``: modality name -> input dim; ``blocks``: (i, s) modality-name pairs."""
        super().__init__()
        self.heads = nn.ModuleDict({m: TanhHead(d, dim) for m, d in dims.items()})
        self.blocks = nn.ModuleDict({block_key(i, s): AlignedAttention(dim, **ablation) for i, s in blocks})
        self.classifier = nn.Linear(dim, n_classes)
        # RVS: one W_ie for every block, trained in stage 1 and frozen after (thesis 3.3-A)
        self.w_ie = nn.Linear(dim, dim, bias=False) if shared_reference else None

    def attend(self, i: str, s: str, g_i: torch.Tensor, g_s: torch.Tensor):
        """``(g_i', g_s')`` of block (i, s), each (B, D), L2-normalised."""
        return self.blocks[block_key(i, s)](g_i, g_s, self.w_ie)

    def embed_through(self, m: str, x: torch.Tensor, blocks: list, partner: str) -> torch.Tensor:
        """Items ``x`` of modality ``m`` (N, D_m) through its home ``blocks`` with no real partner.

        ``partner="self"``: the item is its own partner (both inputs are ``g``);
        ``"zero"``: the partner input is zero, so only ``m``'s own weight (and the bias)
        drive the attention. Several home blocks: the mean of their outputs, re-normalised.
        """
        g = self.heads[m](x)  # (N, D)
        other = g if partner == "self" else torch.zeros_like(g)
        outs = []
        for i, s in blocks:
            if m == i:
                outs.append(self.attend(i, s, g, other)[0])
            else:
                outs.append(self.attend(i, s, other, g)[1])
        out = torch.stack(outs).mean(0) if len(outs) > 1 else outs[0]
        return nn.functional.normalize(out, dim=-1)

