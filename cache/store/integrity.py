"""Integrity checks of a store: shapes, shard markers, missing files and chunk checksums.

:meth:`StoreIntegrity.problems` (and :meth:`~StoreIntegrity.verify`, its messages) reads every
chunk of every complete shard; ``_check_complete`` is the cheaper check every load runs first.
Part of :class:`~mmx.cache.store.feature_store.FeatureStore`: it reads columns and tokens
through the store's reading part (``column``, ``_tokens``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmx.cache.store.errors import CorruptStoreError
from mmx.cache.store.layout import (
    META_ARRAYS,
    RECREATE,
    STATUS_OK,
    STATUS_PENDING,
    StoreLayout,
    ids_digest,
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One integrity problem; ``shard`` is set when unmarking that shard and rewriting it fixes it."""

    text: str
    shard: int | None = None

    def __str__(self) -> str:
        return self.text


class StoreIntegrity(StoreLayout):
    """The checks of :class:`FeatureStore`; each problem names the file and its shard."""

    def shape_problems(self) -> list[str]:
        """The fixed arrays whose shape differs from the store's item count and dimension."""
        n, d = self.n_items, self.dim
        want = {**{name: (n,) for name in META_ARRAYS + ("status", "token_length")}, "pooled": (n, d)}
        return [self._shape_problem(name, self._array(name).shape, shape)
                for name, shape in want.items() if self._array(name).shape != shape]

    def missing_files(self, k: int, marker: dict) -> list[str]:
        """Files of complete shard ``k`` that zarr would silently read as zeros: absent or empty.

        Checksummed stores write every chunk (``write_empty_chunks``), so every file must be
        there; a store without checksums may lack the pooled (or token length) file of a shard
        whose values were all zero, so those count only when the marker says ok items (tokens).
        """
        need = {"status": True, "pooled": self.checksummed or marker["ok"] > 0,
                "token_length": self.checksummed or marker.get("tokens", 0) > 0}
        out = [f"array {name!r}: file {f} is missing" for name, needed in need.items()
               if needed and (f := self._absent(name, k)) is not None]
        if self.has_tokens:
            name = f"tokens/{k:06d}"
            if not (self.path / name / "zarr.json").is_file():
                out.append(f"token array {self.path / name} is missing")
            elif self._array(name).shape[0] and (f := self._absent(name, 0)) is not None:
                out.append(f"token array: file {f} is missing")
        return out

    def _marker_problem(self, k: int, marker: dict, status: np.ndarray) -> str | None:
        ok, n = int((status == STATUS_OK).sum()), len(status)
        if marker["items"] != n or marker["ok"] != ok:
            return (f"marker {self._marker(k)} says {marker['items']} items, {marker['ok']} ok; the status array "
                    f"says {n} items, {ok} ok")
        if (status == STATUS_PENDING).any():
            return f"marked complete but {int((status == STATUS_PENDING).sum())} item(s) are pending"
        return None

    def _check_complete(self, runs) -> dict[int, np.ndarray]:
        """Status of every complete shard, after checking shapes, markers and files; raises on a problem.

        ``runs`` are runs of consecutive complete shards as (start_row, stop_row, shards).
        """
        if problems := self.shape_problems():
            raise self._corrupt(problems[0], RECREATE)
        status: dict[int, np.ndarray] = {}
        for s, e, shards in runs:
            markers = {k: self.shard_marker(k) for k in shards}
            for k in shards:
                if missing := self.missing_files(k, markers[k]):
                    raise self._corrupt(f"shard {k} is marked complete but its {missing[0]}")
            block = self._read("status", slice(s, e), shards)
            for k in shards:
                ks, ke = self.shard_range(k)
                status[k] = block[ks - s : ke - s]
                if problem := self._marker_problem(k, markers[k], status[k]):
                    raise self._corrupt(f"shard {k}: {problem}")
        return status

    def verify(self) -> list[str]:
        """Integrity problems (empty when the store is sound); see :meth:`problems`."""
        return [p.text for p in self.problems()]

    def problems(self) -> list[Problem]:
        """Every integrity problem: key, item digest, shapes, markers, missing files, checksums.

        Reads every chunk of every complete shard (and the metadata columns), so each
        chunk's CRC-32C is checked. Problems confined to one shard carry its number: unmarking
        that shard (:meth:`unmark`) and rewriting it fixes them.
        """
        problems: list[Problem] = []
        if self.spec().key() != self.key:
            problems.append(Problem(f"stored key {self.key[:12]} does not match the stored configuration ({self.spec().key()[:12]})"))
        try:
            shapes = self.shape_problems()
        except CorruptStoreError as exc:
            shapes = [exc.detail]
        if shapes:  # per-shard reads of misshapen arrays mean nothing
            return problems + [Problem(p) for p in shapes]
        for name in META_ARRAYS:
            try:
                column = self.column(name)
            except CorruptStoreError as exc:
                problems.append(Problem(exc.detail))
                continue
            if name == "id" and ids_digest(column) != self.meta["items"]:
                problems.append(Problem("the ids do not match the item digest in the key"))
        for k in self.complete_shards():
            problems += [Problem(t if t.startswith(f"shard {k}:") else f"shard {k}: {t}", k) for t in self._shard_problems(k)]
        return problems

    def _shard_problems(self, k: int) -> list[str]:
        """Problems of complete shard ``k``, reading every chunk of it."""
        try:
            marker = self.shard_marker(k)
        except CorruptStoreError as exc:
            return [exc.detail]
        if missing := self.missing_files(k, marker):
            return missing
        s, e = self.shard_range(k)
        try:
            status = self._read("status", slice(s, e), [k])
            length = self._read("token_length", slice(s, e), [k]).astype(np.int64)
            pooled = self._read("pooled", slice(s, e), [k])
            if self.has_tokens:
                self._tokens(k, length)
        except CorruptStoreError as exc:
            return [exc.detail]
        out = [p] if (p := self._marker_problem(k, marker, status)) else []
        if not np.isfinite(pooled[status == STATUS_OK].astype(np.float32)).all():
            out.append("non-finite pooled features")
        return out
