"""Checkpoints that cannot run code: tensors in safetensors, everything else as JSON in its header.

A pickle (``torch.save``) runs whatever its bytes name when loaded, so a run folder that
someone hands over (or a disk that flips bits) could execute code on ``--resume`` or
``--from``. Here a checkpoint is one ``.safetensors`` file: every tensor (weights, optimiser
moments, RNG states) under a flat key, and the rest of the state (config, progress, the
optimiser's and schedule's scalars) as JSON in the header's ``__metadata__``. Loading parses
a JSON header and copies raw bytes into tensors; nothing is imported or called.

Why one file and not a ``.json`` beside the tensors: one ``os.replace`` writes both at once,
so a process killed between two renames can never leave weights of epoch 5 with the
progress of epoch 4 (the resume tests kill the run at every save).

Tensors are always saved and loaded on the CPU; callers move weights into the model (whose
``load_state_dict`` copies to the model's device) and RNG states go back via
:func:`restore_rng`, which hands ``torch.cuda`` CPU byte tensors as it requires.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import torch

from mmx.cache.atomic import atomic_write_bytes

FORMAT = "mmx-checkpoint/1"
LAST, BEST = "last.safetensors", "checkpoint.safetensors"
_PICKLED = {LAST: "last.pt", BEST: "checkpoint.pt"}  # what mmx before the safe format wrote


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (damaged, foreign or from an older mmx); the message says what to do."""


def save(path: Path, state: dict) -> None:
    """Write ``state`` (nested dicts, lists, tuples, scalars and tensors) atomically to ``path``.

    A full disk leaves the previous file as it was and raises one line saying so.
    """
    from safetensors.torch import save as st_save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    data = st_save(tensors, metadata={"format": FORMAT, "state": json.dumps(tree)})
    try:
        atomic_write_bytes(Path(path), data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CheckpointError(f"{path}: no space left on the device while writing this checkpoint "
                                  "(the previous one is kept); free space, then continue with mmx train --resume "
                                  f"{Path(path).parent}") from None
        raise


def load(path: Path) -> dict:
    """The state :func:`save` wrote to ``path``, tensors on the CPU; :class:`CheckpointError` for any other file."""
    path = Path(path)
    if not path.exists():
        old = path.with_name(_PICKLED.get(path.name, ""))
        if path.name in _PICKLED and old.exists():
            raise CheckpointError(f"{old}: this run predates mmx's safe checkpoint format (pickled .pt files, "
                                  "which mmx no longer loads because loading them can run code); "
                                  "train it again with the current mmx")
        raise CheckpointError(f"{path}: no such checkpoint")
    from safetensors import safe_open

    fix = "the file is damaged or not an mmx checkpoint; use an intact copy or train again"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(exc)}); {fix}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} file (format {meta.get('format')!r}); {fix}")
    try:
        return _decode(json.loads(meta["state"]), tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({_first_line(exc)}); {fix}") from None


def rng_state(cuda=torch.cuda) -> dict[str, Any]:
    """The torch RNG states as CPU byte tensors: the CPU generator and one per CUDA device, or
    None when this process has not used CUDA (its generators then drew nothing, and reading them
    would start CUDA on every GPU of the host: a CPU run on a GPU machine would take GPU memory).
    ``cuda`` is ``torch.cuda`` (a stand-in in tests)."""
    states = [t.cpu() for t in cuda.get_rng_state_all()] if cuda.is_available() and cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": states}


def restore_rng(rng: dict[str, Any], cuda=torch.cuda) -> None:
    """Set the generators :func:`rng_state` recorded; ``cuda`` is ``torch.cuda`` (a stand-in in tests).

    Each state goes in as a CPU byte tensor (``torch.cuda.set_rng_state`` rejects a CUDA one).
    Devices are matched by index; states for devices this machine lacks are ignored, and a
    run recorded without CUDA leaves the CUDA generators as seeded.
    """
    torch.set_rng_state(rng["torch"].to("cpu", torch.uint8))
    if rng.get("cuda") and cuda.is_available():
        for index, state in enumerate(rng["cuda"][: cuda.device_count()]):
            cuda.set_rng_state(state.to("cpu", torch.uint8), index)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``obj``, its tensors moved into ``tensors`` under their path (``model/head.weight``)."""
    if isinstance(obj, torch.Tensor):
        # a copy: safetensors refuses tensors that share storage (tied weights, views)
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        # non-string keys (an optimiser's per-parameter state is keyed by int) survive JSON as pairs
        return {"$items": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {key or '/'})")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$items" in obj:
        return {k: _decode(v, tensors) for k, v in obj["$items"]}
    if "$tuple" in obj:
        return tuple(_decode(v, tensors) for v in obj["$tuple"])
    return {k: _decode(v, tensors) for k, v in obj.items()}
