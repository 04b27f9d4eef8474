"""The embedded demo dataset: class-aligned, four modalities, honest splits, small, rebuildable."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from mmx.extract.manifest import read_manifest
from mmx.pipeline.demo import build_dataset

DATA = Path(build_dataset.__file__).parent / "data"
SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "digits-src"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    manifest = read_manifest(DATA / "manifest.csv")  # validates every row
    return manifest.frame


def test_every_modality_has_every_digit_in_every_split(frame):
    for (modality, split), rows in frame.groupby(["modality", "split"]):
        assert sorted(rows.label.unique()) == [str(d) for d in range(10)], (modality, split)
    assert set(frame.modality) == {"image", "audio", "text", "video"}
    assert set(frame.split) == {"train", "val", "test"}


def test_test_audio_is_an_unheard_speaker(frame):
    audio = frame[frame.modality == "audio"]
    speaker = audio.id.str.split("-").str[2]
    assert set(speaker[audio.split == "test"]) == {"lucas"}
    assert "lucas" not in set(speaker[audio.split != "test"])


def test_mnist_rows_and_sentences_never_repeat_across_items(frame):
    rows = frame[frame.modality.isin(["image", "video"])].id.map(lambda i: int(re.match(r"\w+-\d-(\d+)", i).group(1)))
    assert rows.is_unique
    texts = frame[frame.modality == "text"]
    assert texts.text.is_unique  # so no test sentence occurs in train or val


def test_media_exist_decode_and_stay_small(frame):
    import av

    media = frame[frame.uri != ""]
    paths = [DATA / u for u in media.uri]
    assert all(p.is_file() for p in paths)
    assert sum(p.stat().st_size for p in paths) < 6 * 2**20
    spoken = [p for p in paths if p.name.endswith("-spoken.mp4")]
    assert spoken, "some clips carry a spoken digit"
    with av.open(str(spoken[0])) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
    assert "CC BY-SA 4.0" in (DATA / "LICENSES.md").read_text() and "CC BY-SA 3.0" in (DATA / "LICENSES.md").read_text()


@pytest.mark.shared_files  # the sources live in ../shared, which a fresh clone lacks: opt-in
def test_the_build_script_rebuilds_the_same_manifest(tmp_path):
    if not SOURCE.is_dir():
        pytest.skip(f"source media not found at {SOURCE}")
    build_dataset.build(SOURCE, tmp_path)
    assert (tmp_path / "manifest.csv").read_text() == (DATA / "manifest.csv").read_text()
    one = "media/image/" + sorted(p.name for p in (DATA / "media/image").iterdir())[0]
    assert (tmp_path / one).read_bytes() == (DATA / one).read_bytes()
