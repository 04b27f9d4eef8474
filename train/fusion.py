"""The Everything-at-Once fusion model (Shvetsova et al., paper 001, Sec. 3.2).

:class:`EverythingAtOnce`: per-modality gated token projections (3.2.1), a fusion transformer
shared by all modalities over the tokens of any subset (3.2.3), and per-modality pooled
projections fused by eq. 1 (3.2.4). Where the paper is silent the reference code decides,
each difference a constructor argument (``final_norm``, ``init``, ``max_positions``); the
ablations of Tables 4-6 are ``fusion``, ``cls_token`` and ``shared_projection``.
Modules in ``encoders`` (such as :class:`mmx.train.audio_encoder.DavenetEncoder`, Sec. 4.1's
trainable audio CNN) turn a modality's inputs into its tokens and are trained with the model.
:meth:`EverythingAtOnce.embed_subsets` computes every subset of a training step in one pass
over shared work. Readings and how the shared pass works: docs/notes/train.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmx.train.samplers import to_device

EPS = 1e-6  # the reference's LayerNorm eps


def minus_inf_where(mask: np.ndarray, device) -> torch.Tensor:
    """An additive attention bias from a host mask: ``-inf`` where ``mask``, else 0."""
    return to_device(np.where(mask, -np.inf, 0.0).astype(np.float32), device)


class GatedLinear(nn.Module):
    """Gated embedding unit [36]: ``y = W x``, then context gating ``y * sigmoid(V y)``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y * torch.sigmoid(self.gate(y))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(dropout)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.gelu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.hidden(x)))


class Layout:
    """Where the packed tokens of a set of sequences sit in a padded attention batch.

    ``seq`` (n,) is the sequence (0..N-1) of each of the packed tokens ``first .. first+n-1``
    (a host array: the indices are built on the host and copied to ``device`` without waiting);
    tokens of one sequence keep their packed order. Queries, keys and values are gathered
    straight from the rows that hold them into the ``(N, H, L, d/H)`` layout attention wants
    (one gather; a padded slot reads token ``first`` and is masked by a ``-inf`` bias, so it
    adds nothing, not even a gradient), and the output is gathered back to packed rows. Keys
    lie along dim -2 of the probabilities, as in :class:`SharedKeys`.
    """

    def __init__(self, seq: np.ndarray, n_seq: int, heads: int, first: int, device):
        counts = np.bincount(seq, minlength=n_seq)
        order = np.argsort(seq, kind="stable")
        start = np.cumsum(counts) - counts
        slot = np.empty_like(seq)
        slot[order] = np.arange(len(seq)) - start[seq[order]]
        self.n, self.heads, self.length = n_seq, heads, max(int(counts.max()), 1) if n_seq else 1
        where = seq * self.length + slot  # (n,) flat (sequence, slot) of each token
        token = np.full(n_seq * self.length, first, dtype=np.int64)
        token[where] = first + np.arange(len(seq))  # packed token in each slot
        keep = np.zeros(n_seq * self.length, dtype=bool)
        keep[where] = True
        self.token = to_device(token, device)
        self.bias = minus_inf_where(~keep.reshape(n_seq, 1, -1, 1), device)
        rows = (seq[:, None] * heads + np.arange(heads)) * self.length + slot[:, None]
        self.rows = to_device(rows.reshape(-1), device)  # (n * H,) output rows
        self.size = len(seq)

    def attend(self, qkv: torch.Tensor, dropout: float) -> torch.Tensor:
        """``qkv`` (n_all, 3d) packed -> this layout's tokens' attention output, packed (n, d)."""
        width = qkv.shape[1] // 3
        h, hd = self.heads, width // self.heads
        part = torch.arange(3, device=qkv.device)[:, None, None, None] * h + torch.arange(h, device=qkv.device)[None, None, :, None]
        idx = (self.token.view(1, self.n, 1, self.length) * 3 * h + part).reshape(-1)  # (3 * N * H * L,) rows of (d/H)-vectors
        q, k, v = qkv.reshape(-1, hd).index_select(0, idx).view(3, self.n, h, self.length, hd)
        p = torch.softmax(k @ q.transpose(-1, -2) * hd**-0.5 + self.bias.to(q.dtype), dim=-2)  # (N, H, L keys, L queries)
        out = F.dropout(p, dropout, training=dropout > 0).transpose(-1, -2) @ v  # (N, H, L, d/H)
        return out.reshape(-1, hd).index_select(0, self.rows).view(self.size, width)


class SharedKeys:
    """The first block's attention over every subset at once, keyed by batch row.

    Before the first attention a token is the same in every subset that contains its
    modality, so its key, value and query are too. Per batch row this keeps one padded key
    table (the row's tokens of every modality, each once, ``K`` slots) and one query slot per
    (subset, token) pair (``Q`` slots); a query attends to the keys of its subset's
    modalities (an additive ``-inf`` bias hides the others and the padding).

    ``keys``: ``[(subset, m)]`` the query groups, ``m`` a modality of the subset or None for a
    [cls] token; ``of[m]`` (n_m,) the packed input rows of ``m``, ``rows[m]`` / ``cols[m]``
    their batch row and slot (token position; 0 for a masking or [cls] token), all host
    arrays. The output rows are the groups' tokens in the order ``cat(of[m] for _, m in keys)``.
    """

    def __init__(self, keys: list, of: dict, rows: dict, cols: dict, batch: int, heads: int, device):
        mods = list(dict.fromkeys(m for _, m in keys))
        width = {m: int(cols[m].max()) + 1 if len(cols[m]) else 1 for m in mods}
        off = dict(zip(mods, np.cumsum([0] + [width[m] for m in mods]).tolist()))
        k = sum(width.values())
        self.batch, self.k, self.heads = batch, k, heads
        key = np.zeros(batch * k, dtype=np.int64)  # packed input row of each key slot (padding: row 0)
        valid = np.zeros(batch * k, dtype=bool)
        for m in mods:
            where = rows[m] * k + off[m] + cols[m]
            key[where], valid[where] = of[m], True
        slot_mod = np.concatenate([np.full(width[m], j) for j, m in enumerate(mods)])  # (K,)
        query = np.concatenate([off[m] + np.arange(width[m]) for _, m in keys])  # (Q,) key slot of each query slot
        allowed = np.concatenate([np.broadcast_to(np.isin(slot_mod, [mods.index(x) for x in mods if x is None or x in s]),
                                                  (width[m], k)) for s, m in keys])  # (Q, K): the query's subset has the key's modality
        self.q = len(query)
        self.key, self.query = to_device(key, device), to_device(query, device)
        self.bias = minus_inf_where(~(allowed.T[None] & valid.reshape(batch, k, 1))[:, None], device)  # (B, 1, K, Q)
        start = np.cumsum([0] + [width[m] for _, m in keys])
        slot = np.concatenate([rows[m] * heads * self.q + start[g] + cols[m] for g, (_, m) in enumerate(keys)])  # (n,) query slot of each output row
        self.out = to_device((slot[:, None] + np.arange(heads) * self.q).reshape(-1), device)  # (n * H,) its heads' rows in (B, H, Q)

    def attend(self, qkv: torch.Tensor, dropout: float) -> torch.Tensor:
        """``qkv`` (n_in, 3d) of the input rows -> the attention output (n, d) of the
        (subset, token) rows.

        Keys lie along dim -2 of the probabilities: torch's CPU softmax over a short last
        dimension (12 keys) is about 15x slower than over a middle one."""
        b, k, h = self.batch, self.k, self.heads
        hd = qkv.shape[1] // 3 // h
        q, key, v = qkv.index_select(0, self.key).view(b, k, 3, h, hd).permute(2, 0, 3, 1, 4)  # (B, H, K, d/H) each
        s = (key @ q.transpose(-1, -2) * hd**-0.5).index_select(3, self.query)  # (B, H, K, Q): scores once per token pair
        p = F.dropout(torch.softmax(s + self.bias.to(s.dtype), dim=2), dropout, training=dropout > 0)
        out = p.transpose(-1, -2) @ v  # (B, H, Q, d/H)
        return out.reshape(-1, hd).index_select(0, self.out).view(-1, h * hd)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, layouts: list) -> torch.Tensor:
        """Packed (n, d) -> packed (n, d); each layout covers the next run of the packed tokens."""
        qkv = self.qkv(x)
        out = [layout.attend(qkv, self._p()) for layout in layouts]
        return self.proj_drop(self.proj(out[0] if len(out) == 1 else torch.cat(out)))

    def shared(self, x: torch.Tensor, keys: SharedKeys) -> torch.Tensor:
        """Input rows (n_in, d) -> the (subset, token) rows' output (n, d), see :class:`SharedKeys`."""
        return self.proj_drop(self.proj(keys.attend(self.qkv(x), self._p())))

    def _p(self) -> float:
        return self.dropout if self.training else 0.0


class Block(nn.Module):
    """One pre-norm transformer block (ViT / the paper's Fig. 2) on packed tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, mlp_dim, dropout)

    def first(self, x: torch.Tensor, keys: SharedKeys, source: torch.Tensor, pool=None) -> torch.Tensor:
        """The first block: input rows ``x`` (n_in, d), each shared by every subset containing
        it; ``source`` (n,) the input row of each sequence token. LayerNorm and qkv run once
        per input row."""
        x = x.index_select(0, source) + self.attn.shared(self.norm1(x), keys)
        return self.feed(x, pool)

    def forward(self, x: torch.Tensor, layouts: list, pool=None) -> torch.Tensor:
        """``x`` (n, d) packed sequence tokens."""
        return self.feed(x + self.attn(self.norm1(x), layouts), pool)

    def feed(self, x: torch.Tensor, pool=None) -> torch.Tensor:
        """The MLP half; with ``pool`` (a mean per segment: weights that sum to 1, so ``fc2``'s
        bias passes through) the pooled output. ``fc2`` is affine, so pooling its input first
        gives the same result with ``fc2`` applied to the pooled rows only; not under dropout,
        which draws per token."""
        h = self.mlp.hidden(self.norm2(x))
        if pool is None:
            return x + self.mlp.drop(self.mlp.fc2(h))
        if self.training and self.mlp.drop.p > 0:
            return pool(x + self.mlp.drop(self.mlp.fc2(h)))
        return pool(x) + self.mlp.fc2(pool(h))


class FusionTransformer(nn.Module):
    """A stack of :class:`Block` (and an optional final LayerNorm) over packed sequences."""

    def __init__(self, dim: int, depth: int = 1, heads: int = 4, mlp_dim: int = 0, dropout: float = 0.0, final_norm: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim or dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=EPS) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor, keys: SharedKeys, source: torch.Tensor, layouts, pool) -> torch.Tensor:
        """Input rows ``x`` (n_in, d) -> ``pool`` of the output tokens of the sequences.

        ``keys`` and ``source`` place the input rows for the first block, ``layouts()`` the
        sequence tokens for the others (built only when there are others)."""
        if not self.blocks:
            return pool(self.norm(x.index_select(0, source)))
        last = pool if isinstance(self.norm, nn.Identity) else None  # a LayerNorm after the blocks is not linear
        placed = layouts() if len(self.blocks) > 1 else None
        for k, blk in enumerate(self.blocks):
            end = last if k == len(self.blocks) - 1 else None
            x = blk.first(x, keys, source, end) if k == 0 else blk(x, placed, end)
        return x if last is not None else pool(self.norm(x))


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d): the mean over the valid tokens only."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def segment_mean(x: torch.Tensor, segment: torch.Tensor, n: int, count: torch.Tensor | None = None) -> torch.Tensor:
    """(m, d) rows, (m,) segment ids in [0, n) -> (n, d) mean of each segment's rows.

    ``count`` (n,): the rows per segment when the caller knows them (counting on a CUDA device
    reads the largest id back to the host)."""
    total = x.new_zeros(n, x.shape[-1]).index_add(0, segment, x)
    if count is None:
        count = torch.bincount(segment, minlength=n)
    return total / count.clamp_min(1).to(x.dtype)[:, None]


class Tokens:
    """One batch's packed tokens: ``x`` (n, d) over all modalities; each row's batch row,
    column (token position; 0 for a masking token) and modality index, as host arrays (``row``,
    ``col``, ``modality``: every index of the fusion pass is built from them on the host);
    ``present[m]`` (B,) the rows where modality ``m`` is real, on the device."""

    def __init__(self, x, row, col, modality, present, batch):
        self.x, self.row, self.col, self.modality, self.present, self.batch = x, row, col, modality, present, batch


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
        final_norm: bool = False,
        init: str = "vit",
        encoders: dict | None = None,
    ):
        super().__init__()
        if fusion not in ("shared", "separate", "none"):
            raise ValueError(f"fusion must be shared, separate or none, not {fusion!r}")
        if init not in ("vit", "torch"):
            raise ValueError(f"init must be vit or torch, not {init!r}")
        self.modalities = [str(m) for m in dims]
        # trainable encoders run on a modality's padded inputs before its token projection;
        # ``dims`` then holds their output width
        self.encoders = nn.ModuleDict({str(m): e for m, e in (encoders or {}).items()})
        self.fusion, self.use_cls, self.heads = fusion, cls_token, heads
        self.token_proj = nn.ModuleDict(
            {str(m): nn.Sequential(GatedLinear(d, token_dim), nn.LayerNorm(token_dim, eps=EPS)) for m, d in dims.items()}
        )
        self.empty = nn.Parameter(torch.zeros(token_dim))  # the reference's masking token
        make = lambda: FusionTransformer(token_dim, depth, heads, mlp_dim, dropout, final_norm)  # noqa: E731
        if fusion == "shared":
            self.transformer = make()
        elif fusion == "separate":
            self.transformer = nn.ModuleDict({m: make() for m in self.modalities})
        self.cls = nn.Parameter(torch.zeros(token_dim)) if cls_token else None
        self.pos = nn.ParameterDict({m: nn.Parameter(torch.zeros(max_positions, token_dim)) for m in self.modalities}) if max_positions else None
        # a [cls] output belongs to no modality, so it needs the shared projection (Table 5)
        self.shared_projection = shared_projection or cls_token
        if self.shared_projection:
            self.proj = GatedLinear(token_dim, embed_dim)
        else:
            self.proj = nn.ModuleDict({m: GatedLinear(token_dim, embed_dim) for m in self.modalities})
        self._init(init)

    def _init(self, init: str) -> None:
        """ViT initialisation of the fusion part (the reference's ``init_weights``), or PyTorch's."""
        std = 0.02
        tokens = [self.empty, self.cls] + (list(self.pos.values()) if self.pos is not None else [])
        for p in tokens:
            if p is not None:
                nn.init.trunc_normal_(p, std=std) if init == "vit" else nn.init.normal_(p, std=std)
        if init == "vit" and self.fusion != "none":
            for mod in self.transformer.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.trunc_normal_(mod.weight, std=std)
                    nn.init.zeros_(mod.bias)

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, inputs: dict, modalities) -> Tokens:
        """Project every real token of ``modalities`` once: ``inputs[m] = (x (B, T, D_m),
        valid (B, T) bool, present (B,) bool[, (valid, present) as numpy])``. Rows without ``m``
        (``present`` false, or no valid token) get the masking token (plus position 0's embedding).

        Which tokens are real is read from the host copy of the masks when the caller gives it
        (the training strategy does: it knows the lengths), else from the device once: on CUDA
        that read waits for the device, and nothing else in the pass does."""
        xs, rows, cols, mods, present = [], [], [], [], {}
        batch = None
        for k, m in enumerate(modalities):
            x, valid, pres, *host = inputs[m]
            valid_h, pres_h = host[0] if host else (valid.cpu().numpy(), pres.cpu().numpy())
            batch = len(valid_h)
            pres_h = pres_h & valid_h.any(1) if valid_h.shape[1] else np.zeros_like(pres_h)
            r_h, c_h = np.nonzero(valid_h & pres_h[:, None])
            absent_h = np.flatnonzero(~pres_h)
            r, c = to_device(r_h, x.device), to_device(c_h, x.device)
            if m in self.encoders:
                x = self.encoders[m](x, valid & pres[:, None])  # (B, T, D_enc)
            tok = self.token_proj[m](x[r, c])  # (n_m, token_dim): real tokens only
            fill = self.empty.to(tok.dtype).expand(len(absent_h), -1)
            if self.pos is not None:
                if valid_h.shape[1] > len(self.pos[m]):
                    raise ValueError(f"{m}: {valid_h.shape[1]} tokens, but positional embeddings were built for {len(self.pos[m])}")
                tok, fill = tok + self.pos[m][c], fill + self.pos[m][0]
            xs += [tok, fill]
            rows += [r_h, absent_h]
            cols += [c_h, np.zeros_like(absent_h)]
            mods.append(np.full(len(r_h) + len(absent_h), k))
            present[m] = pres & valid.any(1) if valid.shape[1] else torch.zeros_like(pres)
        return Tokens(torch.cat(xs), np.concatenate(rows), np.concatenate(cols), np.concatenate(mods), present, batch)

    # -- embeddings -----------------------------------------------------------------------
    def embed_subsets(self, inputs: dict, subsets: list) -> dict:
        """``{subset: (B, embed_dim)}`` L2-normalised embeddings (eq. 1) of every subset (a
        tuple of modality names), computed together (see the module docstring)."""
        subsets = [tuple(str(m) for m in s) for s in subsets]
        modalities = list(dict.fromkeys(m for s in subsets for m in s))
        tok = self.tokenize(inputs, modalities)
        if self.fusion == "shared":
            pooled = self._fuse(self.transformer, tok, modalities, subsets)
        else:  # each modality alone: Table 4's "v + a"
            pooled = {}
            for m in modalities:
                (one,) = self._fuse(self.transformer[m] if self.fusion == "separate" else None, tok, modalities, [(m,)]).values()
                pooled[((m,), m)] = one
        return self._project(pooled, subsets)

    def _fuse(self, transformer, tok: Tokens, modalities: list, subsets: list) -> dict:
        """Run ``subsets`` (one sequence per subset and row) through ``transformer`` at once.

        The first block sees every subset through one :class:`SharedKeys`; later blocks (depth
        > 1) run subsets of the same size as one padded attention batch, so a single
        modality's sequences are not padded to the length of a pair's. Returns
        ``{(subset, m): (B, d)}`` pooled outputs of each modality in each subset, or, with a
        [cls] token, ``{(subset, None): (B, d)}``.
        """
        b, dev = tok.batch, tok.x.device
        of = {m: np.flatnonzero(tok.modality == k) for k, m in enumerate(modalities)}  # packed rows of m
        rows, cols = {m: tok.row[i] for m, i in of.items()}, {m: tok.col[i] for m, i in of.items()}
        if self.use_cls:  # the [cls] token is one extra input row shared by all sequences
            of[None], rows[None], cols[None] = np.full(b, len(tok.x)), np.arange(b), np.zeros(b, dtype=np.int64)
        keys, seqs = [], []
        for size in sorted({len(s) for s in subsets}):
            group = [s for s in subsets if len(s) == size]
            seqs.append((np.concatenate([j * b + rows[m] for j, s in enumerate(group) for m in self._slots(s)]), len(group) * b))
            keys += [(s, m) for s in group for m in self._slots(s)]
        source = to_device(np.concatenate([of[m] for _, m in keys]), dev)
        segment = np.concatenate([k * b + rows[m] for k, (_, m) in enumerate(keys)])
        count = to_device(np.bincount(segment, minlength=len(keys) * b), dev)
        segment = to_device(segment, dev)
        pool = lambda x: segment_mean(x, segment, len(keys) * b, count)  # noqa: E731 - a [cls] segment is its one token
        x = tok.x if not self.use_cls else torch.cat([tok.x, self.cls.to(tok.x.dtype)[None]])
        if transformer is None:
            means = pool(x.index_select(0, source))  # no transformer: the tokens themselves
        else:
            starts = np.cumsum([0] + [len(seq) for seq, _ in seqs]).tolist()
            layouts = lambda: [Layout(seq, n, self.heads, at, dev) for (seq, n), at in zip(seqs, starts)]  # noqa: E731
            means = transformer(x, SharedKeys(keys, of, rows, cols, b, self.heads, dev), source, layouts, pool)
        means = means.view(len(keys), b, -1).unbind(0)  # one backward for all (indexing would zero-fill each)
        return {key: means[k] for k, key in enumerate(keys) if (key[1] is None) == self.use_cls}

    def _slots(self, subset: tuple) -> list:
        """The parts of ``subset``'s sequence: its modalities, after a [cls] token if any."""
        return ([None] if self.use_cls else []) + list(subset)

    def _project(self, pooled: dict, subsets: list) -> dict:
        """Final projections, one call per projection over every subset that uses it; eq. 1."""
        groups: dict = {}
        for key in pooled:
            groups.setdefault("shared" if self.shared_projection else key[1], []).append(key)
        embs = {}
        for name, keys in groups.items():
            proj = self.proj if self.shared_projection else self.proj[name]
            out = F.normalize(proj(torch.cat([pooled[k] for k in keys])), dim=-1).split([len(pooled[k]) for k in keys])
            embs.update(zip(keys, out))
        return {s: F.normalize(torch.stack([embs[k] for k in self._parts(s)]).sum(0), dim=-1) for s in subsets}

    def _parts(self, subset: tuple) -> list:
        """Keys of the projected vectors summed into ``subset``'s embedding (eq. 1)."""
        if self.fusion != "shared":
            return [((m,), m) for m in subset]  # each modality embedded alone
        return [(subset, None)] if self.use_cls else [(subset, m) for m in subset]

    def forward(self, inputs: dict, subset: tuple) -> torch.Tensor:
        """The L2-normalised embedding (B, embed_dim) of ``subset`` (eq. 1).

        ``inputs[m] = (x (B, T, D_m), valid (B, T) bool, present (B,) bool)``.
        """
        subset = tuple(str(m) for m in subset)
        return self.embed_subsets(inputs, [subset])[subset]
