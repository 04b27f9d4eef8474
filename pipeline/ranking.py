"""Ranking a gallery for ``mmx search``, ``mmx serve`` and ``mmx index``: exact, or through the
gallery's approximate index (:mod:`mmx.eval.ann`), by :func:`rank` and the ``--index`` option.

Indexes live in ``RUN/index/<gallery digest>.faiss``: a gallery that changes gets its own
index, never a stale one.
"""

from __future__ import annotations

from pathlib import Path

import click

INDEX_MODES = ("auto", "exact", "ann")


def index_folder(run: str | Path) -> Path:
    return Path(run) / "index"


def use_ann(mode: str, n: int) -> bool:
    """Whether ``mode`` ranks a gallery of ``n`` rows approximately: ``auto`` does from
    :data:`mmx.eval.ann.EXACT_BELOW` rows when FAISS is installed."""
    from mmx.eval import ann

    if mode == "ann":
        return True
    if mode == "auto" and n >= ann.EXACT_BELOW:
        try:
            ann.faiss_module()
        except ValueError:
            return False
        return True
    return False


def rank(run, queries, gallery, k: int, mode: str = "auto", device=None, log=None,
         own: list[int | None] | None = None, unit_norm: bool = False):
    """``(scores, rows)`` of the ``k`` best gallery rows per query: exact, or through the gallery's index.

    ``own[q]``, when given, is a gallery row left out of query ``q``'s hits (a ``--like`` item
    itself: it would always come first). ``unit_norm``: the gallery's rows are unit length already.
    """
    import numpy as np

    own = list(own) if own is not None else [None] * len(queries)
    extra = int(any(o is not None for o in own))
    if use_ann(mode, len(gallery)):
        from mmx.eval import ann

        scores, rows = ann.for_gallery(gallery, index_folder(run), log=log).search(queries, k + extra)
    else:
        from mmx.eval.search import top_k

        scores, rows = top_k(queries, gallery, k + extra, device=device, unit_norm=unit_norm)
    if not extra:
        return scores, rows
    keep = min(k, len(gallery) - extra) if len(gallery) > extra else 0
    out_s, out_r = np.zeros((len(rows), keep), scores.dtype), np.zeros((len(rows), keep), rows.dtype)
    for q in range(len(rows)):
        mask = rows[q] != (own[q] if own[q] is not None else -1)
        out_s[q], out_r[q] = scores[q][mask][:keep], rows[q][mask][:keep]
    return out_s, out_r


def index_option():
    return click.option("--index", "index_mode", type=click.Choice(INDEX_MODES), default="auto",
                        help="exact: rank every row; ann: through an approximate FAISS index of the gallery "
                             "(built and kept in RUN/index/ when missing); auto: ann from 1000000 rows when FAISS is installed.")
