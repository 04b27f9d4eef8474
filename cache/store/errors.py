"""The errors and warnings of the feature store, and the one line a failed write becomes.

Every error is a ``ValueError`` (via :class:`StoreError`) so that the command line shows it as
one line, like other input errors; each message names the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno


class CacheKeyMismatch(ValueError):
    """A store opened for a configuration other than the one it was built with."""


class IncompleteStoreWarning(UserWarning):
    """A store was loaded while some of its shards are not complete."""


class StoreError(ValueError):
    """A store cannot be used or written as asked; the message names the file and the fix.

    ``detail`` is the message without the store's path and the fix (for lists of problems).
    """

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail or message


class CorruptStoreError(StoreError):
    """Data of a shard marked complete is missing, has the wrong shape or fails its checksum."""


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock."""


class StoreWriteError(StoreError):
    """Writing a shard failed (e.g. a full disk); the shard was left unmarked."""


def reason(exc: BaseException) -> str:
    """``exc`` as one short line for a message."""
    return f"{type(exc).__name__}: {exc}"[:300]


@contextlib.contextmanager
def write_errors(what: str):
    """Turn an OSError while writing ``what`` (a full disk, a read-only folder) into one clear line."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free space (or give another --cache) and rerun the same command"
        else:
            fix = "fix the cause and rerun the same command"
        raise StoreWriteError(f"{what}: cannot write{where}: {exc.strerror or exc}; nothing was marked complete: "
                              f"{fix}, which keeps the finished shards and redoes this one") from exc
