"""The papers' tables from a results dict (``mmx.eval.evaluate``): Markdown, CSV and JSON.

* Pair table in the layout of paper 000 Tables I, III, V: one row per ``Query -> Target`` and a
  Mean row; columns test R@1/5/10, then train R@1/5/10.
* ``-> Any`` tables in the layout of paper 000 Tables II, IV, VI: by hit-rate (``R@K``) and by
  cross-modal recall (``xR@K``, the reading consistent with those tables; not proven to reproduce them).
* mAP matrix (query rows x retrieval columns, the diagonal not evaluated, an Avg line) as paper
  002 Tables III-IV and thesis 004 Table 8, for mAP@R and for the full ranking.
* Median / mean rank per pair (paper 001).

A cell without data (a split without that pair, a pair where no query has a relevant item) is
written ``n/a``, never filled; the diagonal of a matrix is ``—`` (not evaluated).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

NA = "n/a"
DIAG = "—"
ARROW = "→"


def display(name: str) -> str:
    """``audio+video`` -> ``Audio+Video``; ``any`` -> ``Any``."""
    from mmx.eval.metrics import LATE

    joined = "+".join(p.capitalize() for p in name.removesuffix(LATE).split("+"))
    return f"{joined} (late)" if name.endswith(LATE) else joined


def fmt(value, metric: str = "") -> str:
    if value is None:
        return NA
    if metric in ("MedR", "MeanR"):
        return f"{value:.1f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _row_keys(results: dict, section: str) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for split in results["splits"].values():
        for r in split[section]:
            if (r["query"], r["target"]) not in keys:
                keys.append((r["query"], r["target"]))
    return keys


def _lookup(results: dict, split: str, section: str, key: tuple[str, str]) -> dict | None:
    for r in results["splits"][split][section]:
        if (r["query"], r["target"]) == key:
            return r
    return None


def chance_cell(row: dict | None, metrics: list[str]) -> str:
    """A row's chance levels of ``metrics``, slash-separated in their order (``n/a`` without any)."""
    chance = (row or {}).get("chance") or {}
    values = [chance.get(m) for m in metrics if m not in ("MedR",)]
    if not values or all(v is None for v in values):
        return NA
    return "/".join(fmt(v, m) for v, m in zip(values, [m for m in metrics if m != "MedR"]))


def chance_header(metrics: list[str]) -> str:
    return "chance " + "/".join(m for m in metrics if m != "MedR")


def _metric_rows(results: dict, section: str, splits: list[str], metrics: list[str],
                 chance: bool = False) -> list[list[str]]:
    """One row per ``Q -> T`` of ``section``: the metrics of each split, side by side, then (with
    ``chance``) each split's chance levels of those metrics."""
    rows = []
    for key in _row_keys(results, section):
        cells = [f"{display(key[0])} {ARROW} {display(key[1])}"]
        found = [_lookup(results, s, section, key) for s in splits]
        for r in found:
            cells += [fmt(r.get(m) if r else None, m) for m in metrics]
        if chance:
            cells += [chance_cell(r, metrics) for r in found]
        rows.append(cells)
    return rows


def recall_table(results: dict, section: str = "pairs", metrics: list[str] | None = None,
                 chance: bool = True) -> tuple[list[str], list[list[str]]]:
    """Paper 000's layout: rows ``Q -> T`` and Mean; columns split x metric (test first), then
    each split's chance levels of those metrics (a random ranking's expectation, one column per split)."""
    metrics = metrics or [f"R@{k}" for k in results["ks"]]
    splits = list(results["splits"])
    header = ["Query " + ARROW + " Target"] + [f"{s} {m}" for s in splits for m in metrics]
    if chance:
        header += [f"{s} {chance_header(metrics)}" for s in splits]
    rows = _metric_rows(results, section, splits, metrics, chance)
    if rows:
        mean = ["Mean"]
        for s in splits:
            r = results["splits"][s][f"{section}_mean"]
            mean += [fmt(r.get(m), m) for m in metrics]
        if chance:
            mean += [chance_cell(results["splits"][s][f"{section}_mean"], metrics) for s in splits]
        rows.append(mean)
    return header, rows


def map_matrix(results: dict, split: str, metric: str) -> tuple[list[str], list[list[str]]]:
    """Query rows x retrieval columns of one metric (thesis 004 Table 8), with an Avg line."""
    pairs = results["splits"][split]["pairs"]
    names: list[str] = []
    for r in pairs:
        for n in (r["query"], r["target"]):
            if n not in names:
                names.append(n)
    from mmx.eval.metrics import modalities_of, name_order

    names.sort(key=name_order)
    value = {(r["query"], r["target"]): r.get(metric) for r in pairs}
    chance = {(r["query"], r["target"]): (r.get("chance") or {}).get(metric) for r in pairs}
    header = [f"Q {ARROW} R"] + [display(n) for n in names] + ["chance (row mean)"]

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    rows = []
    for q in names:
        cells = [display(q)]
        for t in names:
            overlap = bool(modalities_of(q) & modalities_of(t))  # text->text: not evaluated
            cells.append(DIAG if (q, t) not in value and overlap else fmt(value.get((q, t)), metric))
        rows.append(cells + [fmt(mean(v for (qq, _), v in chance.items() if qq == q), metric)])
    if rows:
        rows.append(["Avg", fmt(mean(value.values()), metric)] + [""] * (len(names) - 1)
                    + [fmt(mean(chance.values()), metric)])
    return header, rows


def rank_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Median and mean rank of the first relevant item (paper 001), pairs then ``-> Any``."""
    splits = list(results["splits"])
    metrics = ["MedR", "MeanR"]
    header = ["Query " + ARROW + " Target"] + [f"{s} {m}" for s in splits for m in metrics]
    header += [f"{s} chance MeanR" for s in splits]
    return header, (_metric_rows(results, "pairs", splits, metrics, chance=True)
                    + _metric_rows(results, "any", splits, metrics, chance=True))


def coverage_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Queries per row and how many had no relevant item (excluded or counted as misses)."""
    splits = list(results["splits"])
    header = ["Query " + ARROW + " Target"] + [f"{s} {c}" for s in splits for c in ("queries", "no relevant")]
    rows = []
    for section in ("pairs", "any"):
        for key in _row_keys(results, section):
            cells = [f"{display(key[0])} {ARROW} {display(key[1])}"]
            for s in splits:
                r = _lookup(results, s, section, key)
                cells += [str(r["queries"]) if r else NA, str(r["no_relevant"]) if r else NA]
            rows.append(cells)
    return header, rows


def report_markdown(results: dict) -> str:
    """Every table of one evaluated run, as one Markdown document."""
    policy = ("excluded from the means" if results["no_relevant"] == "exclude"
              else "counted as misses (recall 0, AP 0)")
    out = [
        f"# Evaluation of `{results['run']}`",
        "",
        f"- strategy: {results.get('strategy') or NA}; modalities: {results.get('modalities') or NA}",
        f"- relevance: **{results['relevance']}** ({results['relevance_source']}); similarity: cosine",
        f"- queries without a relevant item: {policy}",
        f"- mAP@{results['map_r']}: paper 002 eq. 7, divided by the relevant items in the top {results['map_r']}; "
        "mAP: the full ranking; ties: ranks averaged, AP pessimistic",
        f"- chance: what a uniformly random ranking scores in expectation, from the {results['relevance']} "
        "relevance's counts in each gallery (exact: hypergeometric R@K, expected AP)",
        "",
    ]
    if not results["splits"]:
        return "\n".join(out + ["No split evaluated."])
    for split, res in results["splits"].items():
        sizes = ", ".join(f"{k} {v}" for k, v in res["sizes"].items()) or "empty"
        out.append(f"- {split}: {sizes}")
    sections = [
        ("Recall at K per query → target pair (paper 000, Tables I/III/V)", recall_table(results, "pairs")),
        ("Recall at K, query → Any: a hit is any relevant item, of any modality (hit-rate)", recall_table(results, "any")),
        ("Cross-modal recall xR@K, query → Any: only items of another modality are hits; consistent with "
         "paper 000's Tables II/IV/VI (that it reproduces paper 000, Tables II/IV/VI is not proven)", recall_table(results, "any", [f"xR@{k}" for k in results["ks"]])),
    ]
    for split in results["splits"]:
        for metric in (f"mAP@{results['map_r']}", "mAP"):
            sections.append((f"{metric}, {split} split (Q: query, R: retrieval modality)", map_matrix(results, split, metric)))
    sections.append(("Median / mean rank of the first relevant item (paper 001)", rank_table(results)))
    sections.append(("Queries and queries without a relevant item", coverage_table(results)))
    for title, (header, rows) in sections:
        out += ["", f"## {title}", ""]
        out.append(markdown(header, rows) if rows else "_no data_")
    return "\n".join(out) + "\n"


def report_csv(results: dict) -> str:
    """One line per split and row (pairs, their mean, ``-> Any``, its mean), every metric."""
    from mmx.eval.evaluate import metric_names

    names = metric_names(results["ks"], results["map_r"])
    buf = io.StringIO()
    w = csv.writer(buf)
    chance = [m for m in names if m != "MedR"]
    w.writerow(["run", "relevance", "split", "section", "query", "target", "queries", "evaluated", "no_relevant"] + names
               + [f"chance {m}" for m in chance])
    for split, res in results["splits"].items():
        for section in ("pairs", "any"):
            for r in res[section] + [res[f"{section}_mean"]]:
                w.writerow([results["run"], results["relevance"], split, section, r["query"], r["target"],
                            r.get("queries", ""), r.get("evaluated", ""), r.get("no_relevant", "")]
                           + ["" if r.get(m) is None else r[m] for m in names]
                           + ["" if (r.get("chance") or {}).get(m) is None else r["chance"][m] for m in chance])
    return buf.getvalue()


def write_reports(results: dict, folder: str | Path, stem: str = "eval") -> dict[str, Path]:
    """``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` in ``folder`` (atomic writes)."""
    from mmx.cache.atomic import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / f"{stem}.md", "csv": folder / f"{stem}.csv", "json": folder / f"{stem}.json"}
    atomic_write_bytes(paths["markdown"], report_markdown(results).encode())
    atomic_write_bytes(paths["csv"], report_csv(results).encode())
    atomic_write_bytes(paths["json"], json.dumps(results, indent=2).encode())
    return paths
