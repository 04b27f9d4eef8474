"""Normalisation before the heads on real media: before/after per strategy.

Trains each strategy on a real class-aligned digits cache (MNIST images through
EfficientNet-Lite0, spoken digits as pooled raw-dB log-mel, sentences through MiniLM; see
/work/realdata/README or build one with ``mmx extract``) once per ``normalize`` mode, with the
same seed, early stopping on the ``val`` split (the test split chooses nothing), and reports
test audio->text R@10, the mean test R@10 over all pairs, the mean test mAP@50 and the mean
pairwise cosine of the test audio embeddings (near 1: collapsed).

    OMP_NUM_THREADS=1 python benchmarks/bench_normalize.py --cache /work/realdata/cache \
        --dataset digits --epochs 8 [--strategies fuerer-tri,cvs,rvs,mcvs] [--modes none,standardize,l2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from mmx.eval.evaluate import evaluate_run
from mmx.eval.runs import load_embeddings
from mmx.train import loop
from mmx.train.config import resolve

MODALITIES = ["image", "text", "audio"]
STAGE_OPTIONS = {"rvs": {"order": ["text", "audio"]}, "mcvs": {"stages": [["image", "text"], ["audio"]]}}


def run_one(preset: str, mode: str, args, out: str) -> dict:
    sets = [f"normalize={mode}", f"cache={args.cache}", f"dataset={args.dataset}", "holdout=val",
            f"modalities={','.join(MODALITIES)}", f"seed={args.seed}", f"out={out}", "device=cpu"]
    if preset != "fuerer-tri":  # the CVS presets train a fixed number of epochs
        sets += [f"epochs={args.epochs}", f"patience={args.epochs}"]
    cfg = resolve([preset], sets=sets)
    for k, v in STAGE_OPTIONS.get(cfg.strategy, {}).items():
        cfg.options[k] = v
    t0 = time.perf_counter()
    run = loop.train(cfg)
    seconds = time.perf_counter() - t0
    res = evaluate_run(run, ["test"], ks=(10,))["splits"]["test"]
    pairs = {(r["query"], r["target"]): r for r in res["pairs"]}
    audio = load_embeddings(run, "test")["audio"]["emb"]
    audio = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    n = len(audio)
    cosine = float(((audio @ audio.T).sum() - n) / (n * (n - 1)))
    return {"run": preset, "normalize": mode, "audio->text R@10": pairs[("audio", "text")]["R@10"],
            "mean R@10": res["pairs_mean"]["R@10"], "mean mAP@50": res["pairs_mean"]["mAP@50"],
            "audio cosine": cosine, "seconds": seconds, "folder": str(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategies", default="fuerer-tri,cvs,rvs,mcvs")
    ap.add_argument("--modes", default="none,standardize,l2")
    ap.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out or tempfile.mkdtemp(prefix="bench-normalize-")
    print("| run | normalize | audio->text R@10 | mean test R@10 | mean test mAP@50 | audio mean cosine | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for preset in args.strategies.split(","):
        for mode in args.modes.split(","):
            r = run_one(preset, mode, args, out)
            print(f"| {r['run']} | {r['normalize']} | {r['audio->text R@10']:.3f} | {r['mean R@10']:.3f} | "
                  f"{r['mean mAP@50']:.3f} | {r['audio cosine']:.2f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
