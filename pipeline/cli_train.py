"""``mmx train``: train a strategy on cached features."""

from __future__ import annotations

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.options import (PRESET_DEFAULT, cache_option, dataset_option, device_option, given, json_option,
                                  quiet_option, threads_option)
from mmx.train.strategies import STRATEGIES


@click.command("train")
@click.option("--strategy", type=click.Choice(list(STRATEGIES)), default=None, show_default="joint, or the preset's",
              help="Training strategy.")
@click.option("--preset", "presets", multiple=True, help="Preset name or YAML file; repeatable, later wins.")
@click.option("--modalities", default=None, show_default="every modality the dataset has",
              help="Comma-separated modalities, e.g. text,image.")
@cache_option()
@dataset_option(required=False, help="Dataset name in the cache: the name its features are stored under "
                                     "(synthetic for mmx cache synthesize's). "
                                     "[required unless --resume, --from or a preset file names it]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, show_default=PRESET_DEFAULT,
              help="Most epochs to train (early stopping may end sooner).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, show_default=PRESET_DEFAULT,
              help="Items of each modality in one batch (class-aligned: spread over as many classes as fit; "
                   "instance-aligned: one group each).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, show_default=PRESET_DEFAULT,
              help="Learning rate.")
@click.option("--patience", type=click.IntRange(min=1), default=None, show_default=PRESET_DEFAULT,
              help="Epochs in a row without a better held-out signal before training stops.")
@click.option("--seed", type=int, default=0, help="Seed of the weights, batches and held-out slice.")
@device_option()
@threads_option()
@click.option("--out", default="runs", help="Folder for run folders.")
@click.option("--name", default=None, show_default="date + strategy + modalities", help="Run folder name, used as given.")
@click.option("--store", "stores", multiple=True, metavar="MODALITY=STORE", help="Pick the store of a modality when the cache has several: its path, folder name or key prefix (see mmx cache ls); repeatable.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config value, e.g. --set holdout=test or options.x=1.")
@click.option("--resume", default=None, metavar="RUN", help="Continue the run folder RUN from its last epoch, in its stage for multi-stage strategies (its config, plus any options given here).")
@click.option("--from", "from_run", default=None, metavar="RUN", help="Extend the trained run RUN with --add-modality: its weights are loaded and frozen, only the new parts train (mcvs, rvs, joint).")
@click.option("--add-modality", "add_modalities", multiple=True, metavar="MODALITY", help="With --from: a modality to add; repeatable.")
@click.option("--cuda-graphs", is_flag=True, default=None, help="Replay training steps from CUDA graphs (on CUDA; every strategy but eao; see mmx.train.graphs).")
@click.option("--force", is_flag=True, help="Train even when the run is estimated not to fit this machine's memory (or, on a CPU, its time budget); without it such a run stops before loading anything, naming a setting that fits.")
@quiet_option()
@json_option("the run folder and its best epoch's metrics")
@click.pass_context
def train_cmd(ctx, strategy, presets, modalities, cache, dataset, epochs, batch_size, lr, patience, seed, device, threads,
              out, name, stores, sets, resume, from_run, add_modalities, cuda_graphs, force):
    """Train projection heads / fusion model on a dataset's cached features; prints the run folder last.

    \b
    Examples:
      mmx cache synthesize --preset small
      mmx train --strategy joint --modalities text,image,audio,video --dataset synthetic --epochs 2
      mmx train --preset fuerer-quad --dataset synthetic --epochs 2 --set batch_size=16
    """
    from mmx.cache.paths import default_cache_root
    from mmx.train.config import resolve
    from mmx.train.loop import train

    con = console(ctx)
    if not (dataset or resume or from_run or add_modalities or _dataset_elsewhere(presets, sets)):
        raise click.UsageError("Missing option '--dataset': the dataset in the cache to train on "
                               "(see mmx cache ls; mmx cache synthesize writes one named synthetic)")
    overrides = {
        "strategy": strategy, "modalities": modalities, "cache": cache, "dataset": dataset, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "patience": patience, "seed": given(ctx, "seed", seed),
        "device": given(ctx, "device", device), "threads": given(ctx, "threads", threads), "out": given(ctx, "out", out), "name": name,
        "cuda_graphs": cuda_graphs or None, "stores": _parse_stores(stores) or None,
    }
    if resume:
        from pathlib import Path

        saved = Path(resume) / "config.yaml"
        if not saved.exists():
            raise click.BadParameter(f"{resume} is not a run folder (no config.yaml)", param_hint="--resume")
        presets = (str(saved), *presets)  # the run's own config first; options given now win
    if from_run or add_modalities:  # extending a run (train/extend.py): its config, plus the new modalities
        from mmx.train.extend import extension_config

        clash = [flag for flag, v in (("--strategy", strategy), ("--modalities", modalities), ("--preset", presets), ("--resume", resume)) if v]
        if not from_run or not add_modalities or clash:
            raise click.UsageError("--from RUN and --add-modality M go together"
                                   + (f", and without {', '.join(clash)} (the run fixes them)" if clash else ""))
        try:
            cfg = extension_config(from_run, [m.strip().lower() for m in add_modalities], overrides, list(sets))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    else:
        cfg = resolve(list(presets), overrides, list(sets))
    if not cfg.cache:
        cfg.cache = str(default_cache_root())
    run = train(cfg, log=con.line, resume=resume, warn=con.warn, force=force)
    con.summary(str(run))
    if con.json:
        con.result({"run": str(run), **_best(run)})


def _dataset_elsewhere(presets: tuple[str, ...], sets: tuple[str, ...]) -> bool:
    """Whether ``--set dataset=...`` or a preset file names the dataset (shipped presets never do)."""
    from mmx.train.config import load_yaml

    if any(s.partition("=")[0].strip() == "dataset" for s in sets):
        return True
    return any("dataset" in load_yaml(p)[0] for p in presets)


def _best(run) -> dict:
    from pathlib import Path

    from mmx.eval.runs import read_json

    path = Path(run) / "metrics.json"
    return read_json(path) if path.is_file() else {}


def _parse_stores(values: tuple[str, ...]) -> dict:
    """``--store MODALITY=STORE`` values as the config's ``stores`` mapping."""
    from mmx.cache.modality import Modality

    out = {}
    for v in values:
        mod, sep, store = v.partition("=")
        if not sep or not store.strip():
            raise click.BadParameter(f"{v!r}: expected MODALITY=STORE, e.g. image=.mmx-cache/mine/image/STORE.zarr",
                                     param_hint="--store")
        try:
            out[Modality.parse(mod.strip()).value] = store.strip()
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--store") from None
    return out


COMMANDS = [train_cmd]
