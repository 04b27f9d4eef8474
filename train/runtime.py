"""What a training process sets up around its steps: seeds, deterministic kernels, autocast.

The device itself comes from :func:`mmx.cache.device.resolve_device`, shared by every stage.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Callable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (samplers have their own seeded ones)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_kernels(on: bool):
    """``torch.use_deterministic_algorithms`` for the enclosed run (``deterministic: true``),
    the previous setting restored after it. An operation without a deterministic kernel warns
    instead of failing (``warn_only``). cuBLAS is deterministic only with a fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``), read when the process first uses it: set here if unset, which
    takes effect when the run is the process's first CUDA work (as under ``mmx train``)."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def autocast_for(cfg, device: torch.device) -> Callable:
    """What a training step runs under (a factory of context managers): bf16 autocast on CUDA
    when ``cfg.amp``, nothing on the CPU. ``cache=False`` inside a CUDA graph's capture, which
    cannot keep autocast's casts across steps."""
    if cfg.amp and device.type == "cuda":
        return lambda cache=True: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return lambda cache=True: contextlib.nullcontext()
