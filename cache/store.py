"""One zarr v3 store per (dataset, modality, backbone-and-preprocessing).

Layout of a store (a zarr v3 group; every array uses the sharding codec)::

    <root>/<dataset>/<modality>/<backbone>-<key[:10]>.zarr/
        zarr.json            attributes["mmx"]: dataset, modality, backbone metadata,
                             preprocessing, key, n_items, shard_size, schema, version, and
                             ``scale`` when the extractor's output scale is arbitrary (log-mel
                             in dB, MFCC): {"unit", "arbitrary", ...}; not part of the key
        id, label, group, split     [N] str   written once, when the store is created
        pooled               [N, D] float16   pooled feature per item
        status               [N] uint8        0 pending, 1 ok, 2 failed
        token_length         [N] int32        tokens of each item (0 when failed)
        tokens/<k:06d>       [sum T_i, D]     flat tokens of the items of item-shard k
        _complete/<k:06d>.json               marker: shard k is on disk (counts, errors)

Items are cut into *item shards* of ``shard_size`` consecutive rows. Item shard ``k`` is
exactly one zarr shard of every array a writer touches (``pooled``, ``status``,
``token_length``), so a writer always writes whole zarr shards (partial writes of a shared
shard can lose data in zarr v3). ``id``/``label``/``group``/``split`` are written once, at
creation, as one large chunk (faster to read). ``pooled`` is compressed with Blosc-LZ4 +
byte shuffle (fast to decode; see benchmarks/RESULTS.md), tokens with zarr's default. Token sequences are
ragged and their total length is only known once a shard is extracted, so each item
shard keeps its tokens in its own flat array; :meth:`FeatureStore.load` returns them
as one flat ``[sum T_i, D]`` tensor with ``offsets [N+1]``, which is the form training
uses. A shard counts as complete only when its marker exists; the marker is written
(atomically, by rename) after the shard's data has been flushed to disk, so a killed
writer leaves a shard that readers ignore and a rerun rewrites.

Integrity. Every chunk of every array carries a CRC-32C checksum (zarr's ``crc32c`` codec,
last in the sharding codec's inner codecs) and every shard index carries one too (the
sharding codec's ``index_codecs``), and stores are written with ``write_empty_chunks`` so
each chunk of a complete shard is on disk even when it holds only zeros. zarr reads a
missing shard file as ``fill_value`` without a word, so readers check, for every shard
marked complete, that its files are present (:meth:`FeatureStore.missing_files`); a
flipped bit fails the checksum. Either way :meth:`FeatureStore.load` raises
:class:`CorruptStoreError` naming the store, the array and the shard, and
:meth:`FeatureStore.verify` reads every chunk. Stores of older mmx versions have no
chunk checksums (``meta["integrity"]`` absent): their presence, shapes and markers are
still checked. One process writes a store at a time (:meth:`FeatureStore.writer_lock`),
and two writers of one shard take turns (a lock per shard in :meth:`FeatureStore.write_shard`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmx import __version__
from mmx.cache.atomic import atomic_write_bytes
from mmx.cache.modality import Modality
from mmx.cache.names import check_name

SCHEMA_VERSION = 1
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_OK: "ok", STATUS_FAILED: "failed"}
_META_ARRAYS = ("id", "label", "group", "split")
_MARKERS = "_complete"
DEFAULT_SHARD_SIZE = 1024
DEFAULT_CHUNK_ROWS = 256
INTEGRITY = "crc32c"  # meta["integrity"] of stores whose chunks carry checksums
_WRITER_LOCK = ".writer.lock"


class CacheKeyMismatch(ValueError):
    """A store opened for a configuration other than the one it was built with."""


class IncompleteStoreWarning(UserWarning):
    """A store was loaded while some of its shards are not complete."""


class StoreError(ValueError):
    """A store cannot be used or written as asked; the message names the file and the fix.

    A ``ValueError`` so that the command line shows it as one line, like other input errors.
    ``detail`` is the message without the store's path and the fix (for lists of problems).
    """

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail or message


class CorruptStoreError(StoreError):
    """Data of a shard marked complete is missing, has the wrong shape or fails its checksum."""


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock."""


class StoreWriteError(StoreError):
    """Writing a shard failed (e.g. a full disk); the shard was left unmarked."""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


@contextlib.contextmanager
def _write_errors(what: str):
    """Turn an OSError while writing ``what`` (a full disk, a read-only folder) into one clear line."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free space (or give another --cache) and rerun the same command"
        else:
            fix = "fix the cause and rerun the same command"
        raise StoreWriteError(f"{what}: cannot write{where}: {exc.strerror or exc}; nothing was marked complete: "
                              f"{fix}, which keeps the finished shards and redoes this one") from exc


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def ids_digest(ids: Iterable[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _slug(name: str) -> str:
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


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} (store) vs {b!r} (asked)"]


def store_path(root: str | os.PathLike, spec: StoreSpec) -> Path:
    """Where the store for ``spec`` lives under a cache root (always below it: names are checked)."""
    check_name(spec.dataset, "dataset name")
    check_name(str(spec.backbone["name"]), "backbone name")
    name = f"{_slug(str(spec.backbone['name']))}-{spec.key()[:10]}.zarr"
    return Path(root) / _slug(spec.dataset) / Modality.parse(spec.modality).value / name


@dataclasses.dataclass
class LoadedFeatures:
    """One modality in memory. Rows are the loaded items, in store order.

    ``pooled`` is ``(N, D)`` float32; ``tokens`` is ``(sum T_i, D)`` float32 with item ``i``'s
    tokens at ``tokens[offsets[i]:offsets[i+1]]``. Tensors are torch tensors on ``device``.
    ``missing`` counts items of the requested split that sit in incomplete shards.
    """

    modality: Modality
    ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    splits: np.ndarray
    pooled: Any = None
    tokens: Any = None
    offsets: Any = None
    missing: int = 0
    failed: int = 0
    meta: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows) -> "LoadedFeatures":
        """Rows ``rows`` (in that order) on their own, e.g. one split of a load of several.

        ``missing`` and ``failed`` keep the counts of the whole load.
        """
        import torch

        rows = np.asarray(rows, np.int64)
        out = dataclasses.replace(self, ids=self.ids[rows], labels=self.labels[rows], groups=self.groups[rows],
                                  splits=self.splits[rows])
        if self.pooled is not None:
            out.pooled = self.pooled[torch.as_tensor(rows, device=self.pooled.device)]
        if self.tokens is not None:
            off = self.offsets.cpu().numpy()
            starts, ln = off[rows], off[rows + 1] - off[rows]
            idx = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln) + np.repeat(starts, ln)
            out.tokens = self.tokens[torch.as_tensor(idx, device=self.tokens.device)]
            out.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(ln)]), device=self.offsets.device)
        return out


_RECREATE = "delete the store and create it again (mmx extract / mmx cache import)"
_REPAIR_HINT = (
    "run 'mmx cache verify --repair {path}' to unmark the damaged shards, then rerun the command that wrote "
    "the store (mmx extract / mmx cache import) to rewrite them"
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One integrity problem; ``shard`` is set when unmarking that shard and rewriting it fixes it."""

    text: str
    shard: int | None = None

    def __str__(self) -> str:
        return self.text


class FeatureStore:
    """An open feature store. Create one with :func:`create_store`, open with :func:`open_store`."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"{self.path}: not a feature store (no zarr.json)")
        try:
            self._group = zarr.open_group(str(self.path), mode="r+")
            meta = self._group.attrs.get("mmx")
        except Exception as exc:  # an edited or truncated zarr.json
            raise CorruptStoreError(f"{self.path / 'zarr.json'}: unreadable store metadata ({_reason(exc)}); "
                                    "restore it or delete the store and extract again") from exc
        if not isinstance(meta, dict) or "key" not in meta:
            raise ValueError(f"{self.path}: a zarr group, but not an mmx feature store (no 'mmx' attributes)")
        self.meta: dict = meta
        self._columns: dict[str, np.ndarray] = {}

    # -- metadata ---------------------------------------------------------------------
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
        """Whether every chunk carries a CRC-32C (stores of mmx before this have none)."""
        return self.meta.get("integrity") == INTEGRITY

    def spec(self) -> StoreSpec:
        m = self.meta
        return StoreSpec(m["dataset"], Modality.parse(m["modality"]), m["backbone"], m["preprocessing"], m["items"])

    def shard_range(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self.n_shards:
            raise IndexError(f"shard {k} out of range (store has {self.n_shards})")
        return k * self.shard_size, min((k + 1) * self.shard_size, self.n_items)

    def _marker(self, k: int) -> Path:
        return self.path / _MARKERS / f"{k:06d}.json"

    def complete_shards(self) -> list[int]:
        d = self.path / _MARKERS
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
            raise self._corrupt(f"shard marker {p} is not valid JSON ({_reason(exc)})") from exc
        if not isinstance(record, dict) or not all(isinstance(record.get(f), int) for f in ("items", "ok", "failed")):
            raise self._corrupt(f"shard marker {p} lacks its item counts (items, ok, failed)")
        return record

    def column(self, name: str) -> np.ndarray:
        """A per-item metadata column (``id``, ``label``, ``group``, ``split``), all rows.

        The columns are written once, when the store is created, so they are read once per
        open store and kept (read-only): loading the train and then the test split decodes
        the strings once.
        """
        if name not in _META_ARRAYS:
            raise KeyError(f"unknown column {name!r}; known: {', '.join(_META_ARRAYS)}")
        cached = self._columns.get(name)
        if cached is None:
            arr = self._array(name)
            if arr.shape != (self.n_items,):
                raise self._corrupt(self._shape_problem(name, arr.shape, (self.n_items,)), _RECREATE)
            # stores without checksums may have skipped a column of empty strings (zarr's
            # write_empty_chunks); the ids are never empty
            if self.checksummed or name == "id":
                for index in range(-(-arr.shape[0] // arr.shards[0])):
                    if (f := self._absent(name, index)) is not None:
                        raise self._corrupt(f"array {name!r}: file {f} is missing", _RECREATE)
            cached = np.asarray(self._read(name), dtype=object)
            cached.flags.writeable = False
            self._columns[name] = cached
        return cached

    def shard_sources(self, k: int) -> str | None:
        """The ``sources`` digest shard ``k`` was written with (None: incomplete, or not recorded)."""
        marker = self.shard_marker(k)
        return None if marker is None else marker.get("sources")

    def rewrite_metadata(self, columns: dict[str, Sequence[str]]) -> dict[str, int]:
        """Replace whole metadata columns (``label``, ``group``, ``split``); returns rows changed per column.

        Features are not touched: metadata is cheap, features are not. Each column is one zarr
        shard file, built beside the store and renamed over the old one, so a reader sees the
        old column or the new one, never a mix. ``id`` cannot change here (it keys the store).
        """
        import zarr

        changed = {}
        for name, values in columns.items():
            if name not in _META_ARRAYS or name == "id":
                raise KeyError(f"{name!r} is not a rewritable column; rewritable: label, group, split")
            new = np.array([str(x) for x in values], dtype=object)
            if len(new) != self.n_items:
                raise ValueError(f"{name}: {len(new)} values for {self.n_items} items")
            n = int((new != self.column(name)).sum())
            if n:
                changed[name] = n
        if not changed:
            return {}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.metadata")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            staging = zarr.open_group(str(tmp), mode="w")
            for name in changed:
                old = self._group[name]
                # the same codecs (checksums included) as the file it replaces, and every chunk written
                with zarr.config.set({"array.write_empty_chunks": True}):
                    a = staging.create_array(name, shape=old.shape, dtype=str, chunks=old.chunks, shards=old.shards,
                                             compressors=old.compressors, serializer=old.serializer, filters=old.filters)
                    a[:] = np.array([str(x) for x in columns[name]], dtype=object)
                for f in sorted((tmp / name / "c").rglob("*")):
                    if f.is_file():
                        dst = self.path / name / f.relative_to(tmp / name)
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(f, dst)
                self._columns.pop(name, None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return changed

    # -- integrity --------------------------------------------------------------------
    def _corrupt(self, detail: str, fix: str | None = None) -> "CorruptStoreError":
        """The error for ``detail`` (what is wrong, naming the file), with the store and the fix."""
        return CorruptStoreError(f"{self.path}: {detail}; {fix or _REPAIR_HINT.format(path=self.path)}", detail)

    def _array(self, name: str):
        """The zarr array ``name``; a missing or unreadable one is a :class:`CorruptStoreError`."""
        try:
            return self._group[name]
        except Exception as exc:
            raise self._corrupt(f"array {name!r} ({self.path / name / 'zarr.json'}) is missing or unreadable "
                                f"({_reason(exc)})") from exc

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
                                    f"{_reason(exc_k)}") from exc_k
        raise self._corrupt(f"array {name!r} is damaged: {self.path / name}: {_reason(error)}") from error

    def _shape_problem(self, name: str, have: tuple, want: tuple) -> str:
        return (f"array {name!r} has shape {have}, expected {want} "
                f"({self.path / name / 'zarr.json'} was edited or belongs to another store)")

    def shape_problems(self) -> list[str]:
        """The fixed arrays whose shape differs from the store's item count and dimension."""
        n, d = self.n_items, self.dim
        want = {**{name: (n,) for name in _META_ARRAYS + ("status", "token_length")}, "pooled": (n, d)}
        return [self._shape_problem(name, self._array(name).shape, shape)
                for name, shape in want.items() if self._array(name).shape != shape]

    def missing_files(self, k: int, marker: dict) -> list[str]:
        """Files of complete shard ``k`` that zarr would silently read as zeros: absent or empty.

        Checksummed stores write every chunk (``write_empty_chunks``), so every file must be
        there; an older store may lack the pooled (or token length) file of a shard whose
        values were all zero, so those count only when the marker says ok items (tokens).
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
        """Status of every complete shard, after checking shapes, markers and files; raises on a problem."""
        if problems := self.shape_problems():
            raise self._corrupt(problems[0], _RECREATE)
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

    # -- writing ----------------------------------------------------------------------
    def set_scale(self, scale: dict) -> None:
        """Record the extractor's output scale in the attributes (outside the key)."""
        self.meta = {**self.meta, "scale": scale}
        self._group.attrs["mmx"] = self.meta

    @contextlib.contextmanager
    def writer_lock(self, command: str = "a writer"):
        """Hold the store's writer lock: one writing process (e.g. ``mmx extract``) per store.

        An advisory ``flock`` on ``<store>/.writer.lock``; the kernel releases it when the
        holder exits, however it dies, so a killed extraction never leaves the store locked.
        A second writer fails at once with :class:`StoreLockedError` instead of waiting: the
        first one is already doing the same work, and a rerun after it ends skips what it
        finished. The lock file stays (deleting a lock file races with the next locker).
        """
        path = self.path / _WRITER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
                raise StoreLockedError(
                    f"{self.path} is being written by another process ({holder}); wait for it to end or stop it, "
                    f"then rerun: the shards it finished are kept (lock: {path})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{command}, pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _shard_lock(self, k: int):
        """Two writers of the same shard take turns (e.g. two processes writing directly)."""
        fd = os.open(self.path / _MARKERS / f"{k:06d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write_shard(
        self,
        k: int,
        pooled: np.ndarray,
        status: np.ndarray | None = None,
        tokens: Sequence[np.ndarray] | None = None,
        errors: dict[str, str] | None = None,
        sources: str | None = None,
    ) -> None:
        """Write item shard ``k`` whole, then mark it complete.

        ``pooled`` is ``(n, D)`` for the shard's ``n`` items; ``status`` per item
        (``STATUS_OK``/``STATUS_FAILED``, default all ok); ``tokens`` one ``(T_i, D)`` array
        per item (``T_i`` may be 0) when the store keeps tokens; ``errors`` maps item id
        to the message of its failure and is kept in the shard's marker, as is ``sources``
        (a digest of where the items came from; see :meth:`shard_sources`). A write that
        fails (a full disk) raises :class:`StoreWriteError` and leaves the shard unmarked.
        """
        import zarr

        start, stop = self.shard_range(k)
        n, d = stop - start, self.dim
        pooled = np.asarray(pooled)
        if pooled.shape != (n, d):
            raise ValueError(f"shard {k}: pooled has shape {pooled.shape}, expected {(n, d)}")
        status = np.full(n, STATUS_OK, np.uint8) if status is None else np.asarray(status, np.uint8)
        if status.shape != (n,):
            raise ValueError(f"shard {k}: status has shape {status.shape}, expected {(n,)}")
        if self.has_tokens:
            if tokens is None or len(tokens) != n:
                raise ValueError(f"shard {k}: this store keeps tokens; give one (T_i, {d}) array per item")
            bad = [i for i, t in enumerate(tokens) if np.ndim(t) != 2 or np.shape(t)[1] != d]
            if bad:
                raise ValueError(f"shard {k}: token arrays of items {bad[:5]} are not (T, {d})")
        elif tokens is not None:
            raise ValueError(f"shard {k}: this store was created without tokens")

        marker = self._marker(k)
        lengths = np.array([len(t) for t in tokens], np.int32) if tokens is not None else np.zeros(n, np.int32)
        with self._shard_lock(k), _write_errors(f"{self.path}: shard {k}"), zarr.config.set({"array.write_empty_chunks": True}):
            marker.unlink(missing_ok=True)  # a rewrite is incomplete until it is done again
            for name in ("pooled", "status", "token_length"):
                # zarr merges a write into the shard's old file: a damaged one would fail the rewrite
                self._shard_file(name, k).unlink(missing_ok=True)
            dtype = self._group["pooled"].dtype
            self._group["pooled"][start:stop] = pooled.astype(dtype, copy=False)
            self._group["status"][start:stop] = status
            self._group["token_length"][start:stop] = lengths
            if tokens is not None:
                flat = np.concatenate([np.asarray(t, dtype) for t in tokens], 0) if n else np.zeros((0, d), dtype)
                _create_array(self._group, f"tokens/{k:06d}", flat.astype(dtype, copy=False), self.meta["chunk_rows"])
            self._fsync_shard(k)
            record = {
                "shard": k,
                "items": n,
                "ok": int((status == STATUS_OK).sum()),
                "failed": int((status == STATUS_FAILED).sum()),
                "tokens": int(lengths.sum()),
                "errors": errors or {},
                **({"sources": sources} if sources is not None else {}),
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(marker, json.dumps(record, ensure_ascii=False).encode())

    def unmark(self, shards: Iterable[int]) -> None:
        """Forget that ``shards`` are complete, so the next extraction or import rewrites them."""
        for k in shards:
            self._marker(k).unlink(missing_ok=True)

    def _fsync_shard(self, k: int) -> None:
        """Flush shard ``k``'s files so the marker never points at data still in flight."""
        paths = [self.path / name / "c" / str(k) for name in ("pooled", "status", "token_length")]
        tok = self.path / "tokens" / f"{k:06d}"
        if tok.exists():
            paths += [p for p in tok.rglob("*") if p.is_file()]
        for p in paths:
            for f in ([p] if p.is_file() else (q for q in p.rglob("*") if q.is_file()) if p.exists() else []):
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    # -- reading ----------------------------------------------------------------------
    def _complete_ranges(self) -> list[tuple[int, int, list[int]]]:
        """Runs of consecutive complete shards as (start_row, stop_row, shards)."""
        runs: list[tuple[int, int, list[int]]] = []
        for k in self.complete_shards():
            s, e = self.shard_range(k)
            if runs and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], e, runs[-1][2] + [k])
            else:
                runs.append((s, e, [k]))
        return runs

    def load(
        self,
        split: str | Sequence[str] | None = None,
        pooled: bool = True,
        tokens: bool = False,
        device: Any = None,
        warn: bool = True,
    ) -> LoadedFeatures:
        """Load the ok items of complete shards (optionally one or more splits) into memory.

        Raises :class:`CorruptStoreError` (naming the store, the array and the shard) when a
        complete shard's data is missing, misshapen or fails its checksum, instead of
        loading zeros or garbage.
        """
        import torch

        if tokens and not self.has_tokens:
            raise ValueError(f"{self.path}: this store has no token sequences (pooled features only)")
        runs = self._complete_ranges()
        shard_status = self._check_complete(runs)
        splits_wanted = None if split is None else ({split} if isinstance(split, str) else set(split))
        split_all = self.column("split")
        in_split = np.ones(self.n_items, bool) if splits_wanted is None else np.isin(split_all, list(splits_wanted))

        covered = np.zeros(self.n_items, bool)
        status = np.zeros(self.n_items, np.uint8)
        for k, st in shard_status.items():
            s, e = self.shard_range(k)
            covered[s:e] = True
            status[s:e] = st
        missing = int((in_split & ~covered).sum())
        keep = in_split & covered & (status == STATUS_OK)
        failed = int((in_split & covered & (status == STATUS_FAILED)).sum())
        rows = np.flatnonzero(keep)

        out = LoadedFeatures(
            modality=self.modality,
            ids=self.column("id")[rows],
            labels=self.column("label")[rows],
            groups=self.column("group")[rows],
            splits=split_all[rows],
            missing=missing,
            failed=failed,
            meta=dict(self.meta),
        )
        if pooled:
            # Read each run of complete shards in one call and let torch do the masking and
            # the float16 -> float32 conversion (vectorised and threaded; numpy's is ~4x slower).
            mat = torch.empty((len(rows), self.dim), dtype=torch.float32)
            pos = 0
            for s, e, shards in runs:
                sel = keep[s:e]
                m = int(sel.sum())
                if not m:
                    continue
                block = torch.from_numpy(np.ascontiguousarray(self._read("pooled", slice(s, e), shards)))
                if m != e - s:
                    block = block[torch.from_numpy(sel)]
                mat[pos : pos + m].copy_(block)
                pos += m
            out.pooled = mat.to(device) if device is not None else mat
        if tokens:
            pieces, lengths = [], []
            for s, e, shards in runs:
                for k in shards:
                    ks, ke = self.shard_range(k)
                    sel = keep[ks:ke]
                    if not sel.any():
                        continue
                    length = np.asarray(self._read("token_length", slice(ks, ke), [k]), np.int64)
                    flat = torch.from_numpy(np.ascontiguousarray(self._tokens(k, length)))
                    if not sel.all():
                        # rows of the selected items, without a Python loop over items
                        starts, ln = (np.cumsum(length) - length)[sel], length[sel]
                        idx = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln) + np.repeat(starts, ln)
                        flat = flat[torch.from_numpy(idx)]
                    pieces.append(flat)
                    lengths.append(length[sel])
            length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
            flat = torch.cat(pieces, 0).to(torch.float32) if pieces else torch.zeros((0, self.dim), dtype=torch.float32)
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(length)]).astype(np.int64))
            out.tokens = flat.to(device) if device is not None else flat
            out.offsets = offsets.to(device) if device is not None else offsets
        if missing and warn:
            warnings.warn(
                f"{self.path}: {missing} item(s) of the requested split are in incomplete shards and were "
                f"not loaded ({len(self.complete_shards())}/{self.n_shards} shards complete); "
                "rerun the extraction to finish them",
                IncompleteStoreWarning,
                stacklevel=2,
            )
        return out

    def _tokens(self, k: int, length: np.ndarray) -> np.ndarray:
        """Shard ``k``'s flat tokens, checked against its token lengths."""
        name = f"tokens/{k:06d}"
        shape, want = self._array(name).shape, (int(length.sum()), self.dim)
        if (length < 0).any() or shape != want:
            raise self._corrupt(f"shard {k}: token array has shape {shape}, the token lengths say {want} "
                                f"({self.path / name / 'zarr.json'} or token_length damaged)")
        try:
            return np.asarray(self._group[name][:])
        except Exception as exc:
            raise self._corrupt(f"shard {k}: token array is damaged: {self._shard_file(name, 0)}: {_reason(exc)}") from exc

    # -- inspection -------------------------------------------------------------------
    def failures(self) -> dict[str, str]:
        """Failed item id -> the extractor's message, from the markers of the complete shards."""
        out: dict[str, str] = {}
        for k in self.complete_shards():
            out.update((self.shard_marker(k) or {}).get("errors", {}))
        return out

    def info(self) -> dict:
        complete = self.complete_shards()
        status = self._read("status", slice(None), range(self.n_shards))
        done = np.zeros(self.n_items, bool)
        for k in complete:
            s, e = self.shard_range(k)
            done[s:e] = True
        split = self.column("split")
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "modality": self.modality.value,
            "backbone": self.backbone,
            "preprocessing": self.meta["preprocessing"],
            "key": self.key,
            "mmx_version": self.meta["mmx_version"],
            "dtype": self.meta["dtype"],
            "integrity": self.meta.get("integrity", "none (no chunk checksums)"),
            "items": self.n_items,
            "shards": {"total": self.n_shards, "complete": len(complete), "size": self.shard_size},
            "ok": int((done & (status == STATUS_OK)).sum()),
            "failed": int((done & (status == STATUS_FAILED)).sum()),
            "failed_items": self.failures(),  # id -> message
            "pending": int((~done).sum()),
            "splits": {str(s) or "(none)": int((split == s).sum()) for s in sorted(set(split))},
            "classes": len({str(x) for x in self.column("label") if str(x)}),
            "tokens": self.has_tokens,
            "scale": self.meta.get("scale"),  # the extractor's output scale when arbitrary (dB, MFCC)
            "disk_bytes": sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()),
        }

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
        for name in _META_ARRAYS:
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


def _create_array(group, name: str, data: np.ndarray, chunk_rows: int) -> None:
    rows = max(1, data.shape[0])
    chunks = (min(chunk_rows, rows),) + data.shape[1:]
    shards = (-(-rows // chunks[0]) * chunks[0],) + data.shape[1:]  # one zarr shard holds it all
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards, overwrite=True, fill_value=0,
                             compressors=_checked(_default_codec()))
    if data.shape[0]:
        arr[...] = data


_META_CHUNK_ROWS = 1 << 20


def _fast_codec(dtype: str):
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)


def _default_codec():
    """zarr's own default compressor (Zstandard, level 0), named so a checksum can follow it."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=0, checksum=False)


def _checked(*compressors) -> list:
    """``compressors`` then a CRC-32C of the compressed bytes: a flipped bit fails the read.

    Inside the sharding codec these are the inner chunks' codecs; the shard index has its
    own CRC-32C by default (``index_codecs``), which catches a zeroed or truncated shard file.
    """
    from zarr.codecs import Crc32cCodec

    return [*compressors, Crc32cCodec()]


def _build(tmp: Path, spec: StoreSpec, cols: dict, shard_size: int, chunk_rows: int, dtype: str, tokens: bool,
           scale: dict | None) -> None:
    """Write a new, empty store (columns, arrays, attributes) into the folder ``tmp``."""
    import zarr

    n = len(cols["id"])
    g = zarr.open_group(str(tmp), mode="w")
    d = spec.dim
    # The metadata columns are written once, here, so they need not follow the item shards:
    # few large chunks make reading them ~5x faster than one chunk per chunk_rows (zarr's
    # cost per chunk dominates for short strings).
    meta_rows = min(n, _META_CHUNK_ROWS)
    for name, col in cols.items():
        a = g.create_array(name, shape=(n,), dtype=str, chunks=(meta_rows,), shards=(-(-n // meta_rows) * meta_rows,),
                           compressors=_checked(_default_codec()))
        a[:] = np.array([str(x) for x in col], dtype=object)
    # Pooled features: Blosc-LZ4 with byte shuffle decodes ~2-3x faster than zstd (the
    # loading benchmark is dominated by decompression) and still squeezes the zeros of
    # ReLU features; see benchmarks/RESULTS.md.
    g.create_array("pooled", shape=(n, d), dtype=dtype, chunks=(chunk_rows, d), shards=(shard_size, d), fill_value=0,
                   compressors=_checked(_fast_codec(dtype)))
    for name, kind in (("status", "uint8"), ("token_length", "int32")):
        g.create_array(name, shape=(n,), dtype=kind, chunks=(shard_size,), shards=(shard_size,), fill_value=0,
                       compressors=_checked(_default_codec()))
    if tokens:
        g.create_group("tokens")
    g.attrs["mmx"] = {
        **spec.as_dict(),
        "key": spec.key(),
        "n_items": n,
        "shard_size": shard_size,
        "chunk_rows": chunk_rows,
        "dtype": dtype,
        "tokens": tokens,
        "integrity": INTEGRITY,
        "mmx_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"scale": scale} if scale else {}),
    }
    (tmp / _MARKERS).mkdir()


def create_store(
    root_or_path: str | os.PathLike,
    spec: StoreSpec,
    ids: Sequence[str],
    labels: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    dtype: str = "float16",
    tokens: bool = True,
    exact_path: bool = False,
    scale: dict | None = None,
) -> FeatureStore:
    """Create the store for ``spec`` (or open it, when it exists with the same key).

    The store is built in a temporary folder and renamed into place, so a killed process
    never leaves a half-created store. With ``exact_path`` the first argument is the
    store's path; otherwise it is a cache root and :func:`store_path` picks the path.
    ``scale`` (the extractor's output scale, see the module docstring) is recorded in the
    attributes, also into an existing store that lacks it (it does not change the features).
    """
    import zarr

    path = Path(root_or_path) if exact_path else store_path(root_or_path, spec)
    n = len(ids)
    if spec.items != ids_digest(ids):
        raise ValueError("spec.items does not match the ids given; build it with ids_digest(ids)")
    if path.exists():
        store = open_store(path, expected=spec)
        if scale and store.meta.get("scale") != scale:
            store.set_scale(scale)
        return store
    if n == 0:
        raise ValueError(f"no items for {spec.modality} in dataset {spec.dataset!r}")
    if shard_size < 1 or chunk_rows < 1:
        raise ValueError("shard_size and chunk_rows must be positive")
    chunk_rows = min(chunk_rows, shard_size)
    if shard_size % chunk_rows:
        raise ValueError(f"shard_size ({shard_size}) must be a multiple of chunk_rows ({chunk_rows})")
    cols = {
        "id": list(ids),
        "label": list(labels) if labels is not None else [""] * n,
        "group": list(groups) if groups is not None else [""] * n,
        "split": list(splits) if splits is not None else [""] * n,
    }
    for name, col in cols.items():
        if len(col) != n:
            raise ValueError(f"{name}: {len(col)} values for {n} items")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _write_errors(f"{path}: creating the store"), zarr.config.set({"array.write_empty_chunks": True}):
            _build(tmp, spec, cols, shard_size, chunk_rows, dtype, tokens, scale)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.exists():
            raise
        # another process created it first: theirs wins if it is the same configuration
    return open_store(path, expected=spec)


def open_store(path: str | os.PathLike, expected: StoreSpec | str | None = None) -> FeatureStore:
    """Open a store; with ``expected`` (a spec or a key), refuse one built differently."""
    store = FeatureStore(path)
    if expected is None:
        return store
    want_key = expected if isinstance(expected, str) else expected.key()
    if store.key != want_key:
        have = store.spec().as_dict()
        if isinstance(expected, StoreSpec):
            diffs = _diff(have, expected.as_dict())
            detail = "; ".join(diffs) if diffs else "(same fields, different key)"
        else:
            detail = f"asked for key {want_key[:12]}"
        raise CacheKeyMismatch(
            f"{store.path} holds features for a different configuration: store key {store.key[:12]}, "
            f"asked {want_key[:12]}. Differences: {detail}. Use another cache path or the matching config."
        )
    return store


def list_stores(root: str | os.PathLike, dataset: str | None = None) -> list[FeatureStore]:
    """Every feature store under a cache root (optionally of one dataset), sorted by path."""
    root = Path(root)
    base = root / _slug(check_name(dataset, "dataset name")) if dataset else root
    if not root.exists():
        return []
    out = []
    for p in sorted(base.glob("**/*.zarr")):
        if p.name.startswith("."):
            continue
        try:
            out.append(FeatureStore(p))
        except (FileNotFoundError, ValueError):
            continue
    return out


def find_store(
    root: str | os.PathLike, dataset: str, modality: Modality | str, backbone: str | None = None,
    store: str | None = None,
) -> FeatureStore:
    """The one store of ``dataset``/``modality`` (and ``backbone``, when several exist).

    ``store`` picks one store outright: its path, its folder name, or a prefix (6+ characters)
    of its cache key, as ``mmx cache ls`` prints them. Two stores of one backbone name (say,
    two ``fps`` settings) differ only there, so it is the choice that always works.
    """
    mod = Modality.parse(modality)
    if store:
        return _pick_store(root, dataset, mod, store)
    found = [s for s in list_stores(root, dataset) if s.modality == mod and s.dataset == dataset]
    if backbone is not None:
        found = [s for s in found if s.backbone.get("name") == backbone]
    if len(found) == 1:
        return found[0]
    if not found:
        what = f"{mod.value} features of dataset {dataset!r}" + (f" from backbone {backbone!r}" if backbone else "")
        have = sorted({f"{s.dataset}/{s.modality.value}/{s.backbone.get('name')}" for s in list_stores(root)})
        raise FileNotFoundError(
            f"no {what} in cache {root}; stores present: {', '.join(have) or 'none'}. "
            f"Run 'mmx extract --modality {mod.value}' or 'mmx cache synthesize' first"
        )
    listing = "; ".join(f"{s.path} (backbone {s.backbone.get('name')}, key {s.key[:10]})" for s in found)
    raise ValueError(
        f"several {mod.value} stores for dataset {dataset!r}: {listing}. Choose one with "
        f"'mmx train --store {mod.value}=PATH_OR_KEY' (or 'stores: {{{mod.value}: PATH_OR_KEY}}' in a config file)"
    )


def _pick_store(root: str | os.PathLike, dataset: str, mod: Modality, choice: str) -> FeatureStore:
    """The store named by ``choice`` (a path, a folder name or a key prefix), checked against ``mod``/``dataset``."""
    if Path(choice).is_dir():
        found = [FeatureStore(choice)]
    else:
        candidates = [s for s in list_stores(root, dataset) if s.modality == mod]
        found = [s for s in candidates if s.path.name == choice or (len(choice) >= 6 and s.key.startswith(choice))]
        if len(found) != 1:
            have = ", ".join(f"{s.path.name} (key {s.key[:10]})" for s in candidates) or "none"
            raise FileNotFoundError(
                f"--store {mod.value}={choice}: {'no' if not found else 'several'} {mod.value} store(s) of dataset "
                f"{dataset!r} in cache {root} match; give a store path, folder name or 6+ characters of its key; "
                f"present: {have}")
    picked = found[0]
    if picked.modality != mod or picked.dataset != dataset:
        raise ValueError(f"--store {mod.value}={choice}: {picked.path} holds {picked.modality.value} features of "
                         f"dataset {picked.dataset!r}, not {mod.value} of {dataset!r}")
    return picked
