"""The InfoNCE temperature of `joint`, `roundrobin` and `eao-cpu` on real class-labelled data,
chosen on val.

Paper 000 sets tau = 0.05 for every experiment (after CLIP-style work on true pairs). On
class-labelled data there are no pairs: a batch pairs random same-class items, and every other
same-class item in the batch is a negative, pushed away the harder the lower tau is, while
retrieval is scored by class. This records, per
temperature, run and seed, the mean full mAP over the run's query->target pairs on val (what
chooses) and on test (what the choice is worth), with every other setting at its default:

* ``pairs``: `joint` on each two of text, image and audio alone (an image-text benchmark's shape);
* ``tri``: `joint` on text, image and audio (``fuerer-tri``);
* ``quad``: `joint` on every modality the set has (``fuerer-quad``; needs video);
* ``roundrobin``: one pair per batch over text, image and audio (``fuerer-roundrobin``);
* ``eao``: ``eao-cpu`` on class-aligned batches, every modality the set has.

Every run is given its temperature (``--set tau=T``), so ``tau: auto`` plays no part here.

    OMP_NUM_THREADS=1 python benchmarks/bench_tau.py record --cache C --dataset digits --taus 0.05,0.1,0.2,0.3,0.5 \\
        --runs pairs,tri,roundrobin --seeds 0,1,2 --out tau.jsonl [--set key=value]
    python benchmarks/bench_tau.py report tau.jsonl

``report``: per set and run, each temperature's val and test mAP (mean over seeds; test ± sd)
and which temperature val chooses; then the temperature with the best val mAP over every set
and run (each set-run weighted equally), and what it gives on test against tau 0.05.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time

MODS = ("text", "image", "audio")
RUNS = {"tri": ("fuerer-tri", {}), "quad": ("fuerer-quad", {}), "roundrobin": ("fuerer-roundrobin", {"modalities": list(MODS)}),
        "eao": ("eao-cpu", {"alignment": "class"})}


def _one(cache, dataset, preset, overrides, sets, seed, out) -> dict:
    from mmx.eval.evaluate import evaluate_run
    from mmx.train.config import resolve
    from mmx.train.loop import train

    cfg = resolve([preset] if preset else [], overrides={"dataset": dataset, "cache": cache, "out": out, "seed": seed,
                                                         "device": "cpu", "threads": 1, **overrides}, sets=sets)
    t0 = time.perf_counter()
    run = train(cfg, log=lambda s: None, warn=lambda s: None)
    seconds = time.perf_counter() - t0
    ev = evaluate_run(run, ["val", "test"], "class")["splits"]
    best = json.loads((run / "metrics.json").read_text())["best_epoch"]
    return {split: statistics.mean(r["mAP"] for r in ev[split]["pairs"]) for split in ("val", "test")} | {
        "seconds": seconds, "best_epoch": best}


def record(args) -> None:
    import torch

    torch.set_num_threads(1)
    for tau, name, seed in itertools.product([float(t) for t in args.taus.split(",")], args.runs.split(","),
                                             [int(s) for s in args.seeds.split(",")]):
        sets = [f"tau={tau}", *args.set]
        with tempfile.TemporaryDirectory() as out:
            if name == "pairs":  # each pair trained alone; the mean over the three pairs' runs
                got = [_one(args.cache, args.dataset, None, {"strategy": "joint", "modalities": list(p)}, sets, seed, out)
                       for p in itertools.combinations(MODS, 2)]
                res = {k: statistics.mean(g[k] for g in got) for k in got[0]}
            else:
                preset, overrides = RUNS[name]
                res = _one(args.cache, args.dataset, preset, overrides, sets, seed, out)
        line = {"dataset": args.dataset, "run": name, "tau": tau, "seed": seed, "sets": args.set,
                "load": os.getloadavg()[0], **res}
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{args.dataset} {name} tau {tau} seed {seed}: val {res['val']:.3f} test {res['test']:.3f} "
              f"(best epoch {res['best_epoch']:.0f}, {res['seconds']:.0f} s)", flush=True)


def report(args) -> None:
    lines = [json.loads(x) for x in open(args.file) if x.strip()]
    groups: dict = {}
    for x in lines:
        groups.setdefault((x["dataset"], x["run"]), {}).setdefault(x["tau"], []).append(x)
    taus = sorted({x["tau"] for x in lines})
    print("| set | run | " + " | ".join(f"tau {t:g}: val / test" for t in taus) + " | val chooses |")
    print("|---|---|" + "---:|" * len(taus) + "---|")
    val_of: dict = {}
    for (ds, run), by_tau in sorted(groups.items()):
        cells, means = [], {}
        for t in taus:
            got = by_tau.get(t, [])
            if not got:
                cells.append("-")
                continue
            v, te = [g["val"] for g in got], [g["test"] for g in got]
            means[t] = statistics.mean(v)
            sd = statistics.stdev(te) if len(te) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.3f} / {statistics.mean(te):.3f} ± {sd:.3f}")
        chosen = max(means, key=means.get)
        val_of[(ds, run)] = {t: (means[t], statistics.mean(g["test"] for g in by_tau[t])) for t in means}
        print(f"| {ds} | {run} | " + " | ".join(cells) + f" | {chosen:g} |")
    common = [t for t in taus if all(t in v for v in val_of.values())]
    if common:
        overall = {t: statistics.mean(v[t][0] for v in val_of.values()) for t in common}
        best = max(overall, key=overall.get)
        print(f"\nmean val mAP over {len(val_of)} set-runs: " + ", ".join(f"tau {t:g} {overall[t]:.3f}" for t in common)
              + f"; val chooses tau {best:g}")
        if 0.05 in common:
            gain = [v[best][1] - v[0.05][1] for v in val_of.values()]
            print(f"test mAP, tau {best:g} - tau 0.05, per set-run: " + ", ".join(f"{g:+.3f}" for g in gain)
                  + f" (mean {statistics.mean(gain):+.3f})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--cache", required=True)
    r.add_argument("--dataset", required=True)
    r.add_argument("--taus", default="0.05,0.1,0.2,0.3,0.5")
    r.add_argument("--runs", default="pairs,tri,roundrobin")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--set", action="append", default=[])
    r.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("file")
    args = ap.parse_args(argv)
    record(args) if args.cmd == "record" else report(args)


if __name__ == "__main__":
    main()
