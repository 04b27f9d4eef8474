"""Reading a store: :meth:`StoreReader.load` brings a modality (or some of its splits) into memory.

:class:`LoadedFeatures` holds the result: pooled features ``(N, D)`` and tokens as one flat
``(sum T_i, D)`` tensor with ``offsets (N+1)``, the form training uses. Only the ok items of
complete shards are loaded, after the checks of the store's integrity part (``_check_complete``).
Also per-item metadata columns, failures and :meth:`~StoreReader.info`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import numpy as np

from mmx.cache.modality import Modality
from mmx.cache.store.errors import IncompleteStoreWarning, reason
from mmx.cache.store.layout import META_ARRAYS, RECREATE, STATUS_FAILED, STATUS_OK, StoreLayout


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


class StoreReader(StoreLayout):
    """The reading part of :class:`FeatureStore`."""

    def column(self, name: str) -> np.ndarray:
        """A per-item metadata column (``id``, ``label``, ``group``, ``split``), all rows.

        The columns are written once, when the store is created, so they are read once per
        open store and kept (read-only): loading the train and then the test split decodes
        the strings once.
        """
        if name not in META_ARRAYS:
            raise KeyError(f"unknown column {name!r}; known: {', '.join(META_ARRAYS)}")
        cached = self._columns.get(name)
        if cached is None:
            arr = self._array(name)
            if arr.shape != (self.n_items,):
                raise self._corrupt(self._shape_problem(name, arr.shape, (self.n_items,)), RECREATE)
            # stores without checksums may have skipped a column of empty strings (zarr's
            # write_empty_chunks); the ids are never empty
            if self.checksummed or name == "id":
                for index in range(-(-arr.shape[0] // arr.shards[0])):
                    if (f := self._absent(name, index)) is not None:
                        raise self._corrupt(f"array {name!r}: file {f} is missing", RECREATE)
            cached = np.asarray(self._read(name), dtype=object)
            cached.flags.writeable = False
            self._columns[name] = cached
        return cached

    def token_lengths(self) -> np.ndarray:
        """Tokens per item, all rows (0 for items of incomplete shards), read without the tokens:
        what sizing a run before loading needs."""
        out = np.zeros(self.n_items, np.int64)
        if self.has_tokens:
            for s, e, shards in self._complete_ranges():
                out[s:e] = np.asarray(self._read("token_length", slice(s, e), shards), np.int64)
        return out

    def shard_sources(self, k: int) -> str | None:
        """The ``sources`` digest shard ``k`` was written with (None: incomplete, or not recorded)."""
        marker = self.shard_marker(k)
        return None if marker is None else marker.get("sources")

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
            raise self._corrupt(f"shard {k}: token array is damaged: {self._shard_file(name, 0)}: {reason(exc)}") from exc

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
