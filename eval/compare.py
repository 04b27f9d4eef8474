"""Runs side by side (``mmx compare``): the same rows, one column group per run, differences.

Paper 000 (Sec. V-A) compares strategies by their *matching rows*: Table I (round-robin, 12
pairs) against Table III (tri-modal, 6 pairs) and Table V (quad-modal). So the rows are the
union of every run's rows in paper order; a run without a row gets ``n/a`` (never a filled-in
value); differences are against the first run (the baseline) and only where both have a value;
and two means are given: over the rows every run has ("matched rows", the fair comparison) and
each run's own Mean row (over all of its rows).

A column is a *group* of runs (seeds of one setting, ``mmx compare --group NAME=RUNS``): its cell
is the mean over the group's runs and, for two or more, ``± sd``. With per-query values
(:func:`mmx.eval.noise.query_values`) each difference gets a 95% interval (paired bootstrap over
queries plus the seeds' spread, :func:`mmx.eval.noise.bootstrap_difference`), marked ``*`` when it
leaves out 0. ``-> Any`` tables show ``xR@K`` beside ``R@K``, and every row its chance level.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

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


def _group_row(rows: list[dict | None], metrics: list[str]) -> tuple[dict, dict, dict]:
    """Mean and sd over a group's runs of each metric (over the runs that have a value), the chance levels."""
    mean, sd, chance = {}, {}, {}
    for m in metrics:
        vals = [r.get(m) for r in rows if r is not None and r.get(m) is not None]
        mean[m] = sum(vals) / len(vals) if vals else None
        sd[m] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        ch = [(r.get("chance") or {}).get(m) for r in rows if r is not None]
        chance[m] = next((c for c in ch if c is not None), None)
    return mean, sd, chance


def section_metrics(metrics: list[str], section: str) -> list[str]:
    """A ``-> Any`` table adds each ``R@K``'s ``xR@K`` beside it (hit-rate and cross-modal recall)."""
    if section != "any":
        return list(metrics)
    out = []
    for m in metrics:
        out.append(m)
        if m.startswith("R@") and f"x{m}" not in metrics:
            out.append(f"x{m}")
    return out


def comparison(results_list: list[dict], split: str, section: str, metrics: list[str],
               groups: list[list[int]] | None = None, per_query: list[dict] | None = None) -> dict:
    """Structured comparison of one split and section: keys, values per group, sd, deltas, means, noise."""
    from mmx.eval.metrics import name_order

    groups = groups or [[i] for i in range(len(results_list))]
    metrics = section_metrics(metrics, section)
    per_run = [_rows(r, split, section) for r in results_list]
    keys = sorted({k for rows in per_run for k in rows}, key=lambda k: (name_order(k[0]), name_order(k[1])))
    values, sds, chance = {}, {}, {}
    for k in keys:
        stats = [_group_row([per_run[i].get(k) for i in g], metrics) for g in groups]
        values[k] = [s[0] for s in stats]
        sds[k] = [s[1] for s in stats]
        chance[k] = [s[2] for s in stats]
    matched = [k for k in keys if all(values[k][i][m] is not None for i in range(len(groups)) for m in metrics)]
    own = [[k for k in keys if any(k in per_run[j] for j in g)] for g in groups]

    def mean(ks, i, m, table=values):
        vals = [table[k][i][m] for k in ks if table[k][i][m] is not None]
        return sum(vals) / len(vals) if vals else None

    matched_mean = [{m: mean(matched, i, m) for m in metrics} for i in range(len(groups))]
    own_mean = [{m: mean(own[i], i, m) for m in metrics} for i in range(len(groups))]
    comp = {"split": split, "section": section, "metrics": metrics, "keys": keys, "values": values, "sd": sds,
            "chance": chance, "matched": matched, "matched_mean": matched_mean, "own_mean": own_mean,
            "matched_chance": [{m: mean(matched, i, m, chance) for m in metrics} for i in range(len(groups))],
            "own_chance": [{m: mean(own[i], i, m, chance) for m in metrics} for i in range(len(groups))]}
    if per_query is not None:
        comp["noise"] = _noise(per_query, groups, split, section, keys, matched, metrics)
    return comp


def _noise(per_query: list[dict], groups: list[list[int]], split: str, section: str, keys: list, matched: list,
           metrics: list[str]) -> dict:
    """``{row key or "matched": [None, {metric: interval} per other group]}``: each group minus the first."""
    from mmx.eval.noise import bootstrap_difference

    def runs_of(g):
        return [{k: v for k, v in per_query[i].get(split, {}).items() if (k[1] == "any") == (section == "any")} for i in g]

    base = runs_of(groups[0])
    out: dict = {}
    for j, g in enumerate(groups[1:], start=1):
        other = runs_of(g)
        for key in keys + ["matched"]:
            rows = matched if key == "matched" else [key]
            if not rows or not all(r in run for run in base + other for r in rows):
                continue
            cell = {m: bootstrap_difference(base, other, m, rows=rows) for m in metrics if m != "MedR"}
            out.setdefault(key, [None] * len(groups))[j] = cell
    return out


def _delta(a, b):
    return None if a is None or b is None else b - a


def _cell(value, sd, metric: str) -> str:
    return fmt(value, metric) if sd is None or value is None else f"{fmt(value, metric)} ± {fmt(sd, metric)}"


def _delta_cell(value, noise: dict | None, metric: str) -> str:
    text = _signed(value, metric)
    if value is None or not noise or noise.get(metric) is None or noise[metric]["low"] is None:
        return text
    ci = noise[metric]
    return f"{text}{' *' if ci['exceeds'] else ''} [{_signed(ci['low'], metric)}, {_signed(ci['high'], metric)}]"


def _chance_text(chances: list[dict], metrics: list[str]) -> str:
    """One chance cell for a row: the value of each metric (``n/a`` without); per group where groups differ."""
    shown = [m for m in metrics if m != "MedR"]

    def one(ch):
        vals = [ch.get(m) for m in shown]
        return NA if all(v is None for v in vals) else "/".join(fmt(v, m) for v, m in zip(vals, shown))

    texts = [one(c) for c in chances]
    distinct = [t for t in dict.fromkeys(texts) if t != NA]
    if len(distinct) <= 1:
        return distinct[0] if distinct else NA
    return "; ".join(f"{lab}: {t}" for lab, t in zip(short_labels(len(texts)), texts))


def comparison_table(comp: dict, labels: list[str]) -> tuple[list[str], list[list[str]]]:
    metrics = comp["metrics"]
    header = ["Query " + ARROW + " Target"] + [f"{lab} {m}" for lab in labels for m in metrics]
    header += [f"Δ {lab} {m}" for lab in labels[1:] for m in metrics]
    header += ["chance " + "/".join(m for m in metrics if m != "MedR")]
    noise = comp.get("noise") or {}

    def cells(vals: list[dict], sds: list[dict] | None, chances: list[dict], key) -> list[str]:
        out = [_cell(v[m], sds[i][m] if sds else None, m) for i, v in enumerate(vals) for m in metrics]
        for j, v in enumerate(vals[1:], start=1):
            ci = (noise.get(key) or [None] * len(vals))[j]
            out += [_delta_cell(_delta(vals[0][m], v[m]), ci, m) for m in metrics]
        return out + [_chance_text(chances, metrics)]

    rows = [[f"{display(k[0])} {ARROW} {display(k[1])}"] + cells(comp["values"][k], comp["sd"][k], comp["chance"][k], k)
            for k in comp["keys"]]
    if rows:
        rows.append([f"Mean, matched rows ({len(comp['matched'])})"]
                    + cells(comp["matched_mean"], None, comp["matched_chance"], "matched"))
        rows.append(["Mean, all rows of each run"] + cells(comp["own_mean"], None, comp["own_chance"], None))
    return header, rows


def _signed(value, metric: str) -> str:
    if value is None:
        return NA
    return f"{value:+.1f}" if metric in ("MedR", "MeanR") else f"{value:+.3f}"


def compare_results(results_list: list[dict], metrics: list[str] | None = None, splits: list[str] | None = None,
                    groups: list[tuple[str, list[int]]] | None = None, per_query: list[dict] | None = None) -> dict:
    """Every comparison table (pairs and ``-> Any`` of each split) of ``results_list``.

    ``groups``: ``[(label, [index into results_list, ...]), ...]``, one column each (default: a
    column per run). ``per_query``: per run ``{split: query_values(...)}``, for the noise intervals.
    """
    groups = groups or [(lab, [i]) for i, lab in enumerate(run_labels(results_list))]
    if len(groups) < 2:
        raise ValueError("compare needs at least two runs (or two groups)")
    rels = {r["relevance"] for r in results_list}
    if len(rels) > 1:
        raise ValueError(f"runs were evaluated with different relevance ({', '.join(sorted(rels))}); "
                         "compare them with one --relevance")
    metrics = metrics or [f"R@{k}" for k in results_list[0]["ks"]]
    if splits is None:
        splits = []
        for r in results_list:
            splits += [s for s in r["splits"] if s not in splits]
    index = [g for _, g in groups]
    return {
        "runs": [results_list[g[0]]["run"] if len(g) == 1 else [results_list[i]["run"] for i in g] for g in index],
        "labels": [lab for lab, _ in groups],
        "relevance": rels.pop(),
        "metrics": metrics,
        "noise": None if per_query is None else ("95% interval: paired bootstrap over queries (drawn within each row) plus "
                                                 "the spread of each group's runs (seeds, Welch t); * where it leaves out 0"),
        "tables": [comparison(results_list, s, sec, metrics, index, per_query) for s in splits for sec in ("pairs", "any")],
    }


LEGEND_ANY = ("R@K (-> Any): a hit is a relevant item of any modality, the query's own modality included (hit-rate); "
              "xR@K: only items of another modality are hits (cross-modal recall, as paper 000's -> Any tables)")


def comparison_markdown(comp: dict) -> str:
    out = ["# Comparison", ""]
    short = short_labels(len(comp["labels"]))
    for s, lab, run in zip(short, comp["labels"], comp["runs"]):
        if isinstance(run, list):
            out.append(f"- `{s}`: {lab} ({len(run)} runs: {', '.join(run)}); cells: mean ± sd over them")
        else:
            out.append(f"- `{s}`: {lab} ({run})")
    out += [f"- relevance: {comp['relevance']}; Δ: each column minus `{short[0]}`; "
            f"{NA}: the run has no such row or no value; chance: a random ranking's expected value"]
    if comp.get("noise"):
        out.append(f"- Δ [low, high]: {comp['noise']}")
    for t in comp["tables"]:
        title = "pairs" if t["section"] == "pairs" else "query → Any"
        header, rows = comparison_table(t, short)
        out += ["", f"## {t['split']} split, {title}", ""]
        if t["section"] == "any":
            out += [LEGEND_ANY, ""]
        out.append(markdown(header, rows) if rows else "_no data_")
    return "\n".join(out) + "\n"


def comparison_csv(comp: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    others = comp["labels"][1:]
    w.writerow(["split", "section", "query", "target", "metric"] + comp["labels"]
               + [f"delta {lab}" for lab in others] + [f"sd {lab}" for lab in comp["labels"]]
               + [f"{end} {lab}" for lab in others for end in ("low", "high")] + ["chance"])
    for t in comp["tables"]:
        noise = t.get("noise") or {}
        for k in t["keys"]:
            vals = t["values"][k]
            for m in t["metrics"]:
                row = [v[m] for v in vals]
                cis = [((noise.get(k) or [None] * len(vals))[j] or {}).get(m) or {} for j in range(1, len(vals))]
                chance = next((c[m] for c in t["chance"][k] if c.get(m) is not None), None)
                w.writerow([t["split"], t["section"], k[0], k[1], m] + ["" if v is None else v for v in row]
                           + ["" if _delta(row[0], v) is None else _delta(row[0], v) for v in row[1:]]
                           + ["" if sd[m] is None else sd[m] for sd in t["sd"][k]]
                           + [("" if ci.get(end) is None else ci[end]) for ci in cis for end in ("low", "high")]
                           + ["" if chance is None else chance])
    return buf.getvalue()


def comparison_json(comp: dict) -> str:
    tables = []
    per_row = ("keys", "values", "matched", "sd", "chance", "noise")
    for t in comp["tables"]:
        noise = t.get("noise") or {}
        tables.append({**{k: v for k, v in t.items() if k not in per_row},
                       "rows": [{"query": k[0], "target": k[1], "values": t["values"][k], "sd": t["sd"][k],
                                 "chance": t["chance"][k], "noise": noise.get(k)} for k in t["keys"]],
                       "matched": [list(k) for k in t["matched"]], "matched_noise": noise.get("matched")})
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
