"""A command whose every item failed exits non-zero; one that obtained something exits 0."""

from __future__ import annotations

import csv

from click.testing import CliRunner

from mmx.pipeline.cli import main


def _manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "modality", "uri", "text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_extract_of_only_failing_items_exits_1(tmp_path):
    man = _manifest(tmp_path / "m.csv", [dict(id=f"a{i}", modality="audio", uri=str(tmp_path / f"absent{i}.wav"),
                                              text="", label="x") for i in range(3)])
    r = CliRunner().invoke(main, ["extract", str(man), "--modality", "audio", "--dataset", "d", "--cache",
                                  str(tmp_path / "cache"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "every one of the 3 item(s) extracted this run failed" in r.output


def test_extract_with_one_good_item_exits_0(tmp_path):
    man = _manifest(tmp_path / "m.csv", [dict(id="t0", modality="text", uri="", text="a sentence", label="x")])
    r = CliRunner().invoke(main, ["extract", str(man), "--modality", "text", "--dataset", "d", "--cache",
                                  str(tmp_path / "cache"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output


def test_fetch_of_only_missing_files_exits_1(tmp_path):
    man = _manifest(tmp_path / "m.csv", [dict(id=f"a{i}", modality="image", uri=f"absent{i}.png", text="", label="x")
                                         for i in range(3)])
    r = CliRunner().invoke(main, ["fetch", str(man), "--out", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "every one of the manifest's 3 item(s) failed" in r.output
