"""``mmx extract``: run a frozen backbone over one modality of a manifest, into the cache.

See :mod:`mmx.extract.runner` (shards, resume, workers) and :mod:`mmx.extract.distributed`
(``--dask-scheduler``). Only click and the light registry are imported at module level.
"""

from __future__ import annotations

import json

import click

from mmx.extract.backbones import BACKBONES, describe
from mmx.cache.modality import NAMES


def _parse_set(values: tuple[str, ...]) -> dict:
    import yaml

    out = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint="--set")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _print_list() -> None:
    rows = describe()
    cols = ["name", "modality", "dim", "tokens", "input", "normalisation", "weights", "offline"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    click.echo("\nOptions (--set KEY=VALUE; part of the cache key), with their defaults:")
    for name, options in _options().items():
        click.echo(f"  {name}: " + (", ".join(f"{k}={v}" for k, v in options.items()) or "none"))
    click.echo("\nDefaults per modality: " + ", ".join(f"{m}={n}" for m, n in _defaults().items()))
    click.echo("MoViNet and VGGish (paper 000) are not in transformers; use videomae / xclip-vision / ast / clap-audio.")


def _options() -> dict:
    """Each backbone's settable options and defaults (long values, such as vocabularies, shortened)."""
    out = {}
    for name, info in BACKBONES.items():
        shown = {}
        for k, v in info.defaults.items():
            text = str(v)
            shown[k] = text if len(text) <= 40 else text[:37] + "..."
        out[name] = shown
    return out


def _defaults() -> dict:
    from mmx.extract.backbones import DEFAULT_BACKBONE

    return {m.value: n for m, n in DEFAULT_BACKBONE.items()}


@click.command("extract")
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@click.option("--modality", type=click.Choice(NAMES), help="Which items of the manifest to extract.")
@click.option("--backbone", type=click.Choice(list(BACKBONES)), help="Registered backbone (default: the offline default of the modality).")
@click.option("--weights", help="Hub id or local directory for a hub backbone (overrides its default weights).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Backbone option, e.g. fps=2 (see --list).")
@click.option("--cache", type=click.Path(file_okay=False), help="Cache root folder (default: $MMX_CACHE, else ./.mmx-cache).")
@click.option("--dataset", help="Dataset name (the cache is keyed by it).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0), help="Decoding worker processes [default: min(4, CPUs)].")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch CPU threads of the model process [default: half the cores, 1 to 4; see mmx.cache.threads].")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(min=1), help="Items per cache shard (unit of work and of resume).")
@click.option("--dask-scheduler", metavar="ADDRESS", help="Run shards as tasks on this dask.distributed scheduler.")
@click.option("--allow-root", "allowed_roots", multiple=True, type=click.Path(file_okay=False),
              help="Folder local files may be read from, symlinks resolved (repeatable; default: the manifest's folder).")
@click.option("--list", "list_", is_flag=True, help="List the registered backbones and exit.")
@click.option("--retry-failed", is_flag=True, help="Also re-extract the complete shards that hold failed items.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def extract_command(manifest, modality, backbone, weights, settings, cache, dataset, device, batch_size, workers, threads, shard_size, dask_scheduler, allowed_roots, list_, retry_failed, progress):
    """Extract features of one MODALITY of MANIFEST into a sharded zarr store under --cache.

    Reruns skip shards already complete (with --retry-failed, not those holding failed
    items); a changed backbone or option writes a new store. Changed labels, groups or
    splits in the manifest are written into the existing store (features reused); items
    given another file or text are extracted again. One extraction writes a store at a
    time: a second one on the same store stops with a message. Local files pass mmx fetch's
    checks first (allowed roots, format, decode probe).
    """
    if list_:
        _print_list()
        return
    missing = [f for f, v in (("MANIFEST", manifest), ("--modality", modality), ("--dataset", dataset)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use --list)")
    from mmx.cache.paths import default_cache_root
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import extract

    cache = str(default_cache_root(cache))

    cfg = ExtractConfig(
        backbone=backbone, options=_parse_set(settings), weights=weights, device=device, batch_size=batch_size,
        workers=workers, threads=threads, shard_size=shard_size, dask_scheduler=dask_scheduler, progress=progress,
        retry_failed=retry_failed, allowed_roots=tuple(allowed_roots),
    )
    summary = extract(manifest, modality, cache, dataset, cfg)
    if summary["metadata_changed"]:
        what = ", ".join(f"{col} of {n} item(s)" for col, n in summary["metadata_changed"].items())
        click.echo(f"manifest changed: updated {what} in the store (features reused, not re-extracted)")
    if summary["sources_changed"]:
        click.echo(f"manifest changed: {summary['sources_changed']} shard(s) have items with another file or text; "
                   "extracting them again")
    retried = f" ({summary['retried']} retried for failed items)" if summary["retried"] else ""
    if summary["now_allowed"]:
        click.echo(f"{summary['now_allowed']} shard(s) hold items refused as outside the allowed roots that "
                   "--allow-root now admits; extracting them again")
    click.echo(
        f"{summary['store']}: {summary['written']} shard(s) written{retried}, {summary['skipped']} already complete; "
        f"{summary['ok']} ok, {summary['failed']} failed; {summary['items_per_s'] or 0:g} items/s on {summary['device']}"
    )
    _print_failures(summary["errors"])
    if summary["failed_skipped"]:
        click.echo(f"{summary['failed_skipped']} item(s) failed in an earlier run and were not retried; "
                   "rerun with --retry-failed to try them again")
    click.echo(json.dumps(summary), err=True)


SHOWN_FAILURES = 20  # the rest: mmx cache ls --failed


def _print_failures(errors: dict) -> None:
    """The failed ids and the extractor's message for each (the first few; all are in the store)."""
    for item, message in list(errors.items())[:SHOWN_FAILURES]:
        click.echo(f"failed: {item}: {message}")
    if len(errors) > SHOWN_FAILURES:
        click.echo(f"... and {len(errors) - SHOWN_FAILURES} more failed item(s): mmx cache ls --failed")


COMMANDS: list = [extract_command]
