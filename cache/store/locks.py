"""The two locks of a store: one writing process per store, and one writer per item shard.

Both are advisory ``flock`` locks on files inside the store; the kernel releases them when the
holder exits, however it dies, so a killed writer never leaves a store locked. A forked child
(a decoding worker) closes its copies of the held lock files at once (:func:`held_by_this_process`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from mmx.cache.store.errors import StoreLockedError
from mmx.cache.store.layout import MARKERS

WRITER_LOCK = ".writer.lock"

# An flock belongs to the open file, which fork shares with the child: a decoding worker that
# outlives a killed parent would keep the store locked. Children close their copies on fork
# (closing, unlike unlocking, leaves the parent's lock in place).
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@contextlib.contextmanager
def held_by_this_process(fd: int):
    """Mark ``fd`` (a file holding an ``flock``) as this process's alone: a forked child closes it."""
    _HELD.add(fd)
    try:
        yield
    finally:
        _HELD.discard(fd)


@contextlib.contextmanager
def hold_exclusive(fd: int, command: str, busy: Callable[[str], Exception]):
    """An exclusive ``flock`` on the open lock file ``fd``, taken without waiting: when another
    process holds it, ``busy(holder)`` is raised, ``holder`` being what that process recorded
    (its command, pid and start). Records this process's ``command`` in the file while held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
        raise busy(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{command}, pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}".encode(), 0)
    with held_by_this_process(fd):
        yield


@contextlib.contextmanager
def hold_writer_lock(store: Path, command: str = "a writer"):
    """Hold the writer lock of the store at ``store``: one writing process (e.g. ``mmx extract``) per store.

    A second writer fails at once with :class:`StoreLockedError` instead of waiting: the first
    one is already doing the same work, and a rerun after it ends skips what it finished. The
    lock file keeps the holder's command and pid for that message, and stays when released
    (deleting a lock file races with the next locker).
    """
    from mmx.cache.files import UnsafeFileError

    path = store / WRITER_LOCK
    if store.is_symlink():  # every write of an extraction or import happens under this lock
        raise UnsafeFileError(f"{store}: a symbolic link (to {os.readlink(store)}); mmx writes a store only in "
                              "its own folder and will not follow it: remove the link")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    busy = lambda holder: StoreLockedError(  # noqa: E731
        f"{store} is being written by another process ({holder}); wait for it to end or stop it, "
        f"then rerun: the shards it finished are kept (lock: {path})")
    try:
        with hold_exclusive(fd, command, busy):
            yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def hold_shard_lock(store: Path, k: int):
    """Two writers of item shard ``k`` take turns (e.g. two processes writing directly)."""
    fd = os.open(store / MARKERS / f"{k:06d}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with held_by_this_process(fd):
            yield
    finally:
        os.close(fd)
