"""``mmx extract``: run a frozen backbone over one modality of a manifest, into the cache.

See :mod:`mmx.extract.runner` (shards, resume, workers) and :mod:`mmx.extract.distributed`
(``--dask-scheduler``). Only click and the light registry are imported at module level.
"""

from __future__ import annotations

import click

from mmx.cache.modality import NAMES
from mmx.extract.backbones import BACKBONES, describe
from mmx.pipeline.cli_output import console
from mmx.pipeline.options import (allow_root_option, cache_option, dataset_option, device_option, json_option,
                                  progress_option, quiet_option, threads_option)


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
    cols = ["name", "modality", "dim", "tokens", "input", "normalisation", "weights", "offline", "papers"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    click.echo("\nOptions (--set KEY=VALUE; part of the cache key), with their defaults:")
    for name, options in _options().items():
        click.echo(f"  {name}: " + (", ".join(f"{k}={v}" for k, v in options.items()) or "none"))
    click.echo("\nDefaults per modality: " + ", ".join(f"{m}={n}" for m, n in _defaults().items()))
    from mmx.extract.backbones import UNAVAILABLE

    click.echo("Joint spaces (towers built from the same weights share one space): "
               + ", ".join(f"{r['name']}={r['space']}" for r in rows if r["space"] != "-"))
    click.echo("Papers: 000 Fürer et al., 001 Everything at Once, 002/004 CVS/M-CVS/RVS (docs/notes/extract.md).")
    for name, (papers, closest) in UNAVAILABLE.items():
        click.echo(f"Not available: {name} (paper {papers}): in none of transformers, torchvision, torchaudio; "
                   f"closest: {closest}.")


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


class _UnlessList:
    """A required parameter that ``--list`` (eager, so parsed first) makes optional."""

    def process_value(self, ctx: click.Context, value):
        if ctx.params.get("list_") and self.value_is_missing(value):
            return None
        return super().process_value(ctx, value)


class _Option(_UnlessList, click.Option):
    pass


class _Argument(_UnlessList, click.Argument):
    pass


@click.command("extract")
@click.argument("manifest", cls=_Argument, type=click.Path(dir_okay=False))
@click.option("--modality", cls=_Option, required=True, type=click.Choice(NAMES), help="Which items of the manifest to extract.")
@dataset_option(help="Dataset name to store the features under (the name mmx train takes).", cls=_Option)
@click.option("--backbone", type=click.Choice(list(BACKBONES)), show_default="the offline default of the modality",
              help="Registered backbone (see --list).")
@click.option("--weights", help="Hub id or local directory for a hub backbone (overrides its default weights).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Backbone option, e.g. fps=2 (see --list).")
@cache_option()
@device_option()
@click.option("--batch-size", default=32, type=click.IntRange(min=1), help="Items per forward pass of the backbone.")
@click.option("--workers", type=click.IntRange(min=0), show_default="min(4, CPUs)", help="Decoding worker processes.")
@threads_option()
@click.option("--shard-size", default=256, type=click.IntRange(min=1), help="Items per cache shard (unit of work and of resume).")
@click.option("--dask-scheduler", metavar="ADDRESS", help="Run shards as tasks on this dask.distributed scheduler.")
@allow_root_option()
@click.option("--list", "list_", is_flag=True, is_eager=True,
              help="List the registered backbones and their options, and exit (needs no other argument).")
@click.option("--retry-failed", is_flag=True, help="Also re-extract the complete shards that hold failed items.")
@progress_option()
@quiet_option()
@json_option("the extraction's summary")
@click.pass_context
def extract_command(ctx, manifest, modality, dataset, backbone, weights, settings, cache, device, batch_size, workers, threads,
                    shard_size, dask_scheduler, allowed_roots, list_, retry_failed, progress):
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
    con = console(ctx)
    progress = progress and not con.quiet
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
        con.line(f"manifest changed: updated {what} in the store (features reused, not re-extracted)")
    if summary["sources_changed"]:
        con.line(f"manifest changed: {summary['sources_changed']} shard(s) have items with another file or text; "
                 "extracting them again")
    retried = f" ({summary['retried']} retried for failed items)" if summary["retried"] else ""
    if summary["now_allowed"]:
        con.line(f"{summary['now_allowed']} shard(s) hold items refused as outside the allowed roots that "
                 "--allow-root now admits; extracting them again")
    con.summary(
        f"{summary['store']}: {summary['written']} shard(s) written{retried}, {summary['skipped']} already complete; "
        f"{summary['ok']} ok, {summary['failed']} failed; {summary['items_per_s'] or 0:g} items/s on {summary['device']}"
    )
    _print_failures(summary["errors"], con.line)
    if summary["failed_skipped"]:
        con.line(f"{summary['failed_skipped']} item(s) failed in an earlier run and were not retried; "
                 "rerun with --retry-failed to try them again")
    con.result(summary)
    if summary["failed"] and not summary["ok"]:  # nothing usable was written this run
        con.warn(f"every one of the {summary['failed']} item(s) extracted this run failed (see the failures above); "
                 "the store holds no features of them")
        raise click.exceptions.Exit(1)


SHOWN_FAILURES = 20  # the rest: mmx cache ls --failed


def _print_failures(errors: dict, echo) -> None:
    """The failed ids and the extractor's message for each (the first few; all are in the store)."""
    for item, message in list(errors.items())[:SHOWN_FAILURES]:
        echo(f"failed: {item}: {message}")
    if len(errors) > SHOWN_FAILURES:
        echo(f"... and {len(errors) - SHOWN_FAILURES} more failed item(s): mmx cache ls --failed")


COMMANDS: list = [extract_command]
