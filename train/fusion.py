"""The Everything-at-Once fusion model (Shvetsova et al., paper 001, Sec. 3.2).

* Token creation (3.2.1, 4.1 "Projections"): per modality a gated linear projection
  (Miech et al.'s gated embedding unit [36]) into a common token space, then a per-modality
  LayerNorm.
* Fusion transformer (3.2.3): pre-norm blocks (LN -> multi-head self-attention -> residual,
  LN -> MLP -> residual) shared by all modalities, run over the concatenated tokens of any
  subset; no positional or type embeddings (3.2.2); padding is masked out of the keys.
  A modality a row lacks is replaced by one learned token (the reference code's masking
  token), so no row ever attends to nothing.
* Projection (3.2.4): per-modality masked mean of the output tokens, a per-modality gated
  projection to the joint space, L2 normalisation, and the fused embedding of a subset,
  eq. 1: ``f(v, a) = norm(norm(g_v(v^va)) + norm(g_a(a^va)))``.

Ablations (Tables 4-6) as constructor arguments: ``fusion`` = ``shared`` (the paper),
``separate`` (one transformer per modality, Table 4 row 2) or ``none`` (no transformer, row 1;
then subsets are fused only by eq. 1, i.e. the paper's ``v + a``); ``cls_token`` (a learned
[cls] token prepended to the sequence whose output, through the shared projection, is the
embedding, Table 5); ``shared_projection`` (one final projection for all modalities,
Table 5); ``max_positions`` > 0 adds learned positional embeddings, position counted within
each modality's sequence (Table 6, "vanilla trainable embeddings summed to the input tokens").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedLinear(nn.Module):
    """Gated embedding unit [36]: ``y = W x``, then context gating ``y * sigmoid(V y)``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y * torch.sigmoid(self.gate(y))


class Block(nn.Module):
    """One pre-norm transformer block (ViT / the paper's Fig. 2)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class FusionTransformer(nn.Module):
    """A stack of :class:`Block` with a final LayerNorm; ``valid`` (B, T) marks real tokens."""

    def __init__(self, dim: int, depth: int = 1, heads: int = 4, mlp_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim or dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, ~valid)
        return self.norm(x)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d): the mean over the valid tokens only."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class EverythingAtOnce(nn.Module):
    def __init__(
        self,
        dims: dict,
        token_dim: int = 256,
        embed_dim: int = 256,
        depth: int = 1,
        heads: int = 4,
        mlp_dim: int = 0,
        dropout: float = 0.0,
        fusion: str = "shared",
        cls_token: bool = False,
        shared_projection: bool = False,
        max_positions: int = 0,
    ):
        super().__init__()
        if fusion not in ("shared", "separate", "none"):
            raise ValueError(f"fusion must be shared, separate or none, not {fusion!r}")
        self.modalities = [str(m) for m in dims]
        self.fusion, self.use_cls = fusion, cls_token
        self.token_proj = nn.ModuleDict(
            {str(m): nn.Sequential(GatedLinear(d, token_dim), nn.LayerNorm(token_dim)) for m, d in dims.items()}
        )
        self.empty = nn.ParameterDict({m: nn.Parameter(0.02 * torch.randn(token_dim)) for m in self.modalities})
        make = lambda: FusionTransformer(token_dim, depth, heads, mlp_dim, dropout)  # noqa: E731
        if fusion == "shared":
            self.transformer = make()
        elif fusion == "separate":
            self.transformer = nn.ModuleDict({m: make() for m in self.modalities})
        self.cls = nn.Parameter(0.02 * torch.randn(token_dim)) if cls_token else None
        self.pos = nn.Parameter(0.02 * torch.randn(max_positions, token_dim)) if max_positions else None
        # a [cls] output belongs to no modality, so it needs the shared projection (Table 5)
        self.shared_projection = shared_projection or cls_token
        if self.shared_projection:
            self.proj = GatedLinear(token_dim, embed_dim)
        else:
            self.proj = nn.ModuleDict({m: GatedLinear(token_dim, embed_dim) for m in self.modalities})

    def tokens(self, m: str, x: torch.Tensor, valid: torch.Tensor, present: torch.Tensor):
        """(B, T, D_m) features -> (B, T', token_dim) tokens and their (B, T') validity.

        Rows without the modality (``present`` false, or no valid token) become the single
        learned empty token of ``m``.
        """
        b, t = valid.shape
        if t == 0:  # nobody in the batch has this modality
            x, valid = x.new_zeros(b, 1, x.shape[-1]), valid.new_zeros(b, 1)
            t = 1
        present = present & valid.any(1)
        tok = self.token_proj[m](x)  # (B, T, token_dim)
        if self.pos is not None:
            if t > len(self.pos):
                raise ValueError(f"{m}: {t} tokens, but positional embeddings were built for {len(self.pos)}")
            tok = tok + self.pos[:t]
        first = torch.zeros_like(valid)
        first[:, 0] = True
        valid = torch.where(present[:, None], valid, first)
        tok = torch.where(present[:, None, None], tok, self.empty[m].to(tok.dtype).expand_as(tok))
        return tok, valid

    def _run(self, transformer, toks: list, valids: list):
        """Run one transformer over concatenated token lists; return per-list pooled vectors."""
        seq, val = torch.cat(toks, 1), torch.cat(valids, 1)  # (B, sum T', d)
        if self.use_cls:
            b = seq.shape[0]
            seq = torch.cat([self.cls.to(seq.dtype).expand(b, 1, -1), seq], 1)  # (B, 1 + sum T', d)
            val = torch.cat([val.new_ones(b, 1), val], 1)
        out = transformer(seq, val) if transformer is not None else seq
        if self.use_cls:
            return [out[:, 0]]
        pooled, i = [], 0
        for t, v in zip(toks, valids):
            pooled.append(masked_mean(out[:, i : i + t.shape[1]], v))  # (B, d)
            i += t.shape[1]
        return pooled

    def forward(self, inputs: dict, subset: tuple) -> torch.Tensor:
        """The L2-normalised embedding (B, embed_dim) of ``subset`` (eq. 1).

        ``inputs[m] = (x (B, T, D_m), valid (B, T) bool, present (B,) bool)``.
        """
        toks = [self.tokens(str(m), *inputs[m]) for m in subset]
        if self.fusion == "shared":
            pooled = self._run(self.transformer, [t for t, _ in toks], [v for _, v in toks])
        else:  # each modality alone: Table 4's "v + a"
            pooled = []
            for m, (t, v) in zip(subset, toks):
                pooled += self._run(self.transformer[str(m)] if self.fusion == "separate" else None, [t], [v])
        if self.shared_projection:
            embs = [F.normalize(self.proj(p), dim=-1) for p in pooled]
        else:
            embs = [F.normalize(self.proj[str(m)](p), dim=-1) for m, p in zip(subset, pooled)]
        return F.normalize(torch.stack(embs).sum(0), dim=-1)
