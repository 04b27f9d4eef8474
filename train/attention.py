"""The aligned-attention block of CVS / M-CVS / RVS (paper 002 eq. 3-6; thesis 004 eq. 3.1.11-3.1.14, 3.3.1-3.3.6).

Two inputs ``g_i`` and ``g_s`` (both ``(B, D)``, the outputs of two modality heads) give::

    t     = tanh(W_i g_i + W_s g_s + W_is (g_i * g_s) + b)        # (B, D)
    a_s   = softmax(W_e t)            over the feature axis          # (B, D), rows sum to 1
    g_i'  = l2norm(g_i + a_i * g_i);  g_s' = l2norm(g_s + a_s * g_s)

Readings (where the papers are silent or disagree):

* Inner width. Thesis 3.1-C says ``e_is`` "is the same dimension as the CVS dimension" and
  the sum in eq. 3.1.12 runs over its elements, so the softmax is over the feature axis
  (not over the batch) and ``W_e`` maps D -> D. The width inside the tanh is unstated; we
  use D as well, so every matrix is D x D.
* Bias. Paper 002 eq. 3 has ``+ b``; thesis eq. 3.1.11 omits it. We keep one bias vector
  inside the tanh (eq. 3), and none on ``W_e`` (a bias there would be a per-feature prior
  on the attention that does not depend on the inputs).
* ``g_i . g_s`` is the element-wise product (thesis 3.1-C: "the element-wise product").
* One attention vector for both sides (eq. 5-6 use the same ``alpha_is``), except in RVS
  (thesis 3.3-A, eq. 3.3.1-3.3.6) where ``W_e`` is split into ``W_ie`` for the reference
  side and ``W_se`` for the other side. Here ``w_e`` is ``W_se`` and the reference
  weight ``W_ie`` is passed in (``w_ie``), because RVS shares one ``W_ie`` across blocks and
  freezes it after stage 1; with ``w_ie=None`` both sides use ``w_e`` (CVS, M-CVS).
* L2 normalisation after the residual (paper 002 after eq. 6; thesis: "L2 normalized at
  the output stage").
* Ablation (thesis 5.2-A, Fig. 25): ``use_wi``, ``use_ws``, ``use_wis`` drop the term of
  ``W_i``, ``W_s`` or ``W_is`` from the tanh argument. Dropping all three is the thesis's
  attention-off baseline (Tables 5-7: the common space without aligned attention): the block
  then has no weights and returns ``l2norm(g_i), l2norm(g_s)`` (an input-independent
  ``softmax(W_e tanh(b))`` would be a learned constant feature weighting, not attention).

Other readings of eq. 3-6, as options (issue 13 item 7: with the softmax over D = 512
features, alpha is about 1/512, so ``g + alpha * g`` barely differs from ``g``):

* ``temperature="learned"``: ``softmax(W_e t / T)`` with a learned ``T = exp(s)``, ``s = 0`` at
  the start, so the attention can sharpen (alpha up to 1 on one feature) or flatten.
* ``softmax="batch"``: the softmax of eq. 4 runs over the batch axis (each feature's weights
  sum to 1 over the items of the batch) instead of the feature axis. Then an item's
  embedding depends on the other items it is embedded with: at inference, those of its chunk
  (``CommonSpaceStrategy.embed``), which is this reading's price.
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
