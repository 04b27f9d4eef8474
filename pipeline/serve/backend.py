"""What ``mmx serve`` asks of a trained run: embed a query, rank the gallery, find an item's media.

:class:`Backend` is the one place the web app touches the rest of mmx: the run is opened
through :func:`mmx.pipeline.embed.open_space`, the gallery is the run's embedded split (or a
file written by ``mmx embed --manifest ... -o``, as ``mmx search --gallery``), and ranking is
:func:`mmx.pipeline.ranking.rank` (exact, or the gallery's approximate index).

Media are served from the gallery's manifest only: a gallery row maps to the file the
manifest lists for it, and only when that file lies inside the manifest's folder, so no
request names a path and nothing outside the gallery's sources can be read.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Hit:
    rank: int
    score: float
    row: int
    id: str
    modality: str
    label: str
    text: str  # a text item's own words, when the manifest has them
    media: str  # "/media/<row>" when the item's file can be served, else ""


class Backend:
    """A run ready to answer queries; its methods are safe to call from several threads."""

    def __init__(self, run: str | Path, manifest: str | Path | None = None, split: str = "test",
                 gallery: str | Path | None = None, device: str = "cpu", index_mode: str = "auto"):
        from mmx.pipeline.cli_search import _gallery
        from mmx.pipeline.embed import open_space

        self.run = Path(run)
        self.index_mode = index_mode
        self.gallery = _gallery(str(run), split, None, str(gallery) if gallery else None)
        self.space = open_space(run, device)
        if self.gallery["emb"].shape[1] != self.space.cfg.embed_dim:
            raise ValueError(f"{gallery or run}: gallery rows have {self.gallery['emb'].shape[1]} dimensions, "
                             f"the run's space {self.space.cfg.embed_dim}")
        self.files, self.texts = _sources(manifest, self.gallery["id"], self.gallery["modality"])
        self._lock = threading.Lock()
        self._subsets: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def query_modalities(self) -> list[str]:
        return [m.value for m in self.space.modalities]

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(self.gallery["modality"].tolist()))

    def info(self) -> dict:
        counts = {t: int((self.gallery["modality"] == t).sum()) for t in self.targets}
        return {"run": self.run.name, "strategy": str(getattr(self.space.cfg, "strategy", "")),
                "query_modalities": self.query_modalities, "targets": counts, "items": len(self.gallery["id"]),
                "with_media": int(sum(1 for f in self.files if f)), "embed_dim": int(self.space.cfg.embed_dim)}

    def item(self, row: int) -> dict:
        return {"row": row, "id": str(self.gallery["id"][row]), "modality": str(self.gallery["modality"][row]),
                "label": str(self.gallery["label"][row]), "text": self.texts[row],
                "media": f"/media/{row}" if self.files[row] else ""}

    def items(self, modality: str = "", offset: int = 0, limit: int = 50) -> list[dict]:
        rows = np.flatnonzero(self.gallery["modality"] == modality) if modality else np.arange(len(self.gallery["id"]))
        return [self.item(int(r)) for r in rows[offset : offset + limit]]

    def embed_text(self, text: str) -> np.ndarray:
        return self._embed([("text", {"id": "query", "uri": "", "text": text})])

    def embed_file(self, path: str | Path) -> tuple[str, np.ndarray]:
        from mmx.pipeline.embed import modality_of_file

        modality = modality_of_file(str(path)).value
        if modality not in self.query_modalities:
            raise ValueError(f"the run embeds {', '.join(self.query_modalities)}, not {modality}")
        return modality, self._embed([(modality, {"id": "upload", "uri": str(path), "text": ""})])

    def row_vector(self, row: int) -> np.ndarray:
        if not 0 <= row < len(self.gallery["id"]):
            raise IndexError(f"no gallery item {row}; the gallery has {len(self.gallery['id'])}")
        return self.gallery["emb"][row : row + 1]

    def search(self, query: np.ndarray, k: int = 12, targets: list[str] | None = None) -> list[Hit]:
        from mmx.pipeline.ranking import rank

        unknown = sorted(set(targets or []) - set(self.targets))
        if unknown:
            raise ValueError(f"no gallery modality {', '.join(unknown)}; the gallery has {', '.join(self.targets)}")
        emb, rows = self._subset(tuple(sorted(targets or self.targets)))
        if not len(rows):
            return []
        with self._lock:
            scores, found = rank(self.run, query, emb, k, self.index_mode, device="cpu")
        return [Hit(rank=i + 1, score=round(float(s), 4), **self.item(int(rows[j])))
                for i, (s, j) in enumerate(zip(scores[0], found[0])) if j >= 0]

    def media_path(self, row: int) -> Path | None:
        return self.files[row] if 0 <= row < len(self.files) else None

    def _embed(self, queries) -> np.ndarray:
        from mmx.pipeline.cli_search import embed_all

        with self._lock:
            return embed_all(self.space, queries)["emb"]

    def _subset(self, targets: tuple[str, ...]):
        if targets not in self._subsets:
            rows = np.flatnonzero(np.isin(self.gallery["modality"], targets))
            self._subsets[targets] = (np.ascontiguousarray(self.gallery["emb"][rows]), rows)
        return self._subsets[targets]


def _sources(manifest, ids, modalities) -> tuple[list[Path | None], list[str]]:
    """Per gallery row: the manifest's file for it (only inside the manifest's folder) and its text."""
    n = len(ids)
    if not manifest:
        return [None] * n, [""] * n
    from mmx.extract.manifest import read_manifest

    m = read_manifest(manifest)
    root = Path(manifest).resolve().parent
    by_id = {}
    for r in m.frame.itertuples(index=False):
        path = None
        if r.uri and "://" not in r.uri:
            p = Path(m.resolve(r.uri)).resolve()
            path = p if p.is_relative_to(root) and p.is_file() else None
        by_id[(r.modality, r.id)] = (path, r.text or "")
    out = [by_id.get((str(mod), str(i)), (None, "")) for i, mod in zip(ids, modalities)]
    return [p for p, _ in out], [t for _, t in out]
