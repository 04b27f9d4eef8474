"""cache/atomic.py: a file holds its new content or its old one, never a part, and no temporary stays."""

import numpy as np
import pytest

from mmx.cache.atomic import atomic_path, atomic_write_bytes


def test_a_writer_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half of the n")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_the_temporary_keeps_the_suffix_writers_go_by(tmp_path):
    """np.savez appends .npz to a name without it, matplotlib picks the format from it."""
    path = tmp_path / "emb.npz"
    with atomic_path(path) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path and tmp.name.startswith(".")
        np.savez(tmp, x=np.arange(3))
    assert np.load(path)["x"].tolist() == [0, 1, 2] and sorted(p.name for p in tmp_path.iterdir()) == ["emb.npz"]
