"""``mmx.load(PATH)``: embed and search a trained space from Python, checked against the CLI's
embeddings and a brute-force cosine ranking; bad calls are one clear error."""

from __future__ import annotations

import numpy as np
import pytest

import mmx
from mmx.eval import runs


@pytest.fixture(scope="module")
def model(trained_space):
    return mmx.load(trained_space.runs["joint"])


def test_import_mmx_stays_light():
    import subprocess
    import sys

    code = "import sys, mmx; print('torch' in sys.modules, callable(mmx.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_the_model_describes_its_space(model, trained_space):
    assert model.modalities == ["text", "image", "audio"] and model.dim == 32
    assert model.config["strategy"] == "joint" and model.path == trained_space.runs["joint"]
    assert all(model.embeddable(m) for m in model.modalities)


def test_embed_files_and_text_equals_what_training_wrote(model, trained_space):
    saved = runs.load_embeddings(trained_space.runs["joint"], "test")
    rows = trained_space.rows()
    image_id, audio_id, text_id = (str(saved[m]["id"][0]) for m in ("image", "audio", "text"))
    files = [trained_space.item(rows[i])["uri"] for i in (image_id, audio_id)]
    with trained_space.without_cache():
        got = model.embed(text=[rows[text_id]["text"]], files=files)  # files first, then text
    want = np.stack([saved["image"]["emb"][0], saved["audio"]["emb"][0], saved["text"]["emb"][0]])
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert model.embed(text="one text").shape == (1, 32)


def test_search_by_text_ranks_the_target_gallery_by_cosine(model, trained_space):
    g = runs.load_embeddings(trained_space.runs["joint"], "test")["image"]
    hits = model.search(text="sieben", target="image", k=5)
    q = model.embed(text=["sieben"])[0]
    s = (g["emb"] / np.linalg.norm(g["emb"], axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    order = np.argsort(-s, kind="stable")[:5]
    assert [h.id for h in hits] == [str(g["id"][i]) for i in order]
    np.testing.assert_allclose([h.score for h in hits], s[order], atol=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and {h.modality for h in hits} == {"image"}


def test_search_by_like_and_by_vector_agree(model):
    item = model.gallery()["id"][0]
    by_like = model.search(like=str(item), k=4)
    by_vector = model.search(vector=model.vector(str(item)), k=5)
    assert str(item) not in [h.id for h in by_like]
    assert by_vector[0].id == str(item) and [h.id for h in by_vector[1:]] == [h.id for h in by_like]


@pytest.mark.parametrize("call, says", [
    (lambda m: m.search(text="a", like="b"), "exactly one query"),
    (lambda m: m.search(), "exactly one query"),
    (lambda m: m.search(vector=np.ones(3)), "32 finite floats"),
    (lambda m: m.search(vector=np.full(32, np.nan)), "not all finite"),
    (lambda m: m.search(like="a", k=0), "at least 1"),
    (lambda m: m.embed(), "nothing to embed"),
    (lambda m: m.embed(files=["x.unknown"]), "no such file"),
])
def test_bad_calls_are_one_clear_error(model, call, says):
    with pytest.raises((ValueError, FileNotFoundError), match=says):
        call(model)


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        mmx.load(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        mmx.load(tmp_path)
