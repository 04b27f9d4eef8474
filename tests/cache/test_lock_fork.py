"""A forked child (a decoding worker) never keeps its parent's store or run lock.

``flock`` locks belong to the open file, which fork shares: without closing its copy, a worker
that outlives a killed ``mmx extract`` holds the store locked and the rerun is refused.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time

import pytest

from mmx.cache.store import StoreLockedError
from mmx.cache.store.locks import hold_shard_lock, hold_writer_lock
from mmx.eval.runs import writer_lock


def _sleep(ready):
    ready.set()  # fork's hooks have run by the time the target starts
    time.sleep(30)


@pytest.fixture
def forked_child():
    children = []

    def start():
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        child = ctx.Process(target=_sleep, args=(ready,), daemon=True)
        child.start()
        children.append(child)
        assert ready.wait(20)
        return child

    yield start
    for child in children:
        child.kill()
        child.join(5)


def test_a_forked_child_does_not_keep_the_store_locked(tmp_path, forked_child):
    with hold_writer_lock(tmp_path, "mmx extract"):
        child = forked_child()  # as DataLoader starts its decoding workers
    assert child.is_alive()
    with hold_writer_lock(tmp_path, "the rerun"):  # StoreLockedError when the child held it
        pass


def test_the_parent_keeps_its_lock_while_a_child_lives(tmp_path, forked_child):
    with hold_writer_lock(tmp_path, "mmx extract"):
        forked_child()
        with pytest.raises(StoreLockedError):
            with hold_writer_lock(tmp_path, "a second writer"):
                pass


def test_a_forked_child_does_not_keep_a_shard_or_run_lock(tmp_path, forked_child):
    (tmp_path / "_complete").mkdir()
    with hold_shard_lock(tmp_path, 0), writer_lock(tmp_path, "mmx train"):
        forked_child()
    with writer_lock(tmp_path, "mmx train --resume"):  # RunLockedError when the child held it
        pass
    fd = os.open(tmp_path / "_complete" / "000000.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError when the child held it
    finally:
        os.close(fd)
