"""Run folders: what a training run leaves behind for ``mmx eval`` and ``mmx compare``.

Layout::

    RUN/
        config.yaml                         the resolved config, written before the first step
        metrics.jsonl                       one JSON object per epoch (losses, quick recall)
        metrics.json                        the final summary (best epoch, stop reason, ...)
        checkpoint.safetensors              best weights (what --from and each stage's end load)
        last.safetensors                    weights, optimiser, schedule, RNG and progress after
                                            the last epoch (what --resume continues from)
        normalizer.json                     the feature statistics applied before the model
        space.json                          the model's shape and each modality's store record
                                            (backbone, preprocessing, dtype), so the run
                                            rebuilds and embeds new media without its cache
        embeddings/<split>/<name>.npz       emb [N, d] float32, label [N], group [N], id [N]

``<name>`` is a modality (``text``) or, for models that fuse, a ``+``-joined subset
(``audio+video``) whose rows are groups. Eval reads only this folder.

The two checkpoints hold tensors plus JSON in the safetensors header and nothing else, so
reading a run folder cannot run code (train/checkpoint.py); a pickled ``checkpoint.pt`` /
``last.pt`` (the older format) is refused with a message that says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mmx.cache import files
from mmx.cache.atomic import atomic_path, atomic_write_bytes
from mmx.cache.store.locks import hold_exclusive
from mmx.cache.names import check_name

EMBEDDINGS = "embeddings"
WRITER_LOCK = ".writer.lock"
SPACE, SPACE_FORMAT = "space.json", "mmx-space/1"
MAX_DIM = 1 << 20  # features wider than this are not a backbone's
MAX_TOKENS = 1 << 22  # tokens of one item: past it, a damaged record


class RunLockedError(ValueError):
    """Another process is writing the run folder (training or resuming it)."""


def new_run_dir(root: str | os.PathLike, name_parts: list[str]) -> Path:
    """A fresh, readable run folder name: ``<date>-<time>-<parts>`` (suffixed if taken)."""
    for part in name_parts:
        if part:
            check_name(part, "run name")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / "-".join([stamp] + [p for p in name_parts if p])
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def named_run_dir(root: str | os.PathLike, name: str) -> Path:
    """The run folder ``root/name``, exactly as named (``--name``); refused when it already holds a run.

    A name given by the user is theirs: no date prefix and no suffix, so scripts can rely on it.
    """
    from mmx.cache.names import id_problem

    problem = id_problem(name)
    if problem:
        raise ValueError(f"--name {name!r}: {problem}; use a plain folder name")
    path = Path(root) / name
    if path.exists() and any(path.iterdir()):
        raise ValueError(f"{path} already holds a run; pick another --name, or continue it with: mmx train --resume {path}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, default=str).encode())


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line; a failed write (a full disk) is cut back so the file ends on a whole line.

    The file is opened without following a symlink, so a planted link cannot take the line elsewhere.
    """
    line = (json.dumps(obj, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise files.UnsafeFileError(f"{path}: a symbolic link (to {os.readlink(path)}); mmx appends only to the "
                                    "run's own file and will not follow it: remove the link") from None
    try:
        end = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, "No space left on device (short write)", str(path))
        except OSError as exc:
            os.ftruncate(fd, end)
            if exc.filename is None:
                exc.filename = str(path)
            raise
    finally:
        os.close(fd)


def read_jsonl(path: Path, cap: int = files.MAX_JSONL) -> list[dict]:
    """The records of an append-only JSON-lines file, ``[]`` when absent.

    A last line without its newline that is not a whole JSON object was torn by a crash or a
    full disk: it is left out (a resume rewrites the file without it). Any other bad line is
    refused with its number.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    data = files.read_bytes(path, cap, "JSON-lines file")
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends on a newline
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            out.append(_record(line, f"{path}, line {n}"))
    if tail.strip():
        try:
            out.append(_record(tail, f"{path}, line {len(lines) + 1}"))
        except ValueError:
            pass  # torn
    return out


def _record(line: bytes, source: str) -> dict:
    obj = files.parse_json(line, source)
    if not isinstance(obj, dict):
        raise files.UnsafeFileError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_json(path: Path) -> Any:
    """A run folder's JSON file (metrics.json, splits.json), bounded; errors name the file."""
    return files.read_json(path)


@contextlib.contextmanager
def writer_lock(run: Path, command: str = "mmx train"):
    """One writing process per run folder: a second ``mmx train --resume`` of it stops at once.

    An advisory ``flock`` on ``RUN/.writer.lock`` (opened without following links), released by
    the kernel when the holder exits however it dies, so a killed run never leaves it held.
    """
    path = Path(run) / WRITER_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise files.UnsafeFileError(f"{path}: a symbolic link; mmx will not follow it: remove the link") from None
    busy = lambda holder: RunLockedError(  # noqa: E731
        f"{run} is being written by another process ({holder}); wait for it to end or stop "
        f"it, then continue with: mmx train --resume {run} (lock: {path})")
    try:
        with hold_exclusive(fd, command, busy):  # a forked child never keeps the run locked
            yield
    finally:
        os.close(fd)


def output_dir(run: str | os.PathLike, *parts: str) -> Path:
    """``RUN/parts...`` created for writing, refused when a part is a symlink (:func:`mmx.cache.files.inside`)."""
    return files.inside(run, *parts)


def save_embeddings(run: Path, split: str, name: str, emb, labels, groups, ids) -> Path:
    """Save one modality's (or fused subset's) embeddings of one split."""
    check_name(split, "split name")
    check_name(name, "embedding name")
    emb = np.asarray(emb.detach().cpu() if hasattr(emb, "detach") else emb, dtype=np.float32)
    out = files.inside(run, EMBEDDINGS, split)
    path = out / f"{name}.npz"
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            emb=emb,
            label=np.asarray([str(x) for x in labels], dtype=str),
            group=np.asarray([str(x) for x in groups], dtype=str),
            id=np.asarray([str(x) for x in ids], dtype=str),
        )
    return path


def load_embeddings(run: str | os.PathLike, split: str) -> dict[str, dict[str, np.ndarray]]:
    """``{name: {"emb", "label", "group", "id"}}`` for one split of a run."""
    d = Path(run) / EMBEDDINGS / split
    if not d.is_dir():
        raise FileNotFoundError(f"{run}: no embeddings for split {split!r} (looked in {d})")
    out = {}
    for p in sorted(d.glob("*.npz")):
        if p.name.startswith("."):
            continue
        out[p.stem] = check_gallery(files.load_npz(p, what="embeddings file"), str(p))
    return out


def check_gallery(arrays: dict, source: str, fields: tuple[str, ...] = ("label", "group", "id")) -> dict:
    """``arrays`` once ``emb`` is a finite 2-D float array and each of ``fields`` a 1-D array of one
    entry per row; else one line naming ``source``."""
    missing = [k for k in ("emb", *fields) if k not in arrays]
    if missing:
        raise files.UnsafeFileError(f"{source}: no {', '.join(missing)} array(s) (it has {', '.join(arrays) or 'none'}); "
                                    "not an embeddings file mmx wrote")
    emb = arrays["emb"]
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating) or emb.shape[1] == 0:
        raise files.UnsafeFileError(f"{source}: emb is {emb.dtype} of shape {emb.shape}; expected rows of floats (N, d)")
    for k in fields:
        if arrays[k].shape != (len(emb),):
            raise files.UnsafeFileError(f"{source}: {k} has shape {arrays[k].shape}, expected ({len(emb)},): one per row of emb")
        if arrays[k].dtype.kind not in "US":
            raise files.UnsafeFileError(f"{source}: {k} is {arrays[k].dtype}, expected strings")
    files.check_finite("emb", emb, source)
    return arrays


def splits_of(run: str | os.PathLike) -> list[str]:
    d = Path(run) / EMBEDDINGS
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


# -- the model's shape -----------------------------------------------------------------------


def write_space(run: str | os.PathLike, record: dict) -> Path:
    """``RUN/space.json``: what rebuilding the model and embedding new media need (see
    :func:`read_space`), written before the first step."""
    path = Path(run) / SPACE
    write_json(path, {"format": SPACE_FORMAT, **record})
    return path


def read_space(run: str | os.PathLike) -> dict | None:
    """The record :func:`write_space` wrote, checked; None for a run from before it existed.

    ``{"dataset", "class_names": [str], "modalities": {m: {"dim", "max_tokens", "one_token",
    "store": the store's metadata (backbone, preprocessing, dtype, tokens, key), or None for
    features given in memory}}}``. Anything else (a wrong type, a size out of range, a foreign
    format) is one line naming the file.
    """
    from mmx.cache.modality import Modality

    path = Path(run) / SPACE
    if not path.exists() and not path.is_symlink():
        return None
    obj = files.read_json(path, what="space record")
    bad = lambda why: files.UnsafeFileError(f"{path}: {why}; not a space record this mmx wrote: "  # noqa: E731
                                            "export or train the run again")
    if not isinstance(obj, dict) or obj.get("format") != SPACE_FORMAT:
        raise bad(f"format {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r}, expected {SPACE_FORMAT}")
    names, mods = obj.get("class_names"), obj.get("modalities")
    if not isinstance(obj.get("dataset"), str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("dataset must be a string and class_names a list of strings")
    if not isinstance(mods, dict) or not mods:
        raise bad("modalities must map each modality to its record")
    for m, rec in mods.items():
        try:
            Modality.parse(m)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if not isinstance(rec, dict):
            raise bad(f"{m}: a {type(rec).__name__}, not a record")
        for key, top in (("dim", MAX_DIM), ("max_tokens", MAX_TOKENS)):
            v = rec.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
                raise bad(f"{m}: {key} must be an integer from 1 to {top}, not {v!r}")
        store = rec.get("store")
        if not isinstance(rec.get("one_token"), bool) or not isinstance(store, (dict, type(None))):
            raise bad(f"{m}: one_token must be true or false and store a mapping (or null: features from no store)")
        if store is None:
            continue
        backbone = store.get("backbone")
        if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str) or backbone.get("dim") != rec["dim"]:
            raise bad(f"{m}: store.backbone must name the backbone and record dim {rec['dim']}")
        if not isinstance(store.get("preprocessing"), dict) or store.get("dtype") not in ("float16", "float32"):
            raise bad(f"{m}: store.preprocessing must be a mapping and store.dtype float16 or float32")
        if not isinstance(store.get("tokens"), bool):
            raise bad(f"{m}: store.tokens must be true or false")
    return obj
