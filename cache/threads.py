"""torch's CPU thread count for ``mmx train``, ``mmx extract`` and ``mmx eval`` (``--threads``).

:func:`default_threads` is half the usable cores, between 1 and :data:`MAX_DEFAULT`;
:func:`set_threads` applies a count. Why (spinning OpenMP threads on shared cores) is in
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
    return n
