"""A rerun with wider permissions takes what they now allow; failures say what to do."""

import numpy as np
import pandas as pd
from click.testing import CliRunner
from PIL import Image

from mmx.extract.manifest import write_manifest
from mmx.pipeline.cli import main


def _photos(folder, n):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"p{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_absolute_paths_outside_the_manifest_folder_then_allow_root(tmp_path):
    photos = _photos(tmp_path / "elsewhere", 3)
    inside = _photos(tmp_path / "project" / "media", 2)
    frame = pd.DataFrame({"id": [p.stem + q for p, q in zip(photos + inside, "abcde")], "modality": ["image"] * 5,
                          "uri": [str(p.resolve()) for p in photos + inside], "label": ["x"] * 5})
    manifest = write_manifest(frame, tmp_path / "project" / "manifest.csv")
    args = ["fetch", str(manifest), "--out", str(tmp_path / "ds"), "--no-progress"]

    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1, first.output  # refused by the run's own options: not a success
    assert "3 item(s) failed" in first.output and "--allow-root FOLDER" in first.output
    plain = CliRunner().invoke(main, args)  # the same options: nothing to recheck
    assert plain.exit_code == 1 and "fetched 0 item(s) this run" in plain.output
    status = pd.read_csv(tmp_path / "ds" / "fetch" / "status.csv").set_index("id")["status"]
    assert (status == "forbidden_path").sum() == 3 and (status == "ok").sum() == 2

    again = CliRunner().invoke(main, args + ["--allow-root", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "fetched 3 item(s) this run (ok 3); 2 already done" in again.output
    assert "failed" not in again.output
    status = pd.read_csv(tmp_path / "ds" / "fetch" / "status.csv").set_index("id")["status"]
    assert (status == "ok").all()
    assert len(pd.read_csv(tmp_path / "ds" / "manifest.fetched.csv")) == 5


def test_failure_advice_names_the_option_for_each_kind():
    from mmx.pipeline.cli_fetch import failure_advice

    lines = failure_advice({"ok": 5, "timeout": 2, "not_found": 1, "forbidden_path": 3})
    assert lines[0].startswith("6 item(s) failed")
    assert any("3 local path(s)" in x and "--allow-root" in x for x in lines)
    assert any("2 transient (timeout 2)" in x and "--retry-failed" in x for x in lines)
    assert any("1 permanent (not_found 1)" in x and "--all-failures" in x for x in lines)
    assert failure_advice({"ok": 3}) == []
