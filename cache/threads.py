"""torch's CPU thread count for ``mmx train``, ``mmx extract`` and ``mmx eval`` (``--threads``).

torch starts one intra-op thread per core and its OpenMP threads spin while they wait for
each other, so when the cores are shared (other jobs, decode workers, a loaded CI runner)
every kernel waits for the slowest, descheduled thread: on a loaded 2-core machine an epoch
of a small joint run took 20-135 s with torch's default of 2 threads and 0.9 s with one
(issue 12). mmx's kernels are small (projection heads, similarity blocks), so they gain
little from many threads anyway. The default is therefore half the cores this process may
run on, at least 1 and at most 4: 1 on a 2-core machine, 4 on a 16-core GPU machine (whose
other cores decode). The figures behind it are in benchmarks/RESULTS.md ("CPU threads").
Lives in ``mmx.cache``, the layer every stage may import.
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
