"""Small data trains: batches within the train split, epochs of a few steps, val derived per class,
a modality without val items left out of the monitor, chance levels for the relevance in use."""

import json

import numpy as np
import pytest

from mmx.cache.modality import Modality
from mmx.cache.store import StoreSpec, create_store, ids_digest
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train.checks import chance_recall, hit_chance, small_holdout
from mmx.train.config import TrainConfig
from mmx.train.data import Holdout
from mmx.train.loop import train


def _store(root, modality, labels, splits, dim=8, seed=0):
    n = len(labels)
    ids = [f"{modality}-{i}" for i in range(n)]
    spec = StoreSpec("small", Modality.parse(modality), {"name": "bb", "dim": dim}, {}, ids_digest(ids))
    store = create_store(root, spec, ids, labels=labels, splits=splits, shard_size=max(n, 1), tokens=False)
    rng = np.random.default_rng(seed)
    centres = {c: rng.normal(size=dim) for c in sorted(set(labels))}
    store.write_shard(0, np.stack([centres[c] + 0.1 * rng.normal(size=dim) for c in labels]).astype(np.float32))


def _cfg(root, tmp_path, **kw):
    base = dict(strategy="joint", dataset="small", cache=str(root), modalities=["text", "image", "video"], epochs=2,
                batch_size=64, out=str(tmp_path / "runs"), device="cpu", threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("n, r, k", [(20, 2, 10), (50, 5, 10), (7, 3, 2), (12, 1, 1), (30, 10, 5)])
def test_hit_chance_matches_random_rankings(n, r, k):
    rng = np.random.default_rng(0)
    trials = 20000
    # a random ranking's top k: the first k of a permutation; relevant items are 0..r-1
    hits = (rng.random((trials, n)).argsort(1)[:, :k] < r).any(1).mean()
    assert abs(hit_chance(n, r, k) - hits) < 4 * np.sqrt(hits * (1 - hits) / trials) + 1e-3


def test_class_relevance_chance_is_high_on_ten_classes():
    # the digits val split: 10 classes, 5 text and 6 image items each; a random ranking
    # finds a same-class item in the top 10 of 60 most of the time, not 10/60 of the time
    text, image = np.repeat(np.arange(10), 5), np.repeat(np.arange(10), 6)
    chance = chance_recall(text, image, 10)
    assert 0.65 < chance < 0.75
    rng = np.random.default_rng(1)
    sims = rng.random((len(text), 4000, len(image))).argsort(2)[:, :, :10]  # random top-10 per query and trial
    mc = (image[sims] == text[:, None, None]).any(2).mean()
    assert abs(chance - mc) < 0.01
    # instance relevance (one relevant item): k / n
    assert chance_recall(np.arange(60), np.arange(60), 10) == pytest.approx(10 / 60)
    # a query whose class the gallery lacks is left out of the mean, as the evaluation does
    assert chance_recall([0, 1, 99], [0, 1], 1) == pytest.approx(0.5)


def test_small_val_warning_states_the_class_chance(tmp_path):
    labels = [str(c) for c in range(10) for _ in range(4)]  # 40 items: 4 relevant of 40, top 10
    for i, m in enumerate(("text", "image")):
        _store(tmp_path, m, labels, ["val"] * 40, seed=i)
    from mmx.train.data import load_train_data

    data = load_train_data(str(tmp_path), "small", [Modality.TEXT, Modality.IMAGE], ["val"])
    said = small_holdout(TrainConfig(holdout="val"), data.splits["val"])
    assert "chance Recall@10 is 0.70 (class relevance" in said, said


def test_derived_val_takes_one_item_of_every_class_with_two():
    labels = ["a", "a", "b", "b", "b", "c"]  # c has one item: it stays in train
    from mmx.train.data import stratified_pick

    class F:
        def __init__(self, labels):
            self.labels, self.groups, self.ids = labels, [""] * len(labels), [str(i) for i in range(len(labels))]

    picked = stratified_pick({Modality.TEXT: F(labels)}, {Modality.TEXT: np.ones(6, bool)}, 0.01, 0, 2)[Modality.TEXT]
    chosen = {labels[i] for i in np.flatnonzero(picked)}
    assert chosen == {"a", "b"} and picked.sum() == 2


@pytest.fixture()
def one_video_per_class(tmp_path):
    """text and image with 6 train items per class, video with one: no video item to spare for val."""
    root = tmp_path / "cache"
    classes = [str(c) for c in range(4)]
    for i, m in enumerate(("text", "image")):
        labels = [c for c in classes for _ in range(8)]
        _store(root, m, labels, (["train"] * 6 + ["test"] * 2) * 4, seed=i)
    _store(root, "video", classes + classes, ["train"] * 4 + ["test"] * 4, seed=5)
    return root


def test_a_modality_without_val_items_is_left_out_of_the_monitor(one_video_per_class, tmp_path):
    lines = []
    run = train(_cfg(one_video_per_class, tmp_path, monitor="mAP"), log=lines.append, warn=lambda s: None)
    said = [s for s in lines if "no val items" in s]
    assert len(said) == 1 and "video" in said[0] and "watches text, image" in said[0], lines
    epochs = [json.loads(x) for x in open(run / "metrics.jsonl") if '"epoch"' in x]
    assert all("recall/text->image@10" in e for e in epochs)
    assert not any(k.startswith("recall/video") or "->video" in k for e in epochs for k in e)
    splits = json.loads((run / "splits.json").read_text())
    assert "video" in json.dumps(splits)
    # video still trained and was embedded for every split that has it
    assert (run / "embeddings").exists()


def test_a_modality_without_val_items_for_a_strategy_that_cannot_watch_a_subset(one_video_per_class, tmp_path):
    with pytest.raises(ValueError, match="no val items could be derived for video.*holdout=test"):
        train(_cfg(one_video_per_class, tmp_path, strategy="cvs", embed_dim=8), log=lambda s: None, warn=lambda s: None)


def test_only_one_modality_with_val_items_is_refused(tmp_path):
    root = tmp_path / "cache"
    _store(root, "text", [str(c) for c in range(4) for _ in range(6)], ["train"] * 24)
    _store(root, "image", [str(c) for c in range(4)], ["train"] * 4, seed=1)
    with pytest.raises(ValueError, match="no val items could be derived for image.*--set holdout=test"):
        train(_cfg(root, tmp_path, modalities=["text", "image"]), log=lambda s: None, warn=lambda s: None)


@pytest.mark.parametrize("strategy, extra", [
    ("joint", {}), ("roundrobin", {}), ("cvs", {"embed_dim": 8}), ("stagewise", {"embed_dim": 8}),
])
def test_the_batch_never_exceeds_the_train_split_and_short_epochs_train_by_steps(tmp_path, strategy, extra):
    root = tmp_path / "cache"
    synthesize(root, SyntheticConfig(dataset="small", classes=4, items={"text": 40, "image": 40}, dims={"text": 8, "image": 8},
                                     tokens=None))
    cfg = _cfg(root, tmp_path, strategy=strategy, modalities=["text", "image"], batch_size=500, min_steps=6, **extra)
    run = train(cfg, log=lambda s: None, warn=lambda s: None)
    epochs = [json.loads(x) for x in open(run / "metrics.jsonl") if '"steps"' in x]
    train_items = json.loads((run / "splits.json").read_text())
    assert epochs and all(e["batch/items"] <= 40 for e in epochs), epochs
    assert all(e["steps"] >= 6 for e in epochs)
    assert train_items  # the split the batch was capped by is recorded


@pytest.mark.parametrize("strategy, extra", [("joint", {}), ("cvs", {"embed_dim": 8, "keep": "last"})])
def test_an_epochs_extra_passes_do_not_depend_on_the_epoch_count(tmp_path, strategy, extra):
    # the defaults study replays stopping rules on one long trajectory: epoch e of a run given
    # 5 epochs must be epoch e of a run given 3 (the extra passes of a short epoch once drew
    # as epoch + pass * epochs, so they did not)
    root = tmp_path / "cache"
    synthesize(root, SyntheticConfig(dataset="small", classes=4, items={"text": 40, "image": 40}, dims={"text": 8, "image": 8},
                                     tokens=None))
    logs = {}
    for epochs in (3, 5):
        cfg = _cfg(root, tmp_path, strategy=strategy, modalities=["text", "image"], batch_size=500, min_steps=4,
                   epochs=epochs, patience=10, name=f"{strategy}-{epochs}", **extra)
        run = train(cfg, log=lambda s: None, warn=lambda s: None)
        logs[epochs] = [json.loads(x) for x in open(run / "metrics.jsonl") if '"steps"' in x]
    assert all(e["steps"] >= 4 for e in logs[5]) and len(logs[5]) == 5
    keys = [k for k in logs[3][0] if k.startswith("loss")]
    assert keys
    for a, b in zip(logs[3], logs[5][:3]):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_epochs_above_the_draw_stride_are_refused():
    from mmx.train.config import MAX_EPOCHS, check_values

    assert check_values(TrainConfig(epochs=MAX_EPOCHS)) == []
    assert any("at most" in p for p in check_values(TrainConfig(epochs=MAX_EPOCHS + 1)))
