"""``mmx sweep``: selection on val only, a study that resumes, parallel and dask trials, the report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.pipeline.cli import main

# tiny runs: a trial is a second or two on one core
FAST = ["epochs=2", "embed_dim=16", "patience=2", "threads=1"]
SPACE = {"joint": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "tau": {"choices": [0.05, 0.1]},
                   "batch_size": {"choices": [8, 16]}, "weight_decay": None, "patience": None}}


def _cache(root: Path) -> Path:
    synthesize(root, SyntheticConfig(classes=6, items={"text": 60, "image": 60}, dims={"text": 8, "image": 12},
                                     tokens=None, noise=0.6, seed=3))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _cache(tmp_path_factory.mktemp("sweepcache"))


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    import yaml

    p = tmp_path_factory.mktemp("space") / "space.yaml"
    p.write_text(yaml.safe_dump(SPACE))
    return p


def _spec(folder, cache, space, **kw):
    from mmx.train.sweep import SweepSpec

    return SweepSpec(folder=str(folder), strategies=kw.pop("strategies", ["joint"]), dataset="synthetic", cache=str(cache),
                     trials=kw.pop("trials", 2), seeds=kw.pop("seeds", 0), space_file=str(space), sets=list(FAST),
                     device="cpu", **kw)


def _trials(folder, strategy="joint"):
    from mmx.train.sweep import open_study

    return open_study(Path(folder), strategy).get_trials(deepcopy=False)


def _permute_labels(cache: Path, split: str, seed: int = 0) -> None:
    """Shuffle the labels among the rows of ``split`` in every store (features stay): those rows'
    features now belong to other classes, as if the features had been permuted."""
    from mmx.cache.store import open_store

    for path in sorted(cache.rglob("*.zarr")):
        store = open_store(path)
        labels = np.asarray(store.column("label"), dtype=object).copy()
        rows = np.flatnonzero(np.asarray(store.column("split")) == split)
        labels[rows] = labels[np.random.default_rng(seed).permutation(rows)]
        store.rewrite_metadata({"label": list(labels)})


def test_selection_never_reads_test(tmp_path, space):
    """Permuting the test split's labels changes no val score and no chosen setting; permuting
    train's (val is a slice of train) does change the scores, so the check can fail."""
    import shutil

    from mmx.train.sweep import sweep

    base = _cache(tmp_path / "base")
    runs = {}
    for name, split in (("same", None), ("test", "test"), ("train", "train")):
        c = tmp_path / f"cache-{name}"
        shutil.copytree(base, c)
        if split:
            _permute_labels(c, split)
        sweep(_spec(tmp_path / f"sweep-{name}", c, space, trials=3), log=lambda s: None)
        runs[name] = [(t.params, t.value) for t in _trials(tmp_path / f"sweep-{name}")]
    assert runs["test"] == runs["same"]  # every setting drawn and every val score, to the bit
    assert [v for _, v in runs["train"]] != [v for _, v in runs["same"]]


def test_report_has_seeds_mean_sd_and_bootstrap_intervals(tmp_path, cache, space):
    from mmx.train.sweep import sweep

    space2 = tmp_path / "space.yaml"
    import yaml

    # cvs, not roundrobin: with two modalities roundrobin trains what joint does, and a difference of 0 proves little
    cvs = {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": {"choices": [8, 16]}, "epochs": {"choices": [2]},
           "weight_decay": None, "options.margins": None}
    space2.write_text(yaml.safe_dump({**SPACE, "cvs": cvs}))
    report = sweep(_spec(tmp_path / "s", cache, space2, strategies=["joint", "cvs"], trials=2, seeds=2),
                   log=lambda s: None)
    for s in ("joint", "cvs"):
        info = report["strategies"][s]
        assert info["trials"] == 2 and info["test"]["mAP"]["n"] == 2 and info["test"]["mAP"]["sd"] is not None
        best = max(_trials(tmp_path / "s", s), key=lambda t: t.value)
        assert info["params"] == best.params and info["val"] == best.value  # chosen on val
        assert len(info["runs"]) == 2 and all("seeds/seed-" in r for r in info["runs"])
    diffs = {d["metric"]: d for d in report["differences"]}
    assert set(diffs) == {"R@1", "R@10", "mAP"}
    d = diffs["mAP"]
    assert d["low"] <= d["diff"] <= d["high"] and d["noise"] == "queries and seeds"
    means = report["strategies"]
    assert d["diff"] == pytest.approx(means["cvs"]["test"]["mAP"]["mean"] - means["joint"]["test"]["mAP"]["mean"])
    assert abs(d["diff"]) > 1e-6  # two different strategies: the check above compares real numbers
    md = (tmp_path / "s" / "report.md").read_text()
    assert "±" in md and "95%" in md and json.loads((tmp_path / "s" / "report.json").read_text())["seeds"] == 2


def test_a_trial_left_running_is_queued_again_and_the_total_kept(tmp_path, cache, space):
    """In-process: a sweep of 1 trial, then a trial asked but never told (its process died), then a
    rerun asking 3 in all: the finished trial stays, the dead one's setting runs again, 3 complete."""
    from mmx.train.sweep import _check_folder, open_study, sweep  # noqa: F401
    from mmx.train.sweep_space import distributions, load_space_file, resolve_space

    folder = tmp_path / "s"
    sweep(_spec(folder, cache, space, trials=1), log=lambda s: None)
    first = _trials(folder)[0]
    dead = open_study(folder, "joint").ask(distributions(resolve_space("joint", load_space_file(str(space))["joint"])))
    said = []
    sweep(_spec(folder, cache, space, trials=3), log=said.append)
    after = _trials(folder)
    assert (after[0].params, after[0].value) == (first.params, first.value)
    assert after[dead.number].state.name == "FAIL" and after[dead.number].user_attrs["interrupted"]
    retry = [t for t in after if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in after) == 3
    assert any("cut off" in line for line in said)


def test_killed_sweep_resumes(tmp_path, cache, space):
    """A real kill (SIGKILL) mid-sweep; the rerun finishes the asked total and repeats no finished trial."""
    folder = tmp_path / "s"
    cmd = [sys.executable, "-m", "mmx.pipeline.cli", "sweep", "--strategy", "joint", "--dataset", "synthetic",
           "--cache", str(cache), "--trials", "3", "--seeds", "0", "--space", str(space), "--device", "cpu",
           "--out", str(folder)] + [a for s in FAST for a in ("--set", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (folder / "study.journal").exists() and sum(t.state.name == "COMPLETE" for t in _trials(folder)) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = {t.number: (t.params, t.value, t.state.name) for t in _trials(folder)}
    done = {n for n, (_, _, st) in before.items() if st == "COMPLETE"}
    assert 1 <= len(done) < 3
    stamps = {n: (folder / "joint" / "trials" / f"trial-{n:04d}" / "metrics.json").stat().st_mtime_ns for n in done}
    res = CliRunner().invoke(main, cmd[3:])
    assert res.exit_code == 0, res.output
    after = _trials(folder)
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == 3  # the asked total, not 3 more
    for n in done:  # kept as they were: same setting, same score, the run not retrained
        t = after[n]
        assert (t.params, t.value) == before[n][:2]
        assert (folder / "joint" / "trials" / f"trial-{n:04d}" / "metrics.json").stat().st_mtime_ns == stamps[n]
    cut = [n for n, (_, _, st) in before.items() if st == "RUNNING"]
    for n in cut:  # a trial the kill cut off is failed as interrupted and its setting tried again
        assert after[n].state.name == "FAIL" and after[n].user_attrs.get("interrupted")
        if set(before[n][0]) == set(complete[0].params):  # not cut off while its setting was drawn
            assert any(t.params == before[n][0] and t.user_attrs.get("retry_of") == n for t in complete)


def test_a_trial_cut_off_while_its_setting_was_drawn_is_replaced_not_retried(tmp_path):
    """``study.ask`` writes each drawn value on its own, so a kill can leave a running trial with
    part of its setting: that one is failed as interrupted and not queued again (a setting made
    of its part and new draws would not be the trial it claims to retry); a whole one is."""
    from optuna.trial import TrialState

    from mmx.train.sweep import _finished, _recover, open_study
    from mmx.train.sweep_space import distributions, resolve_space

    dists = distributions(resolve_space("joint", SPACE["joint"]))
    study = open_study(tmp_path, "joint")
    whole = study.ask(dists)
    part = study.ask()
    part.suggest_float("lr", 1e-3, 1e-2, log=True)
    said = []
    _recover(study, said.append, dists)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs.get("interrupted") for t in trials[:2]) and _finished(study) == 0
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"retry_of": whole.number}
    assert waiting[0].system_attrs["fixed_params"] == whole.params
    assert f"trial {part.number} was cut off while its setting was drawn" in said[1]


def test_parallel_jobs_and_a_dask_cluster_run_the_trials(tmp_path, cache, space):
    from distributed import Client, LocalCluster

    from mmx.train.sweep import sweep

    sweep(_spec(tmp_path / "jobs", cache, space, trials=2, jobs=2), log=lambda s: None)
    trials = _trials(tmp_path / "jobs")
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        sweep(_spec(tmp_path / "dask", cache, space, trials=2, dask_scheduler=client), log=lambda s: None)
        ran = [k for k in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))]
    assert sum(t.state.name == "COMPLETE" for t in _trials(tmp_path / "dask")) == 2
    assert any("mmx-sweep" in k for k in ran)


def test_the_sweep_record_reads_back_with_default_spaces(tmp_path):
    """Default spaces share range dicts between strategies: the record must still read back (no YAML aliases)."""
    from mmx.train.sweep import SweepSpec, _check_folder

    spec = SweepSpec(folder=str(tmp_path), strategies=["joint", "roundrobin", "cvs", "mcvs"], dataset="synthetic")
    _check_folder(spec, tmp_path)
    _check_folder(spec, tmp_path)  # a rerun reads the record
    spec.objective = "R@1"
    with pytest.raises(ValueError, match="another objective"):
        _check_folder(spec, tmp_path)


def test_search_spaces_and_bad_input(tmp_path, cache, space):
    import yaml

    from mmx.train.sweep_space import DEFAULT_SPACES, config_values, resolve_space
    from mmx.train.strategies import STRATEGIES

    for s in STRATEGIES:  # every strategy has a default space that validates
        assert resolve_space(s) and s in DEFAULT_SPACES
    assert config_values("cvs", {"options.margins": 0.5, "lr": 0.01}) == {"options": {"margins": [0.5] * 3}, "lr": 0.01}
    assert "tau" not in resolve_space("joint", {"tau": None})
    with pytest.raises(ValueError, match="unknown key 'tua'"):
        resolve_space("joint", {"tua": {"low": 0.1, "high": 0.2}})
    with pytest.raises(ValueError, match="low < high"):
        resolve_space("joint", {"lr": {"low": 0.1, "high": 0.01}})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"jiont": {}}))
    runner = CliRunner()
    args = ["sweep", "--strategy", "joint", "--dataset", "synthetic", "--cache", str(cache), "--trials", "1",
            "--seeds", "0", "--out", str(tmp_path / "s")] + [a for s in FAST for a in ("--set", s)]
    res = runner.invoke(main, args + ["--space", str(bad)])
    assert res.exit_code == 1 and "unknown strategy 'jiont'" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, args + ["--space", str(space), "--set", "holdout=test"])
    assert res.exit_code == 1 and "selects on val" in res.output
    res = runner.invoke(main, args + ["--space", str(space), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, args + ["--space", str(space), "--objective", "R@1"])  # same folder, other objective
    assert res.exit_code == 1 and "another objective" in res.output
