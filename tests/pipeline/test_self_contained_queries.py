"""Queries that need no backbone: ``mmx search --like ID`` and ``--vector FILE``, checked against a
brute-force cosine ranking, their refusals, and a run trained on imported features."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.eval import runs
from mmx.pipeline.cli import main


def _hits(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _brute(gallery: dict, q: np.ndarray, k: int, leave_out: str | None = None) -> list[str]:
    g = gallery["emb"] / np.linalg.norm(gallery["emb"], axis=1, keepdims=True)
    s = g @ (q / np.linalg.norm(q))
    order = [i for i in np.argsort(-s, kind="stable") if gallery["id"][i] != leave_out]
    return [str(gallery["id"][i]) for i in order[:k]]


def test_like_ranks_as_brute_force_without_the_item_itself(trained_space):
    run = trained_space.runs["joint"]
    test = runs.load_embeddings(run, "test")
    item = str(test["text"]["id"][2])
    with trained_space.without_cache():
        res = CliRunner().invoke(main, ["search", str(run), "--like", item, "--target", "image", "--top", "4", "--json"])
        assert res.exit_code == 0, res.output
        assert [h["id"] for h in _hits(res.output)] == _brute(test["image"], test["text"]["emb"][2], 4)
        res = CliRunner().invoke(main, ["search", str(run), "--like", item, "--target", "text", "--top", "3", "--json"])
    hits = _hits(res.output)
    assert item not in [h["id"] for h in hits] and len(hits) == 3
    assert [h["id"] for h in hits] == _brute(test["text"], test["text"]["emb"][2], 3, leave_out=item)


def test_vector_file_of_several_rows_ranks_as_brute_force(trained_space, tmp_path):
    run = trained_space.runs["eao"]
    test = runs.load_embeddings(run, "test")
    q = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    with trained_space.without_cache():
        res = CliRunner().invoke(main, ["search", str(run), "--vector", str(tmp_path / "q.npy"), "--target", "audio",
                                        "--top", "5", "--json"])
    assert res.exit_code == 0, res.output
    hits = _hits(res.output)
    for i in range(2):
        got = [h["id"] for h in hits if h["query"] == f"vector-{i + 1}"]
        assert got == _brute(test["audio"], q[i], 5)


BAD_VECTORS = {
    "of another width": (lambda: np.ones((1, 7), np.float32), "7 dimensions"),
    "with a NaN": (lambda: np.array([[np.nan] + [1.0] * 31], np.float32), "non-finite"),
    "of integers": (lambda: np.ones((1, 32), np.int64), "expected floats"),
    "of three axes": (lambda: np.ones((1, 1, 32), np.float32), "expected floats"),
}


@pytest.mark.parametrize("what", sorted(BAD_VECTORS))
def test_a_bad_vector_file_is_one_line(trained_space, tmp_path, what):
    make, says = BAD_VECTORS[what]
    np.save(tmp_path / "q.npy", make())
    res = CliRunner().invoke(main, ["search", str(trained_space.runs["joint"]), "--vector", str(tmp_path / "q.npy")])
    assert res.exit_code == 1 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_a_pickled_or_oversized_vector_file_is_refused_unread(trained_space, tmp_path, monkeypatch):
    from mmx.pipeline import queries

    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    res = CliRunner().invoke(main, ["search", str(trained_space.runs["joint"]), "--vector", str(tmp_path / "obj.npy")])
    assert res.exit_code == 1 and "not a .npy array" in res.output, res.output
    np.save(tmp_path / "big.npy", np.ones((40, 32), np.float32))
    monkeypatch.setattr(queries, "MAX_VECTOR_BYTES", 1000)
    res = CliRunner().invoke(main, ["search", str(trained_space.runs["joint"]), "--vector", str(tmp_path / "big.npy")])
    assert res.exit_code == 1 and "at most" in res.output, res.output


def test_an_unknown_like_id_is_one_line(trained_space):
    res = CliRunner().invoke(main, ["search", str(trained_space.runs["joint"]), "--like", "no-such-item"])
    assert res.exit_code == 1 and "no gallery item has this id" in res.output, res.output


def test_nothing_to_search_for_is_a_usage_error(trained_space):
    res = CliRunner().invoke(main, ["search", str(trained_space.runs["joint"])])
    assert res.exit_code == 2 and "--like" in res.output


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    """A joint run on features imported with 'mmx cache import' (backbone imported:NAME): two
    modalities whose features cluster by class, as pre-extracted benchmark features do."""
    from mmx.cache.importers import Source, import_features
    from mmx.train.config import resolve
    from mmx.train.loop import train

    root = tmp_path_factory.mktemp("imported")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    for modality in ("image", "text"):
        for split, n in (("train", 40), ("val", 8), ("test", 12)):
            labels = np.arange(n) % 4
            feats = centres[labels] + 0.3 * rng.standard_normal((n, 16))
            np.savez(root / f"{modality}-{split}.npz", features=feats.astype(np.float32), labels=labels)
        import_features(root / "cache", "wikiData", modality, [
            Source(root / f"{modality}-{s}.npz", split=s, features="features", labels="labels") for s in ("train", "val", "test")],
            name="wikiData")
    with warnings.catch_warnings():  # a tiny val split: the chance-recall caution is expected
        warnings.simplefilter("ignore")
        return train(resolve(["fuerer-tri"], overrides={"dataset": "wikiData", "cache": str(root / "cache"), "device": "cpu",
                                                        "modalities": ["image", "text"], "out": str(root / "runs"), "name": "r",
                                                        "epochs": 1, "embed_dim": 8, "batch_size": 8}), log=lambda s: None)


def test_a_run_on_imported_features_says_only_like_and_vector_work(imported_run, tmp_path):
    res = CliRunner().invoke(main, ["search", str(imported_run), "--text", "hello"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "imported:wikiData" in res.output and "--like ID" in res.output and "--vector FILE" in res.output
    test = runs.load_embeddings(imported_run, "test")
    item = str(test["image"]["id"][0])
    res = CliRunner().invoke(main, ["search", str(imported_run), "--like", item, "--target", "text", "--top", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert [h["id"] for h in _hits(res.output)] == _brute(test["text"], test["image"]["emb"][0], 3)
