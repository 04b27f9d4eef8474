"""Queries that need no backbone: a gallery item (``--like ID``) or vectors in the joint space (``--vector FILE``).

They work for every run, including one trained on imported features, where new media cannot be
embedded. :func:`read_vectors` reads a ``.npy`` of one or more vectors (or the ``emb`` rows of
an ``mmx embed -o`` file), refused unless it is a regular file under :data:`MAX_VECTOR_BYTES`,
a plain float array (no pickles) of the space's width and finite; :func:`like` finds gallery items by id; :func:`rank` is the exact top-k,
leaving each ``--like`` query's own row out of its hits.
"""

from __future__ import annotations

import os

import numpy as np

MAX_VECTOR_BYTES = 64 << 20  # 64 MiB: 65k queries of 256 float32; a query file, not a gallery
MAX_VECTORS = 65536


def read_vectors(path: str, dim: int) -> np.ndarray:
    """``(Q, dim)`` float32 rows of the ``.npy`` at ``path`` (one vector ``(dim,)`` or several ``(Q, dim)``)."""
    from mmx.cache import files

    if str(path).endswith(".npz"):  # what 'mmx embed -o' writes: its emb rows are the vectors
        arrays = files.load_npz(path, MAX_VECTOR_BYTES, "query vector file")
        if "emb" not in arrays:
            raise files.UnsafeFileError(f"{path}: no emb array (it has {', '.join(arrays) or 'none'}); "
                                        "give a .npy of vectors or a file written by 'mmx embed -o'")
        return _checked(arrays["emb"], path, dim)
    fd = files.open_regular(path, "query vector file")
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fd).st_size
        if size > MAX_VECTOR_BYTES:
            raise files.UnsafeFileError(f"{path}: {size} bytes; a --vector file holds at most {MAX_VECTOR_BYTES >> 20} MiB "
                                        f"of queries (up to {MAX_VECTORS} vectors): split it")
        try:
            a = np.load(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            text = str(exc).strip().splitlines()
            raise files.UnsafeFileError(f"{path}: not a .npy array of vectors ({text[0] if text else type(exc).__name__}); "
                                        "write one with numpy.save") from None
    return _checked(a, path, dim)


def _checked(a, path: str, dim: int) -> np.ndarray:
    from mmx.cache import files

    if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.ndim not in (1, 2):
        kind = getattr(a, "dtype", type(a).__name__)
        raise files.UnsafeFileError(f"{path}: {kind} of shape {getattr(a, 'shape', '?')}; expected floats, one vector "
                                    f"({dim},) or rows ({'Q'}, {dim})")
    a = a.reshape(1, -1) if a.ndim == 1 else a
    if a.shape[1] != dim:
        raise files.UnsafeFileError(f"{path}: vectors of {a.shape[1]} dimensions; this run's joint space has {dim}")
    if not 1 <= len(a) <= MAX_VECTORS:
        raise files.UnsafeFileError(f"{path}: {len(a)} vectors; give 1 to {MAX_VECTORS}")
    files.check_finite("the vectors", a, path)
    return np.ascontiguousarray(a, np.float32)


def like(gallery: dict, wanted: list[str]) -> np.ndarray:
    """Row of ``gallery`` (``{"emb", "id", "modality", ...}``) for each of ``wanted``: an id, or
    ``MODALITY:ID`` where the same id names items of several modalities."""
    rows = []
    names = set(map(str, gallery["modality"]))
    for want in wanted:
        name, sep, rest = want.partition(":")
        hit = np.flatnonzero((gallery["id"] == rest) & (gallery["modality"] == name)) if sep and name in names else []
        if not len(hit):
            hit = np.flatnonzero(gallery["id"] == want)
        if not len(hit):
            raise ValueError(f"--like {want}: no gallery item has this id (ids such as "
                             f"{', '.join(map(str, gallery['id'][:3]))}; see 'mmx eval' or the run's embeddings)")
        if len(hit) > 1:
            where = ", ".join(f"{gallery['modality'][i]}:{want}" for i in hit[:4])
            raise ValueError(f"--like {want}: the id names {len(hit)} items ({where}); give one as MODALITY:ID")
        rows.append(int(hit[0]))
    return np.asarray(rows, np.int64)
