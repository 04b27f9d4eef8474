"""The one atomic file write every stage uses (store markers, run folders, reports)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``path`` holds ``data`` or, if the write fails (a full disk), what it held before; no temporary is left.

    The temporary carries the process id, so two processes writing the same file never share
    one; a failed ``write()`` (which names no file) gets ``path`` as its ``filename``.
    """
    path = Path(path)
    tmp = path.with_name(f".{os.getpid()}.{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise
