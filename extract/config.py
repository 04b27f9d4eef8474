"""``ExtractConfig``: the knobs of one ``mmx extract`` run (:func:`mmx.extract.runner.extract`).

Plain data, importable without torch, so the CLI builds it before anything heavy loads; the
runner and the dask tasks (:mod:`mmx.extract.distributed`) take it as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class ExtractConfig:
    """Knobs of ``mmx extract``; the defaults suit one machine and the offline backbones."""

    backbone: str | None = None          # None: the modality's offline default
    options: dict | None = None          # backbone options (``--set``); None: the backbone's defaults
    weights: str | None = None           # a hub id or a local folder; None: the backbone's own
    device: str = "auto"                 # auto, cpu, cuda or cuda:N (on dask: what each worker resolves)
    batch_size: int = 32
    workers: int | None = None           # decoding processes; None: as many as the device wants
    threads: int | None = None           # torch's CPU threads in this process; None/0: its default
    shard_size: int = 256                # items per store shard, the unit of resume and of dask tasks
    dask_scheduler: Any = None           # an address or a ``distributed.Client``; None: this process
    progress: bool = False
    retry_failed: bool = False           # also re-extract complete shards that hold failed items
    allowed_roots: tuple[str, ...] = ()  # for local paths; empty: the manifest's folder
