"""The sizing estimate (train/sizing.py) against measured peaks and step times of eao on a CPU.

Each size runs in a fresh process: a synthetic token cache, :func:`mmx.train.prepare.prepare`,
then one training step (three steps: gradients and AdamW's moments are allocated on the first, the allocator settles after it) and one
held-out pass, each measured as the growth of the peak resident set (tests/peakmem.py), and a
few more steps timed. Prints estimate and measurement side by side, and the ratio.

    python benchmarks/bench_sizing.py [--sizes small,medium,large] [--threads 1] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (token_dim, heads, embed_dim, batch, items per modality, tokens per item (min, max), feature dims)
SIZES = {
    "small": dict(token_dim=128, heads=4, embed_dim=256, batch=256, items=400, tokens=(4, 12)),
    "medium": dict(token_dim=256, heads=8, embed_dim=512, batch=512, items=700, tokens=(4, 12)),
    "large": dict(token_dim=256, heads=8, embed_dim=1024, batch=1024, items=1300, tokens=(6, 16)),
    "wide": dict(token_dim=1024, heads=16, embed_dim=1024, batch=256, items=400, tokens=(4, 12)),
    # paper 001's trainable audio CNN on the audio tokens (options.audio_encoder: davenet)
    "davenet": dict(token_dim=256, heads=8, embed_dim=512, batch=512, items=700, tokens=(8, 24),
                    sets=["options.audio_encoder=davenet", "options.audio_dim=512"]),
}
DIMS = {"text": 384, "audio": 128, "video": 1280}

SCRIPT = r"""
import gc, json, sys, time
sys.path.insert(0, sys.argv[2])
import peakmem
import torch
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train import sizing
from mmx.train.config import resolve
from mmx.train.optim import make_optimiser
from mmx.train.prepare import prepare

spec = json.loads(sys.argv[1])
root = spec["root"]
synthesize(root, SyntheticConfig(classes=10, items={m: spec["items"] for m in spec["dims"]}, dims=spec["dims"],
                                 tokens=tuple(spec["tokens"]), test_fraction=0.2))
cfg = resolve(["eao-cpu"], {"cache": root, "dataset": "synthetic", "device": "cpu", "threads": spec["threads"],
                            "batch_size": spec["batch"], "embed_dim": spec["embed_dim"], "modalities": list(spec["dims"]),
                            "out": root + "/runs", "val_fraction": 0.5},
              [f"options.token_dim={spec['token_dim']}", f"options.heads={spec['heads']}", f"options.mlp_dim={spec['token_dim']}"]
              + spec.get("sets", []))
prep = prepare(cfg, warn=lambda s: None)
cfg, strategy, model = prep.cfg, prep.strategy, prep.model
shapes = sizing.shapes_from_cache(cfg, tokens=True)
est = sizing.estimate(cfg, type(strategy), shapes, "cpu", cfg.threads)
opt, _ = make_optimiser(cfg, strategy.parameters(model))
train, hold = prep.data.splits["train"], prep.data.splits[cfg.holdout]

def step(batch):
    out = strategy.step(model, batch)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()

gc.collect()
# one measurement per process: memory a pass frees stays with the allocator and would hide the next peak
base = peakmem.start()
if spec["part"] == "hold":
    model.eval()
    with torch.no_grad():
        for out, n in strategy.held_out(model, hold, 0):
            pass
        strategy.embed(model, hold)
else:
    model.train()
    for epoch in range(1, 1 + spec.get("repeat", 3)):  # a few steps: the allocator's peak settles after the first
        step(next(strategy.batches(train, epoch, train=True)))
peak_mib = peakmem.growth_mib(base)
sec = float("nan")
if spec["part"] == "train" and spec["steps"]:
    batches = list(strategy.batches(train, 2, train=True))[:1] * spec["steps"]
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    sec = (time.perf_counter() - t0) / len(batches)
mib = 2 ** 20
print(json.dumps({"params": est.params, "batch": est.batch, "peak_mib": peak_mib, "step_s": sec,
                  "train_est_mib": (est.train_bytes + 12 * est.params) / mib,  # weights exist already: gradients and moments grow
                  "hold_est_mib": est.holdout_bytes / mib, "step_est_s": est.step_seconds}))
"""


def measure(name: str, threads: int = 1, steps: int = 3, part: str = "train", size: dict | None = None) -> dict:
    """One size in a fresh process: the estimate, and the measured peak of ``part`` (train: the
    first training step; hold: the held-out loss and embedding pass) and the step time."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**(size or SIZES[name]), "dims": DIMS, "root": tmp, "threads": threads, "steps": steps, "part": part}
        res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(spec), str(ROOT / "tests")],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if res.returncode:
            raise RuntimeError(res.stderr[-3000:])
        return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,medium,large,wide")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    print(f"{'size':8} {'params':>8} {'batch':>6} {'train est':>10} {'measured':>9} {'ratio':>6} "
          f"{'held est':>9} {'measured':>9} {'ratio':>6} {'step est':>9} {'measured':>9} {'ratio':>6}")
    for name in a.sizes.split(","):
        r = measure(name, a.threads, a.steps, "train")
        h = measure(name, a.threads, 0, "hold")
        print(f"{name:8} {r['params'] / 1e6:7.2f}M {r['batch']:6d} {r['train_est_mib']:8.0f}Mi {r['peak_mib']:7.0f}Mi "
              f"{r['train_est_mib'] / r['peak_mib']:6.2f} {h['hold_est_mib']:7.0f}Mi {h['peak_mib']:7.0f}Mi "
              f"{h['hold_est_mib'] / h['peak_mib']:6.2f} {r['step_est_s']:8.2f}s {r['step_s']:8.2f}s {r['step_est_s'] / r['step_s']:6.2f}")


if __name__ == "__main__":
    main()
