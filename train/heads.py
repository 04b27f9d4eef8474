"""Projection heads (Fürer et al., paper 000, Sec. III-B, Fig. 2)."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Two dense layers with GELU between them, dropout and a skip connection, to ``out_dim``.

    Reading of Fig. 2 (the text only lists the parts): the input dimension differs per
    backbone while the output is 256-d, so the skip cannot start at the input. We take
    the skip from the first dense layer's output, as in the CLIP-style head the paper
    follows ([38]): ``p = W1 x``; ``y = dropout(W2 gelu(p)) + p``. This keeps the second
    layer's parameter count equal across modalities, as Sec. III-B says it is.
    """

    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)  # (B, D_m) -> (B, out_dim)
        self.act = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj(x)
        return self.dropout(self.fc(self.act(p))) + p


class Heads(nn.Module):
    """One :class:`ProjectionHead` per modality, keyed by modality name (ImageBind's ModuleDict)."""

    def __init__(self, dims: dict, out_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.heads = nn.ModuleDict({str(m): ProjectionHead(d, out_dim, dropout) for m, d in dims.items()})

    def forward(self, modality, x: torch.Tensor) -> torch.Tensor:
        return self.heads[str(modality)](x)
