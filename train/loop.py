"""The one training loop: :func:`train` runs any strategy, :class:`Runner` its epochs.

Per epoch: train steps, the held-out loss, a quick held-out Recall@K, the monitored signal
(:mod:`mmx.train.monitor`), one line of ``metrics.jsonl``, ``checkpoint.safetensors`` when the
signal improved and ``last.safetensors`` after every epoch (:mod:`mmx.train.checkpoint`), from
which ``resume`` continues exactly where a run stopped. Multi-stage strategies run the epochs
once per stage, each with a fresh optimiser and early stopping. At the end the kept weights
embed every loaded split for ``mmx eval``. Everything before the first step is
:mod:`mmx.train.prepare`; the held-out protocol and its readings: docs/notes/train.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import time
from pathlib import Path
from typing import Callable

import torch

from mmx.eval import runs
from mmx.train import checkpoint, checks, graphs
from mmx.train.checkpoint import Progress
from mmx.train.config import MAX_EPOCHS, TrainConfig
from mmx.train.monitor import QUICK_ROWS, improved, parse_monitor, quick_recall, quick_recall_note, signal_name, signal_value, watched
from mmx.train.optim import make_optimiser
from mmx.train.prepare import Prepared, caution_channel, open_run_folder, prepare
from mmx.train.runtime import autocast_for, deterministic_kernels


def train(
    cfg: TrainConfig,
    log: Callable[[str], None] = lambda s: None,
    data=None,
    resume: str | Path | None = None,
    warn: Callable[[str], None] | None = None,
    force: bool = False,
) -> Path:
    """Train ``cfg`` and return its run folder; ``resume``: a run folder to continue (its ``last.safetensors``).

    ``data``: features already loaded (else the cache's). ``warn`` receives, once each, what
    the user should know before trusting the run (:mod:`mmx.train.checks`, feature scales);
    by default it goes through :func:`warnings.warn`. ``force``: train a run sized past the
    machine (:func:`mmx.train.prepare.size_up` refuses it otherwise).
    """
    with deterministic_kernels(cfg.deterministic), contextlib.ExitStack() as hold:
        say = caution_channel(warn)
        prep = prepare(cfg, log, say, data, resume, force)
        run = open_run_folder(prep, resume, hold)  # hold: one writer per run folder until the end
        runner = Runner(prep.cfg, prep.strategy, prep.model, prep.data.splits["train"], prep.data.splits[prep.cfg.holdout],
                        run, prep.device, log, watch=watched(prep.cfg, prep.strategy, prep.data, prep.device, log))
        started = time.perf_counter()
        try:
            progress, state = _start(runner, prep.stages, resume)
            _announce(prep, runner, log, say, resumed=resume is not None)
            progress = _run_stages(runner, prep.stages, progress, state)
            _finish(prep, runner, progress, time.perf_counter() - started)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # the same command would start another run; this one continues from its last epoch
            raise ValueError(f"no space left on the device while writing {exc.filename or run}; free some space, "
                             f"then continue this run with: mmx train --resume {run}") from None
    for line in prep.strategy.report(runs.read_jsonl(run / "metrics.jsonl")):
        log(line)
    log(f"run folder: {run}  (best epoch {progress.best_epoch}; {progress.stop_reason})")
    return run


def _start(runner: Runner, stages: list, resume) -> tuple[Progress, dict | None]:
    """A new run's first record (epoch 0: the untrained model), or a resumed run's progress and state."""
    if resume is None:
        untrained = quick_recall(runner.watch, runner.model, runner.hold)
        progress = Progress(untrained=untrained)
        runner.append(progress, {"epoch": 0, **runner.held_out_loss(0), **untrained})
        return progress, None
    progress, state = checkpoint.resume_progress(runner.run, stages)
    runner.log(f"resuming {runner.run} at stage {progress.stage + 1}/{len(stages)}, epoch {progress.epoch + 1}")
    return progress, state


def _announce(prep: Prepared, runner: Runner, log, say, resumed: bool) -> None:
    """The run header, then the cautions (a resumed run said them when it began). Said once
    everything that can fail before the first step has passed, so an error stays the first line."""
    cfg, data = prep.cfg, prep.data
    for line in checks.header(cfg, data, prep.device, len(prep.stages)) + [quick_recall_note(cfg, runner.hold)]:
        log(line)
    if cfg.cuda_graphs:
        log(graphs.reason_not(cfg, prep.strategy, prep.device) or "cuda_graphs: steps of a fixed shape are replayed from CUDA graphs")
    for line in [] if resumed else prep.cautions:
        say(line)


def _run_stages(runner: Runner, stages: list, progress: Progress, state: dict | None) -> Progress:
    """Every stage from the recorded one on, each with a fresh optimiser, schedule and early stopping."""
    cfg, model, strategy, last = runner.cfg, runner.model, runner.strategy, runner.run / checkpoint.LAST
    for k in range(progress.stage, len(stages)):
        stage = stages[k]
        if stage is not None:
            runner.log(f"stage {k + 1}/{len(stages)} ({stage.name}): starting")
        strategy.begin_stage(model, stage)  # picks what trains, and so what the optimiser holds
        opt, sched = make_optimiser(cfg, strategy.parameters(model))
        if state is not None:  # resuming inside this stage
            checkpoint.restore(state, last, model, opt, sched)
            state = None
        else:
            progress = dataclasses.replace(progress, stage=k, stage_name=checkpoint.stage_name(stage), epoch=0,
                                           best=math.inf, best_epoch=0, stale=0, stop_reason="max_epochs")
            # entering the stage: a kill before its first epoch ends resumes here, not in the stage before
            checkpoint.save_last(last, model, opt, sched, cfg, progress)
        progress = runner.run_stage(stage, len(stages), progress, opt, sched)
    return progress


def _finish(prep: Prepared, runner: Runner, progress: Progress, seconds: float) -> None:
    """Embeddings of every loaded split by the kept weights, and ``metrics.json``."""
    cfg, strategy, model, run = prep.cfg, prep.strategy, prep.model, runner.run
    model.eval()
    for name, split in prep.data.splits.items():
        for key, emb in strategy.embed(model, split).items():
            f = strategy.rows(split, key)
            runs.save_embeddings(run, name, key, emb, f.labels, f.groups, f.ids)
    runs.write_json(run / "metrics.json", {
        "strategy": cfg.strategy,
        "modalities": cfg.modalities,
        "holdout": {"split": cfg.holdout, **prep.data.split_info.get(cfg.holdout, {"source": "store"})},
        "monitor": cfg.monitor,
        "keep": cfg.keep,
        "best_epoch": progress.best_epoch,
        f"best_{signal_name(cfg)}": signal_value(cfg, progress.best),
        "stop_reason": progress.stop_reason,
        "seconds": seconds,
        "untrained": progress.untrained,
        "final": quick_recall(runner.watch, model, runner.hold),
        "device": str(prep.device),
    })


def pass_draw(epoch: int, passes: int) -> int:
    """The batch draw of an epoch's pass ``passes`` (0: its first): the epoch's own draw, then
    draws no other epoch or pass makes, whatever ``epochs`` is, so an epoch's batches, and the
    weights after it, do not depend on how many epochs the run was given."""
    return epoch + passes * (MAX_EPOCHS + 1)


class PartMeans:
    """Per-part means of step outputs, summed on the device: one host sync per epoch, not per step.

    A step's parts are stacked into one vector and added to the running sum of the steps with
    the same parts (two kernels per step whatever the part count).
    """

    def __init__(self):
        self.sums: dict[tuple, list] = {}  # part names -> [float64 sum vector on the device, steps]

    def add(self, out: dict[str, torch.Tensor], steps: int = 1) -> None:
        """``out``: a step's parts, or their sums over ``steps`` steps."""
        keys = tuple(out)
        with torch.no_grad():
            v = torch.stack(list(out.values())).double()
        if keys in self.sums:
            self.sums[keys][0] += v
            self.sums[keys][1] += steps
        else:
            self.sums[keys] = [v, steps]

    def means(self, prefix: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        vectors = [v for v, _ in self.sums.values()]
        values = torch.cat(vectors).tolist() if vectors else []  # the one read of the epoch
        at = 0
        for keys, (_, n) in self.sums.items():
            for k, v in zip(keys, values[at : at + len(keys)]):
                totals[k] = totals.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + n
            at += len(keys)
        out = {}
        for k in sorted(totals):
            name = k.replace("loss", f"loss_{prefix}", 1) if k.startswith("loss") else f"{prefix}/{k}"
            out[name] = totals[k] / counts[k]
        return out


class Runner:
    """The epochs of a run, one stage at a time: train steps, held-out loss, quick recall,
    early stopping, checkpoints; ``append`` counts the ``metrics.jsonl`` lines for resume."""

    def __init__(self, cfg, strategy, model, train_split, hold_split, run: Path, device, log, watch=None):
        self.cfg, self.strategy, self.model, self.run, self.device, self.log = cfg, strategy, model, run, device, log
        # the held-out loss and recall: the strategy, or its view without modalities the held-out split lacks
        self.watch = watch or strategy
        self.train_split, self.hold = train_split, hold_split
        self.autocast = autocast_for(cfg, device)
        self.graphed = graphs.reason_not(cfg, strategy, device) is None and cfg.cuda_graphs
        self.step_graphs, self._graph_rates = None, None  # see graphed_steps

    def append(self, progress: Progress, record: dict) -> None:
        runs.append_jsonl(self.run / "metrics.jsonl", record)
        progress.metrics_lines += 1

    def held_out_loss(self, epoch: int) -> dict[str, float]:
        self.model.eval()
        parts = PartMeans()
        with torch.no_grad(), self.autocast():
            for out, n in self.watch.held_out(self.model, self.hold, epoch):
                parts.add(out, n)
        return parts.means(self.cfg.holdout)

    def train_epoch(self, epoch: int, opt) -> dict[str, float]:
        """One epoch: a pass over the train split, followed by more passes (each its own seeded
        draw) while the epoch has fewer than ``min_steps`` steps, so that a small split still
        gives a schedule in epochs its steps."""
        self.model.train()
        parts = PartMeans()
        step = self.graphed_steps(opt) if self.graphed else (lambda batch: self.train_step(batch, opt))
        steps, passes = 0, 0
        while passes == 0 or 0 < steps < self.cfg.min_steps:
            for batch in self.strategy.batches(self.train_split, pass_draw(epoch, passes), train=True):
                parts.add(step(batch))
                steps += 1
            passes += 1
        return {**parts.means("train"), "steps": steps}

    def graphed_steps(self, opt) -> "graphs.StepGraphs":
        """The run's graphed steps, kept from pass to pass (a capture costs a device sync and a
        cache flush) while the optimiser and its learning rates are the ones they recorded: a new
        stage's optimiser, or a schedule that moved the rate, gets new graphs."""
        rates = [float(g["lr"]) for g in opt.param_groups]
        if self.step_graphs is None or self.step_graphs.opt is not opt or self._graph_rates != rates:
            self.step_graphs = graphs.StepGraphs(lambda batch: self.train_step(batch, opt),
                                                 lambda batch: self.train_step(batch, opt, graphed=True), opt)
            self._graph_rates = rates
        return self.step_graphs

    def train_step(self, batch, opt, graphed: bool = False) -> dict:
        """One step: forward, loss, backward, optimiser. ``graphed``: as recorded into a CUDA
        graph, which writes the gradients it allocated instead of zeroing them first."""
        with self.autocast(cache=not graphed):
            out = self.strategy.step(self.model, batch)
        if not graphed:
            opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return out

    def score(self, record: dict) -> tuple[float, dict]:
        """The monitored signal of an epoch as a lower-is-better score, and the record's extra fields.

        A retrieval monitor ranks the whole held-out split (no row cap), so the selection
        does not depend on a subset; the loss is already in the record.
        """
        cfg = self.cfg
        key, map_r = parse_monitor(cfg.monitor)
        if key is None:
            return record[f"loss_{cfg.holdout}"], {}
        ks = (int(key.rsplit("@", 1)[1]),) if key.startswith("recall/") else (1, 5, 10)
        res = quick_recall(self.watch, self.model, self.hold, ks=ks, map_r=map_r or 50)
        value = res.get(key, float("nan"))
        return (-value if math.isfinite(value) else math.inf), {f"{cfg.holdout}/{cfg.monitor}": value}

    def run_epoch(self, epoch: int, staged: bool, p: Progress, opt, sched) -> tuple[float, dict]:
        """One epoch's steps and its ``metrics.jsonl`` line; its score and the monitor's extra fields."""
        cfg, t0 = self.cfg, time.perf_counter()
        record = {"epoch": epoch, **({"stage": p.stage + 1} if staged else {}), **self.train_epoch(epoch, opt)}
        record.update(self.strategy.composition)
        sched.step()
        record.update(self.held_out_loss(epoch))
        record.update(quick_recall(self.watch, self.model, self.hold, cap=QUICK_ROWS))
        score, extra = self.score(record)
        record.update(extra)
        record["seconds"] = time.perf_counter() - t0
        self.append(p, record)
        shown = "".join(f"  {k} {v:.4f}" for k, v in extra.items())
        self.log(f"epoch {epoch:3d}/{cfg.epochs}  train {record['loss_train']:.4f}  {cfg.holdout} "
                 f"{record[f'loss_{cfg.holdout}']:.4f}{shown}  "
                 f"R@10 {record.get('recall/mean@10', float('nan')):.3f}  ({record['seconds']:.1f}s)")
        return score, extra

    def run_stage(self, stage, n_stages: int, p: Progress, opt, sched) -> Progress:
        """Epochs ``p.epoch + 1 ..`` of ``stage``; ends with its kept weights loaded.

        ``keep: best``: until ``patience`` epochs bring no improvement of the monitored signal,
        then the best epoch's weights. ``keep: last``: all ``epochs`` epochs, then the last
        weights (the signal is still logged, and ``best_epoch`` is the last epoch).
        """
        cfg, run, staged = self.cfg, self.run, stage is not None
        fixed = cfg.keep == "last"
        t_stage = time.perf_counter()
        by = f" by more than {cfg.min_delta:.1%}" if cfg.min_delta else ""
        what = f"{cfg.holdout} loss did not fall" if cfg.monitor == "loss" else f"{cfg.holdout} {cfg.monitor} did not rise"
        patience_msg = f"{what}{by} for {cfg.patience} epoch{'s' if cfg.patience != 1 else ''}"
        for epoch in range(p.epoch + 1, cfg.epochs + 1):
            if p.stale >= cfg.patience and not fixed:
                break
            score, _ = self.run_epoch(epoch, staged, p, opt, sched)
            p.epoch = epoch
            if fixed or improved(score, p.best, cfg.min_delta):
                p.best, p.best_epoch, p.stale = score, epoch, 0
                checkpoint.save_best(run / checkpoint.BEST, self.model, epoch, cfg)
            else:
                p.stale += 1
                if p.stale >= cfg.patience:
                    p.stop_reason = patience_msg
            checkpoint.save_last(run / checkpoint.LAST, self.model, opt, sched, cfg, p)
        if fixed:
            p.stop_reason = f"fixed {cfg.epochs} epochs (keep: last)"
        if p.best_epoch == 0:
            checkpoint.save_best(run / checkpoint.BEST, self.model, 0, cfg)
        self.model.load_state_dict(checkpoint.load(run / checkpoint.BEST)["model"])
        if staged:  # the stage's kept weights go on to the next stage
            record = {"stage": p.stage + 1, "stage_name": stage.name, "best_epoch": p.best_epoch,
                      f"best_{signal_name(cfg)}": signal_value(cfg, p.best), "stage_seconds": time.perf_counter() - t_stage}
            self.append(p, {**record, **self.strategy.end_stage(self.model, stage)})
            self.log(f"stage {p.stage + 1}/{n_stages} ({stage.name}) done: best epoch {p.best_epoch}")
        return p
