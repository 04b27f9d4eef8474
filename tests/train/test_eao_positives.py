"""eao's options.positives: class: same-class rows of a batch are positives in every term."""

import json
import math

import numpy as np
import pytest
import torch

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train.config import TrainConfig
from mmx.train.losses import combinatorial_loss
from mmx.train.loop import train
from mmx.train.strategies import get_strategy
from mmx.train.strategies.eao import CLASSES


def supcon(x, y, cx, cy, tau):
    """One direction of the multi-positive NCE with plain floats: per anchor, minus the mean
    log-softmax (over every column) of its same-class columns."""
    x = [v / np.linalg.norm(v) for v in x]
    y = [v / np.linalg.norm(v) for v in y]
    total = 0.0
    for i, xi in enumerate(x):
        logits = [float(xi @ yj) / tau for yj in y]
        lse = math.log(sum(math.exp(s) for s in logits))
        pos = [j for j in range(len(y)) if cy[j] == cx[i]]
        total += -sum(logits[j] - lse for j in pos) / len(pos)
    return total / len(x)


def test_class_positives_match_hand_computed_values_with_an_absent_row():
    t = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.2]])
    v = np.array([[0.8, 0.6], [1.0, 0.0], [-0.6, 0.8], [0.1, -1.0]])
    va = np.array([[0.5, 0.5], [0.9, -0.1], [0.0, 1.0], [-0.3, 0.7]])
    cls = [0, 0, 1, 1]
    embs = {("t",): torch.tensor(t, dtype=torch.float32), ("v",): torch.tensor(v, dtype=torch.float32),
            ("v", "a"): torch.tensor(va, dtype=torch.float32)}
    audio = np.array([True, True, True, False])  # row 3 has no audio: out of the t-va term altogether
    present = {("t",): np.ones(4, bool), ("v",): np.ones(4, bool), ("v", "a"): audio}
    terms = [(("t",), ("v",), 1.0), (("t",), ("v", "a"), 0.1)]
    tau = 0.5
    out = combinatorial_loss(embs, present, terms, tau, classes=torch.tensor(cls))
    tv = supcon(t, v, cls, cls, tau) + supcon(v, t, cls, cls, tau)
    k = audio
    tva = supcon(t[k], va[k], np.array(cls)[k], np.array(cls)[k], tau) + supcon(va[k], t[k], np.array(cls)[k], np.array(cls)[k], tau)
    assert float(out["loss/t-v"]) == pytest.approx(tv, rel=1e-5)
    assert float(out["loss/t-v+a"]) == pytest.approx(tva, rel=1e-5)
    assert float(out["loss"]) == pytest.approx((tv + 0.1 * tva) / 1.1, rel=1e-5)
    # worked by hand for anchor t0 = (1, 0) against v: cosines 0.8, 1.0, -0.6, 0.0995; positives v0, v1 (class 0)
    s = [0.8 / tau, 1.0 / tau, -0.6 / tau, 0.1 / math.hypot(0.1, 1.0) / tau]
    lse = math.log(sum(math.exp(x) for x in s))
    assert -((s[0] - lse) + (s[1] - lse)) / 2 == pytest.approx(supcon(t[:1], v, cls[:1], cls, tau), rel=1e-9)
    # one class per row: exactly the pair loss (eq. 4)
    pair = combinatorial_loss(embs, present, terms, tau)
    distinct = combinatorial_loss(embs, present, terms, tau, classes=torch.arange(4))
    assert float(distinct["loss"]) == pytest.approx(float(pair["loss"]), rel=1e-6)
    assert float(out["loss/t-v"]) != pytest.approx(float(pair["loss/t-v"]), rel=1e-3)


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    synthesize(root, SyntheticConfig(classes=6, items={"text": 240, "audio": 120, "video": 120},
                                     dims={"text": 16, "audio": 12, "video": 20}, tokens=(2, 5), noise=0.6))
    return root


def cfg_for(cache, tmp_path, positives, **kw):
    return TrainConfig(strategy="eao", cache=str(cache), modalities=["text", "audio", "video"], alignment="class",
                       out=str(tmp_path / positives), epochs=4, patience=4, batch_size=48, lr=3e-3, embed_dim=32,
                       dropout=0.0, options={"token_dim": 32, "heads": 2, "positives": positives}, **kw)


def test_the_strategy_step_uses_each_rows_class(class_cache, tmp_path):
    from mmx.train.prepare import prepare

    prep = prepare(cfg_for(class_cache, tmp_path, "class"), warn=lambda s: None)
    strategy, model, split = prep.strategy, prep.model, prep.data.splits["train"]
    batch = next(iter(strategy.batches(split, 1, train=True)))
    host = batch["text"][3][1]
    assert batch[CLASSES].shape == (len(host),)
    # class-aligned rows: the row's text, audio and video items all have the row's class
    # (6 classes in a batch of 48: 8 same-class rows each, all of them positives)
    assert len(torch.unique(batch[CLASSES])) == 6
    torch.manual_seed(0)
    out = strategy.step(model, batch)
    names = {s: tuple(m.value for m in s) for s in strategy.subsets}
    with torch.no_grad():
        fused = model.embed_subsets(batch, list(names.values()))
        embs = {s: fused[n] for s, n in names.items()}
        present = {s: np.ones(len(host), bool) for s in names}
        by_hand = combinatorial_loss(embs, present, strategy.terms, prep.cfg.tau, classes=batch[CLASSES])
        as_pairs = combinatorial_loss(embs, present, strategy.terms, prep.cfg.tau)
    assert float(out["loss"]) == pytest.approx(float(by_hand["loss"]), rel=1e-5)
    assert float(out["loss"]) != pytest.approx(float(as_pairs["loss"]), rel=1e-3)  # not the pair loss


def test_class_positives_learn_and_are_refused_on_instance_data(class_cache, tmp_path):
    run = train(cfg_for(class_cache, tmp_path, "class"), warn=lambda s: None)
    s = json.loads((run / "metrics.json").read_text())
    # 6 classes: chance R@1 is about 1/6
    assert s["final"]["recall/mean@1"] > 0.5 and s["final"]["recall/mean@1"] > s["untrained"]["recall/mean@1"] + 0.2
    eao = get_strategy("eao")
    inst = TrainConfig(strategy="eao", modalities=["text", "audio"], alignment="instance", options={"positives": "class"})
    assert any("needs class-aligned" in p for p in eao.check(inst))
    assert any("must be pair" in p for p in eao.check(TrainConfig(strategy="eao", modalities=["text", "audio"],
                                                                  options={"positives": "items"})))
