"""Shard writes off the model's thread: bounded, in order, errors surface."""

import threading
import time

import numpy as np
import pandas as pd
import pytest

from mmx.cache.store import STATUS_OK, list_stores
from mmx.extract import runner, shards
from mmx.extract.config import ExtractConfig

BOW = ExtractConfig(backbone="bow", workers=0, batch_size=4, shard_size=4, threads=1)


def _text_manifest(tmp_path, n=40):
    rows = [dict(id=f"t{i}", modality="text", uri="", text=f"word{i % 7} thing{i % 3} item {i}", split="train") for i in range(n)]
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_shards_are_written_on_the_writer_thread_bounded_and_complete(tmp_path, monkeypatch):
    real, seen, in_flight, peak = shards._write_shard, [], [0], [0]
    lock = threading.Lock()

    def slow_write(*args):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        seen.append(threading.current_thread().name)
        time.sleep(0.05)  # a slow disk: the model side must not wait for it until the queue is full
        try:
            return real(*args)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(shards, "_write_shard", slow_write)
    done = []
    s = runner.extract(str(_text_manifest(tmp_path)), "text", str(tmp_path / "c"), "d", BOW,
                       on_shard=lambda k, summary: done.append(k))
    assert s["written"] == 10 and s["ok"] == 40 and s["threads"] == 1
    assert all(name.startswith("mmx-shard-writer") for name in seen) and len(seen) == 10
    assert peak[0] == 1 and sorted(done) == list(range(10))  # one writer; every shard reported once
    store = list_stores(tmp_path / "c")[0]
    assert store.complete_shards() == list(range(10)) and (np.asarray(store._group["status"][:]) == STATUS_OK).all()


def test_a_write_error_stops_the_run_and_earlier_shards_stay_complete(tmp_path, monkeypatch):
    real = shards._write_shard

    def failing(store, k, *args):
        if k == 3:
            raise OSError("disk full")
        return real(store, k, *args)

    monkeypatch.setattr(shards, "_write_shard", failing)
    with pytest.raises(OSError, match="disk full"):
        runner.extract(str(_text_manifest(tmp_path)), "text", str(tmp_path / "c"), "d", BOW)
    store = list_stores(tmp_path / "c")[0]
    done = store.complete_shards()
    assert 3 not in done and {0, 1, 2} <= set(done)  # a rerun resumes from the missing shards
    monkeypatch.setattr(shards, "_write_shard", real)
    again = runner.extract(str(_text_manifest(tmp_path)), "text", str(tmp_path / "c"), "d", BOW)
    assert again["skipped"] == len(done) and again["written"] == 10 - len(done)


def test_default_workers_use_the_cores_on_cuda(monkeypatch):
    monkeypatch.setattr("mmx.cache.threads.usable_cores", lambda: 16)
    assert runner.default_workers("cuda") == 15 and runner.default_workers("cuda:1") == 15
    assert runner.default_workers("cpu") == 4
    monkeypatch.setattr("mmx.cache.threads.usable_cores", lambda: 1)
    assert runner.default_workers("cuda") == 1 and runner.default_workers("cpu") == 1


def test_a_shard_is_reported_once_written_not_when_a_later_one_queues(tmp_path, monkeypatch):
    """on_shard follows the writes (benchmarks time shards by it): with room for every shard in
    the writer's queue, the first is still reported long before the last batch."""
    monkeypatch.setattr(shards, "WRITES_IN_FLIGHT", 100)
    collate, seen, at_report = shards._Collate.__call__, [0], []

    def slow_batch(self, pairs):  # a slow model: the writer has long finished shard 0 when batch 3 is made
        seen[0] += len(pairs)
        time.sleep(0.2)
        return collate(self, pairs)

    monkeypatch.setattr(shards._Collate, "__call__", slow_batch)
    s = runner.extract(str(_text_manifest(tmp_path)), "text", str(tmp_path / "c"), "d", BOW,
                       on_shard=lambda k, summary: at_report.append((k, seen[0])))
    assert s["written"] == 10 and [k for k, _ in at_report] == list(range(10))
    assert at_report[0][1] < 40, at_report  # reported during the run, not at its close
