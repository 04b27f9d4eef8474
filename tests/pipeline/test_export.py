"""``mmx export RUN OUT``: a bundle that searches elsewhere with no cache, its card, and its atomic write."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import mmx
from mmx.eval import runs
from mmx.pipeline.cli import main


@pytest.fixture(scope="module")
def bundle(trained_space, tmp_path_factory):
    """The eao run exported with its manifest, then moved to another folder (as if copied to another machine)."""
    out = tmp_path_factory.mktemp("export") / "space"
    res = CliRunner().invoke(main, ["export", str(trained_space.runs["eao"]), str(out), "--manifest", str(trained_space.manifest)])
    assert res.exit_code == 0, res.output
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "copied-space"
    shutil.move(str(out), elsewhere)
    return elsewhere


def test_a_moved_bundle_searches_and_embeds_as_the_run_does_with_no_cache(trained_space, bundle):
    run = trained_space.runs["eao"]
    with trained_space.without_cache():
        from_run, from_bundle = mmx.load(run), mmx.load(bundle)
        texts = ["sieben", "the digit three"]
        np.testing.assert_allclose(from_bundle.embed(text=texts), from_run.embed(text=texts), atol=1e-6)
        item = str(runs.load_embeddings(run, "test")["audio"]["id"][0])
        assert from_bundle.search(like=item, k=5) == from_run.search(like=item, k=5)
        res = CliRunner().invoke(main, ["search", str(bundle), "--text", "sieben", "--target", "audio", "--top", "2"])
    assert res.exit_code == 0 and "query text-1 (text: sieben)" in res.output, res.output
    assert len([line for line in res.output.splitlines() if line.startswith("    ") and "audio" in line]) == 2, res.output


def test_the_bundle_lists_every_file_with_its_digest_and_carries_the_gallery(trained_space, bundle):
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["format"] == "mmx-bundle/1" and manifest["strategy"] == "eao" and manifest["embed_dim"] == 32
    assert manifest["backbones"]["text"]["name"] == "minilm-l6"
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"bundle.json"}
    assert set(manifest["files"]) == files
    assert {"checkpoint.safetensors", "config.yaml", "space.json", "normalizer.json", "README.md"} <= files
    assert "last.safetensors" not in files  # the optimiser state is the run's, not the space's
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    for split in runs.splits_of(trained_space.runs["eao"]):
        want = runs.load_embeddings(trained_space.runs["eao"], split)
        got = runs.load_embeddings(bundle, split)
        assert set(got) == set(want) and all(np.array_equal(got[k]["emb"], want[k]["emb"]) for k in want)


def test_the_weights_are_plain_safetensors(bundle):
    from safetensors import safe_open

    with safe_open(str(bundle / "checkpoint.safetensors"), framework="numpy") as f:
        keys = list(f.keys())
        assert json.loads(f.metadata()["state"])["config"]["strategy"] == "eao"
    assert keys and all(k.startswith("/model/") for k in keys)


def test_the_model_card_names_data_strategy_metrics_and_licences(bundle):
    card = (bundle / "README.md").read_text()
    audio = json.loads((bundle / "bundle.json").read_text())["backbones"]["audio"]["name"]  # speech-embedding, or logmel without openwakeword
    for words in ("Dataset `digits`", "minilm-l6", "efficientnet-lite0", audio, "`eao`", "## Metrics", "best_epoch",
                  "## Licences", "LICENSES.md", "CC BY-SA"):
        assert words in card, words


def test_export_refuses_an_existing_folder_and_leaves_nothing_when_it_fails(trained_space, tmp_path, monkeypatch):
    from mmx.pipeline import cli_export

    (tmp_path / "taken").mkdir()
    res = CliRunner().invoke(main, ["export", str(trained_space.runs["joint"]), str(tmp_path / "taken")])
    assert res.exit_code == 1 and "already exists" in res.output, res.output

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_export, "model_card", broken)
    res = CliRunner().invoke(main, ["export", str(trained_space.runs["joint"]), str(tmp_path / "new")])
    assert res.exit_code == 1, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no bundle, no temporary folder


def test_an_older_run_exports_through_its_cache_into_a_bundle_that_needs_none(trained_space, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_space.runs["joint"], old)
    (old / runs.SPACE).unlink()
    res = CliRunner().invoke(main, ["export", str(old), str(tmp_path / "b")])
    assert res.exit_code == 0 and "no space.json" in res.output, res.output
    with trained_space.without_cache():
        m = mmx.load(tmp_path / "b")
        assert m.embed(text=["drei"]).shape == (1, 32)
    assert runs.read_space(tmp_path / "b") == runs.read_space(trained_space.runs["joint"])
