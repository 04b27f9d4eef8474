"""Degenerate input and what a run says before its first step.

Each case here would otherwise train without a word: a batch of 0, one class, perfect figures on
a held-out split of a few items, an ambiguous store with an error naming a missing option.
"""

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cache.modality import Modality
from mmx.cache.store import StoreSpec, create_store, ids_digest
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.pipeline.cli import main
from mmx.train.config import TrainConfig, resolve
from mmx.train.loop import train


def _store(root, modality, labels, splits, backbone="bb", options=None, dim=8, seed=0):
    """A complete pooled-only store of ``len(labels)`` items with class-structured features."""
    n = len(labels)
    ids = [f"{modality}-{i}" for i in range(n)]
    spec = StoreSpec("mine", Modality.parse(modality), {"name": backbone, "dim": dim, **(options or {})}, {}, ids_digest(ids))
    store = create_store(root, spec, ids, labels=labels, splits=splits, shard_size=max(n, 1), tokens=False)
    rng = np.random.default_rng(seed)
    centres = {c: rng.normal(size=dim) for c in sorted(set(labels))}
    store.write_shard(0, np.stack([centres[c] + 0.1 * rng.normal(size=dim) for c in labels]).astype(np.float32))
    return store


def _cache(root, labels, splits, modalities=("text", "image")):
    for i, m in enumerate(modalities):
        _store(root, m, labels, splits, seed=i)
    return root


def _cfg(root, tmp_path, **kw):
    base = dict(strategy="joint", dataset="mine", cache=str(root), modalities=["text", "image"], epochs=2,
                batch_size=8, out=str(tmp_path / "runs"), device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    synthesize(root, SyntheticConfig(classes=6, items={"text": 60, "image": 60}, dims={"text": 8, "image": 8}, tokens=None))
    return root


@pytest.mark.parametrize("args, fix", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
])
def test_cli_refuses_nonpositive_sizes_up_front(synthetic, tmp_path, args, fix):
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--cache", str(synthetic), "--modalities", "text,image",
                                  "--out", str(tmp_path / "runs"), *args])
    assert r.exit_code == 2 and fix in r.output and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize("setting, words", [
    ("epochs=banana", ["epochs=banana", "an integer", "--set epochs=20"]),
    ("batch_size=0", ["batch_size=0", "at least 1", "--batch-size"]),
    ("batch_size=-5", ["batch_size=-5", "at least 1"]),
    ("lr=-1", ["lr=-1", "positive"]),
])
def test_bad_set_values_are_one_line_naming_the_fix(synthetic, tmp_path, setting, words):
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--cache", str(synthetic), "--modalities", "text,image",
                                  "--out", str(tmp_path / "runs"), "--set", setting])
    assert r.exit_code == 1, r.output
    assert all(w in r.output for w in words), r.output
    assert "Traceback" not in r.output and "invalid literal" not in r.output


def test_one_class_cache_is_refused(tmp_path):
    root = _cache(tmp_path / "c", ["only"] * 12, ["train"] * 8 + ["val"] * 2 + ["test"] * 2)
    with pytest.raises(ValueError, match="nothing to learn.*label column"):
        train(_cfg(root, tmp_path))
    assert not (tmp_path / "runs").exists()


def test_one_item_per_class_and_tiny_holdout_warn(tmp_path):
    labels = [f"c{i}" for i in range(16)]
    root = _cache(tmp_path / "c", labels, ["train"] * 8 + ["val"] * 4 + ["test"] * 4)
    said = []
    train(_cfg(root, tmp_path, patience=1), warn=said.append)
    assert any("one item per modality" in w and "label column" in w for w in said), said
    small = [w for w in said if "split has only" in w]
    assert len(small) == 1 and "val split has only 4 text, 4 image item(s)" in small[0], said  # one line per run
    assert "chance Recall@10 is 1.00" in small[0], said


def test_a_sound_cache_trains_without_warnings(synthetic, tmp_path):
    said, lines = [], []
    # 60 items per modality, a few of them held out: small, so only that may be said
    train(_cfg(synthetic, tmp_path, dataset="synthetic", epochs=1), log=lines.append, warn=said.append)
    assert all("split has only" in w for w in said), said
    assert not any("one item per modality" in w or "nothing" in w for w in said)


def test_run_header_epoch_totals_and_quick_recall_note(synthetic, tmp_path):
    lines = []
    train(_cfg(synthetic, tmp_path, dataset="synthetic", epochs=2, patience=5, batch_size=40), log=lines.append)
    text = "\n".join(lines)
    assert "dataset synthetic (SYNTHETIC features" in text
    assert "strategy joint, modalities text,image" in text
    assert "device cpu" in text and "torch thread(s)" in text
    assert "items: train text " in text and "; val text " in text and "; test text " in text, text
    assert "batch: 40 items per modality per step (6 classes x 6-7 items)" in text
    assert "up to 2 epochs, stop after 5 without a better val loss" in text
    assert "epoch   1/2" in text and "epoch   2/2" in text
    assert "per-epoch R@10" in text and "mmx eval RUN" in text


def test_stages_are_announced_when_they_start(synthetic, tmp_path):
    lines = []
    train(_cfg(synthetic, tmp_path, dataset="synthetic", strategy="rvs", epochs=1, batch_size=6,
               options={"reference": "text"}), log=lines.append)
    starts = [i for i, s in enumerate(lines) if s.startswith("stage ") and s.endswith("starting")]
    ends = [i for i, s in enumerate(lines) if s.startswith("stage ") and " done" in s]
    assert starts and len(starts) == len(ends) and all(a < b for a, b in zip(starts, ends))


def test_two_stores_of_one_backbone_name_are_told_apart_with_store(tmp_path):
    root = tmp_path / "c"
    labels, splits = [f"c{i % 4}" for i in range(40)], ["train"] * 30 + ["test"] * 10
    _store(root, "text", labels, splits)
    a = _store(root, "image", labels, splits, options={"fps": 1})
    b = _store(root, "image", labels, splits, options={"fps": 2})
    out = tmp_path / "runs"
    base = ["train", "--cache", str(root), "--dataset", "mine", "--modalities", "text,image", "--epochs", "1",
            "--out", str(out), "--device", "cpu"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 1 and "--store image=PATH_OR_KEY" in r.output and "--backbone" not in r.output
    assert str(a.path) in r.output and str(b.path) in r.output
    for choice, want in ((str(b.path), b), (a.key[:8], a), (b.path.name, b)):
        r = CliRunner().invoke(main, base + ["--store", f"image={choice}", "--name", f"pick-{want.key[:6]}-{len(choice)}"])
        assert r.exit_code == 0, r.output
        saved = resolve([str(out / f"pick-{want.key[:6]}-{len(choice)}" / "config.yaml")])
        assert saved.stores == {"image": choice}
    r = CliRunner().invoke(main, base + ["--store", "image=nosuchstore"])
    assert r.exit_code == 1 and "nosuchstore" in r.output and a.path.name in r.output


def test_stores_entry_in_a_config_file(tmp_path):
    root = tmp_path / "c"
    labels, splits = [f"c{i % 4}" for i in range(40)], ["train"] * 30 + ["test"] * 10
    _store(root, "text", labels, splits)
    _store(root, "image", labels, splits, options={"fps": 1})
    b = _store(root, "image", labels, splits, options={"fps": 2})
    (tmp_path / "mine.yaml").write_text(f"stores: {{image: {b.key[:10]}}}\n")
    run = train(resolve([str(tmp_path / "mine.yaml")], {"cache": str(root), "dataset": "mine", "modalities": "text,image",
                                                         "epochs": 1, "out": str(tmp_path / "runs"), "device": "cpu"}))
    assert run.exists()


def test_name_is_used_verbatim_and_never_overwrites(synthetic, tmp_path):
    cfg = _cfg(synthetic, tmp_path, dataset="synthetic", epochs=1, name="my-run")
    run = train(cfg)
    assert run == tmp_path / "runs" / "my-run"
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        train(cfg)
    with pytest.raises(ValueError, match="--name"):
        train(_cfg(synthetic, tmp_path, dataset="synthetic", epochs=1, name="../escape"))
