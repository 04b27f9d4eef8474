"""Runs side by side (``mmx compare``): the same rows, one column group per run, differences.

Paper 000 (Sec. V-A) compares strategies by their *matching rows*: Table I (round-robin, 12
pairs) against Table III (tri-modal, 6 pairs) and Table V (quad-modal). So the rows are the
union of every run's rows in paper order; a run without a row gets ``n/a`` (never a filled-in
value); differences are against the first run (the baseline) and only where both have a value;
and two means are given: over the rows every run has ("matched rows", the fair comparison) and
each run's own Mean row (over all of its rows).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mmx.eval.tables import ARROW, NA, display, fmt, markdown


def run_labels(results_list: list[dict]) -> list[str]:
    """Short unique column labels: the run folder names (full paths where names clash)."""
    names = [Path(r["run"]).name for r in results_list]
    if len(set(names)) < len(names):
        names = [r["run"] for r in results_list]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def short_labels(n: int) -> list[str]:
    """Column labels of the printed tables: A, B, C, ... (R27, R28, ... beyond), each explained once in
    the legend above them, so a header is never a full run name repeated per column."""
    return [chr(ord("A") + i) if i < 26 else f"R{i + 1}" for i in range(n)]


def _rows(results: dict, split: str, section: str) -> dict[tuple[str, str], dict]:
    res = results["splits"].get(split)
    return {(r["query"], r["target"]): r for r in res[section]} if res else {}


def comparison(results_list: list[dict], split: str, section: str, metrics: list[str]) -> dict:
    """Structured comparison of one split and section: keys, values per run, deltas, means."""
    from mmx.eval.metrics import name_order

    per_run = [_rows(r, split, section) for r in results_list]
    keys = sorted({k for rows in per_run for k in rows}, key=lambda k: (name_order(k[0]), name_order(k[1])))
    values = {k: [{m: rows[k].get(m) if k in rows else None for m in metrics} for rows in per_run] for k in keys}
    matched = [k for k in keys if all(values[k][i][m] is not None for i in range(len(per_run)) for m in metrics)]

    def mean(ks, i, m):
        vals = [values[k][i][m] for k in ks if values[k][i][m] is not None]
        return sum(vals) / len(vals) if vals else None

    matched_mean = [{m: mean(matched, i, m) for m in metrics} for i in range(len(per_run))]
    own_mean = [{m: mean([k for k in keys if k in per_run[i]], i, m) for m in metrics} for i in range(len(per_run))]
    return {"split": split, "section": section, "metrics": metrics, "keys": keys, "values": values,
            "matched": matched, "matched_mean": matched_mean, "own_mean": own_mean}


def _delta(a, b):
    return None if a is None or b is None else b - a


def comparison_table(comp: dict, labels: list[str]) -> tuple[list[str], list[list[str]]]:
    metrics = comp["metrics"]
    header = ["Query " + ARROW + " Target"] + [f"{lab} {m}" for lab in labels for m in metrics]
    header += [f"Δ {lab} {m}" for lab in labels[1:] for m in metrics]

    def cells(vals: list[dict]) -> list[str]:
        out = [fmt(v[m], m) for v in vals for m in metrics]
        for v in vals[1:]:
            out += [_signed(_delta(vals[0][m], v[m]), m) for m in metrics]
        return out

    rows = [[f"{display(k[0])} {ARROW} {display(k[1])}"] + cells(comp["values"][k]) for k in comp["keys"]]
    if rows:
        rows.append([f"Mean, matched rows ({len(comp['matched'])})"] + cells(comp["matched_mean"]))
        rows.append(["Mean, all rows of each run"] + cells(comp["own_mean"]))
    return header, rows


def _signed(value, metric: str) -> str:
    if value is None:
        return NA
    return f"{value:+.1f}" if metric in ("MedR", "MeanR") else f"{value:+.3f}"


def compare_results(results_list: list[dict], metrics: list[str] | None = None, splits: list[str] | None = None) -> dict:
    """Every comparison table (pairs and ``-> Any`` of each split) of ``results_list``."""
    if len(results_list) < 2:
        raise ValueError("compare needs at least two runs")
    rels = {r["relevance"] for r in results_list}
    if len(rels) > 1:
        raise ValueError(f"runs were evaluated with different relevance ({', '.join(sorted(rels))}); "
                         "compare them with one --relevance")
    metrics = metrics or [f"R@{k}" for k in results_list[0]["ks"]]
    if splits is None:
        splits = []
        for r in results_list:
            splits += [s for s in r["splits"] if s not in splits]
    labels = run_labels(results_list)
    return {
        "runs": [r["run"] for r in results_list],
        "labels": labels,
        "relevance": rels.pop(),
        "metrics": metrics,
        "tables": [comparison(results_list, s, sec, metrics) for s in splits for sec in ("pairs", "any")],
    }


def comparison_markdown(comp: dict) -> str:
    out = ["# Comparison", ""]
    short = short_labels(len(comp["labels"]))
    out += [f"- `{s}`: {lab} ({run})" for s, lab, run in zip(short, comp["labels"], comp["runs"])]
    out += [f"- relevance: {comp['relevance']}; Δ: each run minus `{short[0]}`; "
            f"{NA}: the run has no such row or no value"]
    for t in comp["tables"]:
        title = "pairs" if t["section"] == "pairs" else "query → Any"
        header, rows = comparison_table(t, short)
        out += ["", f"## {t['split']} split, {title}", "", markdown(header, rows) if rows else "_no data_"]
    return "\n".join(out) + "\n"


def comparison_csv(comp: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["split", "section", "query", "target", "metric"] + comp["labels"]
               + [f"delta {lab}" for lab in comp["labels"][1:]])
    for t in comp["tables"]:
        for k in t["keys"]:
            vals = t["values"][k]
            for m in t["metrics"]:
                row = [v[m] for v in vals]
                w.writerow([t["split"], t["section"], k[0], k[1], m] + ["" if v is None else v for v in row]
                           + ["" if _delta(row[0], v) is None else _delta(row[0], v) for v in row[1:]])
    return buf.getvalue()


def comparison_json(comp: dict) -> str:
    tables = []
    for t in comp["tables"]:
        tables.append({**{k: v for k, v in t.items() if k not in ("keys", "values", "matched")},
                       "rows": [{"query": k[0], "target": k[1], "values": t["values"][k]} for k in t["keys"]],
                       "matched": [list(k) for k in t["matched"]]})
    return json.dumps({**{k: v for k, v in comp.items() if k != "tables"}, "tables": tables}, indent=2)


def write_comparison(comp: dict, folder: str | Path) -> dict[str, Path]:
    from mmx.cache.atomic import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "compare.md", "csv": folder / "compare.csv", "json": folder / "compare.json"}
    atomic_write_bytes(paths["markdown"], comparison_markdown(comp).encode())
    atomic_write_bytes(paths["csv"], comparison_csv(comp).encode())
    atomic_write_bytes(paths["json"], comparison_json(comp).encode())
    return paths
