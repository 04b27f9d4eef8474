"""Extracting item shards: decoding workers -> frozen backbone -> one whole shard write each.

:func:`extract_shards` is the loop that both the single-process runner
(:mod:`mmx.extract.runner`) and the dask tasks (:mod:`mmx.extract.distributed`) run, so a
shard comes out bitwise the same either way. Every batch holds items of one shard only.
Decoding runs in ``workers`` DataLoader processes, each item behind a :class:`LocalGate`;
the model runs under ``torch.inference_mode`` with one batch in flight; each finished shard
goes to one writer thread (at most :data:`WRITES_IN_FLIGHT` queued), is written atomically
and marked complete after its data. An item that fails to decode, or a batch the model fails
on, is stored with status ``failed``, zeros and no tokens, its error in the shard marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class Failure:
    """An item that could not be extracted, with the message kept in its shard's marker."""

    message: str


WRITES_IN_FLIGHT = 2  # shards waiting for the writer thread; bounds the memory they hold


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

    def poll(self) -> None:
        """Report the shards written by now, oldest first (so ``done`` runs when a shard is on disk,
        not when a later one queues behind it)."""
        while self.pending and self.pending[0][1].done():
            self._finish_oldest()

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
    under the same failure kinds (:class:`~mmx.extract.decode.DecodeError`). A probe before
    that decode costs a decoding worker a third of its time per JPEG (benchmarks/RESULTS.md).
    """

    modality: str
    roots: tuple[str, ...]  # real paths
    max_pixels: int
    probe: bool = True

    def problem(self, item: dict) -> str | None:
        from pathlib import Path

        from mmx.extract.fetch.files import is_url
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
        writer.poll()
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

