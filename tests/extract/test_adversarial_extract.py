"""Extraction under adversity: a full disk, two processes on one store, and retrying the items
that failed. Each test names what it guards against: a traceback on a full disk, a second
process redoing every shard, a rerun that cannot retry failed items.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cache.store import STATUS_FAILED, STATUS_OK, list_stores, open_store
from make_media import random_jpegs  # tests/make_media.py
from mmx.pipeline.cli import main

N, SHARD = 6, 2



def _manifest(tmp_path, paths):
    import pandas as pd

    path = tmp_path / "m.csv"
    pd.DataFrame([dict(id=p.stem, modality="image", uri=str(p), text="", split="train") for p in paths]).to_csv(path, index=False)
    return path


def _extract(man, cache, *extra):
    return CliRunner().invoke(main, ["extract", str(man), "--modality", "image", "--cache", str(cache), "--dataset", "d",
                                     "--shard-size", str(SHARD), "--batch-size", "2", "--workers", "0", "--no-progress",
                                     "--set", "image_size=64", *extra])


def _verify(store):
    return CliRunner().invoke(main, ["cache", "verify", str(store.path)])


def test_adversarial_full_disk_during_extract(tmp_path, monkeypatch):
    """ENOSPC while shard 1 is written: one line naming the file and the fix; shard 0 stays
    complete, shard 1 unmarked, the store sound; a rerun after freeing space finishes it."""
    import zarr.storage._local as local

    man = _manifest(tmp_path, random_jpegs(tmp_path / "img", N))
    cache = tmp_path / "cache"
    real_put = local._put

    def put(path, value, exclusive=False):
        if "pooled/c/1/" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_put(path, value, exclusive)

    monkeypatch.setattr(local, "_put", put)
    r = _extract(man, cache)
    monkeypatch.undo()
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.output.strip().splitlines()
    assert "shard 1: cannot write (" in line and "pooled/c/1/0): No space left on device" in line
    assert "free space (or give another --cache) and rerun the same command" in line
    (store,) = list_stores(cache)
    done = store.complete_shards()  # shard 2 may have been written too (writes run on a background thread)
    assert 0 in done and 1 not in done and _verify(store).exit_code == 2  # sound, incomplete
    r = _extract(man, cache)
    assert r.exit_code == 0 and f"{N // SHARD - len(done)} shard(s) written, {len(done)} already complete" in r.output
    assert _verify(store).exit_code == 0


_HOLDER = textwrap.dedent("""
    import sys, time
    from mmx.cache import open_store
    with open_store(sys.argv[1]).writer_lock("test holder"):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_adversarial_second_writer_is_refused_and_a_killed_one_releases(tmp_path):
    """Two real processes: while one holds the store, ``mmx extract`` says so and writes
    nothing; once the holder is SIGKILLed the lock is gone and the extraction runs."""
    man = _manifest(tmp_path, random_jpegs(tmp_path / "img", N))
    cache = tmp_path / "cache"
    assert _extract(man, cache).exit_code == 0
    (store,) = list_stores(cache)
    store.unmark([2])  # work left for the second writer
    script = tmp_path / "hold.py"
    script.write_text(_HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(store.path)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = _extract(man, cache)
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert f"{store.path} is being written by another process (test holder, pid {holder.pid}" in r.output
        assert "wait for it to end or stop it, then rerun" in r.output
        assert not store.is_complete(2)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = _extract(man, cache)
    assert r.exit_code == 0 and "1 shard(s) written, 2 already complete" in r.output


_EXTRACT = textwrap.dedent("""
    import json, sys
    from mmx.cache import StoreLockedError
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import extract
    try:
        cfg = ExtractConfig(shard_size=2, batch_size=2, workers=0, options={"image_size": 64})
        s = extract(sys.argv[1], "image", sys.argv[2], "d", cfg)
        print(json.dumps({"written": s["written"]}))
    except StoreLockedError:
        print(json.dumps({"written": 0, "locked": True}))
""")


@pytest.mark.slow
def test_adversarial_two_concurrent_extractions_write_each_shard_once(tmp_path):
    """Two extractions started together: every shard is written exactly once in all."""
    import json

    man = _manifest(tmp_path, random_jpegs(tmp_path / "img", N))
    cache = tmp_path / "cache"
    script = tmp_path / "ex.py"
    script.write_text(_EXTRACT)
    procs = [subprocess.Popen([sys.executable, str(script), str(man), str(cache)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert sum(o["written"] for o in outs) == N // SHARD
    (store,) = list_stores(cache)
    assert _verify(store).exit_code == 0


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from mmx.cache import open_store
    store, seed = open_store(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(seed)
    for i in range(20):
        for k in range(store.n_shards):
            toks = [rng.standard_normal((3, store.dim)) for _ in range(2)]
            store.write_shard(k, rng.standard_normal((2, store.dim)), tokens=toks)
""")


def test_adversarial_two_processes_writing_the_same_shards(tmp_path):
    """Direct writes of the same shards from two processes take turns: none fails, and the
    store ends whole (each shard as one writer wrote it)."""
    from mmx.cache import StoreSpec, create_store
    from mmx.cache.modality import Modality
    from mmx.cache.store import ids_digest

    ids = [f"x{i}" for i in range(4)]
    spec = StoreSpec("d", Modality.AUDIO, {"name": "bb", "dim": 4}, {}, ids_digest(ids))
    store = create_store(tmp_path, spec, ids, shard_size=2, chunk_rows=2)
    script = tmp_path / "w.py"
    script.write_text(_WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(store.path), str(seed)], stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert _verify(store).exit_code == 0
    loaded = open_store(store.path).load(tokens=True)
    assert len(loaded) == 4 and loaded.tokens.shape == (12, 4)


def test_adversarial_retry_failed_reextracts_failed_items(tmp_path):
    paths = random_jpegs(tmp_path / "img", N)
    good = paths[3].read_bytes()
    paths[3].write_bytes(b"not an image")
    man = _manifest(tmp_path, paths)
    cache = tmp_path / "cache"
    r = _extract(man, cache)
    assert r.exit_code == 0 and f"{N - 1} ok, 1 failed" in r.output
    (store,) = list_stores(cache)
    before = np.asarray(store._group["pooled"][:])
    paths[3].write_bytes(good)  # the file is fixed (e.g. fetched again)
    r = _extract(man, cache)  # a plain rerun keeps the failure, and says how to retry
    assert "0 shard(s) written, 3 already complete" in r.output
    assert "1 item(s) failed in an earlier run and were not retried; rerun with --retry-failed" in r.output
    r = _extract(man, cache, "--retry-failed")
    assert r.exit_code == 0, r.output
    assert "1 shard(s) written (1 retried for failed items), 2 already complete; 2 ok, 0 failed" in r.output
    store = open_store(store.path)
    status = np.asarray(store._group["status"][:])
    assert (status == STATUS_OK).all() and store.shard_marker(1)["errors"] == {}
    after = np.asarray(store._group["pooled"][:])
    assert np.array_equal(after[:2], before[:2]) and np.array_equal(after[4:], before[4:])  # other shards untouched
    # the retried shard is what a run that never failed writes (its batches are the same)
    assert _extract(man, tmp_path / "clean").exit_code == 0
    (clean,) = list_stores(tmp_path / "clean")
    assert np.array_equal(after, np.asarray(clean._group["pooled"][:]))
    assert STATUS_FAILED not in status
    assert "already complete" in _extract(man, cache, "--retry-failed").output  # nothing left to retry


_DASK_EXTRACT = textwrap.dedent("""
    import sys
    from mmx.pipeline.cli import main
    sys.argv = ["mmx", "extract", sys.argv[1], "--modality", "image", "--cache", sys.argv[2], "--dataset", "d",
                "--shard-size", "2", "--no-progress", "--set", "image_size=64", "--dask-scheduler", sys.argv[3]]
    main()
""")


@pytest.mark.slow
def test_adversarial_a_killed_distributed_extraction_leaves_no_lock(tmp_path):
    """``mmx extract --dask-scheduler`` SIGKILLed while its tasks run on dask worker processes: the
    writer lock was its own (the workers never hold or inherit it), so a rerun at once is not
    refused, and it finishes the store with every item extracted."""
    from distributed import LocalCluster

    from mmx.cache.store.locks import WRITER_LOCK

    man = _manifest(tmp_path, random_jpegs(tmp_path / "img", 40))
    cache = tmp_path / "cache"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        proc = subprocess.Popen([sys.executable, "-c", _DASK_EXTRACT, str(man), str(cache), cluster.scheduler_address],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            for _ in range(1200):  # until a shard is done: tasks are running on the workers
                stores = list_stores(cache) if cache.exists() else []
                if stores and stores[0].complete_shards():
                    break
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                import time

                time.sleep(0.1)
            (store,) = list_stores(cache)
            assert "mmx extract, pid" in (store.path / WRITER_LOCK).read_text()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert len(store.complete_shards()) < store.n_shards  # killed mid-way
        r = CliRunner().invoke(main, ["extract", str(man), "--modality", "image", "--cache", str(cache), "--dataset",
                                      "d", "--shard-size", "2", "--no-progress", "--set", "image_size=64",
                                      "--dask-scheduler", cluster.scheduler_address])
    assert r.exit_code == 0 and "being written by another process" not in r.output, r.output
    (store,) = list_stores(cache)
    assert len(store.complete_shards()) == store.n_shards
    assert (np.asarray(store._group["status"][:]) == STATUS_OK).all()
