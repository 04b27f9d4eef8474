"""Writing a store: creating it, writing item shards whole, and rewriting metadata columns.

:func:`build_store` creates a new, empty store (built in a temporary folder and renamed into
place); :class:`StoreWriter` writes item shard ``k`` whole, flushes it to disk and only then
marks it complete, so a killed writer leaves a shard that readers ignore and a rerun rewrites.
Every chunk is written with a CRC-32C (see docs/notes/cache.md for the codecs chosen).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mmx import __version__
from mmx.cache.atomic import atomic_write_bytes
from mmx.cache.store.errors import write_errors
from mmx.cache.store.layout import INTEGRITY, MARKERS, META_ARRAYS, STATUS_FAILED, STATUS_OK, StoreLayout, StoreSpec
from mmx.cache.store.locks import hold_shard_lock, hold_writer_lock


class StoreWriter(StoreLayout):
    """The writing part of :class:`FeatureStore`."""

    def set_scale(self, scale: dict) -> None:
        """Record the extractor's output scale in the attributes (outside the key)."""
        self.meta = {**self.meta, "scale": scale}
        self._group.attrs["mmx"] = self.meta

    def writer_lock(self, command: str = "a writer"):
        """Hold the store's writer lock: one writing process (e.g. ``mmx extract``) per store.

        A second writer fails at once with :class:`StoreLockedError` (see :func:`hold_writer_lock`).
        """
        return hold_writer_lock(self.path, command)

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
        with hold_shard_lock(self.path, k), write_errors(f"{self.path}: shard {k}"), zarr.config.set({"array.write_empty_chunks": True}):
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

    def rewrite_metadata(self, columns: dict[str, Sequence[str]]) -> dict[str, int]:
        """Replace whole metadata columns (``label``, ``group``, ``split``); returns rows changed per column.

        Features are not touched: metadata is cheap, features are not. Each column is one zarr
        shard file, built beside the store and renamed over the old one, so a reader sees the
        old column or the new one, never a mix. ``id`` cannot change here (it keys the store).
        """
        import zarr

        changed = {}
        for name, values in columns.items():
            if name not in META_ARRAYS or name == "id":
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


def _write_empty(tmp: Path, spec: StoreSpec, cols: dict, shard_size: int, chunk_rows: int, dtype: str, tokens: bool,
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
    (tmp / MARKERS).mkdir()


def build_store(path: Path, spec: StoreSpec, ids: Sequence[str], labels: Sequence[str] | None,
                groups: Sequence[str] | None, splits: Sequence[str] | None, shard_size: int, chunk_rows: int,
                dtype: str, tokens: bool, scale: dict | None) -> None:
    """Create the new store at ``path``: built in a temporary folder and renamed into place.

    A killed process never leaves a half-created store. When another process created ``path``
    first, its store stays (the caller checks that it is the same configuration).
    """
    import zarr

    n = len(ids)
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
        with write_errors(f"{path}: creating the store"), zarr.config.set({"array.write_empty_chunks": True}):
            _write_empty(tmp, spec, cols, shard_size, chunk_rows, dtype, tokens, scale)
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
