"""The approximate index (eval/ann.py) against exact search, its keying by gallery, and its refusals."""

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'mmx[ann]')")

from mmx.eval import ann  # noqa: E402
from mmx.eval.search import top_k  # noqa: E402


def _clustered(n, d=32, centres=40, seed=0):
    """Rows around random centres (the same for every ``seed``), as trained embeddings cluster by class."""
    c = np.random.default_rng(12345).standard_normal((centres, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return (c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d))).astype(np.float32)


def _recall(got, truth):
    return np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got.tolist(), truth.tolist())])


@pytest.mark.parametrize("on_disk", [False, True])
def test_recall_at_10_against_exact_search(tmp_path, on_disk):
    gallery = _clustered(6000)
    queries = _clustered(100, seed=1)  # not gallery rows: new draws, as a user's queries are
    other = _clustered(100, d=32, seed=2) + np.random.default_rng(3).standard_normal((100, 32)).astype(np.float32)
    index = ann.build(gallery, tmp_path, on_disk=on_disk, shard=2500)
    assert index.meta["nlist"] == ann.default_nlist(6000) and 1 <= index.meta["nprobe"] < index.meta["nlist"]
    s_exact, truth = top_k(queries, gallery, 10, device="cpu")
    s_ann, got = index.search(queries, 10)
    assert _recall(got, truth) >= 0.95
    # IVF-Flat scores the rows it visits exactly: where the first hit agrees, so does its score
    same = got[:, 0] == truth[:, 0]
    assert same.mean() > 0.9 and np.allclose(s_ann[same, 0], s_exact[same, 0], atol=1e-5)
    # queries off the gallery's clusters (twice their spread, as another modality's lie) keep the recall too
    _, truth_far = top_k(other, gallery, 10, device="cpu")
    assert _recall(index.search(other, 10)[1], truth_far) >= 0.95
    # visiting every cell is exact search
    _, all_cells = index.search(queries, 10, nprobe=index.meta["nlist"])
    assert _recall(all_cells, truth) == 1.0
    if on_disk:
        assert (tmp_path / f"{index.meta['digest']}.ivfdata").stat().st_size >= gallery.nbytes


def test_a_changed_gallery_gets_its_own_index(tmp_path):
    gallery = _clustered(3000)
    first = ann.for_gallery(gallery, tmp_path)
    again = ann.for_gallery(gallery, tmp_path)
    assert again.meta["digest"] == first.meta["digest"] and len(list(tmp_path.glob("*.faiss"))) == 1
    changed = gallery.copy()
    changed[7] = -changed[7]  # one row changes: the old index must not answer for it
    second = ann.for_gallery(changed, tmp_path)
    assert second.meta["digest"] != first.meta["digest"] and len(list(tmp_path.glob("*.faiss"))) == 2
    _, rows = second.search(changed[7:8], 1, nprobe=second.meta["nlist"])
    assert rows[0, 0] == 7


def _one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_a_corrupt_index_file_is_one_line(tmp_path):
    gallery = _clustered(2000)
    index = ann.build(gallery, tmp_path)
    index.path.write_bytes(b"not a faiss index at all" * 10)
    with pytest.raises(ValueError) as exc:
        ann.for_gallery(gallery, tmp_path)
    assert str(index.path) in _one_line(exc) and "rebuild" in str(exc.value)


def test_a_foreign_index_is_refused(tmp_path):
    gallery, other = _clustered(2000), _clustered(2500, seed=3)
    mine = ann.build(gallery, tmp_path / "mine")
    theirs = ann.build(other, tmp_path / "theirs")
    # another gallery's index copied under this gallery's name: its record names the other digest
    theirs.path.with_suffix(".json").replace(mine.path.with_suffix(".json"))
    with pytest.raises(ValueError) as exc:
        ann.for_gallery(gallery, tmp_path / "mine")
    assert "not an mmx index record" in _one_line(exc)
    # a record that is not JSON
    mine.path.with_suffix(".json").write_text("{ nope")
    with pytest.raises(ValueError) as exc:
        ann.for_gallery(gallery, tmp_path / "mine")
    assert "rebuild" in _one_line(exc)


def test_without_faiss_the_message_says_how_to_get_it(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ValueError, match=r"mmx\[ann\]"):
        ann.faiss_module()
