"""The one atomic file write every stage uses (store markers, run folders, reports, manifests, plots)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer to fill; renamed onto ``path`` when the block ends.

    ``path`` then holds the new content or, if the block raises (a full disk, a killed writer),
    what it held before; no temporary is left. The temporary keeps ``path``'s suffix (writers
    such as ``savefig`` and ``np.savez`` go by it) and carries the process id, so two processes
    writing the same file never share one. A failed ``write()`` (which names no file) gets
    ``path`` as its ``filename``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``path`` holds ``data`` (synced to disk) or what it held before (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
