"""``mmx eval`` and ``mmx compare``: the papers' tables from run folders."""

from __future__ import annotations

import click

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
    click.option("--split", "split", default=None, help="Comma-separated splits (default: test,train, those the run has)."),
    click.option("--relevance", type=click.Choice(RELEVANCE_CHOICES), default=None,
                 help="class (papers 000/002) or instance (paper 001); default: the run's alignment."),
    click.option("--k", "k", default="1,5,10", show_default=True, help="Recall cut-offs K."),
    click.option("--map-r", type=click.IntRange(min=1), default=50, show_default=True, help="R of mAP@R (paper 002 eq. 7)."),
    click.option("--missing-as-miss", is_flag=True,
                 help="Count queries without any relevant item as misses (default: exclude them from the means)."),
    click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:N]."),
    click.option("--threads", type=click.IntRange(min=0), default=0,
                 help="torch CPU threads [default: half the cores, 1 to 4; see mmx.cache.threads]."),
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
def eval_cmd(run, split, relevance, k, map_r, missing_as_miss, device, threads, plots):
    """Evaluate a run folder: Recall@K per pair and to Any, mAP@R, mAP, median rank.

    Prints the pair table and writes Markdown, CSV and JSON into RUN/eval/.

    \b
    Example:
      mmx eval runs/20250101-120000-joint-tiav --split test,train --plots
    """
    from pathlib import Path

    from mmx.cache.threads import set_threads
    from mmx.eval import runs
    from mmx.eval.evaluate import evaluate_run
    from mmx.eval.tables import markdown, recall_table, write_reports

    used = set_threads(threads)
    results = evaluate_run(run, _splits(split), relevance, _ks(k), map_r,
                           "miss" if missing_as_miss else "exclude", _device(device))
    results["threads"] = used  # recorded in the JSON report
    out = runs.output_dir(run, "eval")  # refuses a planted symlink RUN/eval -> elsewhere
    paths = write_reports(results, out, stem=f"eval-{results['relevance']}")
    click.echo(f"relevance: {results['relevance']} ({results['relevance_source']})")
    if results.get("note"):
        click.echo(f"note: {results['note']}")
    ap = [f"mAP@{results['map_r']}", "mAP"]  # paper 002 eq. 7, and over the whole gallery
    recall_any = [f"R@{k}" for k in results["ks"]] + [f"xR@{k}" for k in results["ks"]]
    for section, title, metrics in (
        ("pairs", "Recall at K", None),
        ("any", "Recall at K, query -> Any (R@K: hit-rate, any modality; xR@K: hits of another modality "
                "only, paper 000 Tables II/IV/VI)", recall_any),
        ("pairs", f"{' and '.join(ap)}", ap), ("any", f"{' and '.join(ap)}, query -> Any", ap),
    ):
        header, rows = recall_table(results, section, metrics)
        click.echo(f"\n{title}\n" + (markdown(header, rows) if rows else "(no data)"))
    written = list(paths.values())
    if plots:
        written += write_plots(results, Path(run), out)
    click.echo("\nwrote:\n" + "\n".join(f"  {p}" for p in written))


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
@click.option("--metric", "metrics", multiple=True, help="Metric columns (repeatable; default: R@K for every K).")
@click.option("--out", default=None, help="Folder for compare.md/.csv/.json (default: print only).")
def compare_cmd(runs, split, relevance, k, map_r, missing_as_miss, device, threads, metrics, out):
    """Put runs side by side (same rows, one column group per run, differences to the first).

    \b
    Example (paper 000's comparison):
      mmx compare runs/round-robin runs/tri-modal runs/quad-modal --out runs/compare
    """
    from mmx.cache.threads import set_threads
    from mmx.eval.compare import compare_results, comparison_markdown, write_comparison
    from mmx.eval.evaluate import default_relevance, evaluate_run, metric_names, read_config

    if len(runs) < 2:
        raise click.UsageError("compare needs at least two runs")
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
    click.echo(comparison_markdown(comp))
    if out:
        paths = write_comparison(comp, out)
        click.echo("wrote:\n" + "\n".join(f"  {p}" for p in paths.values()))


COMMANDS = [eval_cmd, compare_cmd]
