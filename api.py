"""The Python API: a trained space in a few lines, from a run folder or an exported bundle.

::

    import mmx
    m = mmx.load("runs/RUN")                      # or a bundle written by 'mmx export'
    m.embed(text=["a spoken seven"])              # (1, d) float32, rows in the order given
    m.embed(files=["seven.wav", "7.png"])         # modality from each file's extension
    m.search(text="seven", target="image", k=5)   # [Hit(rank, score, id, modality, label, location)]
    m.search(like="img-7-1234", k=5)              # by a gallery item; m.search(vector=v) by a vector

``load`` reads only the folder it is given: weights, config, the model's shape, the
normaliser and the store records (backbone identity, options, preprocessing), from which the
backbones are rebuilt offline (the packaged defaults load from site-packages). Searches rank
the run's own embeddings of a split (``split="test"`` by default) or a gallery written by
``mmx embed --manifest ... -o`` (``gallery=PATH``). Guide: docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Hit:
    """One ranked gallery item."""

    rank: int
    score: float  # cosine similarity
    id: str
    modality: str  # or a fused name such as audio+video
    label: str
    location: str  # the file or text the item came from, where the gallery records it


class Model:
    """A trained joint space: :meth:`embed` media and texts into it, :meth:`search` its gallery."""

    def __init__(self, space):
        self._space = space
        self._galleries: dict = {}

    @property
    def path(self) -> Path:
        return self._space.run

    @property
    def modalities(self) -> list[str]:
        """The modalities of the space (what :meth:`embed` and ``target`` accept)."""
        return list(self._space.cfg.modalities)

    @property
    def dim(self) -> int:
        """Width of the joint space."""
        return int(self._space.cfg.embed_dim)

    @property
    def config(self) -> dict:
        """The run's resolved training config."""
        return self._space.cfg.to_dict()

    def embeddable(self, modality: str) -> bool:
        """Whether new media of ``modality`` can be embedded (False for imported features)."""
        from mmx.cache.modality import Modality
        from mmx.pipeline.embed import embeddable

        return embeddable(self._space.data.meta.get(Modality.parse(modality)) or {})

    def embed(self, text: Sequence[str] | str = (), files: Sequence[str | Path] | str | Path = ()) -> np.ndarray:
        """``(N, dim)`` float32 embeddings: ``files`` (image, audio, video; modality from the
        extension) first, then ``text``, each in the order given."""
        from mmx.pipeline.cli_search import _queries, embed_all

        texts = [text] if isinstance(text, str) else list(text)
        paths = [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]
        if not texts and not paths:
            raise ValueError("nothing to embed: give text=[...] or files=[...]")
        return embed_all(self._space, _queries(tuple(paths), tuple(texts)))["emb"]

    def gallery(self, split: str = "test", target: str | Sequence[str] | None = None, gallery: str | Path | None = None) -> dict:
        """The rows a search ranks: ``{"emb", "id", "modality", "label", "uri"}`` (arrays of one row each)."""
        from mmx.pipeline.cli_search import _gallery  # the same gallery as 'mmx search'

        targets = [target] if isinstance(target, str) else (list(target) if target else None)
        key = (split, tuple(targets or ()), str(gallery or ""))
        if key not in self._galleries:
            self._galleries[key] = _gallery(str(self.path), split, targets, str(gallery) if gallery else None)
        return self._galleries[key]

    def vector(self, item: str, split: str = "test") -> np.ndarray:
        """The ``(dim,)`` embedding of gallery item ``item`` (an id, or ``MODALITY:ID``)."""
        from mmx.pipeline.queries import like

        g = self.gallery(split)
        return g["emb"][like(g, [item])[0]].astype(np.float32)

    def search(self, text: str | None = None, file: str | Path | None = None, vector=None, like: str | None = None,
               target: str | Sequence[str] | None = None, k: int = 10, split: str = "test",
               gallery: str | Path | None = None) -> list[Hit]:
        """The ``k`` gallery items nearest one query: ``text``, a ``file``, a ``vector`` (``(dim,)``)
        or a gallery item ``like`` (left out of its own hits). ``target``: gallery modalities."""
        from mmx.pipeline import queries

        given = [x is not None for x in (text, file, vector, like)]
        if sum(given) != 1:
            raise ValueError("search takes exactly one query: text=, file=, vector= or like=")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        g = self.gallery(split, target, gallery)
        own: list = [None]
        if like is not None:
            whole = self.gallery(split, None, gallery)
            row = int(queries.like(whole, [like])[0])
            q = whole["emb"][row : row + 1]
            match = np.flatnonzero((g["id"] == whole["id"][row]) & (g["modality"] == whole["modality"][row]))
            own = [int(match[0]) if len(match) else None]
        elif vector is not None:
            q = np.asarray(vector, np.float32).reshape(1, -1)
            if q.shape[1] != self.dim or not np.isfinite(q).all():
                raise ValueError(f"vector: {q.shape[1]} values{'' if np.isfinite(q).all() else ', not all finite'}; "
                                 f"a query of this space is {self.dim} finite floats")
        else:
            q = self.embed(text=[text] if text is not None else [], files=[file] if file is not None else [])
        if g["emb"].shape[1] != self.dim:
            raise ValueError(f"{gallery}: gallery rows have {g['emb'].shape[1]} dimensions, this space {self.dim}")
        from mmx.pipeline.ranking import rank

        scores, rows = rank(None, q, g["emb"], k, "exact", str(self._space.device), own=own)
        return [Hit(r + 1, float(scores[0, r]), str(g["id"][i]), str(g["modality"][i]), str(g["label"][i]), str(g["uri"][i]))
                for r, i in enumerate(rows[0])]

    def __repr__(self) -> str:
        return f"mmx.Model({str(self.path)!r}, modalities={self.modalities}, dim={self.dim})"


def load(path: str | Path, device: str = "cpu", log=lambda s: None) -> Model:
    """The trained space at ``path``: a run folder of ``mmx train`` or a bundle of ``mmx export``.

    ``device``: where the model and backbones run (cpu, cuda, cuda:N, auto). ``log`` hears one
    line when a run from an older mmx has to be rebuilt from its training cache."""
    from mmx.pipeline.embed import open_space

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such folder; give a run folder of 'mmx train' or a bundle of 'mmx export'")
    return Model(open_space(path, device, log))
