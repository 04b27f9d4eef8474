"""Contrastive losses shared by the strategies."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """Paper 000 eq. 1: ``-1/N sum_i log softmax_j(x_i . y_j / tau)[i]``, one direction.

    ``x``, ``y``: (N, d), row ``i`` of each aligned. Both are L2-normalised here, so the dot
    product is the cosine similarity that the temperature of 0.05 is meant for ([38]).
    """
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    logits = x @ y.T / tau  # (N, N)
    return F.cross_entropy(logits, torch.arange(len(x), device=x.device))


def pairwise_info_nce(embs: dict, tau: float = 0.05) -> dict[str, torch.Tensor]:
    """Paper 000 eq. 2: InfoNCE averaged over all ordered pairs of the modalities given.

    Returns ``{"loss": mean, "loss/a-b": InfoNCE(a, b), ...}`` with one part per ordered pair.
    """
    parts = {f"loss/{a}-{b}": info_nce(embs[a], embs[b], tau) for a, b in itertools.permutations(embs, 2)}
    if not parts:
        raise ValueError("pairwise InfoNCE needs at least two modalities")
    return {"loss": torch.stack(list(parts.values())).mean(), **parts}
