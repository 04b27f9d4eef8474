"""The extraction loop: manifest -> decoding workers -> frozen backbone -> whole cache shards.

Work is cut into the store's item shards (:meth:`FeatureStore.shard_range`). Shards
already marked complete are skipped, so a killed run resumes where it stopped, and a
rerun of a finished one does nothing. Every batch holds items of one shard only, so a
shard's batches (and hence its numbers) are the same whether it is extracted in one go,
after a restart, or as a dask task: the result is identical in all three cases.

Decoding and preprocessing run in ``workers`` DataLoader processes that stay ahead of the
model (they also prefetch across shard boundaries); the main process only batches
through the model under ``torch.inference_mode`` (and autocast + pinned memory on CUDA),
launching each batch before it waits for the previous one's features (:meth:`Encoder.launch`).
Each shard is written whole as soon as its last batch is done, by one writer thread, so
compressing and writing a shard overlaps the next batches instead of stalling the model;
at most :data:`WRITES_IN_FLIGHT` shards wait for it (memory stays bounded). A shard is
still written atomically and marked complete only after its data (resume is unchanged),
and a write error stops the run as before. An item that fails to
decode, or a batch the model fails on, is stored with status ``failed``, zeros for its
pooled vector and no tokens, and its error in the shard marker; the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class Failure:
    message: str


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    return device


WRITES_IN_FLIGHT = 2


def default_workers(device: str = "cpu") -> int:
    """Decoding processes: on CUDA all usable cores but the model's one (the GPU needs the
    decoded batches, not the CPU); on the CPU at most 4, which share the cores with the model."""
    from mmx.cache.threads import usable_cores

    cores = usable_cores()
    return max(1, cores - 1) if str(device).startswith("cuda") else min(4, cores)


class _Writer:
    """Shard writes on one background thread, at most ``limit`` queued; ``done`` runs in the caller's thread."""

    def __init__(self, limit: int, done: Callable[[int, dict], None]):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmx-shard-writer")
        self.pending: list = []
        self.limit, self.done = limit, done

    def submit(self, k: int, fn, *args) -> None:
        while len(self.pending) >= self.limit:
            self._finish_oldest()
        self.pending.append((k, self.pool.submit(fn, *args)))

    def _finish_oldest(self) -> None:
        k, future = self.pending.pop(0)
        self.done(k, future.result())  # re-raises a write error here

    def close(self) -> None:
        try:
            while self.pending:
                self._finish_oldest()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class LocalGate:
    """``mmx fetch``'s check of a local file (:func:`~mmx.extract.fetch.validate.admit_local`),
    run on each item in the decoding worker before it is decoded: a file outside ``roots``
    (symlinks resolved) or one the probe refuses (a truncated WAV or MP4, a decompression
    bomb, the wrong format) fails with fetch's failure kind in its message.

    ``probe=False`` keeps the root and magic-byte checks and leaves the decode probe to the
    decode that follows, where that decode is the stronger check of the two: an image is
    refused by pixel count before its pixels are decoded, and a full decode reads every byte,
    under the same failure kinds (:class:`~mmx.extract.decode.DecodeError`). Probing first
    cost a decoding worker a third of its time per JPEG (benchmarks/RESULTS.md, issue 12).
    """

    modality: str
    roots: tuple[str, ...]  # real paths
    max_pixels: int
    probe: bool = True

    def problem(self, item: dict) -> str | None:
        from pathlib import Path

        from mmx.extract.fetch import is_url
        from mmx.extract.fetch.validate import admit_local

        uri = item.get("uri") or ""
        if not uri or (is_url(uri) and not uri.lower().startswith("file://")):
            return None  # inline text; a URL fails in the preparer with its own hint
        _, verdict = admit_local(uri, uri, self.modality, [Path(r) for r in self.roots], max_pixels=self.max_pixels,
                                 with_probe=self.probe)
        return None if verdict.kind is None else f"{verdict.kind}: {verdict.message}"


class _Items:
    """Map-style dataset over (position -> item); returns the prepared sample or a Failure."""

    def __init__(self, prep, items: list[dict], gate: LocalGate | None = None):
        self.prep, self.items, self.gate = prep, items, gate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int):
        try:
            problem = self.gate.problem(self.items[j]) if self.gate else None
            return j, Failure(problem) if problem else self.prep.prepare(self.items[j])
        except Exception as exc:  # any decoder failure becomes the item's status
            return j, Failure(_message(exc))


def _message(exc: BaseException) -> str:
    from mmx.extract.decode import DecodeError

    kind = exc.kind if isinstance(exc, DecodeError) else type(exc).__name__
    return f"{kind}: {exc}"[:500]


class _Collate:
    def __init__(self, prep):
        self.prep = prep

    def __call__(self, pairs: list) -> dict:
        index = [j for j, _ in pairs]
        failures = {j: r.message for j, r in pairs if isinstance(r, Failure)}
        ok = [j for j, r in pairs if not isinstance(r, Failure)]
        inputs = None
        if ok:
            try:
                inputs = self.prep.collate([r for _, r in pairs if not isinstance(r, Failure)])
            except Exception as exc:
                failures.update({j: _message(exc) for j in ok})
                ok = []
        return {"index": index, "ok": ok, "failures": failures, "inputs": inputs}


def extract_shards(
    encoder,
    store,
    shard_items: dict[int, list[dict]],
    batch_size: int = 32,
    workers: int = 0,
    on_shard: Callable[[int, dict], None] | None = None,
    on_items: Callable[[int], None] | None = None,
    gate: LocalGate | None = None,
) -> dict[int, dict]:
    """Extract and write the given item shards (``{k: items of shard k, in store order}``).

    ``on_items(n)`` is called after each batch with its item count (the progress bar counts
    items: a shard of long videos can take many minutes); ``on_shard(k, summary)`` after
    each shard is written. A summary holds ``items``, ``ok``, ``failed`` and ``errors``
    (failed id -> message, as in the shard's marker). ``gate`` checks each local file before
    it is decoded.
    """
    import torch
    from torch.utils.data import DataLoader

    shards = sorted(shard_items)
    items, owner, batches = [], [], []
    per_batch = max(1, encoder.items_per_batch(batch_size))
    for k in shards:
        start = len(items)
        items += shard_items[k]
        owner += [k] * len(shard_items[k])
        batches += [list(range(s, min(s + per_batch, len(items)))) for s in range(start, len(items), per_batch)]
    if not items:
        return {}
    cuda = str(encoder.device).startswith("cuda")
    loader = DataLoader(
        _Items(encoder.prep, items, gate), batch_sampler=batches, collate_fn=_Collate(encoder.prep),
        num_workers=workers, pin_memory=cuda, prefetch_factor=2 if workers else None,
    )
    results: dict[int, Any] = {}
    remaining = {k: len(shard_items[k]) for k in shards}
    first = {k: owner.index(k) for k in shards}
    summaries: dict[int, dict] = {}

    def written(k: int, summary: dict) -> None:
        summaries[k] = summary
        if on_shard:
            on_shard(k, summary)

    writer = _Writer(WRITES_IN_FLIGHT, written)

    def finish(batch: dict, pending) -> None:
        """Collect a launched batch's outputs (or failures) and hand finished shards to the writer."""
        for j, msg in batch["failures"].items():
            results[j] = Failure(msg)
        if batch["ok"]:
            try:
                if isinstance(pending, Exception):
                    raise pending
                for j, out in zip(batch["ok"], pending.result()):
                    results[j] = out
            except Exception as exc:  # e.g. an input the model cannot take
                for j in batch["ok"]:
                    results[j] = Failure(f"model: {_message(exc)}")
        if on_items:
            on_items(len(batch["index"]))
        for k in {owner[j] for j in batch["index"]}:
            remaining[k] -= sum(1 for j in batch["index"] if owner[j] == k)
            if remaining[k] == 0:
                n = len(shard_items[k])
                writer.submit(k, _write_shard, store, k, [results.pop(first[k] + i) for i in range(n)], shard_items[k], encoder.dim)

    # One batch in flight: batch i+1 is launched on the device before batch i's features are
    # waited for, so the GPU computes while the host collects, writes and decodes.
    with torch.inference_mode(), contextlib.closing(writer):
        in_flight = None
        for batch in loader:
            try:
                pending = encoder.launch(batch["inputs"], batch_size) if batch["ok"] else None
            except Exception as exc:
                pending = exc
            if in_flight is not None:
                finish(*in_flight)
            in_flight = (batch, pending)
        if in_flight is not None:
            finish(*in_flight)
    return summaries


def _write_shard(store, k: int, outs: list, items: list[dict], dim: int) -> dict:
    from mmx.cache.store import STATUS_FAILED, STATUS_OK

    n = len(outs)
    pooled = np.zeros((n, dim), np.float32)
    status = np.full(n, STATUS_OK, np.uint8)
    tokens, errors = [], {}
    for i, out in enumerate(outs):
        if isinstance(out, Failure) or not np.isfinite(out[1]).all() or not np.isfinite(out[0]).all():
            status[i] = STATUS_FAILED
            errors[items[i]["id"]] = out.message if isinstance(out, Failure) else "non-finite features"
            tokens.append(np.zeros((0, dim), np.float32))
        else:
            pooled[i] = out[1]
            tokens.append(np.asarray(out[0], np.float32).reshape(-1, dim))
    store.write_shard(k, pooled, status, tokens=tokens if store.has_tokens else None, errors=errors,
                      sources=sources_digest(items))
    return {"items": n, "ok": int((status == STATUS_OK).sum()), "failed": len(errors), "errors": errors}


def sources_digest(items: list[dict]) -> str:
    """What a shard's features were computed from: its items' ids, resolved paths and inline texts.

    Kept in the shard's marker; a rerun whose manifest gives one of those items another
    file or text re-extracts the shard instead of silently keeping features of the old one.
    """
    import hashlib
    import json

    rows = [[str(it["id"]), str(it["uri"]), str(it["text"])] for it in items]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:32]


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


def extract(
    manifest_path: str,
    modality,
    cache: str,
    dataset: str,
    backbone: str | None = None,
    options: dict | None = None,
    weights: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    threads: int | None = None,
    shard_size: int = 256,
    dask_scheduler: Any = None,
    progress: bool = False,
    on_shard: Callable[[int, dict], None] | None = None,
    retry_failed: bool = False,
    allowed_roots: tuple[str, ...] = (),
) -> dict:
    """Extract one modality of a manifest into its store; returns a summary of the run.

    ``threads``: torch's CPU threads in this process (:func:`mmx.cache.threads.set_threads`;
    None/0: its default), recorded in the summary. Decoding workers are separate processes.
    The summary counts this run's shards (``written``, ``items``, ``ok``, ``failed``) and keeps
    ``errors``: each failed item's id and message (also in the shard markers, ``mmx cache ls --failed``).
    Holds the store's writer lock while it writes (a second process on the same store
    fails with :class:`mmx.cache.StoreLockedError`). ``retry_failed`` also re-extracts
    the complete shards that hold failed items.
    Local files are read only below ``allowed_roots`` (default: the manifest's folder) and
    only after the checks ``mmx fetch`` applies (:class:`LocalGate`).
    """
    from mmx.cache.threads import set_threads
    from mmx.extract.backbones import DEFAULT_BACKBONE, build_encoder, get_backbone
    from mmx.extract.manifest import read_manifest
    from mmx.cache.modality import Modality
    from mmx.cache.names import check_name

    check_name(dataset, "--dataset")
    modality = Modality.parse(modality)
    backbone = backbone or DEFAULT_BACKBONE[modality]
    get_backbone(backbone, modality)  # validate before anything expensive
    if batch_size < 1 or shard_size < 1:
        raise ValueError("--batch-size and --shard-size must be positive")
    manifest = read_manifest(manifest_path)
    items = manifest_items(manifest, modality)
    if not items:
        have = ", ".join(m.value for m in manifest.modalities)
        raise ValueError(f"{manifest_path}: no {modality.value} items (the manifest has: {have})")
    from mmx.extract.decode import DEFAULT_MAX_PIXELS

    roots = tuple(os.path.realpath(r) for r in (allowed_roots or (str(Path(manifest_path).parent),)))
    gate = LocalGate(modality.value, roots, int((options or {}).get("max_pixels", DEFAULT_MAX_PIXELS)),
                     probe=modality is not Modality.IMAGE)  # an image's decode is its probe
    options = plan_options(backbone, items, options, gate)
    asked_device = device
    # on dask the workers pick their own device; the client only needs the metadata
    device = "cpu" if dask_scheduler is not None else resolve_device(device)
    workers = default_workers(device) if workers is None else workers
    threads = set_threads(threads)
    t0 = time.perf_counter()
    encoder = build_encoder(backbone, options, weights).to(device)
    store = open_output_store(cache, dataset, modality, encoder, items, shard_size)
    load_seconds = round(time.perf_counter() - t0, 3)
    with store.writer_lock("mmx extract"):  # a second extract of this store stops here with a clear message
        metadata_changed, stale = follow_manifest(store, items)
        summary = _run(store, items, encoder, backbone, options, weights, batch_size, workers, device, asked_device,
                       dask_scheduler, progress, on_shard, retry_failed, stale, gate)
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


def _run(store, items, encoder, backbone, options, weights, batch_size, workers, device, asked_device,
         dask_scheduler, progress, on_shard, retry_failed, stale, gate: LocalGate | None = None) -> dict:
    """Extract the shards not complete yet or ``stale``, and with ``retry_failed`` those with failed items.

    A retried shard is extracted and written whole again, not item by item: its batches are
    then those of a run in which the item never failed, so the shard comes out bitwise as
    that run writes it (a batch's numbers can depend on its other items).
    """
    done_before = set(store.complete_shards()) - set(stale)
    failed_before = {k: n for k, n in failed_shards(store).items() if k in done_before}
    now_allowed = [] if retry_failed else now_admitted(store, items, failed_before, gate)
    retry = sorted(failed_before) if retry_failed else now_allowed
    todo = sorted((set(range(store.n_shards)) - done_before) | set(retry))
    summary = {"store": str(store.path), "backbone": backbone, "device": device, "shards": store.n_shards,
               "skipped": len(done_before) - len(retry), "retried": len(retry), "written": 0, "items": 0, "ok": 0,
               "failed": 0, "failed_skipped": sum(n for k, n in failed_before.items() if k not in retry),
               "errors": {}, "now_allowed": len(now_allowed)}
    shard_items = {k: items[slice(*store.shard_range(k))] for k in todo}
    t1 = time.perf_counter()
    if dask_scheduler is not None and todo:
        from mmx.extract.distributed import extract_on_dask

        results = extract_on_dask(dask_scheduler, store, backbone, options, weights, shard_items, batch_size, asked_device,
                                  workers, gate)
        summary["device"] = f"dask ({asked_device})"
    else:
        bar = _progress(sum(len(v) for v in shard_items.values()), progress)
        results = extract_shards(encoder, store, shard_items, batch_size, workers, on_shard=on_shard, on_items=bar, gate=gate)
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
