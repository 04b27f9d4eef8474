"""Chunked exact search equals a brute-force ranking, whatever the chunk size."""

from __future__ import annotations

import numpy as np
import pytest

from mmx.eval.search import top_k, unit_rows


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_top_k_equals_brute_force(chunk):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((300, 16)).astype(np.float32)
    gallery[200] = gallery[10]  # a tie: the earlier row ranks first
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    queries[0] = gallery[10] * 3.0  # scale does not matter: cosine
    scores, rows = top_k(queries, gallery, k=8, chunk=chunk, device="cpu")
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    full = q @ g.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-6)
    assert rows[0, 0] == 10 and rows[0, 1] == 200


def test_k_larger_than_the_gallery_returns_every_row():
    scores, rows = top_k(np.ones((1, 3), np.float32), np.eye(3, dtype=np.float32), k=10, chunk=2, device="cpu")
    assert sorted(rows[0].tolist()) == [0, 1, 2] and scores.shape == (1, 3)


def _reference(queries, gallery, k, cosine=True):
    """Brute force in float64: every score (the product first, then the norms divided out, so
    exact products stay exact), then a stable sort (equal scores keep gallery order)."""
    g, q = gallery.astype(np.float64), queries.astype(np.float64)
    full = (q @ g.T) / np.linalg.norm(q, axis=1, keepdims=True)
    if cosine:
        full /= np.maximum(np.linalg.norm(g, axis=1), 1e-12)[None, :]
    return full, np.argsort(-full, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("unit_norm", [False, True])
def test_random_galleries_with_many_ties_match_a_brute_force_ranking(seed, unit_norm):
    """Galleries of few distinct rows, repeated, so exact ties cross every chunk's top-k cut,
    with random chunk sizes and k: the rows equal the brute-force stable ranking.

    Rows are signed permutations of one small-integer vector (one norm for all) and queries are
    +-1 (norm 2 or 4), so every score is exact in float32 whatever order BLAS sums in: equal
    scores are exactly equal, as the reference sees them. ``unit_norm=True`` ranks the rows as
    given (the inner product), which is what it promises for rows already of unit length."""
    rng = np.random.default_rng(seed)
    d = int(rng.choice([4, 16]))
    base = rng.integers(-3, 4, d).astype(np.float32)
    base[0] = 1.0

    def signed_permutations(m):
        return np.stack([rng.permutation(base) * rng.choice([-1.0, 1.0], d) for _ in range(m)]).astype(np.float32)

    distinct = signed_permutations(int(rng.integers(1, 12)))
    n = int(rng.integers(1, 400))
    gallery = distinct[rng.integers(0, len(distinct), n)]
    own = rng.random(n) < 0.3
    gallery[own] = signed_permutations(int(own.sum()))  # some rows entirely their own
    queries = rng.choice([-1.0, 1.0], (int(rng.integers(1, 9)), d)).astype(np.float32)
    k, chunk = int(rng.integers(1, 40)), int(rng.integers(1, 120))
    scores, rows = top_k(queries, gallery, k=k, chunk=chunk, device="cpu", unit_norm=unit_norm)
    full, want = _reference(queries, gallery, k, cosine=not unit_norm)
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-5)


def test_float_galleries_match_a_brute_force_ranking():
    rng = np.random.default_rng(11)
    gallery = rng.standard_normal((3000, 32)).astype(np.float32) * rng.uniform(0.1, 5, (3000, 1)).astype(np.float32)
    queries = rng.standard_normal((12, 32)).astype(np.float32)
    full, want = _reference(queries, gallery, 25)
    for ranked, unit in ((gallery, False), (unit_rows(gallery.copy()), True)):
        scores, rows = top_k(queries, ranked, k=25, chunk=700, device="cpu", unit_norm=unit)
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-6)


def test_exact_ties_across_the_cut_keep_the_earliest_rows():
    """Twenty identical rows, k=5, chunk 7: each chunk's cut falls inside the tie; the first five win."""
    gallery = np.tile(np.array([[1.0, 0.0]], np.float32), (20, 1))
    gallery = np.concatenate([np.array([[0.0, 1.0]] * 3, np.float32), gallery])
    for unit_norm in (False, True):
        _, rows = top_k(np.array([[1.0, 0.0]], np.float32), gallery, k=5, chunk=7, device="cpu", unit_norm=unit_norm)
        assert rows[0].tolist() == [3, 4, 5, 6, 7]


def test_unit_rows_scales_in_place_and_leaves_zero_rows_zero():
    emb = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]], np.float32)
    out = unit_rows(emb, chunk=2)
    assert out is emb
    np.testing.assert_allclose(emb, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], rtol=1e-6)
    f64 = unit_rows(np.array([[0.0, 5.0]]))
    assert f64.dtype == np.float32 and f64.tolist() == [[0.0, 1.0]]


def test_many_queries_shrink_the_chunk_and_rank_the_same(monkeypatch):
    import mmx.eval.search as search

    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((500, 8)).astype(np.float32)
    queries = rng.standard_normal((40, 8)).astype(np.float32)
    want = top_k(queries, gallery, k=6, device="cpu")
    monkeypatch.setattr(search, "SCORE_BUDGET", 40 * 13)  # 13 gallery rows per chunk
    got = top_k(queries, gallery, k=6, device="cpu")
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


@pytest.mark.gpu
def test_cuda_ranks_as_the_cpu_does():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(4)
    gallery = unit_rows(rng.standard_normal((70_000, 64)).astype(np.float32))
    gallery[50_000] = gallery[7]
    queries = rng.standard_normal((16, 64)).astype(np.float32)
    queries[0] = gallery[7]
    cpu = top_k(queries, gallery, k=10, chunk=30_000, device="cpu", unit_norm=True)
    gpu = top_k(queries, gallery, k=10, chunk=30_000, device="cuda", unit_norm=True)
    assert gpu[1][0, 0] == 7 and gpu[1][0, 1] == 50_000
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-4, atol=1e-4)
    assert (gpu[1] == cpu[1]).mean() > 0.99  # TF32-free float32 on both, but summation order differs


def test_a_written_gallery_is_unit_length_and_read_as_it_is(tmp_path):
    from mmx.pipeline.cli_search import _gallery
    from mmx.pipeline.embed import save_gallery

    emb = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], np.float32)
    cols = {"id": np.array(["a", "b", "c"]), "modality": np.array(["image", "text", "image"]),
            "label": np.array(["", "", ""]), "uri": np.array(["", "", ""])}
    save_gallery(tmp_path / "g.npz", {"emb": emb, **cols})
    np.testing.assert_array_equal(emb, [[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])  # the caller's rows untouched
    with np.load(tmp_path / "g.npz") as z:
        assert bool(z["unit_norm"])
        np.testing.assert_allclose(z["emb"], [[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], rtol=1e-6)
    g = _gallery("unused", "test", ["image"], str(tmp_path / "g.npz"))
    assert "unit_norm" not in g and g["id"].tolist() == ["a", "c"]
    np.testing.assert_allclose(g["emb"], [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)


def test_a_gallery_of_unknown_state_is_scaled_once_on_load(tmp_path):
    """A file without the flag (written by hand, or by an older mmx) is scaled on load, so
    ranking it as unit-length rows gives the cosine ranking."""
    from mmx.pipeline.cli_search import _gallery

    rng = np.random.default_rng(5)
    emb = rng.standard_normal((50, 6)).astype(np.float32) * rng.uniform(0.1, 9, (50, 1)).astype(np.float32)
    np.savez(tmp_path / "old.npz", emb=emb, id=np.array([str(i) for i in range(50)]), modality=np.array(["image"] * 50),
             label=np.array([""] * 50), uri=np.array([""] * 50))
    g = _gallery("unused", "test", None, str(tmp_path / "old.npz"))
    np.testing.assert_allclose(np.linalg.norm(g["emb"], axis=1), 1.0, rtol=1e-6)
    q = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(top_k(q, g["emb"], k=7, device="cpu", unit_norm=True)[1],
                                  top_k(q, emb, k=7, device="cpu")[1])
