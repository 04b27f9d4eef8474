"""The held-out split, the monitored signal, and what the test split may not do."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from mmx.cache import list_stores
from mmx.cache.modality import Modality
from mmx.cache.store import create_store
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.eval.runs import load_embeddings, read_jsonl
from mmx.train import checkpoint
from mmx.train.config import TrainConfig
from mmx.train.data import Holdout, load_train_data
from mmx.train.loop import train
from mmx.train.monitor import parse_monitor

MODS = ["text", "image", "audio"]
DIMS = {"text": 16, "image": 24, "audio": 8}


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    synthesize(root, SyntheticConfig(classes=10, items={"text": 200, "image": 150, "audio": 100}, dims=DIMS, tokens=None, noise=0.6))
    return root


@pytest.fixture(scope="module")
def instance_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("inst")
    synthesize(root, SyntheticConfig(classes=10, alignment="instance", missing=0.2, items={m: 200 for m in MODS},
                                     dims=DIMS, tokens=None, noise=0.5))
    return root


def resplit(src, dst, fn):
    """A copy of every store of cache ``src`` under ``dst`` with ``fn(modality, splits) -> splits``."""
    for st in list_stores(src):
        f = st.load()
        new = create_store(dst, st.spec(), list(f.ids), labels=list(f.labels), groups=list(f.groups),
                           splits=list(fn(st.modality.value, np.asarray(f.splits))), shard_size=len(f.ids), tokens=False)
        new.write_shard(0, f.pooled.numpy())
    return dst


def cfg_for(cache, tmp_path, **kw):
    base = dict(strategy="joint", cache=str(cache), modalities=MODS, out=str(tmp_path / "runs"), epochs=6, patience=2,
                batch_size=16, lr=3e-3, embed_dim=16)
    return TrainConfig(**{**base, **kw})


def load(cache, cfg):
    return load_train_data(str(cache), "synthetic", Modality.parse_list(cfg.modalities), [],
                           holdout=Holdout(cfg.holdout, cfg.val_fraction, cfg.test_fraction, cfg.seed))


def test_default_holdout_is_a_seeded_class_stratified_slice_of_train_recorded_in_the_run(class_cache, tmp_path):
    cfg = cfg_for(class_cache, tmp_path)
    assert cfg.holdout == "val"
    run = train(cfg)
    rec = json.loads((run / "splits.json").read_text())["val"]
    assert rec["source"] == "train slice" and rec["seed"] == 0 and rec["fraction"] == 0.1
    stored = {st.modality.value: st.load() for st in list_stores(class_cache)}
    for m in MODS:
        f = stored[m]
        train_ids = set(f.ids[f.splits == "train"])
        val = set(rec["ids"][m])
        assert val and val <= train_ids  # carved out of train, never out of test
        saved = load_embeddings(run, "train")[m]
        assert not val & set(saved["id"])  # and no longer in train
        assert set(load_embeddings(run, "val")[m]["id"]) == val
        # stratified: every class keeps items on both sides, about 10% of each in val
        labels = dict(zip(f.ids, f.labels))
        per_class = {c: sum(labels[i] == c for i in val) for c in set(f.labels)}
        n_train = len(train_ids) // 10
        assert set(per_class.values()) == {max(1, round(0.1 * n_train))}
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["holdout"]["split"] == "val" and summary["holdout"]["source"] == "train slice"
    assert "loss_val" in read_jsonl(run / "metrics.jsonl")[1]


def test_slice_depends_on_the_seed_only_and_instance_data_splits_by_group(class_cache, instance_cache):
    a = load(class_cache, TrainConfig(modalities=MODS, seed=1))
    b = load(class_cache, TrainConfig(modalities=MODS, seed=1))
    c = load(class_cache, TrainConfig(modalities=MODS, seed=2))
    ids = lambda d: {m: set(f.ids) for m, f in d.splits["val"].features.items()}  # noqa: E731
    assert ids(a) == ids(b) != ids(c)
    d = load(instance_cache, TrainConfig(modalities=MODS, alignment="instance"))
    groups = {s: set().union(*(set(f.groups) for f in d.splits[s].features.values())) for s in ("train", "val", "test")}
    assert groups["val"] and not groups["val"] & groups["train"] and not groups["val"] & groups["test"]
    # every group of val has all of its items there: a clip never straddles train and val
    for m, f in d.splits["train"].features.items():
        assert not set(f.groups) & groups["val"]


def test_store_val_is_used_when_every_modality_has_it_and_a_partial_one_is_refused(class_cache, tmp_path):
    def some_train_to_val(m, s):
        s = s.copy()
        s[np.flatnonzero(s == "train")[::5]] = "val"
        return s

    full = resplit(class_cache, tmp_path / "full", some_train_to_val)
    data = load(full, TrainConfig(modalities=MODS))
    assert data.split_info["val"] == {"source": "store"}
    stored = {st.modality.value: st.load() for st in list_stores(full)}
    for m, f in data.splits["val"].features.items():
        assert set(f.ids) == set(stored[m.value].ids[stored[m.value].splits == "val"])
    partial = resplit(class_cache, tmp_path / "partial", lambda m, s: some_train_to_val(m, s) if m == "text" else s)
    with pytest.raises(ValueError, match="none for audio, image.*holdout=test"):
        load(partial, TrainConfig(modalities=MODS))


def test_a_store_without_split_gets_a_recorded_stratified_test_and_val(class_cache, tmp_path):
    nosplit = resplit(class_cache, tmp_path / "nosplit", lambda m, s: np.full(len(s), ""))
    lines = []
    run = train(cfg_for(nosplit, tmp_path, epochs=2), log=lines.append)
    rec = json.loads((run / "splits.json").read_text())
    assert rec["test"]["source"].startswith("derived") and rec["test"]["fraction"] == 0.2
    assert any(line.startswith("test split: derived") for line in lines)  # said, not silent
    for m in MODS:
        test, val = set(rec["test"]["ids"][m]), set(rec["val"]["ids"][m])
        assert test and val and not test & val
        assert set(load_embeddings(run, "test")[m]["id"]) == test


def permuted_test(data, seed=0):
    """``data`` with every test feature row replaced by another's: any use of test data shows."""
    g = torch.Generator().manual_seed(seed)
    for f in data.splits["test"].features.values():
        f.pooled = f.pooled[torch.randperm(len(f.pooled), generator=g)] * 3.0
    return data


@pytest.mark.parametrize("monitor", ["loss", "mAP@50", "R@5"])
def test_selection_does_not_depend_on_test_data(class_cache, tmp_path, monitor):
    cfg = cfg_for(class_cache, tmp_path, monitor=monitor, epochs=5, patience=1)
    runs = [train(dataclasses.replace(cfg, name=f"r{k}"), data=d)
            for k, d in enumerate([load(class_cache, cfg), permuted_test(load(class_cache, cfg))])]
    drop = {"seconds"}
    lines = [[{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(run / "metrics.jsonl")] for run in runs]
    assert lines[0] == lines[1]  # every per-epoch figure, the monitored one included
    best = [json.loads((run / "metrics.json").read_text())["best_epoch"] for run in runs]
    assert best[0] == best[1]
    w = [checkpoint.load(run / checkpoint.BEST)["model"] for run in runs]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    if monitor != "loss":
        assert f"val/{monitor}" in lines[0][1]


def test_holdout_test_stays_available_and_does_see_the_test_split(class_cache, tmp_path):
    """The control for the test above: with ``holdout: test`` the same permutation changes the records."""
    cfg = cfg_for(class_cache, tmp_path, holdout="test", epochs=2)
    runs = [train(dataclasses.replace(cfg, name=f"r{k}"), data=d)
            for k, d in enumerate([load(class_cache, cfg), permuted_test(load(class_cache, cfg))])]
    losses = [[r["loss_test"] for r in read_jsonl(run / "metrics.jsonl")] for run in runs]
    assert losses[0] != losses[1]


def test_keep_last_trains_every_epoch_and_keeps_the_last_weights(class_cache, tmp_path):
    # a learning rate this high makes the held-out loss rise, which would stop a best-kept run early
    run = train(cfg_for(class_cache, tmp_path, keep="last", epochs=4, patience=1, lr=0.3))
    s = json.loads((run / "metrics.json").read_text())
    assert s["best_epoch"] == 4 and s["stop_reason"].startswith("fixed 4 epochs")
    ck = checkpoint.load(run / checkpoint.BEST)
    last = checkpoint.load(run / checkpoint.LAST)
    assert ck["epoch"] == 4 and all(torch.equal(ck["model"][k], last["model"][k]) for k in ck["model"])


def test_monitor_names_and_bad_protocol_settings():
    assert parse_monitor("loss") == (None, None)
    assert parse_monitor("mAP@50") == ("map@50/mean", 50)
    assert parse_monitor("mAP") == ("map/mean", None)
    assert parse_monitor("R@10") == ("recall/mean@10", None)
    with pytest.raises(ValueError, match="monitor must be"):
        parse_monitor("accuracy")
    with pytest.raises(ValueError) as exc:
        train(TrainConfig(modalities=MODS, holdout="train", monitor="mAP@0", keep="first", val_fraction=1.5))
    msg = str(exc.value)
    assert "holdout must be val or test" in msg and "monitor must be" in msg and "keep must be" in msg and "val_fraction" in msg


def test_a_modalitys_slice_does_not_change_when_another_modality_joins(class_cache):
    two = load(class_cache, TrainConfig(modalities=["text", "image"]))
    three = load(class_cache, TrainConfig(modalities=MODS))
    for m in (Modality.TEXT, Modality.IMAGE):
        assert list(two.splits["val"].features[m].ids) == list(three.splits["val"].features[m].ids)


def test_every_stage_of_a_fixed_epoch_run_keeps_its_last_epoch(class_cache, tmp_path):
    run = train(cfg_for(class_cache, tmp_path, strategy="rvs", keep="last", epochs=2, patience=1, lr=0.5,
                        options={"reference": "image"}))
    stages = [r for r in read_jsonl(run / "metrics.jsonl") if "stage_name" in r]
    assert len(stages) == 2 and all(r["best_epoch"] == 2 for r in stages)
