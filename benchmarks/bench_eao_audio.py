"""EAO on real audio: the frozen cached log-mel tokens against the trainable DAVEnet-shaped
encoder (``options.audio_encoder: davenet``, paper 001 Sec. 4.1), and the default terms up to
triplets against single-vs-pair terms, at equal budgets (same epochs, batch, seed).

Trains on a demo cache (``mmx demo --out DIR`` builds DIR/cache) with the demo's EAO settings
(class-aligned pseudo-groups of the 10 digits, 128-d tokens, 4 heads, 256-d space, lr 1e-3,
15 epochs, early stopping on the val loss), then evaluates val (for choices) and test (to
report) with class relevance: R@10 and mAP per pair, the audio pairs' means, wall time.

    python benchmarks/bench_eao_audio.py --cache DIR/cache [--seeds 0 1 2] [--threads 1]
        [--variants frozen davenet-128 davenet-256] [--modalities text video audio]
        [--step-times N]   # only the median step time of each variant, interleaved
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "frozen": {"audio_encoder": "none"},
    "davenet-128": {"audio_encoder": "davenet", "audio_dim": 128},
    "davenet-256": {"audio_encoder": "davenet", "audio_dim": 256},
    "terms-eao": {"terms": "eao"},
    "terms-single-pair": {"terms": "single-pair"},
}


def summary(res: dict, split: str) -> dict:
    pairs = res["splits"][split]["pairs"]
    audio = [p for p in pairs if "audio" in (p["query"], p["target"])]
    out = {f"{p['query']}->{p['target']}": round(p["R@10"], 3) for p in pairs}
    out["mean R@10"] = float(np.mean([p["R@10"] for p in pairs]))
    out["mean mAP"] = float(np.mean([p["mAP"] for p in pairs]))
    out["audio R@10"] = float(np.mean([p["R@10"] for p in audio])) if audio else float("nan")
    out["audio mAP"] = float(np.mean([p["mAP"] for p in audio])) if audio else float("nan")
    return out


def run_one(cache: Path, out: Path, variant: str, seed: int, modalities: list, threads: int, epochs: int) -> dict:
    from mmx.eval.evaluate import evaluate_run
    from mmx.pipeline.demo.run import RUNS
    from mmx.train.loop import train

    spec = next(r for r in RUNS if r.name == "eao")
    cfg = spec.config(cache, out / f"{variant}-{seed}", False, seed)
    cfg = dataclasses.replace(cfg, modalities=list(modalities), threads=threads, epochs=epochs,
                              options={**cfg.options, **VARIANTS[variant]})
    t0 = time.perf_counter()
    run = train(cfg, log=lambda s: None, warn=lambda s: None)
    seconds = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text())
    steps = sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line)
    res = evaluate_run(run, ["val", "test"], "class")
    return {"variant": variant, "seed": seed, "seconds": seconds, "best_epoch": metrics.get("best_epoch"), "epochs_logged": steps,
            "val": summary(res, "val"), "test": summary(res, "test")}


def step_times(cache: Path, variants: list, modalities: list, steps: int, threads: int) -> dict:
    """Median seconds of one training step (forward of every subset, loss, backward, Adam) per
    variant on the same batches, the variants interleaved step by step so that the machine's
    load falls on all alike."""
    import torch

    from mmx.cache.modality import Modality
    from mmx.pipeline.demo.run import RUNS
    from mmx.train.data import load_train_data
    from mmx.train.strategies import get_strategy

    spec = next(r for r in RUNS if r.name == "eao")
    base = spec.config(cache, Path("unused"), False, 0)
    data = load_train_data(str(cache), "digits", Modality.parse_list(modalities), ["train"], tokens=True)
    setups = {}
    for v in variants:
        cfg = dataclasses.replace(base, modalities=list(modalities), threads=threads, options={**base.options, **VARIANTS[v]})
        strategy = get_strategy("eao")(cfg, data, torch.device("cpu"))
        torch.manual_seed(0)
        model = strategy.build_model().train()
        batches = list(strategy.batches(data.splits["train"], 1, train=True))
        setups[v] = (strategy, model, torch.optim.Adam(model.parameters(), 1e-3), batches)
    times = {v: [] for v in variants}
    for i in range(steps + 2):
        for v, (strategy, model, opt, batches) in setups.items():
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            strategy.step(model, batches[i % len(batches)])["loss"].backward()
            opt.step()
            if i >= 2:  # the first steps allocate
                times[v].append(time.perf_counter() - t0)
    return {v: float(np.median(t)) for v, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["frozen", "davenet-128", "davenet-256"], choices=list(VARIANTS))
    ap.add_argument("--modalities", nargs="+", default=["text", "video", "audio"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    ap.add_argument("--step-times", type=int, default=0, help="only time this many training steps per variant")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.step_times:
        for v, t in step_times(Path(args.cache), args.variants, args.modalities, args.step_times, args.threads).items():
            print(f"{v}: {t * 1e3:.1f} ms per step (median of {args.step_times})")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for seed in args.seeds:
                r = run_one(Path(args.cache), Path(tmp), variant, seed, args.modalities, args.threads, args.epochs)
                print(json.dumps(r), flush=True)
                rows.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    keys = ["audio R@10", "audio mAP", "mean R@10", "mean mAP"]
    print(f"\n| variant | seconds | best epoch | " + " | ".join(f"val {k}" for k in keys) + " | " + " | ".join(f"test {k}" for k in keys) + " |")
    print("|" + "---|" * (3 + 2 * len(keys)))
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]

        def cell(split, k):
            v = np.array([r[split][k] for r in mine])
            return f"{v.mean():.3f} ± {v.std():.3f}"

        print(f"| {variant} | {np.mean([r['seconds'] for r in mine]):.1f} | {np.mean([r['best_epoch'] or 0 for r in mine]):.1f} | "
              + " | ".join(cell("val", k) for k in keys) + " | " + " | ".join(cell("test", k) for k in keys) + " |")


if __name__ == "__main__":
    main()
