"""Your own media: the README's six commands (a folder of media -> fetch -> extract -> train ->
eval) and the docs page's next steps (search, another strategy, compare), run exactly as
written on a small folder whose manifest has no split; then what the pages promise around
them: the derived split is recorded, an edited label is followed without running the
backbone, and files outside the manifest's folder need --allow-root."""

import json
import shlex

import pandas as pd
import pytest
from click.testing import CliRunner
from readme_steps import (OWN_MEDIA, OWN_PER_CLASS, Workspace, own_media_lines, run_step, users_folder,
                          write_own_media)

from mmx.cache.store import list_stores
from mmx.pipeline.cli import main


@pytest.fixture(scope="module")
def own_media(tmp_path_factory):
    """Every OWN_MEDIA step, in order, in one user's folder; a failed step does not stop the rest."""
    root = tmp_path_factory.mktemp("own-media")
    with users_folder(root):
        write_own_media(root / "my-media")
        w = Workspace(root)
        done = {step.line: run_step(step, w) for step in OWN_MEDIA}
    return root, done


def test_the_readme_walks_through_own_media_in_six_commands():
    assert own_media_lines() == [step.line for step in OWN_MEDIA[:6]]


@pytest.mark.parametrize("step", OWN_MEDIA, ids=lambda s: s.line)
def test_own_media_command_runs(step, own_media):
    got = own_media[1][step.line]
    shown = f"page: {step.line}\nran: mmx {shlex.join(got.argv)}\n{got.output[-3000:]}\n{got.error}"
    assert not got.error and got.exit_code == 0, shown
    for text in step.expect:
        assert text in got.output, f"{text!r} not in the output\n{shown}"
    assert not got.missing, f"not written: {got.missing}\n{shown}"


def test_the_derived_split_is_recorded(own_media):
    root, _ = own_media
    splits = json.loads((root / "runs" / "mine" / "splits.json").read_text())
    assert splits  # no split column: the run drew its own and says which


def test_an_edited_label_is_followed_without_running_the_backbone(own_media):
    root, _ = own_media
    fetched = root / "data" / "mine" / "manifest.fetched.csv"
    frame = pd.read_csv(fetched, keep_default_na=False)
    frame.loc[frame["id"] == "photo-red-0", "label"] = "green"
    frame.to_csv(fetched, index=False)
    with users_folder(root):
        result = CliRunner().invoke(main, ["extract", "data/mine/manifest.fetched.csv", "--modality", "image",
                                           "--dataset", "mine", "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "updated label of 1 item(s)" in result.output and "0 shard(s) written" in result.output
    store = next(s for s in list_stores(root / ".mmx-cache") if s.modality.value == "image")
    assert dict(zip(store.column("id"), store.column("label")))["photo-red-0"] == "green"


def test_files_outside_the_manifest_folder_need_allow_root(tmp_path):
    media = tmp_path / "my-media"
    manifest = write_own_media(media, absolute=True)
    project = tmp_path / "project"
    project.mkdir()
    moved = manifest.rename(project / "manifest.csv")
    with users_folder(tmp_path):
        cli = CliRunner()
        refused = cli.invoke(main, ["fetch", str(moved), "--out", "data/mine", "--no-progress"])
        assert refused.exit_code == 1 and "--allow-root" in refused.output
        allowed = cli.invoke(main, ["fetch", str(moved), "--out", "data/mine", "--no-progress", "--allow-root", str(media)])
    assert allowed.exit_code == 0 and "failed" not in allowed.output, allowed.output
    n = 3 * OWN_PER_CLASS  # the texts were taken by the refused run already: they name no file
    assert f"{n} of {n} audio files" in allowed.output and f"{n} of {n} images" in allowed.output, allowed.output


def test_the_example_manifest_is_one_fetch_accepts(tmp_path):
    """The README's example manifest (repeated on the docs page), with a photo and a sound where it
    says they are: every row fetched, no problem reported."""
    import re

    import numpy as np
    import soundfile as sf
    from PIL import Image
    from readme_steps import README, ROOT

    example = re.search(r"```csv\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S).group(1)
    assert example in (ROOT / "docs" / "own-media.md").read_text(encoding="utf-8")
    folder = tmp_path / "my-media"
    (folder / "photos").mkdir(parents=True)
    (folder / "sounds").mkdir()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(folder / "photos" / "red-1.jpg")
    sf.write(folder / "sounds" / "red-1.wav", np.zeros(8000, np.float32), 16000)
    (folder / "manifest.csv").write_text(example, encoding="utf-8")
    with users_folder(tmp_path):
        result = CliRunner().invoke(main, ["fetch", "my-media/manifest.csv", "--out", "data/mine", "--no-progress"])
    assert result.exit_code == 0 and "(ok 3)" in result.output, result.output
