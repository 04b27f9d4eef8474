"""Benchmark: batch composition and class positives on real class-aligned data.

Trains ``joint`` on a real class-aligned cache (default: the digits cache, 10 classes: MNIST
images, spoken digits, sentences) for the same fixed number of epochs (``keep: last``, so
nothing is selected on any split) in three settings, over several seeds:

* ``pair/10``: paper 000's loss with one item per class and 10 classes per batch
  (whatever ``--batch-size`` says);
* ``pair/128``: paper 000's loss with the batch honoured (P x K, same-class items
  are negatives);
* ``class/128``: ``options.positives=class`` (multi-positive InfoNCE).

Reported: test mAP (full), mAP@50 and R@1, each the mean over the query->target pairs, as
``mmx eval`` computes them; mean and min..max over seeds.

    OMP_NUM_THREADS=1 python benchmarks/bench_positives.py --cache /work/realdata/cache --dataset digits
    OMP_NUM_THREADS=1 python benchmarks/bench_positives.py --epochs 60 --settings pair/128,class/128
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

SETTINGS = {"pair/10": ("pair", 10), "pair/128": ("pair", 128), "class/128": ("class", 128)}  # positives/batch items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/work/realdata/cache")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--modalities", default="text,image,audio")
    ap.add_argument("--strategy", default="joint")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="Comma-separated subset of: " + ", ".join(SETTINGS))
    args = ap.parse_args()

    import torch

    from mmx.eval.evaluate import evaluate_run
    from mmx.train.config import resolve
    from mmx.train.loop import train

    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="bench-positives-")
    rows = {}
    for label in (s.strip() for s in args.settings.split(",") if s.strip()):
        positives, batch = SETTINGS[label]
        for seed in range(args.seeds):
            cfg = resolve(overrides={"strategy": args.strategy, "cache": args.cache, "dataset": args.dataset,
                                     "modalities": args.modalities, "epochs": args.epochs, "batch_size": batch,
                                     "seed": seed, "out": out, "name": f"{positives}-{batch}-{seed}"},
                          sets=["keep=last", f"options.positives={positives}"])
            run = train(cfg)
            mean = evaluate_run(run, ["test"])["splits"]["test"]["pairs_mean"]
            rows.setdefault(label, []).append([mean["mAP"], mean["mAP@50"], mean["R@1"]])
            print(f"{label} seed {seed}: test mAP {mean['mAP']:.4f}  mAP@50 {mean['mAP@50']:.4f}  R@1 {mean['R@1']:.4f}", flush=True)
    print(f"\n{args.strategy}, {args.dataset} ({args.modalities}), {args.epochs} epochs, keep last, {args.seeds} seeds")
    print("| setting | test mAP | test mAP@50 | test R@1 |\n|---|---|---|---|")
    for label, vals in rows.items():
        v = np.array(vals)
        cells = [f"{v[:, i].mean():.3f} ({v[:, i].min():.3f}..{v[:, i].max():.3f})" for i in range(3)]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
