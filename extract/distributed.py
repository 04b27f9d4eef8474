"""Extraction past one machine: item shards as tasks on a dask.distributed cluster.

``mmx extract ... --dask-scheduler ADDRESS`` creates (or opens) the store on the client,
then submits one task per incomplete item shard. A task opens the store, extracts its
shard with the same batching as the single-process runner and writes it whole (so the
result is identical to a single-process run, and a shard is either complete or ignored).
Each worker process loads a backbone once and keeps it in a process-level cache keyed
by (backbone, options, weights, device) for all the tasks it runs. The scheduler does
the scheduling and retries; nothing here plays the role of a cluster scheduler.

"Identical" is bitwise for the same device kind and, on the CPU, the same number of torch
intra-op threads: CPU kernels sum in a thread-count-dependent order, and ``dask worker``
(through its nanny) starts workers with ``OMP_NUM_THREADS=1`` by default, so a CPU run on
dask matches a single-process run made with one thread (``OMP_NUM_THREADS=1 mmx extract``);
with other thread counts features differ in the last float16 bit.

Running on several GPU nodes
----------------------------
The cache root must be a filesystem every node sees at the same path (NFS, Lustre, ...),
and every node needs mmx installed and the backbone's weights in its local hub cache
(or a local directory passed with ``--weights``) when the nodes are offline::

    # one node (or a login node): the scheduler
    dask scheduler --port 8786

    # on every GPU node: one single-threaded worker per GPU, pinned with CUDA_VISIBLE_DEVICES
    for gpu in 0 1 2 3; do
        CUDA_VISIBLE_DEVICES=$gpu dask worker tcp://SCHEDULER:8786 --nworkers 1 --nthreads 1 \\
            --name "$(hostname)-gpu$gpu" &
    done

    # anywhere: submit the shards (workers pick CUDA with --device auto)
    mmx extract manifest.csv --modality video --cache /shared/cache --dataset mydata \\
        --dask-scheduler tcp://SCHEDULER:8786 --shard-size 256

Dask workers run as daemonic processes, which may not start DataLoader worker
processes, so by default a task decodes in its own thread. To let each task use
``--workers N`` decoding processes, start the workers with
``DASK_DISTRIBUTED__WORKER__DAEMON=False``. Killing workers or the client loses at most
the shards in flight; rerunning the command skips every shard already complete.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from typing import Any

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def worker_encoder(backbone: str, options: dict, weights: str | None, device: str):
    """The backbone for this process, loaded on first use and then reused by every task."""
    from mmx.extract.backbones import build_encoder
    from mmx.extract.runner import resolve_device

    key = json.dumps([backbone, options, weights, device], sort_keys=True, default=str)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = build_encoder(backbone, options, weights).to(resolve_device(device))
        return _MODELS[key]


def extract_shard_task(store_path: str, store_key: str, backbone: str, options: dict, weights: str | None,
                       device: str, batch_size: int, workers: int, k: int, items: list[dict], gate=None) -> dict:
    """One dask task: extract item shard ``k`` and write it whole (skip it when already complete)."""
    from mmx.cache.store import open_store
    from mmx.extract.runner import extract_shards

    store = open_store(store_path, expected=store_key)
    if store.is_complete(k):
        return {"items": 0, "ok": 0, "failed": 0, "skipped": True}
    encoder = worker_encoder(backbone, options, weights, device)
    if multiprocessing.current_process().daemon:
        workers = 0  # daemonic processes cannot have children (see the module docstring)
    return extract_shards(encoder, store, {k: items}, batch_size, workers, gate=gate)[k]


def extract_on_dask(scheduler, store, backbone: str, options: dict, weights: str | None,
                    shard_items: dict[int, list[dict]], batch_size: int, device: str = "auto",
                    workers: int = 0, gate=None) -> dict[int, dict]:
    """Run the given shards as tasks on ``scheduler`` (an address or a ``distributed.Client``)."""
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = {}
        for k, items in sorted(shard_items.items()):
            fut = client.submit(
                extract_shard_task, str(store.path), store.key, backbone, options, weights, device,
                batch_size, workers, k, items, gate, key=f"mmx-extract-{store.key[:10]}-{k:06d}", pure=False,
            )
            futures[fut] = k
        results = {}
        for fut in as_completed(list(futures)):
            results[futures[fut]] = fut.result()  # a failed task raises here, with its traceback
        return {k: r for k, r in results.items() if not r.get("skipped")}
    finally:
        if client is not scheduler:
            client.close()
