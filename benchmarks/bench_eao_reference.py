"""mmx's EAO against the reference implementation (ninatu/everything_at_once): the same loss
with the reference's weights copied in, and samples/s of a training step on the same data,
dimensions and device.

The reference is read from ``--reference PATH`` (a checkout of that repository; never part of
mmx). Its model is built with DAVEnet replaced by a transpose (both sides then take the same
pre-extracted audio tokens, as mmx does) and its audio token projection resized to those
tokens. It imports a few names from timm; when timm cannot be imported (timm needs
torchvision), a stand-in with those names is installed: ``trunc_normal_`` is torch's,
``Mlp`` is Linear-GELU-Dropout-Linear-Dropout, ``Attention`` only the attributes the
reference's subclass uses, ``_init_vit_weights`` ViT's init (truncated normal std 0.02 for
Linear weights, zero biases, LayerNorm ones/zeros); timm >= 0.9 renamed the latter
``init_weights_vit_timm``, which is aliased.

A step is forward of the six subsets (t, v, a, tv, ta, va), the combinatorial loss over the
six terms of the paper (tv 1, the rest 0.1), backward and Adam. Steps of the two
implementations are interleaved and timed in one run; threads pinned (``--threads``).

    python benchmarks/bench_eao_reference.py --reference PATH [--dims 256,1024] [--batch 224]
        [--steps 10] [--threads 1] [--device cpu|cuda] [--tokens 2,4]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import types

import torch
from torch import nn

from mmx.train.losses import combinatorial_loss

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_eao import eao_terms, make_batch, mmx_model, mmx_step, reference_step_flops, step_flops, subsets_of, sync_for  # noqa: E402

DIMS = {"text": 512, "video": 600, "audio": 128}  # the XMediaNet-scale synthetic cache's widths


def _timm_stand_in() -> None:
    """Install the few timm names the reference imports, if timm itself cannot be imported."""
    try:
        import timm.models.vision_transformer as vt

        if not hasattr(vt, "_init_vit_weights"):
            vt._init_vit_weights = vt.init_weights_vit_timm
        return
    except Exception:  # noqa: BLE001 - any import failure: fall back to the stand-in
        for name in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
            del sys.modules[name]

    class Mlp(nn.Module):
        def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
            super().__init__()
            self.fc1 = nn.Linear(in_features, hidden_features or in_features)
            self.act, self.drop = act_layer(), nn.Dropout(drop)
            self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

        def forward(self, x):
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    class Attention(nn.Module):
        def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
            super().__init__()
            self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
            self.qkv, self.attn_drop = nn.Linear(dim, dim * 3, bias=qkv_bias), nn.Dropout(attn_drop)
            self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Dropout(proj_drop)

    def init_vit(m, *args, **kwargs):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    vt = types.ModuleType("timm.models.vision_transformer")
    vt.Mlp, vt.Attention, vt.DropPath, vt._init_vit_weights, vt.trunc_normal_ = Mlp, Attention, nn.Identity, init_vit, nn.init.trunc_normal_
    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_ = nn.init.trunc_normal_
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, models.vision_transformer, models.layers = models, vt, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.vision_transformer": vt, "timm.models.layers": layers})
    print("timm not importable here: using the stand-in described in this script's docstring")


class Transpose(nn.Module):
    """Stands in for DAVEnet: the reference permutes DAVEnet's (B, C, T) output to (B, T, C)."""

    def forward(self, x):
        return x


def reference_model(path: str, d: int, heads: int, device):
    sys.path.insert(0, path)
    _timm_stand_in()
    import everything_at_once.model.fusion_model as fm
    from everything_at_once.loss import CombinatorialLoss
    from everything_at_once.model.utils.layers import get_projection

    fm.load_DAVEnet = lambda v2=True: Transpose()
    torch.manual_seed(0)
    model = fm.EverythingAtOnceModel(video_embed_dim=DIMS["video"], text_embed_dim=DIMS["text"], projection_dim=d,
                                     fusion_params=dict(embed_dim=d, depth=1, num_heads=heads, mlp_ratio=1))
    model.audio_token_proj = get_projection(DIMS["audio"], d, "gated")
    loss = CombinatorialLoss(tv_weight=1, ta_weight=0.1, va_weight=0.1, t_va_weight=0.1, v_ta_weight=0.1, a_tv_weight=0.1)
    return model.to(device), loss


def reference_inputs(batch: dict) -> dict:
    """mmx's ``{m: (x, valid, present)}`` as the reference's data dict (fresh masks: it edits them in place)."""
    mask = {m: (v & p[:, None]).float() for m, (_, v, p, *_host) in batch.items()}
    return {"text": batch["text"][0], "text_mask": mask["text"], "video": batch["video"][0], "video_mask": mask["video"],
            "audio": batch["audio"][0].transpose(1, 2), "audio_mask": mask["audio"], "audio_STFT_nframes": mask["audio"].sum(1)}


def copy_reference_weights(ref, mmx) -> None:
    """Load the reference's weights into mmx's model (names mapped one to one)."""
    ref_sd, names = ref.state_dict(), {}
    for m in ("text", "video", "audio"):
        names.update({f"token_proj.{m}.0.fc": f"{m}_token_proj.fc", f"token_proj.{m}.0.gate": f"{m}_token_proj.cg.fc",
                      f"token_proj.{m}.1": f"{m}_norm_layer", f"proj.{m}.fc": f"{m}_proj.fc", f"proj.{m}.gate": f"{m}_proj.cg.fc"})
    for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
        names[f"transformer.blocks.0.{part}"] = f"fusion.blocks.0.{part}"
    sd = {}
    for key in mmx.state_dict():
        if key == "empty":
            sd[key] = ref_sd["fusion.masking_token"]
            continue
        prefix, leaf = key.rsplit(".", 1)
        sd[key] = ref_sd[f"{names[prefix]}.{leaf}"]
    mmx.load_state_dict(sd)


def ref_step(model, loss_fn, opt, batch, autocast) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    with autocast():
        loss = loss_fn(model(reference_inputs(batch)))[0]
    loss.backward()
    opt.step()
    return loss.detach()


def matmul_share(step, device) -> tuple[float, float]:
    """(ms in matrix products, ms in everything else) of one step, by torch's profiler: the self
    time of mm/addmm/bmm against all other aten ops, CPU time on the CPU and the kernels' device
    time on CUDA (where an op's CPU time is only its launch)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        step()
        sync_for(device)()
    ms = [0.0, 0.0]
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            us = e.self_device_time_total if cuda else e.self_cpu_time_total
            ms[e.key in ("aten::mm", "aten::addmm", "aten::bmm")] += us / 1e3
    return ms[1], ms[0]


def compare(path: str, d: int, heads: int, batch_size: int, steps: int, device, tokens: tuple = (2, 4), profile: bool = False) -> dict:
    batch = make_batch(DIMS, batch_size, tokens, device)
    ref, loss_fn = reference_model(path, d, heads, device)
    mmx = mmx_model(DIMS, d, heads, d, device)
    copy_reference_weights(ref, mmx)
    terms = eao_terms()
    with torch.no_grad():
        ref.eval(), mmx.eval()
        ref_loss = float(loss_fn(ref(reference_inputs(batch)))[0])

        embs = mmx.embed_subsets(batch, subsets_of(terms))
        present = {s: torch.ones(batch_size, dtype=torch.bool, device=device) for s in embs}
        mmx_loss = float(combinatorial_loss(embs, present, terms, 0.05)["loss"])
    ref.train(), mmx.train()
    none = contextlib.nullcontext
    opt_r, opt_m = torch.optim.Adam(ref.parameters(), lr=5e-5), torch.optim.Adam(mmx.parameters(), lr=5e-5)
    sync = sync_for(device)
    run = {"mmx": lambda: mmx_step(mmx, opt_m, batch, terms, none), "reference": lambda: ref_step(ref, loss_fn, opt_r, batch, none)}
    for f in run.values():  # warm-up
        f(), f()
    spent = {k: [] for k in run}
    for _ in range(steps):  # interleaved, so load changes hit both alike
        for k, f in run.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            spent[k].append(time.perf_counter() - t0)
    rate = {k: batch_size * steps / sum(s) for k, s in spent.items()}
    shares = {k: matmul_share(f, device) for k, f in run.items()} if profile else {}
    pairs = [r / m for r, m in zip(spent["reference"], spent["mmx"])]  # each step pair's ratio: robust to load swings
    mean_tokens = float(sum(v.sum() for _, v, *_ in batch.values())) / len(batch) / batch_size  # real tokens per modality
    max_tokens = max(v.shape[1] for _, v, *_ in batch.values())  # the reference projects and attends over every slot
    flops = reference_step_flops(d, d, DIMS, max_tokens, batch_size) / step_flops(d, d, DIMS, mean_tokens, batch_size)
    return {"dim": d, "heads": heads, "ref_loss": ref_loss, "mmx_loss": mmx_loss, **rate, "ratio": rate["mmx"] / rate["reference"],
            "flop_ratio": flops, "pair_median": statistics.median(pairs), "shares": shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="checkout of ninatu/everything_at_once")
    ap.add_argument("--dims", default="256,1024")
    ap.add_argument("--batch", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", default="2,4", help="fewest,most real tokens per item and modality (padded to the most)")
    ap.add_argument("--profile", action="store_true", help="also profile one more step of each: ms in matmuls / the rest")
    a = ap.parse_args()
    tokens = tuple(int(x) for x in a.tokens.split(","))
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"device {device}, {a.threads} thread(s), batch {a.batch}, {tokens[0]}-{tokens[1]} tokens per item, widths {DIMS}")
    for d in (int(x) for x in a.dims.split(",")):
        r = compare(a.reference, d, max(d // 64, 4), a.batch, a.steps, device, tokens, a.profile)
        print(f"token/joint {d}, {r['heads']} heads: loss reference {r['ref_loss']:.6f} mmx {r['mmx_loss']:.6f} "
              f"(diff {abs(r['ref_loss'] - r['mmx_loss']):.1e}); samples/s reference {r['reference']:.0f}, mmx {r['mmx']:.0f}: "
              f"x{r['ratio']:.2f}, median of the step pairs x{r['pair_median']:.2f} (matmul FLOPs reference / mmx: {r['flop_ratio']:.2f})")
        for k, (mm, rest) in r["shares"].items():
            print(f"  {k}: one step profiled, {mm:.0f} ms in matmuls, {rest:.0f} ms in the rest")


if __name__ == "__main__":
    main()
