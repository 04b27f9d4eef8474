"""mmx extract end to end: statuses for broken files, store keys, kill-and-resume, dask."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cache.store import STATUS_FAILED, STATUS_OK, list_stores, open_store
from mmx.extract.config import ExtractConfig
from make_media import random_jpegs  # tests/make_media.py
from mmx.pipeline.cli import main



def _manifest(tmp_path, rows, name="m.csv"):
    import pandas as pd

    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _arrays(store):
    g = store._group
    out = {k: np.asarray(g[k][:]) for k in ("pooled", "status", "token_length")}
    for k in range(store.n_shards):
        out[f"tokens/{k}"] = np.asarray(g[f"tokens/{k:06d}"][:])
    return out


def test_cli_extracts_every_modality_with_failures_as_statuses(tmp_path, shared_media):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "trunc.jpg").write_bytes((shared_media / "imagebind/dog_image.jpg").read_bytes()[:300])
    (bad / "empty.wav").write_bytes(b"")
    (bad / "noise.mp4").write_bytes(b"\x00" * 100)
    M = shared_media
    rows = [
        dict(id="i0", modality="image", uri=str(M / "imagebind/dog_image.jpg"), text="", label="dog", split="train"),
        dict(id="i1", modality="image", uri=str(bad / "empty.jpg"), text="", label="dog", split="train"),
        dict(id="i2", modality="image", uri=str(bad / "trunc.jpg"), text="", label="dog", split="test"),
        dict(id="a0", modality="audio", uri=str(M / "imagebind/car_audio.wav"), text="", label="car", split="train"),
        dict(id="a1", modality="audio", uri=str(bad / "empty.wav"), text="", label="car", split="train"),
        dict(id="v0", modality="video", uri=str(M / "imagebind/dog_audio.wav"), text="", label="dog", split="train"),
        dict(id="v1", modality="video", uri=str(bad / "noise.mp4"), text="", label="dog", split="train"),
        dict(id="t0", modality="text", uri="", text="A dog.", label="dog", split="train"),
        dict(id="t1", modality="text", uri=str(bad / "missing.txt"), text="", label="car", split="test"),
        dict(id="i3", modality="image", uri="https://example.org/x.jpg", text="", label="dog", split="test"),
    ]
    man = _manifest(tmp_path, rows)
    cache = tmp_path / "cache"
    runner = CliRunner()
    expect = {"image": (1, 3), "audio": (1, 1), "video": (0, 2), "text": (1, 1)}
    for modality, (ok, failed) in expect.items():
        r = runner.invoke(main, ["extract", str(man), "--modality", modality, "--cache", str(cache), "--dataset", "d",
                                 "--workers", "0", "--no-progress", "--allow-root", str(tmp_path), "--allow-root", str(M)])
        assert r.exit_code == (0 if ok else 1), r.output  # every item failed: nothing usable, exit 1
        assert f"{ok} ok, {failed} failed" in r.output
        assert r.output.count("failed: ") == failed  # one line per failed id, with its message
    stores = {s.modality.value: s for s in list_stores(cache)}
    assert set(stores) == set(expect)
    img = stores["image"]
    assert list(img._group["status"][:]) == [STATUS_OK, STATUS_FAILED, STATUS_FAILED, STATUS_FAILED]
    assert np.all(np.asarray(img._group["pooled"][1:]) == 0) and list(img._group["token_length"][:]) == [1, 0, 0, 0]
    errors = img.shard_marker(0)["errors"]
    assert "empty file" in errors["i1"] and set(errors) == {"i1", "i2", "i3"}
    assert "run 'mmx fetch' first" in errors["i3"]
    assert "wrong_type: wav content where video was expected" in stores["video"].shard_marker(0)["errors"]["v0"]
    assert stores["image"].backbone["name"] == "efficientnet-lite0" and not img.verify()
    # the failed ids and messages, outside the shard markers too
    assert img.failures() == errors and img.info()["failed_items"] == errors
    r = runner.invoke(main, ["cache", "ls", "--failed", "--cache", str(cache)])
    assert r.exit_code == 0 and "d/image/efficientnet-lite0  i1  " in r.output and "empty file" in r.output
    assert "7 failed item(s) in 4 store(s)" in r.output
    r = runner.invoke(main, ["cache", "info", str(img.path), "--json"])
    assert '"i3": ' in r.output and "run 'mmx fetch' first" in r.output
    # log-mel in dB has an arbitrary scale, and the store says so (outside the key)
    assert stores["audio"].meta["scale"]["arbitrary"] and stores["audio"].info()["scale"]["unit"] == "speech_embedding output"
    assert "scale" not in img.meta and "scale" not in stores["audio"].spec().as_dict()
    # a rerun finds every shard complete and writes nothing
    r = runner.invoke(main, ["extract", str(man), "--modality", "image", "--cache", str(cache), "--dataset", "d", "--workers", "0", "--no-progress"])
    assert "0 shard(s) written, 1 already complete" in r.output


def test_cli_errors_and_list(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["extract", "--list"])
    assert r.exit_code == 0 and "efficientnet-lite0" in r.output and "MoViNet" in r.output
    man = _manifest(tmp_path, [dict(id="t0", modality="text", uri="", text="hi", split="train")])
    r = runner.invoke(main, ["extract", str(man), "--modality", "image", "--cache", str(tmp_path / "c"), "--dataset", "d"])
    assert r.exit_code != 0 and "no image items" in r.output
    r = runner.invoke(main, ["extract", str(man), "--modality", "text", "--backbone", "logmel", "--cache", "c", "--dataset", "d"])
    assert r.exit_code != 0 and "extracts audio, not text" in r.output
    r = runner.invoke(main, ["extract", str(man), "--modality", "text"])
    assert r.exit_code != 0 and "Missing option '--dataset'" in r.output and "--cache" not in r.output
    import torch

    if not torch.cuda.is_available():
        r = runner.invoke(main, ["extract", str(man), "--modality", "text", "--device", "cuda", "--cache", "c", "--dataset", "d"])
        assert r.exit_code != 0 and "CUDA is not available" in r.output
    r = runner.invoke(main, ["extract", str(man), "--modality", "text", "--backbone", "bow", "--set", "nope=1", "--cache", "c", "--dataset", "d"])
    assert r.exit_code != 0 and "unknown option(s) nope" in r.output


def test_cli_cache_root_defaults_to_env_then_dot_folder(tmp_path, monkeypatch):
    """README: the cache root is --cache, else $MMX_CACHE, else ./.mmx-cache."""
    man = _manifest(tmp_path, [dict(id="t0", modality="text", uri="", text="a dog", split="train")])
    args = ["extract", str(man), "--modality", "text", "--backbone", "bow", "--dataset", "d", "--workers", "0", "--no-progress"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMX_CACHE", raising=False)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert [s.dataset for s in list_stores(tmp_path / ".mmx-cache")] == ["d"]
    monkeypatch.setenv("MMX_CACHE", str(tmp_path / "env-cache"))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert [s.dataset for s in list_stores(tmp_path / "env-cache")] == ["d"]
    r = CliRunner().invoke(main, args + ["--cache", str(tmp_path / "flag-cache")])
    assert r.exit_code == 0 and len(list_stores(tmp_path / "flag-cache")) == 1


def test_bow_vocabulary_from_train_split_and_key_changes(tmp_path):
    from mmx.extract.runner import extract

    rows = [dict(id=f"t{i}", modality="text", uri="", text=t, split=s) for i, (t, s) in
            enumerate([("a red dog", "train"), ("a blue car", "train"), ("zebra crossing", "test")])]
    man = _manifest(tmp_path, rows)
    s1 = extract(str(man), "text", str(tmp_path / "c"), "d", ExtractConfig(backbone="bow", workers=0))
    store = open_store(s1["store"])
    vocab = store.meta["preprocessing"]["vocabulary"]
    assert vocab == ["a", "blue", "car", "dog", "red"] and store.dim == 5  # no "zebra": test split
    pooled = np.asarray(store._group["pooled"][:], np.float32)
    assert pooled[0].tolist() == [1, 0, 0, 1, 1] and pooled[2].sum() == 0
    s2 = extract(str(man), "text", str(tmp_path / "c"), "d", ExtractConfig(backbone="bow", options={"max_features": 2}, workers=0))
    assert s2["store"] != s1["store"]  # a changed preprocessing config is a different store


def test_changed_option_writes_another_store(tmp_path, shared_media):
    from mmx.extract.runner import extract

    man = _manifest(tmp_path, [dict(id="a0", modality="audio", uri=str(shared_media / "imagebind/car_audio.wav"), text="")])
    roots = (str(shared_media),)
    s1 = extract(str(man), "audio", str(tmp_path / "c"), "d", ExtractConfig(workers=0, allowed_roots=roots))
    half = ExtractConfig(options={"token_seconds": 0.5}, workers=0, allowed_roots=roots)
    s2 = extract(str(man), "audio", str(tmp_path / "c"), "d", half)
    assert s1["store"] != s2["store"]
    assert open_store(s2["store"]).meta["backbone"]["token_rate"] == "2 per second"
    assert int(open_store(s2["store"])._group["token_length"][0]) == 10  # 5 s at 2 tokens per second


_RESUME_SCRIPT = textwrap.dedent("""
    import sys, time
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import extract
    delay = float(sys.argv[4])
    cfg = ExtractConfig(shard_size=2, batch_size=2, workers=int(sys.argv[3]), options={"image_size": 64})
    extract(sys.argv[1], "image", sys.argv[2], "d", cfg, on_shard=lambda k, s: time.sleep(delay))
""")


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    paths = random_jpegs(tmp_path / "img", 12)
    man = _manifest(tmp_path, [dict(id=p.stem, modality="image", uri=str(p), text="") for p in paths])
    script = tmp_path / "run.py"
    script.write_text(_RESUME_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(man), str(killed), "1", "0.5"], env=env)
    markers = lambda: list(killed.glob("d/image/*.zarr/_complete/*.json"))  # noqa: E731
    deadline = time.monotonic() + 120
    while len(markers()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(markers())
    assert 2 <= done_at_kill < 6, "the run should have been killed part-way"
    # resume in-process, then an uninterrupted run for reference
    from mmx.extract.runner import extract

    small = ExtractConfig(shard_size=2, batch_size=2, workers=0, options={"image_size": 64})
    resumed = extract(str(man), "image", str(killed), "d", small)
    assert resumed["skipped"] == done_at_kill and resumed["written"] == 6 - done_at_kill
    clean = extract(str(man), "image", str(tmp_path / "clean"), "d", dataclasses.replace(small, workers=1))
    a, b = _arrays(open_store(resumed["store"])), _arrays(open_store(clean["store"]))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert (a["status"] == STATUS_OK).all()


def test_dask_matches_single_process(tmp_path):
    from distributed import Client, LocalCluster

    from mmx.extract.runner import extract

    paths = random_jpegs(tmp_path / "img", 6, seed=1)
    rows = [dict(id=p.stem, modality="image", uri=str(p), text="") for p in paths]
    rows.append(dict(id="broken", modality="image", uri=str(tmp_path / "absent.jpg"), text=""))
    man = _manifest(tmp_path, rows)
    kw = dict(shard_size=2, batch_size=2, options={"image_size": 64})
    single = extract(str(man), "image", str(tmp_path / "one"), "d", ExtractConfig(workers=0, **kw))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        dist = extract(str(man), "image", str(tmp_path / "dask"), "d", ExtractConfig(dask_scheduler=client, **kw))
        again = extract(str(man), "image", str(tmp_path / "dask"), "d", ExtractConfig(dask_scheduler=client, **kw))
    assert dist["written"] == 4 and dist["failed"] == 1 and again["written"] == 0 and again["skipped"] == 4
    a, b = _arrays(open_store(single["store"])), _arrays(open_store(dist["store"]))
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    from mmx.extract import distributed

    assert len(distributed._MODELS) == 1  # the worker loaded the backbone once for 4 tasks


@pytest.mark.slow
def test_cli_with_a_dask_scheduler_address_and_worker_processes(tmp_path):
    from distributed import LocalCluster

    paths = random_jpegs(tmp_path / "img", 4, seed=2)
    man = _manifest(tmp_path, [dict(id=p.stem, modality="image", uri=str(p), text="") for p in paths])
    args = ["extract", str(man), "--modality", "image", "--dataset", "d", "--shard-size", "2", "--set", "image_size=64", "--no-progress"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        r = CliRunner().invoke(main, args + ["--cache", str(tmp_path / "dask"), "--dask-scheduler", cluster.scheduler_address])
    assert r.exit_code == 0, r.output
    import torch

    # dask's nanny starts workers with one intra-op thread (OMP_NUM_THREADS=1); CPU kernels
    # reduce in a thread-count-dependent order, so the reference run uses one thread too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r2 = CliRunner().invoke(main, args + ["--cache", str(tmp_path / "one"), "--workers", "0"])
    finally:
        torch.set_num_threads(threads)
    a = _arrays(list_stores(tmp_path / "dask")[0])
    b = _arrays(list_stores(tmp_path / "one")[0])
    assert r2.exit_code == 0
    for k in a:
        assert np.array_equal(a[k], b[k]), (k, np.abs(a[k].astype(np.float32) - b[k].astype(np.float32)).max())


def test_progress_counts_items_batch_by_batch(tmp_path, monkeypatch):
    """The bar counts items batch by batch, not shards: a store of long videos would sit at 0/3 for many minutes."""
    from mmx.extract import runner as runner_mod

    paths = random_jpegs(tmp_path / "img", 5)
    rows = [dict(id=p.stem, modality="image", uri=str(p), text="") for p in paths]
    rows.append(dict(id="gone", modality="image", uri=str(tmp_path / "absent.jpg"), text=""))
    man = _manifest(tmp_path, rows)
    seen = {}

    def fake_progress(total, enabled):
        seen["total"], seen["updates"] = total, []
        return seen["updates"].append

    monkeypatch.setattr(runner_mod, "_progress", fake_progress)
    cfg = ExtractConfig(shard_size=4, batch_size=2, workers=0, options={"image_size": 64}, progress=True)
    summary = runner_mod.extract(str(man), "image", str(tmp_path / "c"), "d", cfg)
    assert seen["total"] == 6 and sum(seen["updates"]) == 6 and len(seen["updates"]) == 3  # 3 batches, 2 shards
    assert summary["failed"] == 1 and list(summary["errors"]) == ["gone"] and summary["errors"]["gone"]
