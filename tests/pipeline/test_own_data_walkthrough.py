"""Your own data in ten minutes (issue 15): a folder of media -> manifest -> fetch -> extract -> train
-> eval, all through the CLI, with a manifest that has no split and absolute local paths; then a
label is edited and the re-extract follows it without running the backbone."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mmx.cache.store import list_stores
from mmx.pipeline.cli import main

CLASSES = ("red", "green", "blue")
PER_CLASS = 8


def _folder(root):
    """A user's folder: photos and recordings of three classes, and sentences about them."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            img = np.zeros((48, 64, 3), np.uint8)
            img[..., c] = 200
            img = (img + rng.integers(0, 40, img.shape)).astype(np.uint8)
            path = root / "photos" / f"{name}{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            rows.append({"id": f"img-{name}-{i}", "modality": "image", "uri": str(path.resolve()), "text": "",
                         "label": name})
            t = np.arange(16000) / 16000
            wav = root / "sounds" / f"{name}{i}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, (0.3 * np.sin(2 * np.pi * (300 + 400 * c + 10 * i) * t)).astype(np.float32), 16000)
            rows.append({"id": f"snd-{name}-{i}", "modality": "audio", "uri": str(wav.resolve()), "text": "",
                         "label": name})
            rows.append({"id": f"txt-{name}-{i}", "modality": "text", "uri": "", "label": name,
                         "text": f"a {name} thing, number {i}"})
    return rows


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def test_from_a_folder_of_media_to_an_evaluated_space(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMX_CACHE", raising=False)
    media = tmp_path / "my-media"
    manifest = tmp_path / "project" / "manifest.csv"
    manifest.parent.mkdir()
    pd.DataFrame(_folder(media)).to_csv(manifest, index=False)  # no split column
    cli = CliRunner()

    # fetch: absolute paths outside the manifest's folder are refused until allowed, with the option named
    refused = cli.invoke(main, ["fetch", str(manifest), "--out", "data/mine", "--no-progress"])
    assert refused.exit_code == 1 and "--allow-root" in refused.output
    out = _ok(cli.invoke(main, ["fetch", str(manifest), "--out", "data/mine", "--no-progress", "--allow-root", str(media)]))
    assert "failed" not in out
    fetched = "data/mine/manifest.fetched.csv"

    # extract: the cache defaults to ./.mmx-cache, no --cache needed
    for modality in ("image", "audio", "text"):
        backbone = ["--backbone", "bow"] if modality == "text" else []
        out = _ok(cli.invoke(main, ["extract", fetched, "--modality", modality, "--dataset", "mine", "--workers", "0",
                                    "--no-progress", *backbone]))
        assert f"{3 * PER_CLASS} ok, 0 failed" in out
    assert {s.modality.value for s in list_stores(tmp_path / ".mmx-cache")} == {"image", "audio", "text"}

    # train: no split in the manifest -> a recorded, stratified split; the header says what runs
    out = _ok(cli.invoke(main, ["train", "--dataset", "mine", "--modalities", "text,image,audio", "--epochs", "2",
                                "--name", "first", "--device", "cpu"]))
    assert "dataset mine in cache" in out and "strategy joint" in out and "epoch   2/2" in out
    assert "items: train " in out and "per-epoch R@10" in out
    run = tmp_path / "runs" / "first"
    splits = json.loads((run / "splits.json").read_text())
    assert splits  # the derived split is recorded in the run

    out = _ok(cli.invoke(main, ["eval", str(run)]))
    assert "Text → Image" in out and "Mean" in out, out

    # edit a label and re-extract: the store follows, the backbone does not run again
    frame = pd.read_csv(fetched, keep_default_na=False)
    frame.loc[frame["id"] == "img-red-0", "label"] = "green"
    frame.to_csv(fetched, index=False)
    out = _ok(cli.invoke(main, ["extract", fetched, "--modality", "image", "--dataset", "mine", "--workers", "0",
                                "--no-progress"]))
    assert "updated label of 1 item(s)" in out and "0 shard(s) written" in out
    store = next(s for s in list_stores(tmp_path / ".mmx-cache") if s.modality.value == "image")
    labels = dict(zip(store.column("id"), store.column("label")))
    assert labels["img-red-0"] == "green"
