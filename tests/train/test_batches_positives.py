"""The batch holds the asked number of items; same-class items as positives."""

import math

import numpy as np
import pytest
import torch

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.eval.runs import read_jsonl
from mmx.train.config import TrainConfig
from mmx.train.losses import info_nce, multi_positive_nce, pairwise_info_nce
from mmx.train.loop import train
from mmx.train.samplers import ClassAlignedSampler
from mmx.train.strategies import get_strategy


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ten")
    synthesize(root, SyntheticConfig(classes=10, items={"text": 300, "image": 200}, dims={"text": 12, "image": 16},
                                     tokens=None, noise=0.6))
    return root


@pytest.mark.parametrize("per_class", [1, 2])
def test_few_classes_give_p_classes_by_k_items_and_the_full_batch(per_class):
    classes = {"text": np.arange(1000) % 10, "image": np.arange(400) % 10}
    s = ClassAlignedSampler(classes, batch_size=128, seed=0, per_class=per_class)
    assert len(s) == math.ceil(1000 / 128)  # one pass over the largest modality, in full batches
    for rows, chosen in s:
        assert sorted(chosen.tolist()) == list(range(10))  # every class, once
        for m, r in rows.items():
            assert len(r) == 128  # the batch size asked for, not 10 (or 20) items
            counts = np.bincount(classes[m][r], minlength=10)
            assert sorted(counts.tolist()) == [12] * 2 + [13] * 8
            # rows of all modalities line up class by class
            assert (classes[m][r] == classes["text"][rows["text"]]).all()
    assert s.composition == {"batch/items": 128, "batch/classes": 10, "batch/per_class_min": 12, "batch/per_class_max": 13}


def test_many_classes_keep_paper_000s_distinct_classes_and_cvs_its_pairs():
    classes = {"text": np.arange(2000) % 200, "image": np.arange(2000) % 200}
    rows, chosen = next(iter(ClassAlignedSampler(classes, batch_size=128, seed=0)))
    assert len(set(chosen.tolist())) == 128 and len(rows["text"]) == 128  # B distinct classes, one item each
    rows, chosen = next(iter(ClassAlignedSampler(classes, batch_size=128, seed=0, per_class=2)))
    assert len(chosen) == 64 and np.bincount(classes["image"][rows["image"]]).max() == 2  # 64 classes x 2


@pytest.mark.parametrize("strategy, options", [("joint", {}), ("roundrobin", {}), ("cvs", {})])
def test_the_batch_composition_is_logged_per_epoch(ten_classes, tmp_path, strategy, options):
    cfg = TrainConfig(strategy=strategy, cache=str(ten_classes), modalities=["text", "image"], out=str(tmp_path), epochs=1,
                      batch_size=32, embed_dim=16, options=options)
    run = train(cfg)
    line = read_jsonl(run / "metrics.jsonl")[1]
    assert (line["batch/items"], line["batch/classes"], line["batch/per_class_min"], line["batch/per_class_max"]) == (32, 10, 3, 4)


def _hand_supcon(x, y, cx, cy, tau):
    """Khosla et al. eq. 2 (L_out), x -> y, written out per anchor with plain floats."""
    x = [v / np.linalg.norm(v) for v in x]
    y = [v / np.linalg.norm(v) for v in y]
    total, anchors = 0.0, 0
    for i, xi in enumerate(x):
        denom = sum(math.exp(float(xi @ yj) / tau) for yj in y)
        pos = [j for j in range(len(y)) if cy[j] == cx[i]]
        if not pos:
            continue
        total += -sum(math.log(math.exp(float(xi @ y[p]) / tau) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


def test_multi_positive_infonce_matches_hand_computed_values():
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    y = np.array([[0.8, 0.6], [1.0, 0.0], [-0.6, 0.8]])
    cx, cy = [0, 0, 1], [0, 1, 0]
    tau = 0.5
    emb = {"a": torch.tensor(x, dtype=torch.float32), "b": torch.tensor(y, dtype=torch.float32)}
    cls = {"a": torch.tensor(cx), "b": torch.tensor(cy)}
    out = pairwise_info_nce(emb, tau, classes=cls)
    assert float(out["loss/a-b"]) == pytest.approx(_hand_supcon(x, y, cx, cy, tau), rel=1e-5)
    assert float(out["loss/b-a"]) == pytest.approx(_hand_supcon(y, x, cy, cx, tau), rel=1e-5)
    # worked by hand for anchor x0 = (1, 0): sims to y are 0.8, 1.0, -0.6; positives y0 and y2 (class 0)
    lse = math.log(math.exp(1.6) + math.exp(2.0) + math.exp(-1.2))
    assert float(multi_positive_nce(torch.tensor([[1.6, 2.0, -1.2]]), torch.tensor([[True, False, True]]))) == \
        pytest.approx(-((1.6 - lse) + (-1.2 - lse)) / 2, rel=1e-6)
    # one class per row: exactly paper 000's InfoNCE
    distinct = {"a": torch.arange(3), "b": torch.arange(3)}
    assert float(pairwise_info_nce(emb, tau, classes=distinct)["loss/a-b"]) == pytest.approx(float(info_nce(emb["a"], emb["b"], tau)), rel=1e-6)


def test_class_positives_train_and_are_refused_where_they_mean_nothing(ten_classes, tmp_path):
    cfg = TrainConfig(strategy="joint", cache=str(ten_classes), modalities=["text", "image"], out=str(tmp_path), epochs=4,
                      patience=4, batch_size=32, embed_dim=16, lr=3e-3, options={"positives": "class"})
    lines = read_jsonl(train(cfg) / "metrics.jsonl")
    assert lines[-1]["recall/mean@1"] > lines[0]["recall/mean@1"] + 0.2  # it learns (10 classes: chance 0.1)
    bad = TrainConfig(strategy="roundrobin", alignment="instance", options={"positives": "class"})
    assert any("needs class-aligned" in p for p in get_strategy("roundrobin").check(bad))
    assert any("must be pair" in p for p in get_strategy("joint").check(TrainConfig(options={"positives": "items"})))
