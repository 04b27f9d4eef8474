"""Planted symbolic links in a dataset folder or a cache: mmx fetch and mmx extract stop, in one
line naming the link, before writing anything through it."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from click.testing import CliRunner

from make_media import random_jpegs  # tests/make_media.py
from mmx.cache.store import list_stores
from mmx.pipeline.cli import main


@pytest.fixture
def images(tmp_path):
    random_jpegs(tmp_path / "src", 2)
    pd.DataFrame([dict(id=f"im{i}", modality="image", uri=f"src/im{i:03d}.jpg") for i in range(2)]
                 ).to_csv(tmp_path / "m.csv", index=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("precious")
    return tmp_path


def one_line(r) -> str:
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def untouched(folder) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["precious"] and (folder / "precious").read_text() == "precious"


def fetch(tmp_path):
    return CliRunner().invoke(main, ["fetch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "ds"), "--no-progress"])


@pytest.mark.parametrize("planted", ["media", "media/image", "fetch"])
def test_fetch_refuses_a_linked_folder_of_the_dataset(images, planted):
    ds = images / "ds"
    (ds / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(images / "elsewhere", ds / planted)
    line = one_line(fetch(images))
    assert f"{ds / planted}: a symbolic link (to {images / 'elsewhere'})" in line and "--out" in line
    untouched(images / "elsewhere")


@pytest.mark.parametrize("planted", ["fetch/.lock", "fetch/journal.jsonl", ".manifest.fetched.csv.tmp"])
def test_fetch_never_opens_a_linked_file_of_the_dataset(images, planted):
    ds = images / "ds"
    (ds / "fetch").mkdir(parents=True)
    os.symlink(images / "elsewhere" / "precious", ds / planted)
    assert "a symbolic link" in one_line(fetch(images))
    untouched(images / "elsewhere")


def test_a_folder_linked_in_while_fetching_takes_no_media_file(tmp_path):
    from mmx.extract.fetch.files import place_file

    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "image")
    (tmp_path / "t.part").write_bytes(b"x")
    with pytest.raises(OSError, match="symbolic link"):
        place_file(str(tmp_path / "t.part"), tmp_path / "image", "a", "jpg")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def extract(tmp_path):
    return CliRunner().invoke(main, ["extract", str(tmp_path / "m.csv"), "--modality", "image", "--cache",
                                     str(tmp_path / "cache"), "--dataset", "d", "--workers", "0", "--no-progress",
                                     "--set", "image_size=32"])


@pytest.mark.parametrize("planted", ["d", "d/image"])
def test_extract_refuses_a_linked_folder_of_the_cache(images, planted):
    cache = images / "cache"
    (cache / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(images / "elsewhere", cache / planted)
    line = one_line(extract(images))
    assert f"{cache / planted}: a symbolic link" in line and "--cache" in line
    untouched(images / "elsewhere")


def test_extract_refuses_a_store_replaced_by_a_link(images):
    r = extract(images)
    assert r.exit_code == 0, r.output
    (store,) = list_stores(images / "cache")
    moved = images / "elsewhere" / "moved.zarr"
    os.rename(store.path, moved)
    os.symlink(moved, store.path)
    assert f"{store.path}: a symbolic link" in one_line(extract(images))


def test_forbidden_path_names_the_link_target_and_the_option(tmp_path):
    """A link in the dataset that points outside --allow-root: the message says where it really
    leads and which option admits it, in extract's store and fetch's journal alike."""
    import json

    from mmx.extract.fetch import FetchConfig, fetch_manifest

    (ds := tmp_path / "ds").mkdir()
    (outside := tmp_path / "outside").mkdir()
    (secret,) = random_jpegs(outside, 1)
    os.symlink(secret, ds / "link.jpg")
    pd.DataFrame([dict(id="a", modality="image", uri="link.jpg")]).to_csv(ds / "m.csv", index=False)
    r = CliRunner().invoke(main, ["extract", str(ds / "m.csv"), "--modality", "image", "--cache", str(tmp_path / "c"),
                                  "--dataset", "d", "--workers", "0", "--no-progress", "--set", "image_size=32"])
    assert r.exit_code == 1, r.output
    (store,) = list_stores(tmp_path / "c")
    message = store.shard_marker(0)["errors"]["a"]
    fetched = fetch_manifest(ds / "m.csv", tmp_path / "fetched", FetchConfig(progress=False))
    (record,) = [json.loads(x) for x in fetched.layout.journal.read_text().splitlines()]
    for said in (message, record["error"]):
        assert f"which resolves to '{secret}'" in said and "--allow-root" in said, said
