"""Where a store's files are and what its attributes say.

:class:`StoreSpec` (the configuration a store's features depend on, and its key),
:func:`store_path`, :func:`ids_digest`, the schema constants, and :class:`StoreLayout`: an open
store's attributes, its item shards and their markers, and checked access to its arrays (a
missing or damaged file becomes a :class:`~mmx.cache.store.errors.CorruptStoreError` naming it).
The on-disk layout is described in docs/notes/cache.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmx.cache.modality import Modality
from mmx.cache.names import check_name
from mmx.cache.store.errors import CorruptStoreError, reason

SCHEMA_VERSION = 1
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_OK: "ok", STATUS_FAILED: "failed"}
META_ARRAYS = ("id", "label", "group", "split")
MARKERS = "_complete"
DEFAULT_SHARD_SIZE = 1024
DEFAULT_CHUNK_ROWS = 256
INTEGRITY = "crc32c"  # meta["integrity"] of stores whose chunks carry checksums

RECREATE = "delete the store and create it again (mmx extract / mmx cache import)"
REPAIR_HINT = (
    "run 'mmx cache verify --repair {path}' to unmark the damaged shards, then rerun the command that wrote "
    "the store (mmx extract / mmx cache import) to rewrite them"
)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def ids_digest(ids: Iterable[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def slug(name: str) -> str:
    """``name`` as a folder name (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "features"


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """Everything a store's features depend on; its :meth:`key` names the configuration.

    ``backbone`` carries the backbone's metadata (at least ``name`` and ``dim``; also
    ``token_rate``, ``weights`` and whatever else changes the features), ``preprocessing``
    the decode/pooling settings, and ``items`` the digest of the ids in store order.
    """

    dataset: str
    modality: Modality
    backbone: dict
    preprocessing: dict
    items: str

    def as_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "dataset": self.dataset,
            "modality": Modality.parse(self.modality).value,
            "backbone": self.backbone,
            "preprocessing": self.preprocessing,
            "items": self.items,
        }

    def key(self) -> str:
        return hashlib.sha256(_canonical(self.as_dict()).encode()).hexdigest()

    @property
    def dim(self) -> int:
        return int(self.backbone["dim"])


def spec_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The fields where the stored spec ``a`` and the asked one ``b`` (as dicts) differ, one line each."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += spec_diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} (store) vs {b!r} (asked)"]


def store_path(root: str | os.PathLike, spec: StoreSpec) -> Path:
    """Where the store for ``spec`` lives under a cache root (always below it: names are checked)."""
    check_name(spec.dataset, "dataset name")
    check_name(str(spec.backbone["name"]), "backbone name")
    name = f"{slug(str(spec.backbone['name']))}-{spec.key()[:10]}.zarr"
    return Path(root) / slug(spec.dataset) / Modality.parse(spec.modality).value / name


class StoreLayout:
    """An open store's attributes, shards, markers and arrays; the base of :class:`FeatureStore`."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"{self.path}: not a feature store (no zarr.json)")
        try:
            self._group = zarr.open_group(str(self.path), mode="r+")
            meta = self._group.attrs.get("mmx")
        except Exception as exc:  # an edited or truncated zarr.json
            raise CorruptStoreError(f"{self.path / 'zarr.json'}: unreadable store metadata ({reason(exc)}); "
                                    "restore it or delete the store and extract again") from exc
        if not isinstance(meta, dict) or "key" not in meta:
            raise ValueError(f"{self.path}: a zarr group, but not an mmx feature store (no 'mmx' attributes)")
        self.meta: dict = meta
        self._columns: dict[str, np.ndarray] = {}

    # -- attributes -------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def modality(self) -> Modality:
        return Modality.parse(self.meta["modality"])

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def backbone(self) -> dict:
        return self.meta["backbone"]

    @property
    def dim(self) -> int:
        return int(self.meta["backbone"]["dim"])

    @property
    def n_items(self) -> int:
        return int(self.meta["n_items"])

    @property
    def shard_size(self) -> int:
        return int(self.meta["shard_size"])

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_size)

    @property
    def has_tokens(self) -> bool:
        return bool(self.meta["tokens"])

    @property
    def checksummed(self) -> bool:
        """Whether every chunk carries a CRC-32C (stores written without checksums have none)."""
        return self.meta.get("integrity") == INTEGRITY

    def spec(self) -> StoreSpec:
        m = self.meta
        return StoreSpec(m["dataset"], Modality.parse(m["modality"]), m["backbone"], m["preprocessing"], m["items"])

    # -- item shards and their markers ------------------------------------------------
    def shard_range(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self.n_shards:
            raise IndexError(f"shard {k} out of range (store has {self.n_shards})")
        return k * self.shard_size, min((k + 1) * self.shard_size, self.n_items)

    def _marker(self, k: int) -> Path:
        return self.path / MARKERS / f"{k:06d}.json"

    def complete_shards(self) -> list[int]:
        d = self.path / MARKERS
        if not d.exists():
            return []
        done = sorted(int(p.stem) for p in d.glob("*.json") if p.stem.isdigit())
        return [k for k in done if k < self.n_shards]

    def is_complete(self, k: int) -> bool:
        return self._marker(k).exists()

    def shard_marker(self, k: int) -> dict | None:
        """Shard ``k``'s marker (counts and errors), or None when the shard is not complete."""
        p = self._marker(k)
        try:
            record = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise self._corrupt(f"shard marker {p} is not valid JSON ({reason(exc)})") from exc
        if not isinstance(record, dict) or not all(isinstance(record.get(f), int) for f in ("items", "ok", "failed")):
            raise self._corrupt(f"shard marker {p} lacks its item counts (items, ok, failed)")
        return record

    # -- checked access to the arrays -------------------------------------------------
    def _corrupt(self, detail: str, fix: str | None = None) -> CorruptStoreError:
        """The error for ``detail`` (what is wrong, naming the file), with the store and the fix."""
        return CorruptStoreError(f"{self.path}: {detail}; {fix or REPAIR_HINT.format(path=self.path)}", detail)

    def _array(self, name: str):
        """The zarr array ``name``; a missing or unreadable one is a :class:`CorruptStoreError`."""
        try:
            return self._group[name]
        except Exception as exc:
            raise self._corrupt(f"array {name!r} ({self.path / name / 'zarr.json'}) is missing or unreadable "
                                f"({reason(exc)})") from exc

    def _shard_file(self, name: str, index: int) -> Path:
        """The file of zarr shard ``index`` (along the rows) of array ``name``."""
        arr = self._group[name]
        return self.path / name / arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))

    def _absent(self, name: str, index: int) -> Path | None:
        """The shard's file when it is absent or empty (zarr would read it as fill_value), else None."""
        f = self._shard_file(name, index)
        try:
            return f if f.stat().st_size == 0 else None
        except FileNotFoundError:
            return f

    def _read(self, name: str, rows: slice = slice(None), shards: Sequence[int] = ()) -> np.ndarray:
        """``array[rows]``; a failed checksum or decode becomes an error naming the damaged shard's file.

        ``shards`` are the item shards ``rows`` covers (arrays sharded along the items).
        """
        arr = self._array(name)
        try:
            return np.asarray(arr[rows])
        except Exception as exc:
            error = exc
        for k in shards:  # find the damaged shard (only on this error path)
            try:
                arr[slice(*self.shard_range(k))]
            except Exception as exc_k:
                raise self._corrupt(f"shard {k}: array {name!r} is damaged: {self._shard_file(name, k)}: "
                                    f"{reason(exc_k)}") from exc_k
        raise self._corrupt(f"array {name!r} is damaged: {self.path / name}: {reason(error)}") from error

    def _shape_problem(self, name: str, have: tuple, want: tuple) -> str:
        return (f"array {name!r} has shape {have}, expected {want} "
                f"({self.path / name / 'zarr.json'} was edited or belongs to another store)")
