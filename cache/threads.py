"""torch's CPU thread count for ``mmx train``, ``mmx extract`` and ``mmx eval`` (``--threads``).

:func:`default_threads` is half the usable cores, between 1 and :data:`MAX_DEFAULT`;
:func:`set_threads` applies a count and :func:`keep_freed_memory`. Why (spinning OpenMP threads
on shared cores; page faults from blocks handed back to the kernel after every batch) is in
docs/notes/cache.md.
"""

from __future__ import annotations

import os

MAX_DEFAULT = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """``--threads`` when not given: half the usable cores, between 1 and :data:`MAX_DEFAULT`."""
    cores = usable_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT, cores // 2))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (``None`` or 0: :func:`default_threads`); returns the count set."""
    import torch

    n = threads or default_threads()
    if n < 0:
        raise ValueError(f"--threads must be 1 or more (or 0 for the default), not {n}")
    torch.set_num_threads(n)
    keep_freed_memory()
    return n


_KEPT = False


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of handing them back to the kernel.

    torch's CPU allocator asks malloc for every activation; glibc serves blocks over its mmap
    threshold (128 KiB to 32 MiB) with a fresh ``mmap`` and unmaps them on free, so every batch
    touches its activations' pages anew: EfficientNet-Lite0 on 32 images spent twice its compute
    time in the kernel on page faults (2 million per 96 images). With mmap off and the top of the
    heap kept, the next batch reuses the pages (faults /500, system time /200, peak RSS +11%).
    Once per process; False where malloc is not glibc's (nothing changed)."""
    global _KEPT
    if _KEPT:
        return True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators decide
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    _KEPT = bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_max, 0))
    return _KEPT
