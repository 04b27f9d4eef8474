"""``mmx sweep``: hyperparameter search per strategy on val, the chosen setting over seeds, a report."""

from __future__ import annotations

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.options import cache_option, dataset_option, device_option, json_option, quiet_option
from mmx.train.strategies import STRATEGIES

OBJECTIVE_CHOICES = ["mAP", "mAP@50", "R@1", "R@5", "R@10"]  # mirrors mmx.train.sweep.OBJECTIVES (import-free)


@click.command("sweep")
@click.option("--strategy", "strategies", multiple=True, type=click.Choice(list(STRATEGIES)), required=True,
              help="Strategy to tune; repeatable (the first is the baseline of the differences).")
@cache_option()
@dataset_option()
@click.option("--modalities", default=None, show_default="every modality the dataset has", help="Comma-separated modalities.")
@click.option("--trials", type=click.IntRange(min=1), default=20, help="Trials per strategy in all (a rerun continues up to it).")
@click.option("--seeds", type=click.IntRange(min=0), default=3, help="Seeds the chosen setting is trained with for the report.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, help="Runs at a time (processes here, or tasks on --dask-scheduler).")
@click.option("--dask-scheduler", metavar="ADDRESS", default=None,
              help="Run trials as tasks on this dask.distributed scheduler (the folder and cache on a shared filesystem).")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), default=None, show_default="each strategy's default",
              help="YAML file {strategy: {key: {low, high, log} | {choices: [...]} | null}} replacing keys of the default space.")
@click.option("--objective", type=click.Choice(OBJECTIVE_CHOICES), default="mAP",
              help="Val metric a trial is scored by (mean over query->target pairs).")
@click.option("--relevance", type=click.Choice(["class", "instance"]), default=None, show_default="the runs' alignment",
              help="Relevance of the val objective and the test report.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A config value fixed for every run, e.g. --set epochs=30.")
@click.option("--seed", type=int, default=0, help="Seed of the sampler and of every trial's run.")
@device_option()
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="Torch CPU threads per run; 0: the cores shared out over --jobs.")
@click.option("--out", required=True, help="Sweep folder: the study, every run and the report; rerun with it to continue.")
@quiet_option()
@json_option("the report")
@click.pass_context
def sweep_cmd(ctx, strategies, cache, dataset, modalities, trials, seeds, jobs, dask_scheduler, space_file, objective,
              relevance, sets, seed, device, threads, out):
    """Tune each strategy on val (Optuna TPE), retrain the best setting over seeds, report test as mean ± sd.

    Selection reads only the val split; test figures and the paired bootstrap intervals of the
    differences between strategies are computed after every choice. Interrupted? Rerun the same
    command: finished trials are kept and the study continues up to --trials.

    \b
    Examples:
      mmx sweep --dataset synthetic --strategy joint --trials 2 --seeds 1 --set epochs=2 --out sweeps/try
      mmx sweep --dataset synthetic --strategy joint --strategy cvs --trials 2 --seeds 2 --set epochs=2 --out sweeps/two

    Across machines: --dask-scheduler tcp://HOST:8786 (docs/evaluation.md).
    """
    from mmx.train.sweep import SweepSpec, sweep

    con = console(ctx)
    spec = SweepSpec(folder=out, strategies=list(strategies), dataset=dataset, cache=cache or "",
                     modalities=[m.strip() for m in (modalities or "").split(",") if m.strip()], trials=trials, seeds=seeds,
                     jobs=jobs, dask_scheduler=dask_scheduler, space_file=space_file, objective=objective,
                     relevance=relevance, sets=list(sets), seed=seed, device=device, threads=threads)
    report = sweep(spec, log=con.line)
    con.summary(f"swept {', '.join(strategies)}: report in {out}/report.md")
    con.result(report)


COMMANDS = [sweep_cmd]
