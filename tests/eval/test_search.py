"""Chunked exact search equals a brute-force ranking, whatever the chunk size."""

from __future__ import annotations

import numpy as np
import pytest

from mmx.eval.search import top_k


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
