"""What ``mmx train`` prints: each caution once, as one line, with no Python source line under it."""

import warnings
from pathlib import Path

from click.testing import CliRunner

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.pipeline.cli import main
from mmx.train import normalize

MODS = ("text", "image", "audio", "video")


def test_cli_train_says_each_caution_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    # 60 items per modality: the val slice is small in every modality
    synthesize(cache, SyntheticConfig(classes=6, items={m: 60 for m in MODS}, dims={m: 8 for m in MODS}, tokens=None))
    # features of one scale say nothing; stand in for a modality out of scale
    monkeypatch.setattr(normalize, "scale_problems", lambda stats, meta=None: ["audio features are 150x the scale of the median modality's"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(main, ["train", "--cache", str(cache), "--dataset", "synthetic", "--epochs", "1",
                                        "--batch-size", "12", "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    lines = res.output.splitlines()
    small = [line for line in lines if "split has only" in line]
    assert len(small) == 1, res.output  # one line per run, not one per modality
    assert all(f" {m}" in small[0] for m in MODS), small
    scale = [line for line in lines if "feature scale" in line]
    assert len(scale) == 1 and scale[0].startswith("warning: feature scale: audio features"), res.output
    assert not any("Warning" in line or ".py:" in line for line in lines), res.output  # no source lines
    assert not [w for w in caught if issubclass(w.category, UserWarning)], [str(w.message) for w in caught]
    assert Path(lines[-1]).is_dir()
