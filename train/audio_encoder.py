"""A trainable audio encoder over cached audio token sequences (paper 001 Sec. 4.1, after DAVEnet).

Paper 001 trains its audio CNN ("a trainable CNN with residual layers", DAVEnet [12, 44]) with
the fusion model instead of freezing an audio backbone. :class:`DavenetEncoder` has that shape
on the cached tokens: a first convolution that spans every mel band of one frame, residual 1-D
convolutions along time, and a linear map to the output width, all masked so that padding
never leaks into a real frame. It keeps the token rate: DAVEnet pools its 100 frames/s down
to the paper's 1.5 features/s, while the cached audio tokens (speech_embedding by default,
log-mel by name) already come at about one per second. :func:`shift_tokens` draws the paper's random audio shifts. Readings: docs/notes/train.md.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AUDIO_ENCODERS = ("none", "davenet")


class DavenetEncoder(nn.Module):
    """(B, T, in_dim) tokens, (B, T) valid -> (B, T, out_dim); padded positions come out zero."""

    def __init__(self, in_dim: int, out_dim: int = 256, blocks: int = 2, kernel: int = 3):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd (same-length convolutions), got {kernel}")
        self.norm = nn.LayerNorm(in_dim)  # per frame: the spectral shape, not the loudness
        self.stem = nn.Conv1d(in_dim, out_dim, 1)  # DAVEnet's conv1 spans all mel bands of a frame
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv1d(out_dim, out_dim, kernel, padding=kernel // 2), nn.Conv1d(out_dim, out_dim, kernel, padding=kernel // 2)])
            for _ in range(blocks)
        )
        self.out = nn.Conv1d(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keep = valid.to(x.dtype)[:, None, :]  # (B, 1, T)
        h = self.norm(x).transpose(1, 2) * keep  # (B, D_in, T): zeros at padding = the edges' zero padding
        h = F.relu(self.stem(h)) * keep  # (B, C, T)
        for a, b in self.blocks:
            h = F.relu(h + b(F.relu(a(h)) * keep)) * keep
        return (self.out(h) * keep).transpose(1, 2)  # (B, T, C)


def tokens_per_second(rate) -> float | None:
    """The token rate a store records (``1.0``, ``"2 per second"``, ``"1 per window (1 s)"``) in
    tokens per second; None where it is not a rate in time (``"1 per item"``, imported features)."""
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        return float(rate) if rate > 0 else None
    if not isinstance(rate, str):
        return None
    m = re.match(r"\s*([\d.]+) per (second|window \(([\d.]+) s\))", rate)
    if not m:
        return None
    n = float(m.group(1))
    return n / float(m.group(3)) if m.group(3) else n


def shift_tokens(lengths: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """A random shift per row in ``[-max_shift, max_shift]`` tokens, reduced modulo the row's
    length (a row of ``L`` tokens is read as ``(t + shift) % L``); 0 for empty rows."""
    d = rng.integers(-max_shift, max_shift + 1, size=len(lengths)) if max_shift > 0 else np.zeros(len(lengths), np.int64)
    return np.where(lengths > 0, d % np.maximum(lengths, 1), 0)
