"""The whole spine through the CLI: synthesize -> train -> eval -> compare."""

import json
from pathlib import Path

from click.testing import CliRunner

from mmx.pipeline.cli import main


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_synthesize_train_eval_compare(tmp_path):
    r = CliRunner()
    cache, runs = str(tmp_path / "cache"), str(tmp_path / "runs")
    _ok(r.invoke(main, ["cache", "synthesize", "--cache", cache, "--classes", "30",
                        "--items", "text=240,image=240,audio=120", "--tokens", "none"]))
    out = _ok(r.invoke(main, ["train", "--strategy", "joint", "--modalities", "text,image,audio", "--cache", cache,
                              "--dataset", "synthetic", "--epochs", "25", "--batch-size", "30", "--out", runs,
                              "--set", "embed_dim=64", "--set", "lr=3e-3", "--quiet"]))
    run = Path(out.strip().splitlines()[-1])
    assert (run / "config.yaml").exists() and (run / "metrics.json").exists()
    table = _ok(r.invoke(main, ["eval", str(run)]))
    assert "Text → Image" in table and "Mean" in table
    report = json.loads((run / "eval" / "eval-class.json").read_text())
    assert report  # written
    # a second run, then a comparison of the two
    out2 = _ok(r.invoke(main, ["train", "--strategy", "joint", "--modalities", "text,image", "--cache", cache,
                               "--dataset", "synthetic", "--epochs", "3", "--batch-size", "30", "--out", runs, "--quiet"]))
    run2 = Path(out2.strip().splitlines()[-1])
    cmp = _ok(r.invoke(main, ["compare", str(run), str(run2)]))
    assert "Text → Image" in cmp


def test_train_reports_unknown_names_clearly(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["train", "--strategy", "nope"])
    assert res.exit_code == 2 and "nope" in res.output
    res = r.invoke(main, ["train", "--modalities", "text,smell", "--cache", str(tmp_path), "--dataset", "synthetic"])
    assert res.exit_code == 1 and "unknown modality 'smell'" in res.output and "Traceback" not in res.output
    res = r.invoke(main, ["train", "--cache", str(tmp_path), "--dataset", "absent", "--modalities", "text,image"])
    assert res.exit_code == 1 and "no text features of dataset 'absent'" in res.output
    res = r.invoke(main, ["train", "--preset", "no-such-preset", "--dataset", "synthetic"])
    assert res.exit_code == 1 and "unknown preset" in res.output
