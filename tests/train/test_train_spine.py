"""The spine: paper 000's joint strategy learns on a synthetic class-aligned cache."""

import json

import numpy as np
import pytest
import torch

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.eval.runs import load_embeddings
from mmx.train.config import TrainConfig, resolve
from mmx.train.heads import ProjectionHead
from mmx.train.losses import info_nce, pairwise_info_nce
from mmx.train.loop import train

CLASSES = 40


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    cfg = SyntheticConfig(
        classes=CLASSES,
        items={"text": 400, "image": 400, "audio": 200, "video": 200},
        dims={"text": 32, "image": 48, "audio": 16, "video": 24},
        tokens=None,
        noise=0.5,
    )
    synthesize(root, cfg)
    return root


def test_info_nce_matches_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # row 0: logits (1, 0.6)/tau ; row 1: logits (0, 0.8)/tau ; targets are the diagonal
    l0 = -np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(1.2)))
    l1 = -np.log(np.exp(1.6) / (np.exp(0.0) + np.exp(1.6)))
    assert float(info_nce(x, y, tau)) == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_pairwise_loss_averages_all_ordered_pairs():
    g = torch.Generator().manual_seed(0)
    embs = {m: torch.randn(5, 8, generator=g) for m in ("text", "image", "audio")}
    out = pairwise_info_nce(embs, 0.05)
    assert len([k for k in out if k.startswith("loss/")]) == 6  # 3 * 2 ordered pairs
    manual = np.mean([float(info_nce(embs[a], embs[b], 0.05)) for a in embs for b in embs if a != b])
    assert float(out["loss"]) == pytest.approx(manual, rel=1e-5)
    # the two directions of a pair differ in general: both are needed
    assert float(out["loss/text-image"]) != pytest.approx(float(out["loss/image-text"]))


def test_projection_head_shapes_and_skip():
    head = ProjectionHead(12, 256, dropout=0.0)
    x = torch.randn(3, 12)
    y = head(x)
    assert y.shape == (3, 256)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
    assert torch.allclose(head(x), head.proj(x))  # the skip carries the first layer's output


def test_joint_learns_far_above_chance_and_untrained(class_cache, tmp_path):
    cfg = TrainConfig(cache=str(class_cache), dataset="synthetic", epochs=40, patience=4, batch_size=32,
                      lr=3e-3, out=str(tmp_path / "runs"), embed_dim=64)
    run = train(cfg)
    summary = json.loads((run / "metrics.json").read_text())
    final, untrained = summary["final"], summary["untrained"]
    # 40 classes: a random ranking puts a relevant item first about 1/40 of the time
    assert final["recall/mean@1"] > 0.5
    assert final["recall/mean@1"] > untrained["recall/mean@1"] + 0.3
    assert (run / "config.yaml").exists() and (run / "checkpoint.safetensors").exists()
    emb = load_embeddings(run, "test")
    assert set(emb) == {"text", "image", "audio", "video"}
    assert emb["audio"]["emb"].shape[1] == 64


def test_missing_modality_is_reported_before_training(tmp_path):
    synthesize(tmp_path / "c", SyntheticConfig(items={"text": 40, "image": 40}, dims={"text": 8, "image": 8}, tokens=None))
    cfg = TrainConfig(cache=str(tmp_path / "c"), modalities=["text", "image", "audio", "video"], out=str(tmp_path / "r"))
    with pytest.raises(ValueError) as err:
        train(cfg)
    msg = str(err.value)
    assert "audio" in msg and "video" in msg  # every problem at once
    assert not (tmp_path / "r").exists()  # nothing written


def test_config_rejects_unknown_keys_and_coerces():
    cfg = resolve(sets=["patience=7", "modalities=text,image", "options.depth=2"])
    assert cfg.patience == 7 and cfg.modalities == ["text", "image"] and cfg.options == {"depth": 2}
    with pytest.raises(ValueError, match="unknown config key"):
        resolve(sets=["patiense=7"])


def test_every_strategy_rejects_unknown_options():
    from mmx.train.strategies import STRATEGIES, get_strategy

    for name in STRATEGIES:
        cls = get_strategy(name)
        problems = cls.check(TrainConfig(strategy=name, options={"no_such_option": 1}))
        assert any("unknown option(s) no_such_option" in p for p in problems), name
        # the options `mmx train --from RUN --add-modality` sets are known to every strategy
        problems = cls.check(TrainConfig(strategy=name, options={"trained_modalities": ["text"]}))
        assert not any("unknown option" in p for p in problems), name
