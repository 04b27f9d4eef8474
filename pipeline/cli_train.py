"""``mmx train``: train a strategy on cached features."""

from __future__ import annotations

import click

from mmx.train.strategies import STRATEGIES


@click.command("train")
@click.option("--strategy", type=click.Choice(list(STRATEGIES)), default=None, help="Training strategy (default: joint).")
@click.option("--preset", "presets", multiple=True, help="Preset name or YAML file; repeatable, later wins.")
@click.option("--modalities", default=None, help="Comma-separated, e.g. text,image (default: every modality the dataset has).")
@click.option("--cache", default=None, help="Cache root (default: $MMX_CACHE or ./.mmx-cache).")
@click.option("--dataset", default=None, help="Dataset name in the cache.")
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Classes (class-aligned) or groups (instance-aligned) per batch.")
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="auto (CUDA when present), cpu or cuda[:N].")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="torch CPU threads [default: half the cores, 1 to 4; see mmx.cache.threads]; recorded in config.yaml.")
@click.option("--out", default=None, help="Folder for run folders (default: runs).")
@click.option("--name", default=None, help="Run folder name, used as given (default: date + strategy + modalities).")
@click.option("--store", "stores", multiple=True, metavar="MODALITY=STORE", help="Pick the store of a modality when the cache has several: its path, folder name or key prefix (see mmx cache ls); repeatable.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config value, e.g. --set patience=10 or options.x=1.")
@click.option("--resume", default=None, metavar="RUN", help="Continue the run folder RUN from its last epoch, in its stage for multi-stage strategies (its config, plus any options given here).")
@click.option("--from", "from_run", default=None, metavar="RUN", help="Extend the trained run RUN with --add-modality: its weights are loaded and frozen, only the new parts train (mcvs, rvs, joint).")
@click.option("--add-modality", "add_modalities", multiple=True, metavar="MODALITY", help="With --from: a modality to add; repeatable.")
@click.option("--cuda-graphs", is_flag=True, default=None, help="Replay training steps from CUDA graphs (on CUDA; every strategy but eao; see mmx.train.graphs).")
@click.option("--force", is_flag=True, help="Train even when the run is estimated not to fit this machine's memory (or, on a CPU, its time budget); without it such a run stops before loading anything, naming a setting that fits.")
@click.option("--quiet", is_flag=True, help="No per-epoch lines.")
def train_cmd(strategy, presets, modalities, cache, dataset, epochs, batch_size, lr, seed, device, threads, out, name, stores, sets, resume, from_run, add_modalities, cuda_graphs, force, quiet):
    """Train projection heads / fusion model from the in-memory cache.

    \b
    Example:
      mmx train --strategy joint --modalities text,image,audio,video --cache .mmx-cache --dataset synthetic
    """
    from mmx.cache.paths import default_cache_root
    from mmx.train.config import resolve
    from mmx.train.loop import train

    overrides = {
        "strategy": strategy, "modalities": modalities, "cache": cache, "dataset": dataset, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "threads": threads, "out": out, "name": name, "cuda_graphs": cuda_graphs or None,
        "stores": _parse_stores(stores) or None,
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
    run = train(cfg, log=(lambda s: None) if quiet else click.echo, resume=resume,
                warn=lambda s: click.echo(f"warning: {s}", err=True), force=force)
    click.echo(str(run))


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
