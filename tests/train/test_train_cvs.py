"""CVS, M-CVS, RVS and stage-wise learning (papers 002, 004) on a tiny class-aligned cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.pipeline.cli import main
from mmx.eval.runs import load_embeddings, read_jsonl
from mmx.train import checkpoint, loop
from mmx.train.config import TrainConfig
from mmx.train.strategies import get_strategy
from mmx.train.strategies.cvs import MCVSStrategy

CLASSES = 8
MODS = ["text", "image", "audio", "video"]


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(loop, "quick_recall", lambda *a, **k: {})  # tests score mAP@50 themselves


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    synthesize(root, SyntheticConfig(classes=CLASSES, items={"text": 96, "image": 96, "audio": 48, "video": 48},
                                     dims={"text": 24, "image": 32, "audio": 12, "video": 16}, tokens=None, noise=0.5))
    return root


def _cfg(cache, tmp_path, strategy, **kw):
    # deterministic kernels: the resume tests compare two runs bit for bit, which on CUDA (device
    # auto, when the suite runs with a GPU visible) needs them; on the CPU they change nothing
    base = dict(strategy=strategy, cache=str(cache), modalities=MODS, epochs=4, patience=4, batch_size=32,
                lr=3e-3, embed_dim=32, out=str(tmp_path / "runs"), deterministic=True)
    return TrainConfig(**{**base, **kw})


def map_at_50(q, ql, g, gl):
    """Brute force: AP = (1/N) sum_{r<=50} P(r) rel(r), N relevant in the top 50."""
    aps = []
    for v, lab in zip(q, ql):
        order = np.argsort(-(g @ v), kind="stable")[:50]
        rel = (gl[order] == lab).astype(float)
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append((prec * rel).sum() / rel.sum() if rel.sum() else 0.0)
    return float(np.mean(aps))


def mean_map(run, mods):
    e = load_embeddings(run, "test")
    return np.mean([map_at_50(e[q]["emb"], e[q]["label"], e[r]["emb"], e[r]["label"]) for q in mods for r in mods if q != r])


@pytest.mark.parametrize("strategy", ["cvs", "mcvs", "rvs", "stagewise"])
def test_each_strategy_learns_far_above_chance(cache, tmp_path, strategy):
    kw = {"options": {"classes_per_stage": 4}, "modalities": ["text", "image"]} if strategy == "stagewise" else {}
    run = loop.train(_cfg(cache, tmp_path, strategy, **kw))
    mods = kw.get("modalities", MODS)
    score = mean_map(run, mods)
    # chance: about 1/8 of a random ranking is relevant
    assert score > 0.6, score
    e = load_embeddings(run, "test")
    assert e["text"]["emb"].shape[1] == 32
    np.testing.assert_allclose(np.linalg.norm(e["text"]["emb"], axis=1), 1.0, rtol=1e-5)


def test_mcvs_freezes_every_earlier_stage_bitwise(cache, tmp_path, monkeypatch):
    snapshots = []
    original = MCVSStrategy.end_stage

    def snapshot(self, model, stage):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(self, model, stage)

    monkeypatch.setattr(MCVSStrategy, "end_stage", snapshot)
    run = loop.train(_cfg(cache, tmp_path, "mcvs", epochs=3))
    assert len(snapshots) == 3  # image+text, video, audio
    stage1 = [k for k in snapshots[0] if k.startswith(("heads.image.", "heads.text.", "blocks.image-text.", "classifier."))]
    video = [k for k in snapshots[1] if k.startswith(("heads.video.", "blocks.image-video.", "blocks.text-video."))]
    assert stage1 and video
    final = checkpoint.load(run / checkpoint.BEST)["model"]
    for k in stage1:
        assert torch.equal(snapshots[0][k], final[k]), k
    for k in video:
        assert torch.equal(snapshots[1][k], final[k]), k
        assert not torch.equal(snapshots[0][k], snapshots[1][k]), k  # and stage 2 did train them
    stages = [r for r in read_jsonl(run / "metrics.jsonl") if "stage_name" in r]
    assert [r["stage_name"] for r in stages] == ["image+text", "video", "audio"]


def test_rvs_reference_weight_is_frozen_after_stage_one(cache, tmp_path):
    cfg = _cfg(cache, tmp_path, "rvs", epochs=2)
    strategy = get_strategy("rvs")(cfg, _data(cache, cfg), torch.device("cpu"))
    assert [s.blocks for s in strategy.stages()] == [[("image", "text")], [("image", "audio")], [("image", "video")]]
    model = strategy.build_model()
    strategy.begin_stage(model, strategy.stages()[1])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("heads.audio.", "blocks.image-audio.")) for n in trainable)
    assert "blocks.image-audio.w_e.weight" in trainable and not model.w_ie.weight.requires_grad


def _data(cache, cfg):
    from mmx.cache.modality import Modality
    from mmx.train.data import load_train_data

    return load_train_data(str(cache), "synthetic", [Modality.parse(m) for m in cfg.modalities], ["train", "test"])


def test_stagewise_logs_table13_after_each_stage(cache, tmp_path):
    run = loop.train(_cfg(cache, tmp_path, "stagewise", modalities=["text", "image"], epochs=2,
                          options={"classes_per_stage": 3}))
    stages = [r for r in read_jsonl(run / "metrics.jsonl") if "stage_name" in r]
    assert [r["stage_name"] for r in stages] == ["classes 1-3", "classes 4-6", "classes 7-8"]
    for r in stages:
        for part in ("stage1", "all"):
            for pair in ("text->image", "image->text"):
                assert 0.0 <= r[f"map@50/{part}/{pair}"] <= 1.0


@pytest.mark.parametrize("strategy", ["mcvs", "rvs", "joint"])
def test_adding_a_modality_keeps_existing_embeddings_bitwise(cache, tmp_path, strategy):
    first = loop.train(_cfg(cache, tmp_path, strategy, modalities=["text", "image", "video"], epochs=2, name="first"))
    # 4 epochs: a batch holds 32 items (8 classes x 4), so an epoch over 40 audio items is 2 steps
    res = CliRunner().invoke(main, ["train", "--from", str(first), "--add-modality", "audio", "--epochs", "4",
                                    "--name", "second", "--quiet"])
    assert res.exit_code == 0, res.output
    second = Path(res.output.strip().splitlines()[-1])
    a, b = load_embeddings(first, "test"), load_embeddings(second, "test")
    assert "audio" in b and "audio" not in a
    for m in ("text", "image", "video"):
        assert np.array_equal(a[m]["emb"], b[m]["emb"]), m
    old = checkpoint.load(first / checkpoint.BEST)["model"]
    new = checkpoint.load(second / checkpoint.BEST)["model"]
    assert all(torch.equal(old[k], new[k]) for k in old)
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((second / "config.yaml").read_text())))
    assert cfg["modalities"] == ["text", "image", "video", "audio"] and cfg["options"]["trained_modalities"] == ["text", "image", "video"]
    # the new modality did learn against the frozen space
    assert map_at_50(b["audio"]["emb"], b["audio"]["label"], b["image"]["emb"], b["image"]["label"]) > 0.4


def test_bad_options_are_reported_together(tmp_path):
    cfg = TrainConfig(strategy="mcvs", modalities=MODS, options={"stagez": 1, "stages": [["image"], ["text"]],
                                                                  "attention_softmax": "heads", "train_as_served": "yes"})
    problems = "\n".join(get_strategy("mcvs").check(cfg))
    assert "unknown option(s) stagez" in problems and "exactly once" in problems and "at least two" in problems
    assert "attention_softmax" in problems and "train_as_served" in problems
    off = {"attention_wi": False, "attention_ws": False, "attention_wis": False}  # the attention-off baseline is allowed
    assert get_strategy("cvs").check(TrainConfig(strategy="cvs", modalities=MODS, options=off)) == []
    rvs = get_strategy("rvs").check(TrainConfig(strategy="rvs", modalities=["text", "audio"]))
    assert any("reference 'image'" in p for p in rvs)
    cvs = get_strategy("cvs").check(TrainConfig(strategy="cvs", options={"extend_from": "x"}))
    assert any("mcvs, rvs or joint" in p for p in cvs)


def test_cli_extension_errors(cache, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--add-modality", "audio"])
    assert res.exit_code != 0 and "--from RUN and --add-modality M go together" in res.output
    res = runner.invoke(main, ["train", "--from", str(tmp_path), "--add-modality", "audio"])
    assert res.exit_code != 0 and "no config.yaml" in res.output


class Killed(Exception):
    pass


@pytest.mark.parametrize("strategy, kill_at, written", [
    ("mcvs", 3, True),  # stage 1's last epoch saved; its best weights not yet passed on
    ("mcvs", 4, False),  # stage 1's end record written, stage 2 not yet entered in last.pt
    ("rvs", 5, True),  # in the middle of stage 2
    ("stagewise", 6, False),  # stage 2's last epoch logged in metrics.jsonl but not in last.pt
])
def test_staged_resume_ends_bit_identical(cache, tmp_path, monkeypatch, strategy, kill_at, written):
    """A staged run killed at any point and resumed ends exactly as an uninterrupted one."""
    kw = {"options": {"classes_per_stage": 4}, "modalities": ["text", "image"]} if strategy == "stagewise" else {}
    full = loop.train(_cfg(cache, tmp_path / "a", strategy, epochs=2, patience=2, **kw))

    save_last, calls = checkpoint.save_last, []

    def dying_save_last(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at and not written:
            raise Killed  # died just before this last.pt was written
        save_last(*args, **kwargs)
        if len(calls) == kill_at:
            raise Killed  # died right after it was written

    monkeypatch.setattr(checkpoint, "save_last", dying_save_last)
    with pytest.raises(Killed):
        loop.train(_cfg(cache, tmp_path / "b", strategy, epochs=2, patience=2, **kw))
    monkeypatch.setattr(checkpoint, "save_last", save_last)
    part = next((tmp_path / "b" / "runs").iterdir())
    resumed = loop.train(_cfg(cache, tmp_path / "b", strategy, epochs=2, patience=2, **kw), resume=part)

    for name in (checkpoint.BEST, checkpoint.LAST):
        a = checkpoint.load(full / name)["model"]
        b = checkpoint.load(resumed / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    untimed = lambda run: [{k: v for k, v in r.items() if "seconds" not in k} for r in read_jsonl(run / "metrics.jsonl")]
    assert untimed(resumed) == untimed(full)  # every epoch and stage record once, in order
    ea, eb = load_embeddings(full, "test"), load_embeddings(resumed, "test")
    assert all(np.array_equal(ea[m]["emb"], eb[m]["emb"]) for m in ea)


def test_resume_refuses_a_different_stage_plan(cache, tmp_path):
    run = loop.train(_cfg(cache, tmp_path, "mcvs", epochs=1))
    with pytest.raises(ValueError, match="stage 3 recorded, but this config has 2"):
        loop.train(_cfg(cache, tmp_path, "mcvs", epochs=1, options={"stages": [["image", "text"], ["video", "audio"]]}), resume=run)
    with pytest.raises(ValueError, match="stage 3 is 'audio' there, but 'video' in this config"):
        loop.train(_cfg(cache, tmp_path, "mcvs", epochs=1, options={"stages": [["image", "text"], ["audio"], ["video"]]}), resume=run)


@pytest.mark.parametrize("strategy", ["cvs", "mcvs", "rvs"])
def test_train_as_served_trains_on_the_served_embeddings(cache, tmp_path, strategy, monkeypatch):
    """With train_as_served the loss sees exactly what embed() serves."""
    from mmx.train.data import load_train_data
    from mmx.cache.modality import Modality
    import mmx.train.strategies.cvs as cvs

    cfg = _cfg(cache, tmp_path, strategy, options={"train_as_served": True})
    assert get_strategy(strategy).check(cfg) == []
    data = load_train_data(str(cache), "synthetic", Modality.parse_list(MODS), ["train", "test"])
    strat = get_strategy(strategy)(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    model = strat.build_model()
    stage = strat.stages()[-1]  # a later stage: an earlier modality enters as its served embedding
    strat.begin_stage(model, stage)
    batch = next(iter(strat.batches(data.splits["train"], 1, train=True)))
    seen = []
    real = cvs.pair_triplet_loss
    # one call for all blocks: a, b are (blocks, B, D)
    monkeypatch.setattr(cvs, "pair_triplet_loss", lambda a, la, b, lb, *r: seen.extend(zip(a, b)) or real(a, la, b, lb, *r))
    strat.step(model, batch)
    assert len(seen) == len(stage.blocks)
    for (i, s), (a, b) in zip(stage.blocks, seen):
        for m, got in ((i, a), (s, b)):
            served = model.embed_through(m, batch[m][0], strat.home_blocks(m), "self")
            assert torch.allclose(got, served, atol=1e-6), (m, i, s)
    run = loop.train(cfg)
    assert mean_map(run, MODS) > 0.6  # it still learns


@pytest.mark.parametrize("options", [
    {"attention_wi": False, "attention_ws": False, "attention_wis": False},  # attention-off baseline
    {"attention_temperature": "learned"},
    {"attention_softmax": "batch"},
])
def test_attention_readings_train(cache, tmp_path, options):
    """Every reading of eq. 3-6 trains end to end."""
    run = loop.train(_cfg(cache, tmp_path, "cvs", options=options))
    assert mean_map(run, MODS) > 0.6
