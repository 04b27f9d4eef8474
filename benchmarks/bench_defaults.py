"""The defaults study: which stopping rule and batch each strategy needs on real data.

One command per dataset records, per strategy, setting and seed, a whole trajectory: a run of
``--epochs`` epochs (per stage) with the val loss, val mAP and R@10 and, for the report only,
the test mAP and R@10 after every epoch. The stopping rules are then replayed on the recorded
val signals (a single-stage run's weights at epoch e do not depend on when it would have
stopped: the batches and the lr schedule are drawn per epoch), so one trajectory prices every
rule. This holds with ``min_steps`` > 1 too: an epoch's extra passes draw their batches by
epoch and pass alone (train/loop.py ``pass_draw``; before, they drew as ``epoch + passes *
epochs``, so a run's epoch e depended on ``--epochs``). The rule is chosen on val; test only
reports what the choice costs.

    OMP_NUM_THREADS=1 python benchmarks/bench_defaults.py record --cache C --dataset digits \\
        --runs quad,tri,roundrobin --seeds 0,1,2 --epochs 40 --out study.jsonl [--set batch_size=10]
    python benchmarks/bench_defaults.py report study.jsonl [--markdown]
    OMP_NUM_THREADS=1 python benchmarks/bench_defaults.py ordering --cache C --dataset digits --seeds 0,1,2 --out order.jsonl

``ordering`` trains quad, tri and round-robin with the shipped defaults (val chooses the kept
epoch) and compares them on test over the pairs all three have (text, image, audio): mean R@10
and mAP over those pairs, mean and sd over seeds, and each paired difference (same seed) with
its sd, saying whether it exceeds two standard errors of the paired differences.

Report columns, per run, setting and rule (means over seeds): epochs run, minutes, kept (the
rule's best val epoch), test mAP / R@10 at the kept epoch, and at the trajectory's best val
epoch ("peak": the whole cap, the rule's reference), the seed-sd of the peak's test mAP, ``ok``
(kept test mAP within one seed-sd of the peak's) and the test mAP lost per minute saved.
Multi-stage strategies are replayed per stage on a trajectory whose stages each ran the cap,
an approximation (a stopped stage hands its kept weights, not its last, to the next).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

RUNS = {  # name -> (preset, overrides)
    "quad": ("fuerer-quad", {}),
    "tri": ("fuerer-tri", {}),
    "roundrobin": ("fuerer-roundrobin", {}),
    "eao": ("eao-cpu", {"alignment": "class"}),
    "cvs": ("cvs", {}),
    "mcvs": ("mcvs", {}),
    "rvs": ("rvs", {}),
    "stagewise": ("stagewise", {}),
}
RULES = [("loss", p, d) for p in (1, 3, 5) for d in (0.02, 0.0)] + \
        [("mAP", p, d) for p in (1, 3, 5, 8, 10, 15, 20, 30) for d in (0.0, 0.01)]


def record(args) -> None:
    import torch

    from mmx.train.config import resolve
    from mmx.train.loop import Runner
    from mmx.train.monitor import quick_recall
    from mmx.train.optim import make_optimiser
    from mmx.train.prepare import prepare

    torch.set_num_threads(1)
    for name, seed in itertools.product(args.runs.split(","), [int(s) for s in args.seeds.split(",")]):
        preset, over = RUNS[name]
        values = {**over, "dataset": args.dataset, "cache": args.cache, "epochs": args.epochs, "seed": seed,
                  "device": "cpu", "threads": 1, "keep": "last", "out": "/tmp/bench-defaults-unused"}
        cfg = resolve([preset], overrides=values, sets=args.set or [])
        prep = prepare(cfg, warn=lambda *a: None)
        cfg, strategy, model = prep.cfg, prep.strategy, prep.model
        val, test = prep.data.splits["val"], prep.data.splits["test"]
        runner = Runner(cfg, strategy, model, prep.data.splits["train"], val, Path("/nonexistent"), prep.device, lambda s: None)

        def signals(split):
            r = quick_recall(strategy, model, split, ks=(1, 10), map_r=50)
            return {"map": r.get("map/mean"), "r10": r.get("recall/mean@10"), "map50": r.get("map@50/mean")}

        epochs, t_start = [], time.perf_counter()
        stages = prep.stages
        for k, stage in enumerate(stages):
            strategy.begin_stage(model, stage)
            opt, sched = make_optimiser(cfg, strategy.parameters(model))
            for epoch in range(1, cfg.epochs + 1):
                t0 = time.perf_counter()
                steps = runner.train_epoch(epoch, opt)["steps"]
                sched.step()
                loss = runner.held_out_loss(epoch)[f"loss_{cfg.holdout}"]
                v = signals(val)
                seconds = time.perf_counter() - t0  # what the loop spends: steps, val loss, val recall
                t = signals(test)
                epochs.append({"stage": k + 1, "epoch": epoch, "steps": steps, "seconds": seconds, "loss_val": loss,
                               **{f"val_{a}": b for a, b in v.items()}, **{f"test_{a}": b for a, b in t.items()}})
            if stage is not None:
                extra = strategy.end_stage(model, stage)
                if extra:
                    epochs[-1]["end_stage"] = extra
        line = {"tag": args.tag, "dataset": args.dataset, "run": name, "seed": seed, "sets": args.set or [],
                "batch": strategy.composition, "stages": len(stages), "epochs": epochs,
                "wall": time.perf_counter() - t_start, "load": os.getloadavg()[0]}
        fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # one write per line: several recorders may append to one file
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        last = epochs[-1]
        print(f"{name} seed {seed} {args.set or ''}: {len(epochs)} epochs {line['wall']:.0f}s, last test mAP "
              f"{last['test_map']:.3f} R@10 {last['test_r10']:.3f}", flush=True)


# ---- replaying the rules --------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    stopped: int  # epochs run (all stages)
    minutes: float
    kept: list  # kept epoch per stage
    test_map: float
    test_r10: float


def improved(score: float, best: float, min_delta: float) -> bool:
    return score < best - min_delta * abs(best) if math.isfinite(best) else not math.isnan(score)


def replay(epochs: list[dict], monitor: str, patience: int, min_delta: float, cap: int | None = None) -> Outcome:
    """The loop's early stopping on the recorded val signal, per stage; test figures of the last stage's kept epoch."""
    run, secs, kept_rows = 0, 0.0, []
    for stage in sorted({e["stage"] for e in epochs}):
        rows = [e for e in epochs if e["stage"] == stage][: cap or None]
        best, best_row, stale = math.inf, rows[0], 0
        for e in rows:
            run += 1
            secs += e["seconds"]
            score = e["loss_val"] if monitor == "loss" else -e["val_map"]
            if improved(score, best, min_delta):
                best, best_row, stale = score, e, 0
            else:
                stale += 1
                if stale >= patience:
                    break
        kept_rows.append(best_row)
    last = kept_rows[-1]
    return Outcome(run, secs / 60, [r["epoch"] for r in kept_rows], last["test_map"], last["test_r10"])


def peak(epochs: list[dict]) -> Outcome:
    """The whole cap with the best val mAP epoch kept per stage (the reference a rule is held to)."""
    return replay(epochs, "mAP", 10**9, 0.0)


def fixed(epochs: list[dict]) -> Outcome:
    """The whole cap, the last epoch kept (keep: last)."""
    kept = [max((e for e in epochs if e["stage"] == s), key=lambda e: e["epoch"]) for s in sorted({e["stage"] for e in epochs})]
    return Outcome(len(epochs), sum(e["seconds"] for e in epochs) / 60, [r["epoch"] for r in kept],
                   kept[-1]["test_map"], kept[-1]["test_r10"])


def report(args) -> None:
    lines = [json.loads(x) for p in args.files for x in open(p) if x.strip()]
    groups: dict = {}
    for line in lines:
        groups.setdefault((line["dataset"], line["run"], " ".join(line["sets"]) or "-"), []).append(line)
    head = ["dataset", "run", "setting", "rule", "seeds", "epochs run", "min", "kept epoch", "test mAP", "test R@10",
            "peak epoch", "peak mAP", "peak R@10", "sd", "ok", "mAP lost/min saved"]
    rows = []
    for (dataset, run, setting), runs in sorted(groups.items()):
        peaks = [peak(r["epochs"]) for r in runs]
        pm = statistics.mean(p.test_map for p in peaks)
        sd = statistics.stdev([p.test_map for p in peaks]) if len(peaks) > 1 else float("nan")
        rules = [("fixed cap (keep last)", fixed)] + [
            (f"{m} p{p} d{d:g}", lambda ep, m=m, p=p, d=d: replay(ep, m, p, d)) for m, p, d in RULES]
        for rule, fn in rules:
            outs = [fn(r["epochs"]) for r in runs]
            mean = lambda xs: statistics.mean(xs)
            om, omin = mean([o.test_map for o in outs]), mean([o.minutes for o in outs])
            pmin = mean([p.minutes for p in peaks])
            saved = pmin - omin
            lost = (pm - om) / saved if saved > 1e-9 else float("nan")
            tol = sd if math.isfinite(sd) else 0.0
            rows.append([dataset, run, setting, rule, str(len(runs)), f"{mean([o.stopped for o in outs]):.1f}", f"{omin:.2f}",
                         "/".join(f"{mean([o.kept[i] for o in outs]):.1f}" for i in range(len(outs[0].kept))),
                         f"{om:.3f}", f"{mean([o.test_r10 for o in outs]):.3f}",
                         "/".join(f"{mean([p.kept[i] for p in peaks]):.1f}" for i in range(len(peaks[0].kept))),
                         f"{pm:.3f}", f"{mean([p.test_r10 for p in peaks]):.3f}", f"{sd:.3f}",
                         "yes" if om >= pm - tol - 1e-12 else "NO", f"{lost:+.3f}"])
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def ordering(args) -> None:
    """Train each of ``--runs`` with the defaults per seed; one JSON line per run into ``--out``;
    then the table over every line of ``--out`` (runs recorded by parallel invocations included)."""
    import tempfile

    import numpy as np
    import torch

    from mmx.eval.evaluate import evaluate_run
    from mmx.train.config import resolve
    from mmx.train.loop import train

    torch.set_num_threads(1)
    common = {"text", "image", "audio"}
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as out:
        for name in [r for r in args.runs.split(",") if r]:
            for seed in seeds:
                cfg = resolve([RUNS[name][0]], overrides={"dataset": args.dataset, "cache": args.cache, "out": out, "seed": seed,
                                                          "device": "cpu", "threads": 1}, sets=args.set or [])
                t0 = time.perf_counter()
                run = train(cfg, warn=lambda *a: None)
                seconds = time.perf_counter() - t0
                ev = evaluate_run(run, ["test"], "class")["splits"]["test"]["pairs"]
                rows = [r for r in ev if r["query"] in common and r["target"] in common]
                metrics = json.loads((run / "metrics.json").read_text())
                line = {"dataset": args.dataset, "run": name, "seed": seed, "sets": args.set or [], "seconds": seconds,
                        "best_epoch": metrics["best_epoch"], "stop_reason": metrics["stop_reason"], "load": os.getloadavg()[0],
                        **{m: float(np.mean([r[m] for r in rows])) for m in ("R@10", "mAP")}}
                fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, (json.dumps(line) + "\n").encode())
                finally:
                    os.close(fd)
                print(f"{name} seed {seed}: best epoch {line['best_epoch']} ({line['stop_reason']}), {seconds:.0f}s, "
                      f"text/image/audio pairs: R@10 {line['R@10']:.3f} mAP {line['mAP']:.3f}", flush=True)
    lines = [json.loads(x) for x in open(args.out) if x.strip()]
    res = {(x["run"], x["seed"]): x for x in lines if x["dataset"] == args.dataset}
    names = [n for n in ("quad", "tri", "roundrobin") if any(k[0] == n for k in res)]
    seeds = sorted({k[1] for k in res})
    print("\n| strategy | seeds | best epoch | seconds | mean R@10 (sd) | mean mAP (sd) |\n|---|---:|---:|---:|---:|---:|")
    for name in names:
        got = [res[(name, s)] for s in seeds if (name, s) in res]
        cells = []
        for m in ("R@10", "mAP"):
            v = [g[m] for g in got]
            cells.append(f"{statistics.mean(v):.3f} ({statistics.stdev(v) if len(v) > 1 else 0:.3f})")
        print(f"| {name} | {len(got)} | {statistics.mean(g['best_epoch'] for g in got):.1f} | "
              f"{statistics.mean(g['seconds'] for g in got):.0f} | " + " | ".join(cells) + " |")
    print("\n| difference (paired by seed) | R@10: mean (sd) | mAP: mean (sd) | beyond noise (both |mean| > 2 sd / sqrt(n)) |\n|---|---:|---:|---|")
    for a, b in (("quad", "tri"), ("tri", "roundrobin"), ("quad", "roundrobin")):
        both = [s for s in seeds if (a, s) in res and (b, s) in res]
        if len(both) < 2:
            continue
        cells, beyond = [], []
        for m in ("R@10", "mAP"):
            d = [res[(a, s)][m] - res[(b, s)][m] for s in both]
            sd = statistics.stdev(d)
            cells.append(f"{statistics.mean(d):+.3f} ({sd:.3f})")
            beyond.append(abs(statistics.mean(d)) > 2 * sd / math.sqrt(len(d)))
        print(f"| {a} - {b} | " + " | ".join(cells) + f" | {'yes' if all(beyond) else 'no'} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--cache", required=True)
    rec.add_argument("--dataset", required=True)
    rec.add_argument("--runs", default="quad,tri,roundrobin")
    rec.add_argument("--seeds", default="0")
    rec.add_argument("--epochs", type=int, default=40)
    rec.add_argument("--set", action="append", help="key=value, as mmx train --set")
    rec.add_argument("--tag", default="")
    rec.add_argument("--out", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("files", nargs="+")
    rep.add_argument("--markdown", action="store_true")
    order = sub.add_parser("ordering")
    order.add_argument("--cache", required=True)
    order.add_argument("--dataset", required=True)
    order.add_argument("--seeds", default="0,1,2")
    order.add_argument("--runs", default="quad,tri,roundrobin", help="empty: only the table of --out")
    order.add_argument("--out", required=True, help="JSON lines, appended")
    order.add_argument("--set", action="append", help="key=value, as mmx train --set")
    args = parser.parse_args(argv)
    {"record": record, "report": report, "ordering": ordering}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
