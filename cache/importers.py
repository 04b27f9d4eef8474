"""Import pre-extracted features into the cache (``mmx cache import``).

:func:`import_features` reads one or more sources (:class:`Source`, parsed from
``PATH[:SPLIT | :key=value,...]`` by :func:`parse_source`) of one modality, checks them all,
and writes them as one pooled-only store whose key records the source files' digests and the
options used. Accepted files, label kinds and splits are described in docs/notes/cache.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmx.cache.containers import FeatureImportError, Npy, open_container
from mmx.cache.files import sha256_of
from mmx.cache.modality import Modality
from mmx.cache.store import (
    DEFAULT_SHARD_SIZE,
    FeatureStore,
    StoreLockedError,
    StoreSpec,
    create_store,
    ids_digest,
    store_path,
)

SPLITS = ("train", "test", "val")
SOURCE_KEYS = ("split", "features", "labels", "ids", "groups", "splits", "labels_file")
IMPORTER_VERSION = 1


# -- sources --------------------------------------------------------------------------


@dataclasses.dataclass
class Source:
    """One file to import and how to read it. ``None`` fields fall back to the defaults."""

    path: Path
    split: str | None = None
    features: str | None = None
    labels: str | None = None
    ids: str | None = None
    groups: str | None = None
    splits: str | None = None
    labels_file: Path | None = None


def parse_source(text: str) -> Source:
    """Parse ``PATH``, ``PATH:SPLIT`` or ``PATH:key=value,key=value``.

    Only the part after the last ``:`` is read as options, and only when it is a split
    name or contains ``=``; any other colon belongs to the path.
    """
    path, sep, tail = text.rpartition(":")
    if not sep or not (tail.strip().lower() in SPLITS or "=" in tail):
        return Source(Path(text))
    src = Source(Path(path))
    if "=" not in tail:
        src.split = tail.strip().lower()
        return src
    for part in tail.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in SOURCE_KEYS:
            raise FeatureImportError(f"--source {text!r}: bad option {part!r}; known keys: {', '.join(SOURCE_KEYS)}")
        value = value.strip()
        setattr(src, key, Path(value) if key == "labels_file" else (value.lower() if key == "split" else value))
    return src


# -- columns --------------------------------------------------------------------------


def _as_vector(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2 and 1 in a.shape:
        a = a.ravel()
    if a.ndim != 1:
        raise FeatureImportError(f"{what}: expected one value per item, got an array of shape {a.shape}")
    return a


def _strings(a: np.ndarray) -> list[str]:
    out = []
    for x in a:
        if isinstance(x, bytes):
            x = x.decode("utf-8")
        elif isinstance(x, (np.floating, float)) and float(x).is_integer():
            x = int(x)
        out.append(str(x).strip())
    return out


def labels_from_array(a: np.ndarray, what: str, onehot_base: int = 0) -> list[str]:
    """Labels as strings from ints, strings or one-hot rows (see the module docstring)."""
    a = np.asarray(a)
    if a.ndim == 2 and min(a.shape) > 1:
        if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
            raise FeatureImportError(f"{what}: a 2-D label array must be numeric (one-hot rows), got {a.dtype}")
        a = a.astype(np.float64)
        flat = a.max(1) == a.min(1)
        if flat.any():
            raise FeatureImportError(f"{what}: one-hot row {int(np.flatnonzero(flat)[0])} has no class (all entries equal)")
        return [str(int(i) + onehot_base) for i in a.argmax(1)]
    a = _as_vector(a, what)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or not (a == np.round(a)).all():
            raise FeatureImportError(f"{what}: float labels must be whole numbers (class numbers)")
        a = a.astype(np.int64)
    return _strings(a)


def read_labels_file(path: Path, onehot_base: int = 0) -> list[str]:
    """A labels file: ``.npy`` (ints, strings or one-hot rows) or text, one label per line."""
    if not path.exists():
        raise FeatureImportError(f"labels file {path}: no such file")
    if path.suffix.lower() == ".npy":
        return labels_from_array(np.load(path, allow_pickle=False), f"labels file {path}", onehot_base)
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


# -- the import -----------------------------------------------------------------------


@dataclasses.dataclass
class _Part:
    features: np.ndarray
    labels: list[str] | None
    ids: list[str] | None
    groups: list[str] | None
    splits: list[str]
    record: dict


def _read_source(
    src: Source, defaults: Source, transpose: bool, onehot_base: int, digests: dict[Path, str]
) -> _Part:
    pick: Callable[[str], Any] = lambda k: getattr(src, k) if getattr(src, k) is not None else getattr(defaults, k)
    c = open_container(src.path)
    where = f"{src.path}"
    try:
        if isinstance(c, Npy):
            named = [k for k in ("features", "labels", "ids", "groups", "splits") if pick(k)]
            if named:
                raise FeatureImportError(
                    f"{where}: a .npy file holds one array (the features) and no named variables, "
                    f"but {', '.join(named)} variable(s) were named; give labels with a labels file"
                )
            feats, fname = c.single(), None
        else:
            fname = pick("features")
            if fname is None:
                names = c.names()
                if len(names) != 1:
                    raise FeatureImportError(
                        f"{where}: name the features variable (--features-var or features=); "
                        f"variables present: {', '.join(names) or '(none)'}"
                    )
                fname = names[0]
            feats = c.get(fname)
        feats = np.asarray(feats)
        if transpose:
            feats = feats.T
        label = f"{where}" + (f" variable {fname!r}" if fname else "")
        if feats.ndim != 2:
            raise FeatureImportError(f"{label}: features must be a 2-D matrix [items, dim], got shape {feats.shape}")
        if feats.shape[0] == 0 or feats.shape[1] == 0:
            raise FeatureImportError(f"{label}: features are empty (shape {feats.shape})")
        if not (np.issubdtype(feats.dtype, np.number) or feats.dtype == bool) or np.iscomplexobj(feats):
            raise FeatureImportError(f"{label}: features must be real numbers, got dtype {feats.dtype}")
        feats = feats.astype(np.float32, copy=False)
        bad = ~np.isfinite(feats).all(1)
        if bad.any():
            raise FeatureImportError(
                f"{label}: {int(bad.sum())} row(s) contain NaN or inf (first: row {int(np.flatnonzero(bad)[0])})"
            )
        n = feats.shape[0]

        def column(key: str) -> list[str] | None:
            var = pick(key)
            if var is None:
                return None
            values = labels_from_array(c.get(var), f"{where} variable {var!r}", onehot_base) if key == "labels" \
                else _strings(_as_vector(c.get(var), f"{where} variable {var!r}"))
            if len(values) != n:
                raise FeatureImportError(f"{where}: variable {var!r} has {len(values)} values but the features have {n} rows")
            return values

        labels = column("labels") if not isinstance(c, Npy) else None
        labels_file = pick("labels_file")
        if labels_file is not None:
            if labels is not None:
                raise FeatureImportError(f"{where}: give labels either as a variable or as a labels file, not both")
            labels = read_labels_file(Path(labels_file), onehot_base)
            if len(labels) != n:
                raise FeatureImportError(f"labels file {labels_file}: {len(labels)} labels but {where} has {n} feature rows")
        ids = column("ids") if not isinstance(c, Npy) else None
        groups = column("groups") if not isinstance(c, Npy) else None
        split_names = column("splits") if not isinstance(c, Npy) else None
        split = pick("split")
        if split_names is not None and split is not None:
            raise FeatureImportError(f"{where}: give the split either by name or as a variable, not both")
        if split_names is not None:
            split_names = [s.lower() for s in split_names]
            unknown = sorted(set(split_names) - set(SPLITS) - {""})
            if unknown:
                raise FeatureImportError(f"{where}: unknown split value(s) {unknown[:5]}; known: {', '.join(SPLITS)}")
            splits = split_names
        elif split is not None:
            if split not in SPLITS:
                raise FeatureImportError(f"{where}: unknown split {split!r}; known: {', '.join(SPLITS)}")
            splits = [split] * n
        else:
            splits = [""] * n
        if src.path not in digests:
            digests[src.path] = sha256_of(src.path)
        record = {
            "sha256": digests[src.path],
            "format": c.kind,
            "features": fname,
            "labels": pick("labels") or (f"file:{sha256_of(Path(labels_file))}" if labels_file else None),
            "ids": pick("ids"),
            "groups": pick("groups"),
            "split": split if split_names is None else f"var:{pick('splits')}",
            "rows": n,
        }
        return _Part(feats, labels, ids, groups, splits, record)
    finally:
        c.close()


@dataclasses.dataclass
class ImportResult:
    store: FeatureStore
    created: bool
    items: int
    dim: int
    splits: dict


def import_features(
    root: str | Path,
    dataset: str,
    modality: Modality | str,
    sources: Sequence[Source | str | Path],
    defaults: Source | None = None,
    name: str | None = None,
    transpose: bool = False,
    onehot_base: int = 0,
    dtype: str = "float16",
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Read, check and write ``sources`` (concatenated in order) as one pooled store."""
    mod = Modality.parse(modality)
    if not sources:
        raise FeatureImportError("no source given; pass at least one --source FILE[:split]")
    if dtype not in ("float16", "float32"):
        raise FeatureImportError(f"dtype must be float16 or float32, not {dtype!r}")
    # a str may carry ":split" or ":key=value" options; a Path is only a path
    srcs = [parse_source(s) if isinstance(s, str) else s if isinstance(s, Source) else Source(Path(s)) for s in sources]
    defaults = defaults or Source(Path("."))
    if defaults.labels_file is not None and len(srcs) > 1:
        raise FeatureImportError("--labels-file applies to one source; with several, give labels_file= per --source")
    digests: dict[Path, str] = {}
    parts = [_read_source(s, defaults, transpose, onehot_base, digests) for s in srcs]

    dims = {p.features.shape[1] for p in parts}
    if len(dims) != 1:
        shapes = "; ".join(f"{s.path}: {p.features.shape}" for s, p in zip(srcs, parts))
        raise FeatureImportError(f"sources disagree on the feature dimension: {shapes}")
    dim = dims.pop()
    features = np.concatenate([p.features for p in parts], 0)
    n = features.shape[0]
    if dtype == "float16" and np.abs(features).max() > np.finfo(np.float16).max:
        raise FeatureImportError(f"features exceed the float16 range (|x| up to {np.abs(features).max():.3g}); use --dtype float32")

    def joined(attr: str, fill: Callable[[int, int], list[str]]) -> list[str] | None:
        cols = [getattr(p, attr) for p in parts]
        if all(c is None for c in cols):
            return None
        out, start = [], 0
        for p, col in zip(parts, cols):
            out += col if col is not None else fill(start, len(p.features))
            start += len(p.features)
        return out

    labels = joined("labels", lambda s, m: [""] * m)
    groups = joined("groups", lambda s, m: [""] * m)
    ids = joined("ids", lambda s, m: [f"{mod.value}-{i:06d}" for i in range(s, s + m)]) or [
        f"{mod.value}-{i:06d}" for i in range(n)
    ]
    splits = [s for p in parts for s in p.splits]
    _check_ids(ids)

    distinct = list(dict.fromkeys(p.record["sha256"] for p in parts))
    weights = distinct[0] if len(distinct) == 1 else hashlib.sha256("".join(distinct).encode()).hexdigest()
    stem = name or srcs[0].path.stem
    spec = StoreSpec(
        dataset=dataset,
        modality=mod,
        backbone={"name": f"imported:{stem}", "dim": int(dim), "token_rate": None, "weights": weights},
        preprocessing={
            "importer": IMPORTER_VERSION,
            "sources": [p.record for p in parts],
            "transpose": bool(transpose),
            "onehot_base": int(onehot_base),
        },
        items=ids_digest(ids),
    )
    path = store_path(root, spec)
    created = not path.exists()
    store = create_store(root, spec, ids, labels=labels, groups=groups, splits=splits, shard_size=shard_size, dtype=dtype, tokens=False)
    try:
        with store.writer_lock("mmx cache import"):
            done = set(store.complete_shards())
            for k in range(store.n_shards):
                if k not in done:
                    lo, hi = store.shard_range(k)
                    store.write_shard(k, features[lo:hi])
                if progress:
                    progress(k + 1, store.n_shards)
    except StoreLockedError:
        raise  # the other importer's store, not ours to remove
    except BaseException:
        if created:  # a store this call created and could not finish is removed, not left half-done
            shutil.rmtree(store.path, ignore_errors=True)
        raise
    counts: dict[str, int] = {}
    for s in splits:
        counts[s or "(none)"] = counts.get(s or "(none)", 0) + 1
    return ImportResult(store, created, n, int(dim), counts)


def _check_ids(ids: list[str]) -> None:
    from mmx.cache.names import id_problem

    problems = [f"{i!r}: {p}" for i in ids if (p := id_problem(i))]
    if problems:
        raise FeatureImportError(f"{len(problems)} unusable id(s), e.g. {'; '.join(problems[:3])}")
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise FeatureImportError(f"duplicate ids across the sources: {', '.join(dup[:5])}")
