"""Extraction past one machine: item shards as tasks on a dask.distributed cluster.

:func:`extract_on_dask` submits one task per incomplete item shard; a task opens the store and
runs the single-process loop (:func:`mmx.extract.shards.extract_shards`) on its shard, so the
store comes out bitwise as a one-process run writes it (same device kind and, on the CPU, the
same number of torch threads). Each worker process loads a backbone once
(:func:`worker_encoder`); dask does the scheduling and retries. The store's writer lock is
held by the submitting process alone (workers are processes of their own, never forked from it):
a killed ``mmx extract`` frees it at once, and tasks it left running take turns with a rerun
through the shard locks. Running it on several GPU nodes: docs/notes/extract.md.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import threading
from typing import Any

from mmx.extract.config import ExtractConfig
from mmx.extract.shards import LocalGate, extract_shards

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def worker_encoder(plan: ExtractConfig):
    """The backbone for this process, loaded on first use and then reused by every task."""
    from mmx.cache.device import resolve_device
    from mmx.extract.backbones import build_encoder

    key = json.dumps([plan.backbone, plan.options, plan.weights, plan.device], sort_keys=True, default=str)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = build_encoder(plan.backbone, plan.options, plan.weights).to(resolve_device(plan.device))
        return _MODELS[key]


def extract_shard_task(store_path: str, store_key: str, plan: ExtractConfig, k: int, items: list[dict],
                       gate: LocalGate | None = None) -> dict:
    """One dask task: extract item shard ``k`` and write it whole (skip it when already complete)."""
    from mmx.cache.store import open_store

    store = open_store(store_path, expected=store_key)
    if store.is_complete(k):
        return {"items": 0, "ok": 0, "failed": 0, "skipped": True}
    encoder = worker_encoder(plan)
    workers = plan.workers or 0
    if multiprocessing.current_process().daemon:
        # daemonic processes may not have children: decode in the task's own thread (start the dask
        # workers with DASK_DISTRIBUTED__WORKER__DAEMON=False to give each task --workers processes)
        workers = 0
    return extract_shards(encoder, store, {k: items}, plan.batch_size, workers, gate=gate)[k]


def extract_on_dask(store, plan: ExtractConfig, shard_items: dict[int, list[dict]],
                    gate: LocalGate | None = None) -> dict[int, dict]:
    """Run the given shards as tasks on ``plan.dask_scheduler`` (an address or a ``distributed.Client``).

    ``plan`` is the run's config with its backbone, options and workers resolved (see
    :func:`mmx.extract.runner.extract`); ``plan.device`` is resolved by each worker.
    """
    from distributed import Client, as_completed

    scheduler = plan.dask_scheduler
    task_plan = dataclasses.replace(plan, dask_scheduler=None)  # the client stays here; tasks need no scheduler
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = {}
        for k, items in sorted(shard_items.items()):
            fut = client.submit(
                extract_shard_task, str(store.path), store.key, task_plan, k, items, gate,
                key=f"mmx-extract-{store.key[:10]}-{k:06d}", pure=False,
            )
            futures[fut] = k
        results = {}
        for fut in as_completed(list(futures)):
            results[futures[fut]] = fut.result()  # a failed task raises here, with its traceback
        return {k: r for k, r in results.items() if not r.get("skipped")}
    finally:
        if client is not scheduler:
            client.close()
