"""mmx's EAO model against the reference code's equations (ninatu/everything_at_once), written
out directly: each subset on its own, padded, with a plain masked-softmax attention.

mmx computes all subsets together on packed tokens (train/fusion.py); this checks that it is
the same function, with the reference's defaults (masking token, no final LayerNorm, eps 1e-6,
positional tables per modality added after masking).
"""

import pytest
import torch
import torch.nn.functional as F

from mmx.train.fusion import Block, EverythingAtOnce, segment_mean

DIMS = {"text": 6, "video": 10, "audio": 8}


def _gated(unit, x):
    y = unit.fc(x)
    return y * torch.sigmoid(unit.gate(y))


def _ln(norm, x):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, eps=1e-6)


def reference_tokens(model, inputs, m):
    """extract_*_tokens + _check_and_fix_if_input_empty + positional 'after masking'."""
    x, valid, present = inputs[m]
    y = _ln(model.token_proj[m][1], _gated(model.token_proj[m][0], x))  # (B, T, d)
    mask = (valid & present[:, None]).clone()
    empty = mask.sum(-1) == 0
    y = y.clone()
    y[empty, :1] = model.empty
    mask[empty, :1] = True
    if model.pos is not None:
        y = y + model.pos[m][: y.shape[1]]
    return y, mask


def reference_block(blk, x, mask):
    b, n, c = x.shape
    h = blk.attn.heads
    qkv = F.linear(_ln(blk.norm1, x), blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * (c // h) ** -0.5
    attn = attn.masked_fill(~mask.view(b, 1, 1, n), float("-inf")).softmax(-1)
    x = x + blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(_ln(blk.norm2, x))))


def reference_embed(model, inputs, subset):
    """The reference's FusionTransformer.forward on one subset, then the projections and eq. 1."""
    toks = [reference_tokens(model, inputs, m) for m in subset]
    x, mask = torch.cat([t for t, _ in toks], 1), torch.cat([v for _, v in toks], 1)
    if model.use_cls:
        b = x.shape[0]
        x = torch.cat([model.cls.expand(b, 1, -1), x], 1)
        mask = torch.cat([mask.new_ones(b, 1), mask], 1)
    for blk in model.transformer.blocks:
        x = reference_block(blk, x, mask)
    x = model.transformer.norm(x)  # off by default, as in the reference
    if model.use_cls:
        return F.normalize(_gated(model.proj, x[:, 0]), dim=-1)
    out, i = [], 1 if model.use_cls else 0
    for m, (t, v) in zip(subset, toks):
        w = v.float().unsqueeze(-1)
        pooled = (x[:, i : i + t.shape[1]] * w).sum(1) / w.sum(1)
        proj = model.proj if model.shared_projection else model.proj[m]
        out.append(F.normalize(_gated(proj, pooled), dim=-1))
        i += t.shape[1]
    return F.normalize(torch.stack(out).sum(0), dim=-1)


def _inputs(seed=0, b=7, t=5):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, (m, d) in enumerate(DIMS.items()):
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        valid = torch.arange(t)[None] < lengths[:, None]
        present = torch.rand(b, generator=g) > 0.25
        present[k] = False  # at least one row without each modality
        out[m] = (torch.randn(b, t, d, generator=g), valid, present)
    return out


SUBSETS = [("text",), ("video",), ("audio",), ("text", "video"), ("text", "audio"), ("video", "audio"), ("text", "video", "audio")]


CONFIGS = [
    {},
    {"depth": 2, "mlp_dim": 24},
    {"max_positions": 5},
    {"shared_projection": True},
    {"cls_token": True},
    {"final_norm": True},
    {"depth": 3, "cls_token": True, "max_positions": 5},
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_all_subsets_at_once_equal_the_reference_per_subset(kw):
    torch.manual_seed(0)
    model = EverythingAtOnce(DIMS, token_dim=16, embed_dim=12, heads=4, **kw).eval()
    inputs = _inputs()
    with torch.no_grad():
        together = model.embed_subsets(inputs, SUBSETS)
        for s in SUBSETS:
            ref = reference_embed(model, inputs, s)
            assert torch.allclose(together[s], ref, atol=1e-5), s
            assert torch.allclose(model(inputs, s), ref, atol=1e-5), s  # one subset alone: the same


@pytest.mark.parametrize("kw", CONFIGS)
def test_gradients_equal_the_reference(kw):
    """Every parameter's gradient: covers the shared first block (scores once per token
    pair), fc2 after the pooling, and the later blocks' padded batches."""
    torch.manual_seed(0)
    model = EverythingAtOnce(DIMS, token_dim=16, embed_dim=12, heads=4, **kw)
    inputs = _inputs(1)
    grads = []
    for fn in (lambda s: model.embed_subsets(inputs, SUBSETS)[s], lambda s: reference_embed(model, inputs, s)):
        model.zero_grad()
        sum((fn(s) * torch.arange(12.0)).sum() for s in SUBSETS).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


def test_reference_defaults_and_their_options():
    torch.manual_seed(0)
    model = EverythingAtOnce(DIMS, token_dim=16, embed_dim=12, heads=4)
    assert isinstance(model.transformer.norm, torch.nn.Identity)  # the reference never applies its final norm
    qkv = model.transformer.blocks[0].attn.qkv.requires_grad_(False)
    assert float(qkv.bias.abs().max()) == 0.0
    assert float(qkv.weight.std()) == pytest.approx(0.02, rel=0.1)  # ViT's cut-offs are +-2 absolute: 100 std
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    torch_init = EverythingAtOnce(DIMS, token_dim=16, embed_dim=12, heads=4, init="torch", final_norm=True)
    assert isinstance(torch_init.transformer.norm, torch.nn.LayerNorm)
    assert float(torch_init.transformer.blocks[0].attn.qkv.bias.detach().abs().max()) > 0
    with pytest.raises(ValueError, match="init"):
        EverythingAtOnce(DIMS, init="xavier")


def test_pooling_before_fc2_is_pooling_after_it_and_dropout_stays_per_token():
    """``Block.feed`` with a pool: fc2 on the pooled rows (no dropout), or, under dropout,
    the per-token computation with the same random draws."""
    torch.manual_seed(0)
    blk = Block(16, 4, 24, dropout=0.3)
    x, segment = torch.randn(11, 16), torch.tensor([0, 0, 1, 2, 2, 2, 3, 1, 0, 3, 3])
    pool = lambda t: segment_mean(t, segment, 4)  # noqa: E731
    blk.eval()
    assert torch.allclose(blk.feed(x, pool), pool(blk.feed(x)), atol=1e-6)
    blk.train()
    torch.manual_seed(1)
    pooled = blk.feed(x, pool)
    torch.manual_seed(1)
    assert torch.equal(pooled, pool(blk.feed(x)))
