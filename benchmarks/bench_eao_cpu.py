"""eao's CPU defaults on a real cache: per-pair R@10 and mAP against chance, beside joint's.

Trains each named setting on a cache (by default the one ``mmx demo --out DIR`` extracts: the
digits set, all four modalities), evaluates it on the split given (``val`` to choose settings,
``test`` to report them) and prints, per query->target pair, R@10 and mAP with their chance
levels computed from the labels (R@10 exactly, mAP by random rankings), and the wall time.

    mmx demo --out /tmp/eaodemo            # once: fetch and extract the digits set
    python benchmarks/bench_eao_cpu.py --cache /tmp/eaodemo/cache --split test --threads 1 \\
        --runs eao-cpu,joint [--set eao-cpu:options.positives=pair ...]

A run is ``NAME`` (a preset, or ``joint``: the strategy with its paper's settings) and any
``--set NAME:key=value``; ``--tag NAME=LABEL:key=value,key=value`` adds a variant of a preset
under a label, for sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def chance(query: np.ndarray, target: np.ndarray, k: int = 10, draws: int = 400, seed: int = 0) -> tuple[float, float]:
    """Expected R@k and full mAP of ``query`` labels against a ``target`` gallery when the
    ranking is random (class relevance; queries without a relevant item left out, as mmx eval)."""
    n = len(target)
    counts = {c: int((target == c).sum()) for c in np.unique(query)}
    rng = np.random.default_rng(seed)
    recall, ap, used = 0.0, 0.0, 0
    for c in query:
        r = counts[c]
        if r == 0:
            continue
        used += 1
        # P(no relevant in the first k) = C(n - r, k) / C(n, k)
        miss = math.comb(n - r, min(k, n)) / math.comb(n, min(k, n)) if n - r >= min(k, n) else 0.0
        recall += 1 - miss
        ap += _random_ap(n, r, draws, rng)
    return recall / max(used, 1), ap / max(used, 1)


_AP_CACHE: dict = {}


def _random_ap(n: int, r: int, draws: int, rng) -> float:
    if (n, r) not in _AP_CACHE:
        ranks = np.sort(np.stack([rng.choice(n, r, replace=False) for _ in range(draws)]), 1) + 1  # (draws, r) 1-based
        _AP_CACHE[(n, r)] = float((np.arange(1, r + 1) / ranks).mean())
    return _AP_CACHE[(n, r)]


def pair_table(run: Path, split: str) -> list[dict]:
    """Per pair of ``run``'s single modalities on ``split``: R@10, mAP and their chance levels."""
    from mmx.eval.evaluate import evaluate_run
    from mmx.eval.runs import load_embeddings

    res = evaluate_run(run, [split], relevance="class")["splits"][split]
    data = load_embeddings(run, split)
    rows = []
    for p in res["pairs"]:
        q, t = p["query"], p["target"]
        if "+" in q or "+" in t:
            continue
        cr, cm = chance(np.asarray(data[q]["label"]), np.asarray(data[t]["label"]))
        rows.append({"pair": f"{q}->{t}", "R@10": p["R@10"], "chance R@10": cr, "mAP": p["mAP"], "chance mAP": cm})
    return rows


def train_one(name: str, preset: str, sets: list[str], cache: str, dataset: str, threads: int, out: Path) -> tuple[Path, float]:
    from mmx.train.config import resolve
    from mmx.train.loop import train

    presets = [] if preset == "joint" else [preset]
    overrides = {"cache": cache, "dataset": dataset, "device": "cpu", "threads": threads, "out": str(out / name), "seed": 0,
                 "holdout": "val", **({"strategy": "joint"} if preset == "joint" else {})}
    cfg = resolve(presets, overrides, sets)
    t0 = time.perf_counter()
    run = train(cfg, warn=lambda s: None)
    return run, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--split", default="val", help="val (choosing settings) or test (reporting)")
    ap.add_argument("--runs", default="eao-cpu,joint")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME:KEY=VALUE")
    ap.add_argument("--tag", action="append", default=[], metavar="LABEL=PRESET:KEY=VALUE,KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also append one JSON line per run to this file")
    a = ap.parse_args()
    runs = [(n, n, [s.split(":", 1)[1] for s in a.sets if s.split(":", 1)[0] == n]) for n in a.runs.split(",") if n]
    for t in a.tag:
        label, rest = t.split("=", 1)
        preset, _, kv = rest.partition(":")
        runs.append((label, preset, [x for x in kv.split(",") if x]))
    with tempfile.TemporaryDirectory() as tmp:
        for label, preset, sets in runs:
            run, sec = train_one(label, preset, sets, a.cache, a.dataset, a.threads, Path(tmp))
            rows = pair_table(run, a.split)
            steps = sum(json.loads(line).get("steps", 0) for line in (run / "metrics.jsonl").read_text().splitlines())
            worst = min(r["R@10"] - r["chance R@10"] for r in rows), min(r["mAP"] / r["chance mAP"] for r in rows)
            print(f"\n{label} ({preset} {' '.join(sets)}): {sec:.0f} s, {steps} steps; {a.split} split; "
                  f"mean R@10 {np.mean([r['R@10'] for r in rows]):.3f}, mean mAP {np.mean([r['mAP'] for r in rows]):.3f}; "
                  f"worst pair: R@10 - chance {worst[0]:+.3f}, mAP / chance {worst[1]:.2f}")
            print(f"  {'pair':16} {'R@10':>6} {'chance':>6} {'mAP':>6} {'chance':>6}")
            for r in rows:
                print(f"  {r['pair']:16} {r['R@10']:6.3f} {r['chance R@10']:6.3f} {r['mAP']:6.3f} {r['chance mAP']:6.3f}")
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps({"label": label, "preset": preset, "sets": sets, "seconds": sec, "steps": steps,
                                        "split": a.split, "pairs": rows}) + "\n")


if __name__ == "__main__":
    main()
