"""Item metadata follows the manifest without re-running the backbone; a changed manifest is never ignored."""

import wave

import numpy as np
import pandas as pd
from click.testing import CliRunner

from mmx.cache.store import list_stores, open_store
from mmx.extract.config import ExtractConfig
from mmx.extract.runner import extract
from mmx.pipeline.cli import main

SMALL = ExtractConfig(workers=0, shard_size=2)


def _tone(path, freq, seconds=1.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes())
    return path


def _setup(tmp_path):
    for i, f in enumerate((220, 330, 440, 550, 880)):
        _tone(tmp_path / f"a{i}.wav", f)
    frame = pd.DataFrame({"id": [f"a{i}" for i in range(4)], "modality": "audio",
                          "uri": [f"a{i}.wav" for i in range(4)], "label": ["x", "x", "y", "y"],
                          "split": ["train", "train", "train", "test"]})
    frame.to_csv(tmp_path / "m.csv", index=False)
    return frame


def _run(tmp_path):
    return CliRunner().invoke(main, ["extract", str(tmp_path / "m.csv"), "--modality", "audio", "--cache",
                                     str(tmp_path / "c"), "--dataset", "d", "--workers", "0", "--shard-size", "2",
                                     "--no-progress"])


def test_changed_labels_and_splits_are_written_without_re_extracting(tmp_path):
    frame = _setup(tmp_path)
    assert _run(tmp_path).exit_code == 0
    store = list_stores(tmp_path / "c")[0]
    before = np.asarray(store._group["pooled"][:])
    markers = {k: store.shard_marker(k)["written_at"] for k in range(store.n_shards)}

    frame.loc[1, "label"], frame.loc[2, "split"] = "z", "test"
    frame.to_csv(tmp_path / "m.csv", index=False)
    r = _run(tmp_path)
    assert r.exit_code == 0, r.output
    assert "updated label of 1 item(s), split of 1 item(s)" in r.output and "features reused" in r.output
    assert "0 shard(s) written, 2 already complete" in r.output
    store = open_store(store.path)
    assert list(store.column("label")) == ["x", "z", "y", "y"]
    assert list(store.column("split")) == ["train", "train", "test", "test"]
    assert np.array_equal(np.asarray(store._group["pooled"][:]), before)
    assert {k: store.shard_marker(k)["written_at"] for k in range(store.n_shards)} == markers
    loaded = store.load(split=["test"])
    assert list(loaded.ids) == ["a2", "a3"]  # training sees the new split

    r = _run(tmp_path)  # nothing changed now: nothing said, nothing done
    assert "manifest changed" not in r.output and "0 shard(s) written" in r.output


def test_an_item_given_another_file_is_extracted_again(tmp_path):
    frame = _setup(tmp_path)
    assert _run(tmp_path).exit_code == 0
    store = list_stores(tmp_path / "c")[0]
    before = np.asarray(store._group["pooled"][:], np.float32)
    frame.loc[3, "uri"] = "a4.wav"  # same id, another recording
    frame.to_csv(tmp_path / "m.csv", index=False)
    r = _run(tmp_path)
    assert r.exit_code == 0, r.output
    assert "1 shard(s) have items with another file or text" in r.output
    assert "1 shard(s) written, 1 already complete" in r.output
    after = np.asarray(open_store(store.path)._group["pooled"][:], np.float32)
    assert np.array_equal(after[:2], before[:2]) and not np.array_equal(after[3], before[3])
    fresh = extract(str(tmp_path / "m.csv"), "audio", str(tmp_path / "fresh"), "d", SMALL)
    assert np.array_equal(np.asarray(open_store(fresh["store"])._group["pooled"][:], np.float32), after)


def test_changed_ids_make_another_store(tmp_path):
    frame = _setup(tmp_path)
    first = extract(str(tmp_path / "m.csv"), "audio", str(tmp_path / "c"), "d", SMALL)
    frame.loc[0, "id"] = "renamed"
    frame.to_csv(tmp_path / "m.csv", index=False)
    second = extract(str(tmp_path / "m.csv"), "audio", str(tmp_path / "c"), "d", SMALL)
    assert second["store"] != first["store"] and second["written"] == 2
