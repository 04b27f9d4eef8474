"""CVS-family readings on real class-aligned data: test mAP@50 of each.

Item 7 (aligned attention, paper 002 eq. 3-6): the papers' block, the attention-off baseline
(thesis Tables 5-7), a learned softmax temperature, and the softmax over the batch.
Item 8 (train and serve): ``cvs``, ``mcvs``, ``rvs`` as the papers train them (a block sees a
same-class partner; served with the item as its own partner) against
``options.train_as_served: true`` (trained on exactly the served embeddings).

Each run is its strategy's preset (512-d, batch 128, Adam 1e-3, a fixed ``--epochs``, the
last weights kept) on the real digits cache (MNIST images, spoken digits, sentences: see
/work/realdata/README or build one with ``mmx extract``); the score is paper 002's mAP@50
(eq. 7) on the test split, the mean over ordered modality pairs. Features are standardised
per dimension with the train split's mean and std first, because the audio log-mel is in dB
(mean about -51, std 27), which collapses the CVS family (a separate branch adds this
normalisation to mmx itself). ``--seeds`` repeats each run with other seeds.

    python benchmarks/bench_cvs_readings.py [--cache /work/realdata/cache] [--dataset digits]
        [--modalities image,audio,text] [--epochs 50] [--seeds 0,1] [--only attention|served]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time

import numpy as np
import torch

from mmx.cache.modality import Modality
from mmx.eval.runs import load_embeddings
from mmx.train import loop
from mmx.train.config import resolve
from mmx.train.data import load_train_data
from mmx.train.strategies.cvs import map_at_k

ATTENTION = {
    "papers' block (softmax over features)": {},
    "attention off (W_i, W_s, W_is all off)": {"attention_wi": False, "attention_ws": False, "attention_wis": False},
    "learned temperature": {"attention_temperature": "learned"},
    "softmax over the batch": {"attention_softmax": "batch"},
}


def standardised(data):
    """Per modality, (x - mean) / std with the train split's statistics, in place."""
    for m in data.splits["train"].features:
        x = data.splits["train"].features[m].pooled
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        for split in data.splits.values():
            split.features[m].pooled = (split.features[m].pooled - mean) / std
    return data


def score(run, mods: list[str]) -> float:
    """Mean over ordered pairs of mAP@50 on the test split (paper 002 eq. 7)."""
    e = load_embeddings(run, "test")
    t = {m: (torch.as_tensor(e[m]["emb"]), torch.as_tensor(np.unique(e[m]["label"], return_inverse=True)[1])) for m in mods}
    names = sorted({str(x) for m in mods for x in e[m]["label"]})
    lab = {m: torch.as_tensor([names.index(str(x)) for x in e[m]["label"]]) for m in mods}
    return float(np.mean([map_at_k(t[q][0], lab[q], t[r][0], lab[r], 50) for q, r in itertools.permutations(mods, 2)]))


def run_one(data, strategy: str, mods: list[str], options: dict, epochs: int, seed: int, out: str) -> float:
    cfg = resolve([strategy], {"modalities": mods, "epochs": epochs, "keep": "last", "seed": seed, "out": out, "holdout": "val"})
    if strategy == "mcvs":
        options = {"stages": [[m for m in ("image", "text") if m in mods]] + [[m] for m in mods if m not in ("image", "text")], **options}
    if strategy == "rvs":
        options = {"order": [m for m in ("text", "audio", "video") if m in mods], **options}
    cfg.options = {**cfg.options, **options}
    run = loop.train(cfg, data=data, log=lambda *a: None)
    return score(run, mods)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/work/realdata/cache")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--modalities", default="image,audio,text")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--only", choices=["attention", "served"], default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mods, seeds = a.modalities.split(","), [int(s) for s in a.seeds.split(",")]
    data = standardised(load_train_data(a.cache, a.dataset, Modality.parse_list(mods), ["train", "val", "test"]))
    jobs = []
    if a.only != "served":
        jobs += [("cvs", name, opts) for name, opts in ATTENTION.items()]
    if a.only != "attention":
        # cvs with train_as_served false is the papers' block of the attention list
        jobs += [(s, f"train_as_served: {flag}", {"train_as_served": flag}) for s in ("cvs", "mcvs", "rvs") for flag in (False, True)
                 if not (s == "cvs" and not flag and a.only != "served")]
    print(f"{a.dataset} ({', '.join(mods)}), standardised features, {a.epochs} epochs, last weights, seeds {seeds}")
    with tempfile.TemporaryDirectory() as out:
        for strategy, name, opts in jobs:
            t0 = time.perf_counter()
            maps = [run_one(data, strategy, mods, opts, a.epochs, seed, out) for seed in seeds]
            spread = f" +- {statistics.stdev(maps):.3f}" if len(maps) > 1 else ""
            print(f"{strategy:5s} {name:42s} test mAP@50 {statistics.mean(maps):.3f}{spread}  "
                  f"({', '.join(f'{m:.3f}' for m in maps)}; {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
