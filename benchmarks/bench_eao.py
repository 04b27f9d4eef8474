"""EAO training speed: samples/s of one training step (forward of every subset the loss uses,
the combinatorial loss, backward, Adam) of mmx's Everything-at-Once model.

Default: the paper's size (paper 001 Sec. 4.1: token space 4096, one block of 64 heads, MLP
4096, joint space 6144, batch 224, text 300-d word vectors, video 4096-d, audio 4096-d after
DAVEnet; 2-4 tokens per item). On a CPU that is about a minute per step: pass a smaller
``--batch`` and say so. With ``--device cuda`` it also reports the fraction of the GPU's bf16
peak reached (``--peak-tflops``, default 989: H100/H200 dense bf16), runs under bf16
autocast unless ``--fp32``, and reports its peak memory beside train/sizing.py's estimate.

    python benchmarks/bench_eao.py [--device cpu|cuda] [--batch 224] [--token-dim 4096]
        [--heads 64] [--embed-dim 6144] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from mmx.train.fusion import EverythingAtOnce
from mmx.train.losses import combinatorial_loss
from mmx.train.strategies.eao import build_terms

MODS = ("text", "video", "audio")
PAPER_DIMS = {"text": 300, "video": 4096, "audio": 4096}


def make_batch(dims: dict, batch: int, tokens: tuple, device, seed: int = 0) -> dict:
    """``{m: (x (B, T, D), valid (B, T), present (B,), (valid, present) on the host)}``, 2-4 real
    tokens per item, all present: what the strategy's batches hold (train/strategies/eao.py)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, d in dims.items():
        lengths = torch.randint(tokens[0], tokens[1] + 1, (batch,), generator=g)
        valid = torch.arange(tokens[1])[None] < lengths[:, None]
        x = torch.randn(batch, tokens[1], d, generator=g) * valid[..., None]
        present = torch.ones(batch, dtype=torch.bool)
        out[m] = (x.to(device), valid.to(device), present.to(device), (valid.numpy(), present.numpy()))
    return out


def mmx_step(model, opt, batch, terms, autocast) -> torch.Tensor:
    """One training step of mmx's eao (the strategy's ``step`` less the batch gathering)."""
    opt.zero_grad(set_to_none=True)
    with autocast():
        subsets = subsets_of(terms)
        embs = model.embed_subsets(batch, subsets)
        present = {s: np.all([batch[m][3][1] for m in s], 0) for s in subsets}  # host masks, as the strategy's
        loss = combinatorial_loss(embs, present, terms, 0.05)["loss"]
    loss.backward()
    opt.step()
    return loss.detach()


def mmx_model(dims: dict, token_dim: int, heads: int, embed_dim: int, device):
    torch.manual_seed(0)
    return EverythingAtOnce(dims, token_dim=token_dim, embed_dim=embed_dim, depth=1, heads=heads, mlp_dim=token_dim).to(device)


def eao_terms() -> list:
    """The paper's six terms (tv 1, ta, va, t-va, v-ta, a-tv 0.1) as modality-name tuples."""
    return [(tuple(m.value for m in x), tuple(m.value for m in y), w) for x, y, w in build_terms(list(MODS), "eao", {"text-video": 1.0}, 0.1)]


def subsets_of(terms) -> list:
    return list(dict.fromkeys(s for x, y, _ in terms for s in (x, y)))


def sync_for(device):
    """What waits for ``device``'s queued work before a clock is read: ``torch.cuda.synchronize``
    of that device on CUDA (bare, it waits for the current device only), nothing on the CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_steps(step, steps: int, device) -> float:
    """Seconds per step after two warm-up steps."""
    sync = sync_for(device)
    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def step_flops(token_dim: int, embed_dim: int, dims: dict, mean_tokens: float, batch: int, mlp_dim: int = 0) -> float:
    """Matmul FLOPs of one mmx training step (forward x 3 for backward), attention ignored."""
    d, e, t, f = token_dim, embed_dim, mean_tokens, mlp_dim or token_dim
    unique = t * len(dims)  # real tokens per row
    per_row = sum(t * (D * d + d * d) for D in dims.values())  # token projections
    per_row += unique * 3 * d * d  # first LayerNorm + qkv, once per token
    pooled = sum(len(s) for s in subsets_of(eao_terms()))  # a modality's appearances in the six subsets
    per_row += pooled * t * (d * d + d * f)  # out-proj + fc1 per (subset, token)
    per_row += pooled * (f * d + d * e + e * e)  # fc2 on the pooled rows, final gated projections
    return 2 * 3 * per_row * batch


def reference_step_flops(token_dim: int, embed_dim: int, dims: dict, max_tokens: int, batch: int, mlp_dim: int = 0) -> float:
    """The same for the reference code: every token slot (padding too) projected once, each
    subset's padded sequence through the whole block."""
    d, e, t, f = token_dim, embed_dim, max_tokens, mlp_dim or token_dim
    per_row = sum(t * (D * d + d * d) for D in dims.values())
    slots = sum(len(s) for s in subsets_of(eao_terms())) * t  # (subset, token slot) pairs
    per_row += slots * (4 * d * d + 2 * d * f)
    per_row += sum(len(s) for s in subsets_of(eao_terms())) * (d * e + e * e)
    return 2 * 3 * per_row * batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=224)
    ap.add_argument("--token-dim", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--embed-dim", type=int, default=6144)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    bf16 = device.type == "cuda" and not a.fp32
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    model = mmx_model(PAPER_DIMS, a.token_dim, a.heads, a.embed_dim, device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    batch, terms = make_batch(PAPER_DIMS, a.batch, (2, 4), device), eao_terms()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = time_steps(lambda: mmx_step(model, opt, batch, terms, autocast), a.steps, device)
    flops = step_flops(a.token_dim, a.embed_dim, PAPER_DIMS, 3.0, a.batch)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{a.threads} thread(s)'}), "
          f"{'bf16 autocast' if bf16 else 'fp32'}; token {a.token_dim}, heads {a.heads}, joint {a.embed_dim}, batch {a.batch}")
    print(f"{sec * 1000:.1f} ms/step, {a.batch / sec:.2f} samples/s, {flops / sec / 1e9:.1f} GFLOP/s (matmuls)", end="")
    print(f", {flops / sec / 1e12 / a.peak_tflops:.3f} of a {a.peak_tflops:g} TFLOP/s peak" if device.type == "cuda" else "")
    est = sized(a, device, not bf16)
    gib = 2**30
    said = f"sizing estimate (train/sizing.py): {est.state_bytes / gib:.2f} GiB model state + {est.train_bytes / gib:.2f} GiB train step"
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / gib:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved(device) / gib:.2f} GiB reserved; {said}")
    else:
        print(said)


def sized(a, device, fp32: bool):
    """train/sizing.py's estimate of this benchmark's model and batch (2-4 tokens: 3 on average)."""
    from mmx.train import sizing
    from mmx.train.config import resolve
    from mmx.train.strategies import get_strategy

    cfg = resolve(["eao"], {"modalities": list(MODS), "batch_size": a.batch, "embed_dim": a.embed_dim, "amp": not fp32},
                  [f"options.token_dim={a.token_dim}", f"options.heads={a.heads}", f"options.mlp_dim={a.token_dim}"])
    shapes = sizing.Shapes(dims=dict(PAPER_DIMS), tokens_mean={m: 3.0 for m in MODS}, tokens_max={m: 4 for m in MODS},
                           items={m: 0 for m in MODS}, token_rows={m: 0 for m in MODS}, train_units=a.batch, holdout_units=a.batch)
    return sizing.estimate(cfg, get_strategy("eao"), shapes, device.type, a.threads)


if __name__ == "__main__":
    main()
