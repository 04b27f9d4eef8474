"""Peak memory of a stretch of code in this process, for the bounded-memory tests and benchmarks.

``ru_maxrss`` never goes down, so a peak reached while importing hides anything smaller that
follows. On Linux the peak can be reset (``/proc/self/clear_refs``, value 5), so the figure
is the growth of the resident set over what was resident at :func:`start`.
"""

from __future__ import annotations

import re
import resource


def _hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        return None


def start() -> int:
    """Reset the peak where the OS allows it; returns the baseline in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    hwm = _hwm_kib()
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def growth_mib(baseline_kib: int) -> float:
    """Peak resident memory since :func:`start`, above its baseline, in MiB."""
    hwm = _hwm_kib()
    peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - baseline_kib) / 1024
