"""Checkpoints that cannot run code, and what a run records in them for ``--resume``.

:func:`save` / :func:`load`: one ``.safetensors`` file, every tensor under a flat key and the
rest of the state as JSON in its header, so loading never unpickles (a pickle can run code)
and one ``os.replace`` writes weights and progress together. Tensors are saved and loaded on
the CPU. :func:`save_best` and :func:`save_last` write a run's ``checkpoint.safetensors`` and
``last.safetensors``; :class:`Progress` is where a run stands, and :func:`resume_progress` /
:func:`restore` bring a run back to it. Why the format is so: docs/notes/train.md.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
from pathlib import Path
from typing import Any

import torch

from mmx.cache import files
from mmx.cache.atomic import atomic_write_bytes

FORMAT = "mmx-checkpoint/1"
LAST, BEST = "last.safetensors", "checkpoint.safetensors"
_PICKLED = {LAST: "last.pt", BEST: "checkpoint.pt"}  # what mmx before the safe format wrote
MAX_BYTES = 64 << 30  # a checkpoint larger than this is not one mmx wrote (EAO's 432M parameters + Adam: ~5 GiB)


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
    files.check_regular(path, "checkpoint", MAX_BYTES)  # a FIFO would block safetensors' open, a device never end
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(exc)}); {fix}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} file (format {meta.get('format')!r}); {fix}")
    try:
        state = _decode(json.loads(meta["state"]), tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({_first_line(exc)}); {fix}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its state is a {type(state).__name__}, not a mapping; {fix}")
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {key.lstrip('/')} holds {int((~torch.isfinite(t)).sum())} non-finite value(s) "
                                  f"(NaN or inf); {fix}")
    return state


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


# -- what a run records ----------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
    """Where a run stands after an epoch: what ``last.safetensors`` records and ``resume`` restores.

    A strategy's stage state must follow from ``begin_stage(model, stage)`` alone (which
    parameters train, which blocks the loss uses), so the stage index is all a resume needs
    to re-enter it; the weights, optimiser and schedule come from ``last.safetensors``.
    """

    stage: int = 0  # index into the strategy's stages (0 for single-stage strategies)
    stage_name: str = ""  # its name, to refuse a resume whose config plans other stages
    epoch: int = 0  # last finished epoch of that stage (0: the stage was just entered)
    best: float = math.inf  # the stage's best monitored score so far (lower is better: metrics negated)
    best_epoch: int = 0
    stale: int = 0  # epochs since ``best`` last improved by more than the tolerance
    stop_reason: str = "max_epochs"
    metrics_lines: int = 0  # lines of metrics.jsonl written when this was recorded
    untrained: dict = dataclasses.field(default_factory=dict)  # quick recall before the first step


def stage_name(stage) -> str:
    return "" if stage is None else str(stage.name)


def save_best(path: Path, model, epoch: int, cfg) -> None:
    """The best weights so far (what ``--from`` and the end of a stage load); no optimiser, resume uses the last."""
    save(path, {"model": model.state_dict(), "epoch": epoch, "config": cfg.to_dict()})


def save_last(path: Path, model, opt, sched, cfg, progress: Progress) -> None:
    """Everything ``resume`` needs to continue after ``progress`` (stage, epoch) as if never stopped."""
    save(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": progress.epoch, "config": cfg.to_dict(), "rng": rng_state(),
                "progress": dataclasses.asdict(progress)})


def resume_progress(run: Path, stages: list) -> tuple[Progress, dict]:
    """The :class:`Progress` and state of ``run``'s ``last.safetensors``, checked against this
    config's ``stages``; ``metrics.jsonl`` is cut back to the lines recorded with it (lines of an
    epoch or a stage end that was cut off are redone)."""
    from mmx.eval import runs

    last = run / LAST
    state = load(last)
    try:
        progress = Progress(**state["progress"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{last}: no valid progress record ({exc}); train again") from None
    if not 0 <= progress.stage < len(stages):
        raise ValueError(f"{last}: stage {progress.stage + 1} recorded, but this config has {len(stages)} stage(s)")
    if progress.stage_name != stage_name(stages[progress.stage]):
        raise ValueError(f"{last}: stage {progress.stage + 1} is {progress.stage_name!r} there, "
                         f"but {stage_name(stages[progress.stage])!r} in this config (changed the stages on resume?)")
    kept = runs.read_jsonl(run / "metrics.jsonl")[: progress.metrics_lines]
    atomic_write_bytes(run / "metrics.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in kept).encode())
    return progress, state


def load_weights(model, weights: Any, path: Path) -> None:
    """``weights`` into ``model`` when each tensor has the model's name, shape and dtype: a
    checkpoint of another model or precision is refused, naming ``path``, never cast or padded."""
    own = model.state_dict()
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: holds no weights (a {type(weights).__name__}); use an intact copy or train again")
    problems = []
    for key, t in own.items():
        w = weights.get(key)
        if not isinstance(w, torch.Tensor):
            problems.append(f"no tensor {key}")
        elif w.shape != t.shape:
            problems.append(f"{key} has shape {tuple(w.shape)} where the model has {tuple(t.shape)}")
        elif w.dtype != t.dtype:
            problems.append(f"{key} is {w.dtype} where the model is {t.dtype}")
    extra = sorted(set(weights) - set(own))
    if extra:
        problems.append(f"tensors the model lacks: {', '.join(map(str, extra[:3]))}" + (" ..." if len(extra) > 3 else ""))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{path}: the weights do not fit this run's model: {'; '.join(problems[:3])}{more}; "
                              "was it written by another run or config? use the run's own checkpoint or train again")
    model.load_state_dict(weights)


def restore(state: dict, path: Path, model, opt, sched) -> None:
    """Weights, optimiser, schedule and RNG from a loaded ``last.safetensors`` (``path`` names it in errors)."""
    load_weights(model, state.get("model"), path)
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: the checkpoint does not fit the model of this config "
                         f"(changed a model setting on resume?): {str(exc).splitlines()[0]}") from None
