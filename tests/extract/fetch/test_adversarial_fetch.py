"""Hostile manifests and servers against mmx fetch: id collisions, stacked encodings, full disks."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from mmx.extract import fetch as fetch_pkg
from mmx.extract.fetch import FetchConfig, fetch_manifest, safe_stem
from mmx.extract.fetch.manifest import scan_manifest
from mmx.extract.manifest import ManifestError, write_manifest

QUIET = dict(workers=2, per_host=2, retries=0, progress=False)


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _journal(root):
    return {r["id"]: r for r in map(json.loads, (root / "fetch" / "journal.jsonl").read_text().splitlines())}


def test_ids_that_cleaned_to_one_stem_keep_their_own_files(tmp_path):
    """'a b' used to be stored as a_b-7dbde93504.jpg, the very name of the id 'a_b-7dbde93504'."""
    unsafe, lookalike = "a b", "a_b-" + hashlib.sha1(b"a b").hexdigest()[:10]
    assert lookalike == "a_b-7dbde93504"
    assert safe_stem(unsafe) != safe_stem(lookalike)
    src = tmp_path / "src"
    src.mkdir()
    images = {unsafe: _jpeg(1), lookalike: _jpeg(2)}
    for n, data in enumerate(images.values()):
        (src / f"{n}.jpg").write_bytes(data)
    frame = pd.DataFrame({"id": list(images), "modality": ["image"] * 2, "uri": ["src/0.jpg", "src/1.jpg"],
                          "label": ["x", "y"]})
    manifest = write_manifest(frame, tmp_path / "m.csv")
    summary = fetch_manifest(manifest, tmp_path / "ds", FetchConfig(**QUIET))
    assert summary.totals == {"ok": 2}
    records = _journal(tmp_path / "ds")
    assert records[unsafe]["path"] != records[lookalike]["path"]
    for item_id, data in images.items():  # each id's file holds its own image, with its recorded digest
        on_disk = (tmp_path / "ds" / records[item_id]["path"]).read_bytes()
        assert on_disk == data and hashlib.sha256(on_disk).hexdigest() == records[item_id]["sha256"]


def test_stems_stay_apart_for_lookalikes_of_every_kind():
    ids = ["a b", "a_b", "a:b", "a_b-7dbde93504", "a_b-7dbde93504-" + hashlib.sha1(b"a_b-7dbde93504").hexdigest()[:10],
           ".x", "x", "_"]
    assert len({safe_stem(i) for i in ids}) == len(ids)


def test_a_stem_collision_is_refused_naming_both_ids(tmp_path, monkeypatch):
    """Should two ids ever map to one stem (a sha1-prefix collision), the manifest is refused, not half-fetched."""
    frame = pd.DataFrame({"id": ["first", "second", "third"], "modality": ["image"] * 3,
                          "uri": ["a.jpg", "b.jpg", "c.jpg"]})
    manifest = write_manifest(frame, tmp_path / "m.csv")
    monkeypatch.setattr(fetch_pkg, "safe_stem", lambda i: "same" if i in ("first", "third") else i)
    with pytest.raises(ManifestError) as info:
        scan_manifest(manifest)
    text = str(info.value)
    assert "'third'" in text and "'first'" in text and "share the media file name 'same'" in text
