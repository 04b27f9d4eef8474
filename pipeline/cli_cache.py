"""``mmx cache``: list, inspect, verify, import and synthesize feature stores.

Only ``mmx.cache`` knows the store layout; these commands go through its API. Heavy
imports (zarr, numpy, h5py, scipy) happen inside the commands so ``mmx --help`` stays fast.
"""

from __future__ import annotations

import json

import click

from mmx.cache.modality import NAMES
from mmx.pipeline.cli_output import console
from mmx.pipeline.options import cache_option, dataset_option, json_option, quiet_option


def _root(cache: str | None):
    from mmx.cache.paths import default_cache_root

    return default_cache_root(cache)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _open(store: str, cache: str | None):
    """A store by path, or by ``DATASET/MODALITY[/BACKBONE]`` under the cache root."""
    from pathlib import Path

    from mmx.cache import find_store, open_store

    p = Path(store)
    if p.exists():
        return open_store(p)
    parts = store.strip("/").split("/")
    if 2 <= len(parts) <= 3 and not store.endswith(".zarr"):
        return find_store(_root(cache), parts[0], parts[1], parts[2] if len(parts) == 3 else None)
    raise click.ClickException(f"{store}: no such store (give a store path or DATASET/MODALITY[/BACKBONE])")


@click.group("cache")
def cache() -> None:
    """Inspect and build feature stores (one per dataset, modality and backbone)."""


@cache.command("ls")
@cache_option("cache_root")
@dataset_option(required=False, help="Only the stores of this dataset.")
@click.option("--failed", is_flag=True, help="List the failed items instead: store, id and the extractor's message.")
@json_option("each store's metadata (one JSON object a line)")
def ls_cmd(cache_root, dataset, failed):
    """A table of the stores under the cache root (with --failed: of their failed items)."""
    from mmx.cache import list_stores

    root = _root(cache_root)
    stores = list_stores(root, dataset)
    if console().json:
        for s in stores:
            info = s.info()
            info["failed_items"] = len(info["failed_items"])
            click.echo(json.dumps({"path": str(s.path), **info}, ensure_ascii=False, default=str))
        return
    if not stores:
        click.echo(f"no feature stores under {root}" + (f" for dataset {dataset!r}" if dataset else ""))
        return
    if failed:
        _print_failures(stores)
        return
    head = ("dataset", "modality", "backbone", "items ok/failed/pending", "shards", "disk", "key")
    rows = []
    for s in stores:
        i = s.info()
        rows.append((
            i["dataset"], i["modality"], str(i["backbone"].get("name")),
            f"{i['ok']}/{i['failed']}/{i['pending']}",
            f"{i['shards']['complete']}/{i['shards']['total']}",
            _human(i["disk_bytes"]), i["key"][:10],
        ))
    widths = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]
    for r in [head] + rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _print_failures(stores) -> None:
    """One line per failed item: dataset/modality/backbone, id, message (from the shard markers)."""
    total = 0
    for s in stores:
        where = f"{s.dataset}/{s.modality.value}/{s.backbone.get('name')}"
        for item, message in s.failures().items():
            click.echo(f"{where}  {item}  {message}")
            total += 1
    click.echo(f"{total} failed item(s) in {len(stores)} store(s)")


INFO_FAILURES = 50  # failed items shown by `mmx cache info`; `mmx cache ls --failed` lists all


@cache.command("info")
@click.argument("store")
@cache_option("cache_root")
@json_option("the metadata")
def info_cmd(store, cache_root):
    """Metadata of STORE (a store path, or DATASET/MODALITY[/BACKBONE] under the cache)."""
    s = _open(store, cache_root)
    info = s.info()
    incomplete = [k for k in range(s.n_shards) if not s.is_complete(k)]
    info["incomplete_shards"] = incomplete
    failures = info.pop("failed_items")
    info["failed_items"] = dict(list(failures.items())[:INFO_FAILURES])
    if len(failures) > INFO_FAILURES:
        info["failed_items_not_shown"] = f"{len(failures) - INFO_FAILURES} more: mmx cache ls --failed"
    if console().json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    else:
        for line in _readable(info):
            click.echo(line)


def _readable(value, indent: str = "") -> list[str]:
    """``key: value`` lines of a nested mapping; nested mappings indented under their key."""
    lines = []
    for key, v in value.items():
        if isinstance(v, dict) and v:
            lines += [f"{indent}{key}:"] + _readable(v, indent + "  ")
        elif isinstance(v, (list, tuple)):
            lines.append(f"{indent}{key}: {', '.join(map(str, v)) if v else '-'}")
        else:
            lines.append(f"{indent}{key}: {'-' if v in (None, {}, '') else v}")
    return lines


@cache.command("verify")
@click.argument("store")
@cache_option("cache_root")
@click.option("--allow-incomplete", is_flag=True, help="Exit 0 when the shards present are sound but some are not extracted yet.")
@click.option("--repair", is_flag=True,
              help="Unmark the damaged shards, so that rerunning the extraction (or import) rewrites them.")
def verify_cmd(store, cache_root, allow_incomplete, repair):
    """Check STORE: read every chunk of every complete shard (checksums) and check files, shapes, markers, key.

    \b
    Exit status: 0 sound and complete; 1 damaged (each problem is listed);
    2 sound but incomplete (some shards not extracted yet; --allow-incomplete makes this 0).
    """
    s = _open(store, cache_root)
    problems = s.problems()
    for p in problems:
        click.echo(f"problem: {p}")
    if not s.checksummed:
        click.echo(f"note: written by mmx {s.meta.get('mmx_version', '?')} without chunk checksums: files, shapes and "
                   "markers were checked, a flipped bit inside a chunk cannot be; extract into a new cache to get checksums")
    if problems and repair:
        problems = _repair(s, problems)
    elif problems:
        click.echo(f"damaged: {len(problems)} problem(s) in {s.path}; 'mmx cache verify --repair {s.path}' unmarks the "
                   "damaged shards, then rerun the extraction (mmx extract / mmx cache import) to rewrite them")
    if problems:
        raise SystemExit(1)
    incomplete = [k for k in range(s.n_shards) if not s.is_complete(k)]
    if incomplete:
        rows = sum(s.shard_range(k)[1] - s.shard_range(k)[0] for k in incomplete)
        shown = ", ".join(map(str, incomplete[:20])) + (" ..." if len(incomplete) > 20 else "")
        click.echo(f"incomplete: {len(incomplete)}/{s.n_shards} shard(s) not complete ({rows} item(s)): {shown}; "
                   "rerun the extraction (mmx extract / mmx cache import) to finish them")
        if not allow_incomplete:
            raise SystemExit(2)
    checked = "every chunk read, checksums verified" if s.checksummed else "every chunk read"
    click.echo(f"ok: {s.path} ({s.n_items} items, {s.n_shards - len(incomplete)}/{s.n_shards} shards complete; {checked})")


def _repair(s, problems: list) -> list:
    """Unmark the shards with problems; return the problems that unmarking cannot fix."""
    shards = sorted({p.shard for p in problems if p.shard is not None})
    s.unmark(shards)
    if shards:
        click.echo(f"repaired: unmarked shard(s) {', '.join(map(str, shards))}; rerun the extraction "
                   "(mmx extract / mmx cache import) to rewrite them")
    left = [p for p in problems if p.shard is None]
    if left:
        click.echo(f"damaged: {len(left)} problem(s) outside the shards cannot be repaired; delete {s.path} "
                   "and create it again (mmx extract / mmx cache import)")
    return left


@cache.command("import")
@cache_option("cache_root")
@dataset_option()
@click.option("--modality", required=True, help=f"Which modality the features are of: {', '.join(NAMES)}.")
@click.option("--source", "sources", multiple=True, required=True, metavar="FILE[:SPLIT|:key=value,...]",
              help="A feature file (.npy, .npz, .h5, .mat v5/v7.3); repeat for several (concatenated in order). "
                   "Keys: split, features, labels, ids, groups, splits, labels_file.")
@click.option("--features-var", default=None, help="Default variable holding the features [N, D].")
@click.option("--labels-var", default=None, help="Default variable holding labels (ints, strings or one-hot rows).")
@click.option("--ids-var", default=None, show_default="ids <modality>-<index>", help="Default variable holding item ids.")
@click.option("--groups-var", default=None, help="Default variable holding groups (instance alignment).")
@click.option("--split-var", default=None, help="Default variable holding split names (train/test/val).")
@click.option("--split", type=click.Choice(["train", "test", "val"]), default=None, help="Split of every item.")
@click.option("--labels-file", type=click.Path(dir_okay=False), default=None,
              help="Labels for a single source: .npy, or text with one label per line.")
@click.option("--name", default=None, show_default="the first file's stem", help="Backbone name suffix: imported:<NAME>.")
@click.option("--transpose", is_flag=True, help="Features are stored [D, N] (MATLAB v7.3 is handled without this).")
@click.option("--onehot-base", type=int, default=0, show_default=True, help="Label of one-hot column 0.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", help="Storage type of the features.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, help="Items per cache shard (unit of resume).")
def import_cmd(cache_root, dataset, modality, sources, features_var, labels_var, ids_var, groups_var, split_var,
               split, labels_file, name, transpose, onehot_base, dtype, shard_size):
    """Import pre-extracted features (as XMedia/XMediaNet are distributed) as one store.

    \b
    Examples:
      mmx cache import --dataset xmedia --modality image \\
          --source 'XMedia.mat:split=train,features=I_tr_CNN,labels=trImgCat' \\
          --source 'XMedia.mat:split=test,features=I_te_CNN,labels=teImgCat'
      mmx cache import --dataset mine --modality audio --features-var X --labels-var y \\
          --source train.h5:train --source test.h5:test
    """
    from pathlib import Path

    from mmx.cache.importers import Source, import_features

    defaults = Source(
        Path("."), split=split, features=features_var, labels=labels_var, ids=ids_var, groups=groups_var,
        splits=split_var, labels_file=Path(labels_file) if labels_file else None,
    )
    res = import_features(
        _root(cache_root), dataset, modality, list(sources), defaults=defaults, name=name, transpose=transpose,
        onehot_base=onehot_base, dtype=dtype, shard_size=shard_size,
    )
    verb = "imported" if res.created else "already present (resumed/reused)"
    splits = ", ".join(f"{k} {v}" for k, v in sorted(res.splits.items()))
    click.echo(f"{verb}: {res.items} {res.store.modality.value} items x {res.dim}-d ({splits}) -> {res.store.path}")


def _pairs(text: str | None, what: str) -> dict:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            raise click.BadParameter(f"{part!r}: expected MODALITY=NUMBER", param_hint=what)
        try:
            out[k.strip().lower()] = int(v)
        except ValueError:
            raise click.BadParameter(f"{part!r}: {v!r} is not a whole number", param_hint=what) from None
    return out


def _tokens(text: str | None):
    if text is None:
        return None, False
    if text.strip().lower() == "none":
        return None, True
    lo, sep, hi = text.partition("-")
    try:
        return (int(lo), int(hi) if sep else int(lo)), True
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected MIN-MAX (e.g. 2-6), N or none", param_hint="--tokens") from None


@cache.command("synthesize")
@cache_option("cache_root")
@click.option("--preset", type=click.Choice(["small", "xmedianet"]), default="small",
              help="Sizes: small (10 classes, 100-200 items per modality) or xmedianet (XMediaNet's).")
@click.option("--dataset", show_default="synthetic", help="Dataset name to write.")
@click.option("--classes", type=click.IntRange(min=1), default=None, show_default="the preset's", help="Number of classes.")
@click.option("--items", default=None, metavar="M=N,...", help="Items per modality, e.g. text=200,image=200 (replaces the preset's).")
@click.option("--dims", default=None, metavar="M=D,...", help="Feature dimension per modality, e.g. text=32.")
@click.option("--tokens", default=None, metavar="MIN-MAX|none", help="Tokens per item, e.g. 2-6, or none (pooled only).")
@click.option("--alignment", type=click.Choice(["class", "instance"]), default=None, show_default="class",
              help="class: items share labels; instance: items also form groups (one item per modality each).")
@click.option("--missing", type=float, default=None, help="Instance alignment: fraction of groups lacking each non-text modality.")
@click.option("--noise", type=float, default=None, help="Within-class spread of the latent (class spread is 1).")
@click.option("--seed", type=int, default=0, help="Seed of the features.")
@quiet_option()
def synthesize_cmd(cache_root, preset, dataset, classes, items, dims, tokens, alignment, missing, noise, seed):
    """Write a synthetic, class-structured cache in the real schema (one store per modality).

    \b
    Examples:
      mmx cache synthesize
      mmx cache synthesize --dataset tiny --classes 4 --items text=40,image=40 --tokens none
    """
    from mmx.cache.synthesize import PRESETS, SyntheticConfig, synthesize

    overrides: dict = {}
    for key, value in (("dataset", dataset), ("classes", classes), ("alignment", alignment),
                       ("missing", missing), ("noise", noise), ("seed", seed)):
        if value is not None:
            overrides[key] = value
    if items:
        overrides["items"] = _pairs(items, "--items")
    if dims:
        overrides["dims"] = {**PRESETS[preset]["dims"], **_pairs(dims, "--dims")}
    tok, given = _tokens(tokens)
    if given:
        overrides["tokens"] = tok
    cfg = SyntheticConfig.preset(preset, **overrides)
    root = _root(cache_root)
    stores = synthesize(root, cfg)
    con = console()
    for mod, s in stores.items():
        con.line(f"{mod.value:6s} {s.n_items:6d} items x {s.dim}-d -> {s.path}")
    con.summary(f"dataset {cfg.dataset}: {len(stores)} synthetic store(s) ({', '.join(m.value for m in stores)}) under {root}")


COMMANDS = [cache]
