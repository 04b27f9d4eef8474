"""A run folder rebuilds its model and embeds new media with its training cache gone.

The runs are trained on a small real-media cache (trained_space.py); every test that claims
independence from the cache runs with the cache moved away. An embedding computed then must
equal the one training wrote for the same file, so the rebuilt backbone, preprocessing,
normaliser and model are the run's own.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cache.modality import Modality
from mmx.eval import runs
from mmx.pipeline.cli import main


@pytest.mark.parametrize("name", ["joint", "eao"])
def test_embed_without_the_cache_equals_the_training_embeddings(trained_space, name):
    from mmx.pipeline.embed import embed_items, open_space

    run = trained_space.runs[name]
    saved = runs.load_embeddings(run, "test")
    rows = trained_space.rows()
    with trained_space.without_cache():
        said = []
        space = open_space(run, log=said.append)
        assert said == []  # nothing said: the run opened from its folder alone
        for modality in space.cfg.modalities:
            if modality not in saved:
                continue  # eao saves fused subsets under their own names too; each single modality is here
            ids = list(saved[modality]["id"][:3])
            got = embed_items(space, Modality.parse(modality), [trained_space.item(rows[i]) for i in ids])
            np.testing.assert_allclose(got, saved[modality]["emb"][:3], atol=2e-3, err_msg=f"{name} {modality}")


def test_the_record_holds_the_model_shape_and_the_store_identity(trained_space):
    record = runs.read_space(trained_space.runs["eao"])
    assert record["dataset"] == "digits" and record["class_names"] == [str(d) for d in range(10)]
    text, image = record["modalities"]["text"], record["modalities"]["image"]
    assert text["dim"] == 384 and image["dim"] == 1280
    assert text["store"]["backbone"]["name"] == "minilm-l6" and image["store"]["backbone"]["name"] == "efficientnet-lite0"
    assert text["max_tokens"] > 1 and image["max_tokens"] == 1  # word pieces; one token per image
    assert text["store"]["preprocessing"]["max_length"] == 256 and text["store"]["dtype"] == "float16"


def test_cli_search_and_embed_work_without_the_cache(trained_space, tmp_path):
    run = trained_space.runs["joint"]
    test_image = next(r for r in trained_space.rows().values() if r["modality"] == "image" and r["split"] == "test")
    image = trained_space.item(test_image)["uri"]
    with trained_space.without_cache():
        res = CliRunner().invoke(main, ["search", str(run), "--file", image, "--target", "image", "--top", "3", "--json"])
        assert res.exit_code == 0, res.output
        hits = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
        assert hits[0]["id"] == test_image["id"] and hits[0]["score"] > 0.999, hits
        out = tmp_path / "q.npz"
        res = CliRunner().invoke(main, ["embed", str(run), "--text", "sieben", "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert np.load(out)["emb"].shape == (1, 32)


def test_an_older_run_without_the_record_opens_through_its_cache_and_says_so(trained_space, tmp_path):
    from mmx.pipeline.embed import open_space

    old = tmp_path / "old-run"
    shutil.copytree(trained_space.runs["joint"], old)
    (old / runs.SPACE).unlink()
    said = []
    space = open_space(old, log=said.append)
    assert len(said) == 1 and "no space.json" in said[0] and str(trained_space.cache) in said[0]
    assert space.data.meta[Modality.TEXT]["backbone"]["name"] == "minilm-l6"
    with trained_space.without_cache():
        res = CliRunner().invoke(main, ["search", str(old), "--text", "sieben"])
    assert res.exit_code == 1 and "no text features" in res.output, res.output


BAD_RECORDS = {
    "another format": lambda r: {**r, "format": "mmx-space/0"},
    "a negative dimension": lambda r: {**r, "modalities": {**r["modalities"], "text": {**r["modalities"]["text"], "dim": -3}}},
    "a boolean token count": lambda r: {**r, "modalities": {**r["modalities"], "text": {**r["modalities"]["text"], "max_tokens": True}}},
    "a store of another width": lambda r: {**r, "modalities": {**r["modalities"], "text": {
        **r["modalities"]["text"], "store": {**r["modalities"]["text"]["store"], "backbone": {"name": "minilm-l6", "dim": 7}}}}},
    "an unknown modality": lambda r: {**r, "modalities": {**r["modalities"], "smell": r["modalities"]["text"]}},
    "class names that are not strings": lambda r: {**r, "class_names": [0, 1]},
}


@pytest.mark.parametrize("what", sorted(BAD_RECORDS))
def test_a_damaged_record_is_one_line_naming_the_file(trained_space, tmp_path, what):
    run = tmp_path / "run"
    shutil.copytree(trained_space.runs["joint"], run)
    record = json.loads((run / runs.SPACE).read_text())
    (run / runs.SPACE).write_text(json.dumps(BAD_RECORDS[what](record)))
    res = CliRunner().invoke(main, ["search", str(run), "--like", "x"])
    assert res.exit_code == 1, res.output
    assert len(res.output.strip().splitlines()) == 1 and str(run / runs.SPACE) in res.output, res.output


def test_a_record_that_disagrees_with_the_config_is_refused(trained_space, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_space.runs["joint"], run)
    record = json.loads((run / runs.SPACE).read_text())
    del record["modalities"]["audio"]
    (run / runs.SPACE).write_text(json.dumps(record))
    res = CliRunner().invoke(main, ["embed", str(run), "--text", "x"])
    assert res.exit_code == 1 and "where config.yaml trains" in res.output, res.output


def test_a_record_that_is_a_fifo_is_refused_at_once(trained_space, tmp_path):
    import os

    run = tmp_path / "run"
    shutil.copytree(trained_space.runs["joint"], run)
    (run / runs.SPACE).unlink()
    os.mkfifo(run / runs.SPACE)
    res = CliRunner().invoke(main, ["embed", str(run), "--text", "x"])
    assert res.exit_code == 1 and "FIFO" in res.output, res.output


def test_embed_says_what_it_embeds_and_shows_progress(trained_space, tmp_path):
    rows = [r for r in trained_space.rows().values() if r["modality"] == "image"][:3]
    files = [trained_space.item(r)["uri"] for r in rows]
    run = str(trained_space.runs["joint"])
    with trained_space.without_cache():
        res = CliRunner().invoke(main, ["embed", run, *files, "--text", "sieben", "-o", str(tmp_path / "e.npz")])
        assert res.exit_code == 0, res.output
        assert "embedding 4 item(s) (image 3, text 1) on cpu" in res.output and "embed: 100%" in res.stderr
        quiet = CliRunner().invoke(main, ["embed", run, *files, "--quiet", "-o", str(tmp_path / "q.npz")])
    assert quiet.exit_code == 0 and "embed:" not in quiet.stderr and "embedding 3" not in quiet.output, quiet.output


def test_decoding_workers_give_the_same_features(trained_space):
    from mmx.pipeline.embed import backbone_features, encoder_for, open_space, store_for

    space = open_space(trained_space.runs["joint"])
    store = store_for(space, Modality.AUDIO)
    items = [trained_space.item(r) for r in trained_space.rows().values() if r["modality"] == "audio"][:6]
    encoder = encoder_for(store)
    alone = backbone_features(encoder, store, items, batch_size=2, workers=0)
    workers = backbone_features(encoder, store, items, batch_size=2, workers=2)
    assert np.array_equal(alone.pooled.numpy(), workers.pooled.numpy()) and len(alone) == 6


def test_a_file_that_is_not_what_its_name_says_is_one_line_naming_it(trained_space, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("not an image at all\n")
    with trained_space.without_cache():
        res = CliRunner().invoke(main, ["embed", str(trained_space.runs["joint"]), str(fake)])
    assert res.exit_code == 1 and str(fake) in res.output and "cannot read it as image" in res.output, res.output


def _json_values():
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers(-5, 1 << 23) | st.floats(allow_nan=True) | st.text(max_size=8)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=20)


def test_any_json_in_the_record_loads_or_is_refused_in_one_line(trained_space, tmp_path_factory):
    """Random JSON (and random mutations of a real record) in space.json: a record or one line, never a traceback."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    real = json.loads((trained_space.runs["joint"] / runs.SPACE).read_text())
    folder = tmp_path_factory.mktemp("records")

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(_json_values(), st.builds(lambda key, m, v: _mutated(real, key, m, v),
                                               st.sampled_from(["dim", "max_tokens", "one_token", "store", "format"]),
                                               st.sampled_from(sorted(real["modalities"])), _json_values())))
    def check(obj):
        (folder / runs.SPACE).write_text(json.dumps(obj))
        try:
            record = runs.read_space(folder)
        except ValueError as exc:
            assert len(str(exc).splitlines()) == 1 and str(folder / runs.SPACE) in str(exc)
        else:
            assert isinstance(record, dict) and record["format"] == runs.SPACE_FORMAT

    check()


def _mutated(real: dict, key: str, modality: str, value) -> dict:
    out = json.loads(json.dumps(real))
    if key == "format":
        out["format"] = value
    else:
        out["modalities"][modality][key] = value
    return out


def test_backbone_options_that_cannot_be_built_are_one_line(trained_space, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_space.runs["joint"], run)
    record = json.loads((run / runs.SPACE).read_text())
    record["modalities"]["text"]["store"]["preprocessing"]["max_length"] = "long"
    (run / runs.SPACE).write_text(json.dumps(record))
    res = CliRunner().invoke(main, ["embed", str(run), "--text", "x"])
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "backbone 'minilm-l6'" in errors[0], res.output
    assert "Traceback" not in res.output
