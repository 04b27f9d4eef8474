"""The one training loop. Strategies own model, batches and loss; this only runs them.

Per epoch: train steps, the held-out loss (early stopping on it, paper 000 Sec. III-D),
a quick held-out Recall@K, one line of ``metrics.jsonl``, and a checkpoint when the
held-out loss improved. At the end the best weights embed every loaded split for
``mmx eval``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
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


def quick_recall(strategy, model, split: SplitData, ks=(1, 5, 10)) -> dict[str, float]:
    """Mean Recall@K over the query->target pairs of ``split`` (a cheap per-epoch signal)."""
    from mmx.eval.metrics import pairwise_recall

    model.eval()
    embs = strategy.embed(model, split)
    labels = {m.value: split.features[m].labels for m in split.features if m.value in embs}
    groups = {m.value: split.features[m].groups for m in split.features if m.value in embs}
    relevance = "instance" if strategy.alignment == "instance" else "class"
    res = pairwise_recall({k: embs[k] for k in labels}, labels if relevance == "class" else groups, ks=ks)
    return {f"recall/{k}": v for k, v in res.items()}


def train(
    cfg: TrainConfig,
    log: Callable[[str], None] = lambda s: None,
    data=None,
) -> Path:
    """Train ``cfg`` and return its run folder."""
    strategy_cls = get_strategy(cfg.strategy)
    problems = strategy_cls.check(cfg)
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
            need_labels=strategy_cls.alignment == "class",
            need_groups=strategy_cls.alignment == "instance",
            device=device,
        )
    strategy = strategy_cls(cfg, data, device)
    model = strategy.build_model().to(device)
    params = list(strategy.parameters(model))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    run = runs.new_run_dir(cfg.out, [cfg.name] if cfg.name else [cfg.strategy, "-".join(m[0] for m in cfg.modalities)])
    config_mod.save(cfg, run / "config.yaml")  # before the first step
    train_split, hold_split = data.splits["train"], data.splits[cfg.holdout]

    def held_out_loss(epoch: int) -> dict[str, float]:
        model.eval()
        parts = []
        with torch.no_grad(), autocast():
            for batch in strategy.batches(hold_split, epoch, train=False):
                parts.append({k: float(v) for k, v in strategy.step(model, batch).items()})
        return _mean_parts(parts, cfg.holdout)

    untrained = quick_recall(strategy, model, hold_split)
    runs.append_jsonl(run / "metrics.jsonl", {"epoch": 0, **held_out_loss(0), **untrained})
    best, best_epoch, stale, started = math.inf, 0, 0, time.perf_counter()
    stop_reason = "max_epochs"
    for epoch in range(1, cfg.epochs + 1):
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
        record = {"epoch": epoch, **_mean_parts(parts, "train"), **held_out_loss(epoch)}
        record.update(quick_recall(strategy, model, hold_split))
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
                break
    if best_epoch == 0:
        save_checkpoint(run / "checkpoint.pt", model, opt, 0, cfg)
    model.load_state_dict(torch.load(run / "checkpoint.pt", map_location=device, weights_only=False)["model"])
    model.eval()
    for name, split in data.splits.items():
        for key, emb in strategy.embed(model, split).items():
            f = _rows_meta(split, key)
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


def _rows_meta(split: SplitData, key: str):
    """The per-row metadata (labels, groups, ids) of an embedding named ``key``."""
    if key in {m.value for m in split.features}:
        return split.features[Modality.parse(key)]
    raise KeyError(f"strategy returned embeddings {key!r} with no row metadata; name fused subsets in the strategy")


def save_checkpoint(path: Path, model, opt, epoch: int, cfg: TrainConfig) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "config": cfg.to_dict()}, buf)
    runs.atomic_write_bytes(path, buf.getvalue())
