"""The report of ``mmx sweep``: each strategy's best setting over seeds.

:func:`build_report` takes the seed runs of each best trial's setting (highest val objective;
:func:`mmx.train.sweep.repeat` trains them), and writes ``report.json`` and ``report.md``: per strategy the chosen setting and its val score, test
figures (means over query->target pairs) as mean ± sd over seeds, and for every other strategy
the paired bootstrap interval of its difference to the first strategy (:mod:`mmx.eval.noise`).
Test figures are computed only here, after every choice is made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

REPORTED = ("R@1", "R@10", "mAP")


def _mean_sd(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}


def build_report(spec, chosen: dict, runs: dict, failed: list[str], log: Callable[[str], None] = print) -> dict:
    """The report of the seed runs (``runs[strategy]``: :func:`mmx.train.sweep.run_task` results on
    test) of each ``chosen[strategy]`` setting; written to ``report.json`` and ``report.md``."""
    from mmx.eval.noise import bootstrap_difference, query_values

    folder = Path(spec.folder)
    report = {"folder": str(folder), "objective": f"val {spec.objective}, mean over query->target pairs",
              "seeds": spec.seeds, "strategies": {}, "differences": [], "failed": failed}
    per_query = {}
    for strategy, info in chosen.items():
        done = sorted(runs.get(strategy, []), key=lambda r: r["run"])
        test = {m: _mean_sd([r["pairs_mean"].get(m) for r in done]) for m in REPORTED}
        report["strategies"][strategy] = {**info, "test": test, "runs": [r["run"] for r in done]}
        if done:
            rel = done[0]["relevance"]
            per_query[strategy] = [query_values(r["run"], "test", rel, REPORTED) for r in done]
    names = [s for s in chosen if s in per_query]
    for other in names[1:]:
        for m in REPORTED:
            pairs = [k for k in per_query[names[0]][0] if k[1] != "any"]  # as the pairs_mean figures
            ci = bootstrap_difference(per_query[names[0]], per_query[other], m, rows=pairs, seed=spec.seed)
            report["differences"].append({"a": names[0], "b": other, "metric": m, **ci})
    write_report(report, folder)
    log(report_markdown(report))
    return report


def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"


def report_markdown(report: dict) -> str:
    out = ["# Sweep report", "", f"- selection: {report['objective']} (the test split chooses nothing)",
           f"- test figures: means over query->target pairs, mean ± sd over {report['seeds']} seed(s) of the chosen setting",
           "- differences: B minus A with a 95% interval: paired bootstrap over test queries (within each pair) "
           "plus the seeds' spread (Welch t); * where the interval leaves out 0", ""]
    out += ["| strategy | trials | chosen setting | val | " + " | ".join(f"test {m}" for m in REPORTED) + " |",
            "|---|---:|---|---:|" + "---:|" * len(REPORTED)]
    for s, info in report["strategies"].items():
        setting = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info["params"].items())
        out.append(f"| {s} | {info['trials']} | {setting} | {info['val']:.3f} | "
                   + " | ".join(_pm(info["test"][m]) for m in REPORTED) + " |")
    if report["differences"]:
        out += ["", "| B - A | metric | difference | 95% interval | beyond noise | noise drawn |", "|---|---|---:|---|---|---|"]
        for d in report["differences"]:
            if d["diff"] is None:
                out.append(f"| {d['b']} - {d['a']} | {d['metric']} | n/a | n/a | no | {d['noise']} |")
                continue
            out.append(f"| {d['b']} - {d['a']} | {d['metric']} | {d['diff']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] | "
                       f"{'yes *' if d['exceeds'] else 'no'} | {d['noise']} |")
    if report["failed"]:
        out += ["", "Failed runs:"] + [f"- {f}" for f in report["failed"]]
    return "\n".join(out) + "\n"


def write_report(report: dict, folder: Path) -> None:
    from mmx.cache.atomic import atomic_write_bytes

    atomic_write_bytes(folder / "report.json", json.dumps(report, indent=2, default=str).encode())
    atomic_write_bytes(folder / "report.md", report_markdown(report).encode())
