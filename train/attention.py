"""The aligned-attention block of CVS / M-CVS / RVS (paper 002 eq. 3-6; thesis 004 eq. 3.1.11-3.1.14, 3.3.1-3.3.6).

Two inputs ``g_i`` and ``g_s`` (both ``(B, D)``, the outputs of two modality heads) give::

    t     = tanh(W_i g_i + W_s g_s + W_is (g_i * g_s) + b)        # (B, D)
    a_s   = softmax(W_e t)            over the feature axis          # (B, D), rows sum to 1
    g_i'  = l2norm(g_i + a_i * g_i);  g_s' = l2norm(g_s + a_s * g_s)

``use_wi/ws/wis`` are the thesis's ablation switches (5.2-A); ``temperature`` and ``softmax``
are other readings of eq. 3-6. The readings where the papers are silent: docs/notes/train.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignedAttention(nn.Module):
    """One aligned-attention block between a modality on the ``i`` side and one on the ``s`` side."""

    def __init__(self, dim: int, use_wi: bool = True, use_ws: bool = True, use_wis: bool = True,
                 softmax: str = "features", temperature: str = "fixed"):
        super().__init__()
        if softmax not in ("features", "batch"):
            raise ValueError(f"softmax must be over 'features' or 'batch', not {softmax!r}")
        if temperature not in ("fixed", "learned"):
            raise ValueError(f"temperature must be 'fixed' or 'learned', not {temperature!r}")
        self.off = not (use_wi or use_ws or use_wis)  # the attention-off baseline
        self.axis = -1 if softmax == "features" else 0
        self.w_i = nn.Linear(dim, dim, bias=False) if use_wi else None
        self.w_s = nn.Linear(dim, dim, bias=False) if use_ws else None
        self.w_is = nn.Linear(dim, dim, bias=False) if use_wis else None
        self.bias = None if self.off else nn.Parameter(torch.zeros(dim))
        self.w_e = None if self.off else nn.Linear(dim, dim, bias=False)  # W_e (eq. 3), or W_se in RVS (eq. 3.3.2)
        self.log_temperature = nn.Parameter(torch.zeros(())) if temperature == "learned" and not self.off else None

    def attention(self, g_i: torch.Tensor, g_s: torch.Tensor, w_ie: nn.Module | None = None):
        """``(alpha_i, alpha_s)``, each (B, D), summing to 1 over ``softmax``'s axis (eq. 3-4 / 3.3.1-3.3.4)."""
        h = self.bias.expand_as(g_i)
        if self.w_i is not None:
            h = h + self.w_i(g_i)
        if self.w_s is not None:
            h = h + self.w_s(g_s)
        if self.w_is is not None:
            h = h + self.w_is(g_i * g_s)
        t = torch.tanh(h)  # (B, D)
        scale = 1.0 if self.log_temperature is None else torch.exp(-self.log_temperature)
        alpha_s = torch.softmax(self.w_e(t) * scale, dim=self.axis)
        alpha_i = alpha_s if w_ie is None else torch.softmax(w_ie(t) * scale, dim=self.axis)
        return alpha_i, alpha_s

    def forward(self, g_i: torch.Tensor, g_s: torch.Tensor, w_ie: nn.Module | None = None):
        """``(g_i', g_s')``: residual re-weighting (eq. 5-6) then L2 normalisation, each (B, D)."""
        if self.off:
            return F.normalize(g_i, dim=-1), F.normalize(g_s, dim=-1)
        alpha_i, alpha_s = self.attention(g_i, g_s, w_ie)
        return F.normalize(g_i + alpha_i * g_i, dim=-1), F.normalize(g_s + alpha_s * g_s, dim=-1)
