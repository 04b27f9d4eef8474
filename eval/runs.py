"""Run folders: what a training run leaves behind for ``mmx eval`` and ``mmx compare``.

Layout::

    RUN/
        config.yaml                         the resolved config, written before the first step
        metrics.jsonl                       one JSON object per epoch (losses, quick recall)
        metrics.json                        the final summary (best epoch, stop reason, ...)
        checkpoint.safetensors              best weights (what --from and each stage's end load)
        last.safetensors                    weights, optimiser, schedule, RNG and progress after
                                            the last epoch (what --resume continues from)
        embeddings/<split>/<name>.npz       emb [N, d] float32, label [N], group [N], id [N]

``<name>`` is a modality (``text``) or, for models that fuse, a ``+``-joined subset
(``audio+video``) whose rows are groups. Eval reads only this folder.

The two checkpoints hold tensors plus JSON in the safetensors header and nothing else, so
reading a run folder cannot run code (train/checkpoint.py); a pickled ``checkpoint.pt`` /
``last.pt`` (the older format) is refused with a message that says so.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mmx.cache.atomic import atomic_path, atomic_write_bytes
from mmx.cache.names import check_name

EMBEDDINGS = "embeddings"


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
        raise ValueError(f"{path} already holds a run; pick another --name, or continue it with --resume {path}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, default=str).encode())


def append_jsonl(path: Path, obj: Any) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_embeddings(run: Path, split: str, name: str, emb, labels, groups, ids) -> Path:
    """Save one modality's (or fused subset's) embeddings of one split."""
    check_name(split, "split name")
    check_name(name, "embedding name")
    emb = np.asarray(emb.detach().cpu() if hasattr(emb, "detach") else emb, dtype=np.float32)
    out = Path(run) / EMBEDDINGS / split
    out.mkdir(parents=True, exist_ok=True)
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
        with np.load(p, allow_pickle=False) as z:
            out[p.stem] = {k: z[k] for k in z.files}
    return out


def splits_of(run: str | os.PathLike) -> list[str]:
    d = Path(run) / EMBEDDINGS
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
