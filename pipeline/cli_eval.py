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
                "only, consistent with paper 000 Tables II/IV/VI)", recall_any),
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
@click.argument("runs", nargs=-1, type=click.Path(file_okay=False, path_type=str))
@click.option("--group", "groups", multiple=True, metavar="NAME=RUN[,RUN...]",
              help="A column averaging several runs (seeds), each RUN a folder or a glob such as 'runs/quad/*'; "
                   "repeatable, a repeated NAME adds runs to its column.")
@_with_common
@click.option("--metric", "metrics", multiple=True, show_default="R@K for every K",
              help="Metric column, e.g. mAP or R@5 (repeatable).")
@click.option("--noise/--no-noise", default=True,
              help="Give each difference a 95% interval: paired bootstrap over queries plus the spread of a group's runs.")
@click.option("--out", default=None, show_default="print only", help="Folder for compare.md, compare.csv and compare.json.")
@json_option("the comparison (as compare.json)")
@click.pass_context
def compare_cmd(ctx, runs, groups, split, relevance, k, map_r, missing_as_miss, device, threads, metrics, noise, out):
    """Put runs side by side: same rows, one column per run (RUNS) or per group of runs (--group), differences to the first.

    A group's cell is the mean ± sd over its runs; each difference gets a paired bootstrap
    interval over the test queries (and the group's runs) and a * where it exceeds that noise.
    Every row shows its chance level; -> Any rows show xR@K beside R@K.

    \b
    Examples:
      mmx compare runs/joint runs/quad
      mmx compare runs/joint runs/quad --metric R@1 --metric mAP --out runs/compare
      mmx compare --group 'quad=runs/quad*' --group 'joint=runs/joint*' --metric mAP
    """
    from mmx.cache.threads import set_threads
    from mmx.eval.compare import compare_results, comparison_json, comparison_markdown, write_comparison
    from mmx.eval.evaluate import default_relevance, evaluate_run, metric_names, read_config

    con = console(ctx)
    columns = [(None, [r]) for r in runs] + _groups(groups)
    if len(columns) < 2:
        raise click.UsageError("compare needs at least two runs (or two --group columns)")
    paths = [r for _, members in columns for r in members]
    for run in paths:
        _check_run(run)
    set_threads(threads)
    ks = _ks(k)
    known = metric_names(ks, map_r)
    bad = [m for m in metrics if m not in known]
    if bad:
        raise click.BadParameter(f"unknown metric {', '.join(bad)}; known: {', '.join(known)}", param_hint="--metric")
    if relevance is None:
        # one relevance for all: instance only when every run was trained instance-aligned
        rels = {default_relevance(read_config(r)) for r in paths}
        relevance = "instance" if rels == {"instance"} else "class"
    policy = "miss" if missing_as_miss else "exclude"
    results = [evaluate_run(r, _splits(split), relevance, ks, map_r, policy, _device(device)) for r in paths]
    spec, at = [], 0
    from mmx.eval.compare import run_labels

    labels = run_labels(results)
    for name, members in columns:
        spec.append((name or labels[at], list(range(at, at + len(members)))))
        at += len(members)
    per_query = None
    if noise:
        from mmx.eval.compare import section_metrics
        from mmx.eval.noise import query_values

        wanted = section_metrics(list(metrics) or [f"R@{x}" for x in ks], "any")
        per_query = [{s: query_values(r, s, relevance, [m for m in wanted if m != "MedR"], map_r, policy, _device(device))
                      for s in res["splits"]} for r, res in zip(paths, results)]
    comp = compare_results(results, list(metrics) or None, _splits(split), spec, per_query)
    con.line(comparison_markdown(comp))
    if out:
        written = write_comparison(comp, out)
        con.line("wrote:\n" + "\n".join(f"  {p}" for p in written.values()))
    con.summary(f"compared {len(columns)} columns of {len(paths)} runs ({relevance} relevance)" + (f": tables in {out}" if out else ""))
    if con.json:
        click.echo(comparison_json(comp))


def _groups(values: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """``--group NAME=RUN,RUN`` values (globs expanded, sorted) as ``[(name, [run, ...])]`` in first-named order."""
    import glob

    out: dict[str, list[str]] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        name = name.strip()
        if not sep or not name or not rest.strip():
            raise click.BadParameter(f"{v!r}: expected NAME=RUN[,RUN...], e.g. quad='runs/quad/*'", param_hint="--group")
        for item in (x.strip() for x in rest.split(",") if x.strip()):
            found = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not found:
                raise click.BadParameter(f"--group {name}: {item!r} matches no run folder", param_hint="--group")
            out.setdefault(name, []).extend(f for f in found if f not in out.get(name, []))
    return list(out.items())


COMMANDS = [eval_cmd, compare_cmd]
