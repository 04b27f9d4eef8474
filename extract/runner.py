"""``mmx extract``: a manifest's items of one modality into their feature store, resumably.

:func:`extract` plans the run (items, bag-of-words vocabulary, device, store) from an
:class:`~mmx.extract.config.ExtractConfig`, brings an existing store in line with the manifest
(:func:`follow_manifest`) and extracts the shards not complete yet: in this process
(:func:`mmx.extract.shards.extract_shards`) or as dask tasks (:mod:`mmx.extract.distributed`).
Work is cut into the store's item shards, so a killed run resumes where it stopped, a rerun of
a finished one does nothing, and the result is identical whichever way it was reached.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable

from mmx.extract.config import ExtractConfig
from mmx.extract.shards import LocalGate, extract_shards, sources_digest


def default_workers(device: str = "cpu") -> int:
    """Decoding processes: on CUDA all usable cores but the model's one (the GPU needs the
    decoded batches, not the CPU); on the CPU at most 4, which share the cores with the model."""
    from mmx.cache.threads import usable_cores

    cores = usable_cores()
    return max(1, cores - 1) if str(device).startswith("cuda") else min(4, cores)


def follow_manifest(store, items: list[dict]) -> tuple[dict[str, int], list[int]]:
    """Bring an existing store in line with the manifest, without running the backbone.

    Labels, groups and splits are rewritten in place when they changed (returns rows changed
    per column); complete shards whose items now come from other files or texts are
    returned, to be extracted again. Ids cannot differ: they are part of the store's key.
    """
    changed = store.rewrite_metadata({c: [it[c] for it in items] for c in ("label", "group", "split")})
    stale = []
    for k in store.complete_shards():
        recorded = store.shard_sources(k)
        if recorded is not None and recorded != sources_digest(items[slice(*store.shard_range(k))]):
            stale.append(k)
    return changed, stale


# -- planning: manifest + backbone -> store ---------------------------------------------
def manifest_items(manifest, modality) -> list[dict]:
    """One dict per item of ``modality`` with its local path resolved against the manifest."""
    rows = manifest.of(modality)
    out = []
    for r in rows.itertuples(index=False):
        out.append({"id": r.id, "uri": manifest.resolve(r.uri) if r.uri else "", "text": r.text,
                    "label": r.label, "group": r.group, "split": r.split})
    return out


def bow_vocabulary(items: list[dict], options: dict, gate: LocalGate | None = None) -> tuple[list[str], str]:
    """The bag-of-words vocabulary from the training split (all items when there is none);
    text files ``gate`` refuses are left out, as they are from the store."""
    from mmx.extract import decode
    from mmx.extract.classic import build_vocabulary

    train = [it for it in items if it["split"] == "train"]
    source = "train split" if train else "all items (the manifest has no training split)"
    texts = []
    for it in train or items:
        if gate is not None and not it["text"] and gate.problem(it):
            continue
        try:
            texts.append(it["text"] or decode.read_text(it["uri"]))
        except decode.DecodeError:
            continue
    vocab = build_vocabulary(texts, int(options["max_features"]), int(options["min_df"]), bool(options["lowercase"]))
    if not vocab:
        raise ValueError("bag-of-words: no words in the texts the vocabulary is built from")
    return vocab, source


def plan_options(backbone: str, items: list[dict], options: dict | None, gate: LocalGate | None = None) -> dict:
    """User options, plus what depends on the data (the bag-of-words vocabulary)."""
    from mmx.extract.backbones import get_backbone

    options = dict(options or {})
    if get_backbone(backbone).loader.endswith(":BagOfWords") and not options.get("vocabulary"):
        from mmx.extract.backbones import resolve_options

        resolved = resolve_options(get_backbone(backbone), options)
        options["vocabulary"], _ = bow_vocabulary(items, resolved, gate)
    return options


def open_output_store(cache: str, dataset: str, modality, encoder, items: list[dict], shard_size: int):
    from mmx.cache.store import StoreSpec, create_store, ids_digest

    ids = [it["id"] for it in items]
    spec = StoreSpec(dataset, modality, encoder.meta(), encoder.preprocessing(), ids_digest(ids))
    chunk = min(256, shard_size)
    while shard_size % chunk:
        chunk -= 1
    return create_store(
        cache, spec, ids, [it["label"] for it in items], [it["group"] for it in items], [it["split"] for it in items],
        shard_size=shard_size, chunk_rows=chunk, scale=encoder.scale(),
    )


def extract(manifest_path: str, modality, cache: str, dataset: str, cfg: ExtractConfig | None = None,
            on_shard: Callable[[int, dict], None] | None = None) -> dict:
    """Extract one modality of a manifest into its store; returns a summary of the run.

    ``cfg.threads`` (:func:`mmx.cache.threads.set_threads`) is recorded in the summary; decoding
    workers are separate processes. The summary counts this run's shards (``written``, ``items``,
    ``ok``, ``failed``) and keeps ``errors``: each failed item's id and message (also in the shard
    markers, ``mmx cache ls --failed``). Holds the store's writer lock while it writes (a second
    process on the same store fails with :class:`mmx.cache.StoreLockedError`). Local files are
    read only below ``cfg.allowed_roots`` (default: the manifest's folder) and only after the
    checks ``mmx fetch`` applies (:class:`~mmx.extract.shards.LocalGate`). ``on_shard(k, summary)``
    is called after each shard this process writes.
    """
    from mmx.cache.device import resolve_device
    from mmx.cache.modality import Modality
    from mmx.cache.names import check_name
    from mmx.cache.threads import set_threads
    from mmx.extract.backbones import DEFAULT_BACKBONE, build_encoder, get_backbone
    from mmx.extract.decode import DEFAULT_MAX_PIXELS
    from mmx.extract.manifest import read_manifest

    cfg = cfg or ExtractConfig()
    check_name(dataset, "--dataset")
    modality = Modality.parse(modality)
    backbone = cfg.backbone or DEFAULT_BACKBONE[modality]
    get_backbone(backbone, modality)  # validate before anything expensive
    if cfg.batch_size < 1 or cfg.shard_size < 1:
        raise ValueError("--batch-size and --shard-size must be positive")
    manifest = read_manifest(manifest_path)
    items = manifest_items(manifest, modality)
    if not items:
        have = ", ".join(m.value for m in manifest.modalities)
        raise ValueError(f"{manifest_path}: no {modality.value} items (the manifest has: {have})")
    roots = tuple(os.path.realpath(r) for r in (cfg.allowed_roots or (str(Path(manifest_path).parent),)))
    gate = LocalGate(modality.value, roots, int((cfg.options or {}).get("max_pixels", DEFAULT_MAX_PIXELS)),
                     probe=modality is not Modality.IMAGE)  # an image's decode is its probe
    options = plan_options(backbone, items, cfg.options, gate)
    # on dask the workers pick their own device; the client only needs the metadata
    device = "cpu" if cfg.dask_scheduler is not None else str(resolve_device(cfg.device))
    workers = default_workers(device) if cfg.workers is None else cfg.workers
    plan = dataclasses.replace(cfg, backbone=backbone, options=options, workers=workers)
    threads = set_threads(cfg.threads)
    t0 = time.perf_counter()
    encoder = build_encoder(backbone, options, cfg.weights).to(device)
    store = open_output_store(cache, dataset, modality, encoder, items, cfg.shard_size)
    load_seconds = round(time.perf_counter() - t0, 3)
    with store.writer_lock("mmx extract"):  # a second extract of this store stops here with a clear message
        metadata_changed, stale = follow_manifest(store, items)
        summary = _run(store, items, encoder, plan, device, stale, gate, on_shard)
    return {**summary, "threads": threads, "load_seconds": load_seconds, "metadata_changed": metadata_changed,
            "sources_changed": len(stale)}


def failed_shards(store) -> dict[int, int]:
    """Complete shards holding failed items, with how many (from the shard markers)."""
    out = {}
    for k in store.complete_shards():
        n = store.shard_marker(k)["failed"]
        if n:
            out[k] = n
    return out


def now_admitted(store, items: list[dict], failed: dict[int, int], gate: LocalGate | None) -> list[int]:
    """Complete shards with an item refused as ``forbidden_path`` that this run's roots admit.

    ``mmx fetch``'s rule, applied to extract: a rerun with other ``--allow-root`` folders
    rechecks what an earlier run refused for lying outside its roots (a plain rerun does not
    redo other failures; ``--retry-failed`` does).
    """
    if gate is None:
        return []
    out = []
    for k in sorted(failed):
        errors = (store.shard_marker(k) or {}).get("errors", {})
        refused = {i for i, msg in errors.items() if str(msg).startswith("forbidden_path")}
        lo, hi = store.shard_range(k)
        if any(it["id"] in refused and gate.problem(it) is None for it in items[lo:hi]):
            out.append(k)
    return out


def _run(store, items: list[dict], encoder, plan: ExtractConfig, device: str, stale: list[int],
         gate: LocalGate | None = None, on_shard: Callable[[int, dict], None] | None = None) -> dict:
    """Extract the shards not complete yet or ``stale``, and with ``plan.retry_failed`` those with failed items.

    ``plan`` is the run's config with its backbone, options and workers resolved; ``device`` is
    where ``encoder`` runs here. A retried shard is extracted and written whole again, not item
    by item: its batches are then those of a run in which the item never failed, so the shard
    comes out bitwise as that run writes it (a batch's numbers can depend on its other items).
    """
    done_before = set(store.complete_shards()) - set(stale)
    failed_before = {k: n for k, n in failed_shards(store).items() if k in done_before}
    now_allowed = [] if plan.retry_failed else now_admitted(store, items, failed_before, gate)
    retry = sorted(failed_before) if plan.retry_failed else now_allowed
    todo = sorted((set(range(store.n_shards)) - done_before) | set(retry))
    summary = {"store": str(store.path), "backbone": plan.backbone, "device": device, "shards": store.n_shards,
               "skipped": len(done_before) - len(retry), "retried": len(retry), "written": 0, "items": 0, "ok": 0,
               "failed": 0, "failed_skipped": sum(n for k, n in failed_before.items() if k not in retry),
               "errors": {}, "now_allowed": len(now_allowed)}
    shard_items = {k: items[slice(*store.shard_range(k))] for k in todo}
    t1 = time.perf_counter()
    if plan.dask_scheduler is not None and todo:
        from mmx.extract.distributed import extract_on_dask

        results = extract_on_dask(store, plan, shard_items, gate)
        summary["device"] = f"dask ({plan.device})"
    else:
        bar = _progress(sum(len(v) for v in shard_items.values()), plan.progress)
        results = extract_shards(encoder, store, shard_items, plan.batch_size, plan.workers, on_shard=on_shard,
                                 on_items=bar, gate=gate)
    for k in sorted(results):
        s = results[k]
        summary["written"] += 1
        for key in ("items", "ok", "failed"):
            summary[key] += s[key]
        summary["errors"].update(s.get("errors", {}))
    summary["seconds"] = round(time.perf_counter() - t1, 3)
    summary["items_per_s"] = round(summary["items"] / summary["seconds"], 2) if summary["seconds"] > 0 else None
    return summary


def _progress(total: int, enabled: bool) -> Callable[[int], None]:
    if not enabled or not total:
        return lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="item", file=sys.stderr)
    return bar.update
