"""``mmx eval`` and ``mmx compare``: the papers' tables from run folders."""

from __future__ import annotations

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.options import device_option, json_option, quiet_option, threads_option

RELEVANCE_CHOICES = ["class", "instance"]  # mirrors mmx.eval.metrics.RELEVANCES (kept import-free)


def _splits(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [s.strip() for s in value.split(",") if s.strip()]
    if not items:
        raise click.BadParameter("expected comma-separated split names, e.g. test,train", param_hint="--split")
    return items


def _ks(value: str) -> tuple[int, ...]:
    from mmx.eval.metrics import parse_ks

    try:
        return parse_ks(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--k: "), param_hint="--k") from None


_common = [
    click.option("--split", "split", default=None, show_default="test,train, those the run has",
                 help="Comma-separated splits."),
    click.option("--relevance", type=click.Choice(RELEVANCE_CHOICES), default=None, show_default="the run's alignment",
                 help="class: same label is relevant (papers 000/002); instance: same group (paper 001)."),
    click.option("--k", "k", default="1,5,10", help="Recall cut-offs K, comma-separated."),
    click.option("--map-r", type=click.IntRange(min=1), default=50, help="R of mAP@R (paper 002 eq. 7)."),
    click.option("--missing-as-miss", is_flag=True,
                 help="Count queries without any relevant item as misses (without it, they are left out of the means)."),
    device_option("Where the ranking runs: auto (CUDA when present), cpu, cuda or cuda:N."),
    threads_option(),
    quiet_option(),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


def _device(name: str):
    import torch

    if name == "auto":
        return None
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available here; use auto or cpu", param_hint="--device")
    return dev


@click.command("eval")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@_with_common
@click.option("--plots", is_flag=True, help="Also write PNGs: mAP and R@K heatmaps, training curves, 2-D projection.")
@json_option("the evaluation (as RUN/eval/eval-RELEVANCE.json)")
@click.pass_context
def eval_cmd(ctx, run, split, relevance, k, map_r, missing_as_miss, device, threads, plots):
    """Evaluate the run folder RUN: Recall@K per pair and to Any, mAP@R, mAP, median rank.

    RUN is the folder mmx train prints last (runs/joint after --name joint). Prints the pair
    table and writes Markdown, CSV and JSON into RUN/eval/.

    \b
    Examples:
      mmx eval runs/joint
      mmx eval runs/joint --split test,train --relevance class --plots
    """
    from pathlib import Path

    from mmx.cache.threads import set_threads
    from mmx.eval import runs
    from mmx.eval.evaluate import evaluate_run
    from mmx.eval.tables import markdown, recall_table, write_reports

    con = console(ctx)
    _check_run(run)
    used = set_threads(threads)
    results = evaluate_run(run, _splits(split), relevance, _ks(k), map_r,
                           "miss" if missing_as_miss else "exclude", _device(device))
    results["threads"] = used  # recorded in the JSON report
    out = runs.output_dir(run, "eval")  # refuses a planted symlink RUN/eval -> elsewhere
    paths = write_reports(results, out, stem=f"eval-{results['relevance']}")
    con.line(f"relevance: {results['relevance']} ({results['relevance_source']})")
    if results.get("note"):
        con.line(f"note: {results['note']}")
    ap = [f"mAP@{results['map_r']}", "mAP"]  # paper 002 eq. 7, and over the whole gallery
    recall_any = [f"R@{k}" for k in results["ks"]] + [f"xR@{k}" for k in results["ks"]]
    for section, title, metrics in (
        ("pairs", "Recall at K", None),
        ("any", "Recall at K, query -> Any (R@K: hit-rate, any modality; xR@K: hits of another modality "
                "only, paper 000 Tables II/IV/VI)", recall_any),
        ("pairs", f"{' and '.join(ap)}", ap), ("any", f"{' and '.join(ap)}, query -> Any", ap),
    ):
        header, rows = recall_table(results, section, metrics)
        con.line(f"\n{title}\n" + (markdown(header, rows) if rows else "(no data)"))
    written = list(paths.values())
    if plots:
        written += write_plots(results, Path(run), out)
    con.line("\nwrote:\n" + "\n".join(f"  {p}" for p in written))
    con.summary(f"evaluated {run} on {', '.join(results['splits']) or 'no split'} ({results['relevance']} relevance): "
                f"{len(written)} file(s) in {out}")
    con.result(results)


def _check_run(path: str) -> None:
    """A clear error for a folder of runs (what ``mmx train --out`` names) given where a run folder belongs."""
    from pathlib import Path

    p = Path(path)
    if (p / "config.yaml").is_file() or (p / "embeddings").is_dir():
        return
    inner = sorted(str(c.parent) for c in p.glob("*/config.yaml"))
    if inner:
        raise click.BadParameter(f"{path} is a folder of runs, not a run folder; give one of them, e.g. {inner[-1]}",
                                 param_hint="RUN")


def write_plots(results: dict, run, out) -> list:
    """Heatmaps (mAP@R, R@K) and projections per split, and the training curves (also used by ``mmx demo``)."""
    from mmx.eval import plots

    written = []
    rel = results["relevance"]
    for split, res in results["splits"].items():
        if res["pairs"]:
            for metric in (f"mAP@{results['map_r']}", f"R@{results['ks'][-1]}"):
                safe = metric.replace("@", "")
                written.append(plots.heatmap(results, split, metric, out / f"heatmap-{split}-{safe}-{rel}.png"))
        p = plots.projection(run, split, out / f"projection-{split}.png")
        if p:
            written.append(p)
    p = plots.training_curves(run, out / "training-curves.png")
    if p:
        written.append(p)
    return written


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=str))
@_with_common
@click.option("--metric", "metrics", multiple=True, show_default="R@K for every K",
              help="Metric column, e.g. mAP or R@5 (repeatable).")
@click.option("--out", default=None, show_default="print only", help="Folder for compare.md, compare.csv and compare.json.")
@json_option("the comparison (as compare.json)")
@click.pass_context
def compare_cmd(ctx, runs, split, relevance, k, map_r, missing_as_miss, device, threads, metrics, out):
    """Put RUNS (two or more run folders) side by side: same rows, one column group per run, differences to the first.

    \b
    Examples:
      mmx compare runs/joint runs/quad
      mmx compare runs/joint runs/quad --metric R@1 --metric mAP --out runs/compare
    """
    from mmx.cache.threads import set_threads
    from mmx.eval.compare import compare_results, comparison_json, comparison_markdown, write_comparison
    from mmx.eval.evaluate import default_relevance, evaluate_run, metric_names, read_config

    con = console(ctx)
    if len(runs) < 2:
        raise click.UsageError("compare needs at least two runs")
    for run in runs:
        _check_run(run)
    set_threads(threads)
    ks = _ks(k)
    known = metric_names(ks, map_r)
    bad = [m for m in metrics if m not in known]
    if bad:
        raise click.BadParameter(f"unknown metric {', '.join(bad)}; known: {', '.join(known)}", param_hint="--metric")
    if relevance is None:
        # one relevance for all: instance only when every run was trained instance-aligned
        rels = {default_relevance(read_config(r)) for r in runs}
        relevance = "instance" if rels == {"instance"} else "class"
    results = [evaluate_run(r, _splits(split), relevance, ks, map_r, "miss" if missing_as_miss else "exclude",
                            _device(device)) for r in runs]
    comp = compare_results(results, list(metrics) or None, _splits(split))
    con.line(comparison_markdown(comp))
    if out:
        paths = write_comparison(comp, out)
        con.line("wrote:\n" + "\n".join(f"  {p}" for p in paths.values()))
    con.summary(f"compared {len(runs)} runs ({relevance} relevance)" + (f": tables in {out}" if out else ""))
    if con.json:
        click.echo(comparison_json(comp))


COMMANDS = [eval_cmd, compare_cmd]
