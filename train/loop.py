"""The one training loop. Strategies own model, batches and loss; this only runs them.

Per epoch: train steps, the held-out loss (early stopping on it, paper 000 Sec. III-D),
a quick held-out Recall@K, one line of ``metrics.jsonl`` (total and per-part losses),
``checkpoint.pt`` when the held-out loss improved and ``last.pt`` (weights, optimiser,
schedule, early-stopping state and RNG state) after every epoch, from which ``resume``
continues a killed or finished run exactly where it stopped. At the end the best weights
embed every loaded split for ``mmx eval``. Mixed precision (bf16 autocast) on CUDA only.

Alignment (``cfg.alignment``): ``class`` or ``instance`` picks the batch sampler and the
relevance of the quick recall; ``auto`` picks ``instance`` when every loaded item has a
group and ``class`` otherwise. The resolved value is what ``config.yaml`` records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mmx.pipeline import runs
from mmx.pipeline.modality import Modality
from mmx.train import config as config_mod
from mmx.train.config import TrainConfig
from mmx.train.data import SplitData, load_train_data
from mmx.train.strategies import get_strategy


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available here; use --device auto or cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _mean_parts(parts: list[dict[str, float]], prefix: str) -> dict[str, float]:
    keys = sorted({k for p in parts for k in p})
    out = {}
    for k in keys:
        vals = [p[k] for p in parts if k in p]
        name = k.replace("loss", f"loss_{prefix}", 1) if k.startswith("loss") else f"{prefix}/{k}"
        out[name] = float(np.mean(vals))
    return out


QUICK_ROWS = 2000  # per-epoch recall: at most this many rows per embedding (a fixed subset)


def quick_recall(strategy, model, split: SplitData, ks=(1, 5, 10), cap: int | None = None) -> dict[str, float]:
    """Mean Recall@K over the query->target pairs of ``split`` (a cheap per-epoch signal).

    ``cap``: rank only a fixed, seeded subset of at most ``cap`` rows of each embedding (the
    same rows every epoch), so the per-epoch figure stays cheap on large splits; a smaller
    gallery makes it higher than the full figure, which ``untrained``/``final`` and ``mmx eval`` give.
    """
    from mmx.eval.metrics import pairwise_recall

    model.eval()
    embs = strategy.embed(model, split)
    field = "groups" if strategy.cfg.alignment == "instance" else "labels"
    keys = {k: np.asarray(getattr(strategy.rows(split, k), field)) for k in embs}
    if cap:
        for k in embs:
            if len(keys[k]) > cap:
                rows = np.sort(np.random.default_rng(strategy.cfg.seed).choice(len(keys[k]), cap, replace=False))
                embs[k], keys[k] = embs[k][torch.as_tensor(rows, device=embs[k].device)], keys[k][rows]
    res = pairwise_recall(embs, keys, ks=ks)
    return {f"recall/{k}": v for k, v in res.items()}


def resolve_alignment(cfg: TrainConfig, strategy_cls, data) -> str:
    """``cfg.alignment`` made concrete (see the module docstring); raises when the data cannot serve it."""
    wanted = cfg.alignment if cfg.alignment != "auto" else strategy_cls.alignment
    if wanted not in ("class", "instance"):
        grouped = all(all(str(g) for g in f.groups) for s in data.splits.values() for f in s.features.values())
        wanted = "instance" if grouped else "class"
    if wanted == "class":
        unlabelled = sorted({f"{f.modality.value}/{name}" for name, s in data.splits.items() for f in s.features.values() if any(str(x) == "" for x in f.labels)})
        if unlabelled:
            raise ValueError(f"cannot train on this cache: class-aligned batches need labels, and {', '.join(unlabelled)} have items without one")
    return wanted


def train(
    cfg: TrainConfig,
    log: Callable[[str], None] = lambda s: None,
    data=None,
    resume: str | Path | None = None,
) -> Path:
    """Train ``cfg`` and return its run folder; ``resume``: a run folder to continue (its ``last.pt``)."""
    strategy_cls = get_strategy(cfg.strategy)
    problems = strategy_cls.check(cfg)
    if cfg.alignment not in ("class", "instance", "auto"):
        problems.append(f"alignment must be class, instance or auto, not {cfg.alignment!r}")
    elif strategy_cls.alignment not in ("any", cfg.alignment) and cfg.alignment != "auto":
        problems.append(f"strategy {cfg.strategy!r} needs {strategy_cls.alignment}-aligned data, not alignment={cfg.alignment}")
    if resume is not None and not (Path(resume) / "last.pt").exists():
        problems.append(f"--resume {resume}: no last.pt there (not a run folder, or it stopped before its first epoch ended)")
    try:
        mods = Modality.parse_list(cfg.modalities)
    except ValueError as exc:
        problems.append(str(exc))
        mods = []
    if problems:
        raise ValueError("invalid training config:\n  " + "\n  ".join(problems))
    cfg = dataclasses.replace(cfg, modalities=[m.value for m in mods])
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    splits = ["train", cfg.holdout] + ([] if cfg.holdout == "test" else ["test"])
    if data is None:
        if not cfg.cache:
            from mmx.pipeline.config_paths import default_cache_root

            cfg = dataclasses.replace(cfg, cache=str(default_cache_root()))
        data = load_train_data(
            cfg.cache, cfg.dataset, mods, splits, cfg.backbones,
            tokens=strategy_cls.needs_tokens,
            need_labels=cfg.alignment == "class",
            need_groups=cfg.alignment == "instance",
            device=device,
        )
    cfg = dataclasses.replace(cfg, alignment=resolve_alignment(cfg, strategy_cls, data))
    strategy = strategy_cls(cfg, data, device)
    model = strategy.build_model().to(device)
    if cfg.options.get("extend_from"):  # mmx train --from RUN --add-modality M: load RUN, freeze it (train/extend.py)
        from mmx.train.extend import warm_start

        warm_start(model, cfg.options["extend_from"], device)
    # multi-stage strategies (M-CVS, RVS, stage-wise) list stages; the epoch loop runs once per stage
    stages = strategy.stages() if hasattr(strategy, "stages") else [None]
    if resume is not None and len(stages) > 1:
        raise ValueError(f"--resume is not supported for the multi-stage strategy {cfg.strategy!r} yet; start a new run")
    params = list(strategy.parameters(model))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    if resume is None:
        run = runs.new_run_dir(cfg.out, [cfg.name] if cfg.name else [cfg.strategy, "-".join(m[0] for m in cfg.modalities)])
    else:
        run = Path(resume)
    config_mod.save(cfg, run / "config.yaml")  # before the first step
    train_split, hold_split = data.splits["train"], data.splits[cfg.holdout]

    def held_out_loss(epoch: int) -> dict[str, float]:
        model.eval()
        parts = []
        with torch.no_grad(), autocast():
            for batch in strategy.batches(hold_split, epoch, train=False):
                parts.append({k: float(v) for k, v in strategy.step(model, batch).items()})
        return _mean_parts(parts, cfg.holdout)

    best, best_epoch, stale, first, started = math.inf, 0, 0, 1, time.perf_counter()
    if resume is None:
        untrained = quick_recall(strategy, model, hold_split)
        runs.append_jsonl(run / "metrics.jsonl", {"epoch": 0, **held_out_loss(0), **untrained})
    else:
        state = load_last(run / "last.pt", model, opt, sched, device)
        best, best_epoch, stale, untrained = state["best"], state["best_epoch"], state["stale"], state["untrained"]
        first = state["epoch"] + 1
        # lines of an epoch that was cut off before last.pt was written are redone
        kept = [r for r in runs.read_jsonl(run / "metrics.jsonl") if r.get("epoch", 0) < first]
        runs.atomic_write_bytes(run / "metrics.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in kept).encode())
        log(f"resuming {run} at epoch {first}")
    for stage_no, stage in enumerate(stages, 1):
        if stage is not None:  # fresh optimiser and early stopping per stage; the stage picks what trains
            strategy.begin_stage(model, stage)
            opt = torch.optim.AdamW(list(strategy.parameters(model)), lr=cfg.lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
            if stage_no > 1:
                best, best_epoch, stale, first = math.inf, 0, 0, 1
            stage_started = time.perf_counter()
        stop_reason = "max_epochs"
        if stale >= cfg.patience:
            stop_reason = f"{cfg.holdout} loss did not fall for {cfg.patience} epochs"
        for epoch in range(first, cfg.epochs + 1):
            if stale >= cfg.patience:
                break
            model.train()
            t0, parts = time.perf_counter(), []
            for batch in strategy.batches(train_split, epoch, train=True):
                with autocast():
                    out = strategy.step(model, batch)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                parts.append({k: float(v.detach()) for k, v in out.items()})
            sched.step()
            record = {"epoch": epoch, **({"stage": stage_no} if stage is not None else {}), **_mean_parts(parts, "train"), **held_out_loss(epoch)}
            record.update(quick_recall(strategy, model, hold_split, cap=QUICK_ROWS))
            record["seconds"] = time.perf_counter() - t0
            runs.append_jsonl(run / "metrics.jsonl", record)
            hold = record[f"loss_{cfg.holdout}"]
            log(f"epoch {epoch:3d}  train {record['loss_train']:.4f}  {cfg.holdout} {hold:.4f}  "
                f"R@10 {record.get('recall/mean@10', float('nan')):.3f}  ({record['seconds']:.1f}s)")
            if hold < best - cfg.min_delta:
                best, best_epoch, stale = hold, epoch, 0
                save_checkpoint(run / "checkpoint.pt", model, opt, epoch, cfg)
            else:
                stale += 1
                if stale >= cfg.patience:
                    stop_reason = f"{cfg.holdout} loss did not fall for {cfg.patience} epochs"
            save_last(run / "last.pt", model, opt, sched, epoch, cfg,
                      {"best": best, "best_epoch": best_epoch, "stale": stale, "untrained": untrained})
        if best_epoch == 0:
            save_checkpoint(run / "checkpoint.pt", model, opt, 0, cfg)
        model.load_state_dict(torch.load(run / "checkpoint.pt", map_location=device, weights_only=False)["model"])
        if stage is not None:  # the stage's best weights go on to the next stage
            stage_record = {"stage": stage_no, "stage_name": stage.name, "best_epoch": best_epoch,
                            f"best_loss_{cfg.holdout}": best, "stage_seconds": time.perf_counter() - stage_started}
            runs.append_jsonl(run / "metrics.jsonl", {**stage_record, **strategy.end_stage(model, stage)})
            log(f"stage {stage_no}/{len(stages)} ({stage.name}) done: best epoch {best_epoch}")
    model.eval()
    for name, split in data.splits.items():
        for key, emb in strategy.embed(model, split).items():
            f = strategy.rows(split, key)
            runs.save_embeddings(run, name, key, emb, f.labels, f.groups, f.ids)
    runs.write_json(run / "metrics.json", {
        "strategy": cfg.strategy,
        "modalities": cfg.modalities,
        "best_epoch": best_epoch,
        f"best_loss_{cfg.holdout}": best,
        "stop_reason": stop_reason,
        "seconds": time.perf_counter() - started,
        "untrained": untrained,
        "final": quick_recall(strategy, model, hold_split),
        "device": str(device),
    })
    log(f"run folder: {run}  (best epoch {best_epoch}; {stop_reason})")
    return run


def save_checkpoint(path: Path, model, opt, epoch: int, cfg: TrainConfig) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "config": cfg.to_dict()}, buf)
    runs.atomic_write_bytes(path, buf.getvalue())


def save_last(path: Path, model, opt, sched, epoch: int, cfg: TrainConfig, progress: dict) -> None:
    """Everything ``resume`` needs to continue after ``epoch`` as if never stopped."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "config": cfg.to_dict(), "rng": rng, **progress}, buf)
    runs.atomic_write_bytes(path, buf.getvalue())


def load_last(path: Path, model, opt, sched, device) -> dict:
    state = torch.load(path, map_location=device, weights_only=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: the checkpoint does not fit the model of this config "
                         f"(changed a model setting on resume?): {str(exc).splitlines()[0]}") from None
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state
