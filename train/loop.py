"""The one training loop. Strategies own model, batches and loss; this only runs them.

Per epoch: train steps, the held-out loss, a quick held-out Recall@K, the monitored signal
(``cfg.monitor``, see :func:`parse_monitor`), one line of ``metrics.jsonl`` (total and
per-part losses, the batch composition), ``checkpoint.safetensors`` when the signal improved
and ``last.safetensors`` (weights, optimiser, schedule, RNG state and the
:class:`Progress`: stage, epoch, early-stopping state) after every epoch, from which
``resume`` continues a killed or finished run exactly where it stopped. Step losses are
summed on the device and read once per epoch (:class:`PartMeans`), so a CUDA run does not
wait on the host after every step. At the end the best weights embed every loaded split for
``mmx eval``. Mixed precision (bf16 autocast) on CUDA only.

Held-out split and selection (issue 13 items 1-2). The held-out split is ``cfg.holdout``:
``val`` by default (the store's, else a seeded stratified slice of train, train/data.py),
``test`` only when asked (paper 000 Sec. III-D stops on the test loss). The test split
chooses nothing otherwise: it is loaded only to be embedded for ``mmx eval`` at the end
(and for stage-wise's per-stage report, thesis Table 13). ``cfg.keep``: ``best`` stops
early (``patience`` epochs without a relative improvement of ``min_delta``, see
:func:`improved`) and keeps the best epoch's weights; ``last`` trains exactly ``epochs``
epochs per stage and keeps the last weights (the CVS papers' fixed 50 epochs).

Multi-stage strategies (M-CVS, RVS, stage-wise) list ``stages()``; each stage gets a fresh
optimiser, schedule and early stopping (:meth:`Runner.run_stage`) and hands its kept weights
to the next. ``last.safetensors`` is also written on entering a stage, so a resume re-enters the
recorded stage via ``begin_stage`` (which fixes what trains) and continues at its next epoch;
``metrics.jsonl`` is cut back to the lines recorded with that checkpoint and the rest redone.
Checkpoints hold tensors and JSON only, never a pickle (train/checkpoint.py).

Alignment (``cfg.alignment``): ``class`` or ``instance`` picks the batch sampler and the
relevance of the quick recall; ``auto`` picks ``instance`` when every loaded item has a
group and ``class`` otherwise. The resolved value is what ``config.yaml`` records.

Normalisation (``cfg.normalize``, train/normalize.py): after loading and before the strategy
sees any feature, a warning names modalities far out of scale or nearly constant, and the
features of every split are normalised with statistics of the train split, saved as
``normalizer.json`` in the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mmx.cache.atomic import atomic_write_bytes
from mmx.eval import runs
from mmx.cache.modality import Modality
from mmx.cache.names import name_problem
from mmx.cache.threads import set_threads
from mmx.train import checkpoint, checks, graphs
from mmx.train import config as config_mod
from mmx.train import normalize
from mmx.train.config import TrainConfig
from mmx.train.data import Holdout, SplitData, dataset_modalities, load_train_data
from mmx.train.optim import AdamW
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


QUICK_ROWS = 2000  # per-epoch recall: at most this many rows per embedding (a fixed subset)


MONITOR_KEYS = {"R": "recall/mean@{}", "mAP@": "map@{}/mean", "mAP": "map/mean"}


def parse_monitor(name: str) -> tuple[str | None, int | None]:
    """``cfg.monitor`` -> (key of its value in the epoch record, or None for the loss; mAP's R).

    ``loss``: the held-out loss, lower is better. ``R@K``: mean Recall@K, ``mAP@R``: mean
    mAP@R (paper 002 eq. 7), ``mAP``: mean full mAP, each over the query->target pairs of the
    held-out split (:mod:`mmx.eval.metrics`), higher is better.
    """
    import re

    if name == "loss":
        return None, None
    m = re.fullmatch(r"(R@|mAP@)([1-9][0-9]*)|mAP", name)
    if not m:
        raise ValueError(f"monitor must be loss, mAP, mAP@R or R@K (e.g. mAP@50, R@10), not {name!r}")
    if name == "mAP":
        return MONITOR_KEYS["mAP"], None
    k = int(m.group(2))
    return (MONITOR_KEYS["R"].format(k), None) if m.group(1) == "R@" else (MONITOR_KEYS["mAP@"].format(k), k)


def quick_recall(strategy, model, split: SplitData, ks=(1, 5, 10), cap: int | None = None,
                 map_r: int | None = None) -> dict[str, float]:
    """Recall@K per query->target pair of ``split`` and its mean (a cheap per-epoch signal).

    ``cap``: rank only a fixed, seeded subset of at most ``cap`` rows of each embedding (the
    same rows every epoch), so the per-epoch figure stays cheap on large splits; a smaller
    gallery makes it higher than the full figure, which ``untrained``/``final`` and ``mmx eval`` give.
    With ``map_r`` also the means over pairs of mAP@R and full mAP (``map@R/mean``, ``map/mean``).
    """
    from mmx.eval.metrics import per_query_metrics, summarise

    model.eval()
    embs = strategy.embed(model, split)
    field = "groups" if strategy.cfg.alignment == "instance" else "labels"
    keys = {k: np.asarray(getattr(strategy.rows(split, k), field)) for k in embs}
    if cap:
        for k in embs:
            if len(keys[k]) > cap:
                rows = np.sort(np.random.default_rng(strategy.cfg.seed).choice(len(keys[k]), cap, replace=False))
                embs[k], keys[k] = embs[k][torch.as_tensor(rows, device=embs[k].device)], keys[k][rows]
    data = {n: {"emb": embs[n], "label": keys[n]} for n in embs}
    per = per_query_metrics(data, ("class",), map_r=map_r or 50, any_gallery=False)["class"]
    rows = {f"{q}->{t}": summarise(v, ks, map_r or 50) for (q, t), v in per.items()}
    out: dict[str, float] = {}
    wanted = [(f"R@{k}", "recall/{}@" + str(k), f"recall/mean@{k}") for k in ks]
    if map_r:
        wanted += [(f"mAP@{map_r}", None, MONITOR_KEYS["mAP@"].format(map_r)), ("mAP", None, MONITOR_KEYS["mAP"])]
    for metric, per_pair, mean_key in wanted:
        vals = {p: r[metric] for p, r in rows.items() if r[metric] is not None}
        if per_pair:
            out.update({per_pair.format(p): v for p, v in vals.items()})
        if vals:
            out[mean_key] = float(np.mean(list(vals.values())))
    return out


def quick_recall_note(cfg: TrainConfig, hold: SplitData) -> str:
    """Why the per-epoch R@10 is not the figure ``mmx eval`` prints (said once, in the run header)."""
    capped = any(len(f) > QUICK_ROWS for f in hold.features.values())
    gallery = f"a fixed sub-gallery of at most {QUICK_ROWS} rows per modality of" if capped else "the whole"
    return (f"per-epoch R@10: mean over modality pairs on {gallery} {cfg.holdout} split "
            f"(class or group relevance as trained); 'mmx eval RUN' gives the full per-pair tables")


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)


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
    warn: Callable[[str], None] | None = None,
) -> Path:
    """Train ``cfg`` and return its run folder; ``resume``: a run folder to continue (its ``last.safetensors``).

    ``warn`` receives what the user should know before trusting the run (see
    :mod:`mmx.train.checks`); by default it goes through :func:`warnings.warn`.
    """
    with deterministic_kernels(cfg.deterministic):
        return _train(cfg, log, data, resume, warn)


@contextlib.contextmanager
def deterministic_kernels(on: bool):
    """``torch.use_deterministic_algorithms`` for the enclosed run (``deterministic: true``),
    the previous setting restored after it. An operation without a deterministic kernel warns
    instead of failing (``warn_only``). cuBLAS is deterministic only with a fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``), read when the process first uses it: set here if unset, which
    takes effect when the run is the process's first CUDA work (as under ``mmx train``)."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _train(cfg: TrainConfig, log, data, resume, warn) -> Path:
    if not cfg.cache:
        from mmx.cache.paths import default_cache_root

        cfg = dataclasses.replace(cfg, cache=str(default_cache_root()))
    if not cfg.modalities and data is None:  # the modalities the dataset has (issue 13 item 11)
        found = dataset_modalities(cfg.cache, cfg.dataset)
        if not found:
            raise ValueError(f"no features of dataset {cfg.dataset!r} in cache {cfg.cache}; check --dataset and --cache, "
                             "or run 'mmx extract' first")
        cfg = dataclasses.replace(cfg, modalities=[m.value for m in found])
        log(f"modalities: {', '.join(cfg.modalities)} (all the dataset has; choose with --modalities)")
    elif not cfg.modalities:
        cfg = dataclasses.replace(cfg, modalities=[m.value for m in data.splits["train"].modalities])
    strategy_cls = get_strategy(cfg.strategy)
    problems = config_mod.check_values(cfg) + strategy_cls.check(cfg)
    if cfg.alignment not in ("class", "instance", "auto"):
        problems.append(f"alignment must be class, instance or auto, not {cfg.alignment!r}")
    elif strategy_cls.alignment not in ("any", cfg.alignment) and cfg.alignment != "auto":
        problems.append(f"strategy {cfg.strategy!r} needs {strategy_cls.alignment}-aligned data, not alignment={cfg.alignment}")
    problems += check_protocol(cfg)
    if resume is not None and not (Path(resume) / checkpoint.LAST).exists():
        if (Path(resume) / "last.pt").exists():
            problems.append(f"--resume {resume}: this run predates mmx's safe checkpoint format (a pickled last.pt, "
                            "which mmx no longer loads because loading it can run code); train it again")
        else:
            problems.append(f"--resume {resume}: no {checkpoint.LAST} there (not a run folder, or it stopped before training started)")
    for value, what in ((cfg.dataset, "dataset"), (cfg.name, "name"), (cfg.holdout, "holdout")):
        if value and (why := name_problem(value, what)):  # each becomes a folder name
            problems.append(f"{what} {value!r}: {why}; use a plain name (letters, digits, '_', '-', single '.')")
    try:
        mods = Modality.parse_list(cfg.modalities)
    except ValueError as exc:
        problems.append(str(exc))
        mods = []
    try:
        cfg = dataclasses.replace(cfg, normalize=normalize.resolve(cfg.normalize, strategy_cls))
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ValueError("invalid training config:\n  " + "\n  ".join(problems))
    cfg = dataclasses.replace(cfg, modalities=[m.value for m in mods], threads=set_threads(cfg.threads))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    if data is None:
        data = load_train_data(
            cfg.cache, cfg.dataset, mods, [], cfg.backbones,
            tokens=strategy_cls.needs_tokens,
            need_labels=cfg.alignment == "class",
            need_groups=cfg.alignment == "instance",
            device=device,
            holdout=Holdout(cfg.holdout, cfg.val_fraction, cfg.test_fraction, cfg.seed),
            picks=cfg.stores,
        )
    elif cfg.holdout not in data.splits:
        raise ValueError(f"holdout {cfg.holdout!r}: the data given has splits {', '.join(data.splits)} only")
    for name, how in data.split_info.items():
        log(f"{name} split: {_describe(how)}")
    if data.pooled_as_tokens:
        log(f"{', '.join(m.value for m in data.pooled_as_tokens)}: pooled features only; each item is a one-token sequence")
    cfg = dataclasses.replace(cfg, alignment=resolve_alignment(cfg, strategy_cls, data))
    refusals, cautions = checks.learnability(cfg, data)
    if refusals:
        raise ValueError("cannot train on this cache:\n  " + "\n  ".join(refusals))
    # a resumed run keeps the statistics it started with; an extension keeps those of the run it
    # extends (its frozen heads saw them) and fits only the new modality; a new run fits them all
    if resume is not None:
        norm = normalize.load(resume)
    elif cfg.options.get("extend_from"):
        base = Path(cfg.options["extend_from"])  # the extended run's checkpoint, in its run folder
        norm = normalize.extend(normalize.load(base.parent if base.is_file() else base), data.splits["train"])
    else:
        norm = normalize.fit(cfg.normalize, data.splits["train"])
    cfg = dataclasses.replace(cfg, normalize=norm.mode)
    normalize.warn_scale(data.splits["train"], norm.mode, data.meta, log)
    data = norm.apply_data(data)
    strategy = strategy_cls(cfg, data, device)
    model = strategy.build_model().to(device)
    if cfg.options.get("extend_from"):  # mmx train --from RUN --add-modality M: load RUN, freeze it (train/extend.py)
        from mmx.train.extend import warm_start

        warm_start(model, cfg.options["extend_from"])
    # multi-stage strategies (M-CVS, RVS, stage-wise) list stages; the epoch loop runs once per stage
    stages = strategy.stages() if hasattr(strategy, "stages") else [None]

    if resume is None:
        run = (runs.named_run_dir(cfg.out, cfg.name) if cfg.name
               else runs.new_run_dir(cfg.out, [cfg.strategy, "-".join(m[0] for m in cfg.modalities)]))
    else:
        run = Path(resume)
    config_mod.save(cfg, run / "config.yaml")  # before the first step
    if resume is None:
        write_splits(run / "splits.json", data)
    norm.save(run)  # what mmx embed applies before the model (normalize.load)
    runner = Runner(cfg, strategy, model, data.splits["train"], data.splits[cfg.holdout], run, device, log)
    started = time.perf_counter()

    if resume is None:
        untrained = quick_recall(strategy, model, runner.hold)
        progress = Progress(untrained=untrained)
        runner.append(progress, {"epoch": 0, **runner.held_out_loss(0), **untrained})
        state = None
    else:
        last = run / checkpoint.LAST
        state = checkpoint.load(last)
        try:
            progress = Progress(**state["progress"])
        except (KeyError, TypeError) as exc:
            raise checkpoint.CheckpointError(f"{last}: no valid progress record ({exc}); train again") from None
        if not 0 <= progress.stage < len(stages):
            raise ValueError(f"{last}: stage {progress.stage + 1} recorded, but this config has {len(stages)} stage(s)")
        if progress.stage_name != _stage_name(stages[progress.stage]):
            raise ValueError(f"{last}: stage {progress.stage + 1} is {progress.stage_name!r} there, "
                             f"but {_stage_name(stages[progress.stage])!r} in this config (changed the stages on resume?)")
        # lines written after the checkpoint (an epoch or a stage end that was cut off) are redone
        kept = runs.read_jsonl(run / "metrics.jsonl")[: progress.metrics_lines]
        atomic_write_bytes(run / "metrics.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in kept).encode())
        log(f"resuming {run} at stage {progress.stage + 1}/{len(stages)}, epoch {progress.epoch + 1}")

    # said once everything that can fail before the first step has passed, so an error stays the first line
    for line in checks.header(cfg, data, device, len(stages)) + [quick_recall_note(cfg, data.splits[cfg.holdout])]:
        log(line)
    if cfg.cuda_graphs:
        log(graphs.reason_not(cfg, strategy, device) or "cuda_graphs: steps of a fixed shape are replayed from CUDA graphs")
    big = checks.cpu_size_warning(cfg, model, data, device)
    for line in (cautions + [big] * bool(big)) if resume is None else []:  # a resumed run said them when it began
        (warn or _warn)(line)
    for k in range(progress.stage, len(stages)):
        stage = stages[k]
        if stage is not None:  # the stage picks what trains (and so what the optimiser holds)
            log(f"stage {k + 1}/{len(stages)} ({stage.name}): starting")
            strategy.begin_stage(model, stage)
        # a fresh optimiser, schedule and early stopping per stage
        opt, sched = make_optimiser(cfg, strategy.parameters(model))
        if state is not None:  # resuming inside this stage
            restore(state, run / checkpoint.LAST, model, opt, sched)
            state = None
        else:
            progress = dataclasses.replace(progress, stage=k, stage_name=_stage_name(stage), epoch=0, best=math.inf,
                                           best_epoch=0, stale=0, stop_reason="max_epochs")
            # entering the stage: a kill before its first epoch ends resumes here, not in the stage before
            save_last(run / checkpoint.LAST, model, opt, sched, cfg, progress)
        progress = runner.run_stage(stage, len(stages), progress, opt, sched)

    model.eval()
    for name, split in data.splits.items():
        for key, emb in strategy.embed(model, split).items():
            f = strategy.rows(split, key)
            runs.save_embeddings(run, name, key, emb, f.labels, f.groups, f.ids)
    runs.write_json(run / "metrics.json", {
        "strategy": cfg.strategy,
        "modalities": cfg.modalities,
        "holdout": {"split": cfg.holdout, **data.split_info.get(cfg.holdout, {"source": "store"})},
        "monitor": cfg.monitor,
        "keep": cfg.keep,
        "best_epoch": progress.best_epoch,
        f"best_{_signal_name(cfg)}": _signal_value(cfg, progress.best),
        "stop_reason": progress.stop_reason,
        "seconds": time.perf_counter() - started,
        "untrained": progress.untrained,
        "final": quick_recall(strategy, model, runner.hold),
        "device": str(device),
    })
    log(f"run folder: {run}  (best epoch {progress.best_epoch}; {progress.stop_reason})")
    return run


def _stage_name(stage) -> str:
    return "" if stage is None else str(stage.name)


def check_protocol(cfg: TrainConfig) -> list[str]:
    """Problems with the holdout, monitor and keep settings (before loading anything)."""
    problems = []
    if cfg.holdout not in ("val", "test"):
        problems.append(f"holdout must be val or test, not {cfg.holdout!r}")
    for name in ("val_fraction", "test_fraction"):
        if not 0 < getattr(cfg, name) < 1:
            problems.append(f"{name} must be between 0 and 1, not {getattr(cfg, name)!r}")
    try:
        parse_monitor(cfg.monitor)
    except ValueError as exc:
        problems.append(str(exc))
    if cfg.keep not in ("best", "last"):
        problems.append(f"keep must be best (early stopping) or last (fixed epochs), not {cfg.keep!r}")
    return problems


def _describe(how: dict) -> str:
    if how.get("source") == "store":
        return "the store's"
    return f"{how['source']}, seeded ({how['seed']}), {how['fraction']:.0%} of each class ({how['stratified']})"


def _signal_name(cfg: TrainConfig) -> str:
    return f"{'loss' if cfg.monitor == 'loss' else cfg.monitor}_{cfg.holdout}"


def _signal_value(cfg: TrainConfig, score: float) -> float:
    """The monitored value from its score (scores are lower-is-better: metrics are negated)."""
    return score if cfg.monitor == "loss" or not math.isfinite(score) else -score


def write_splits(path: Path, data) -> None:
    """``splits.json``: how each split was formed and, for derived ones, the ids in it."""
    out = {}
    for name, how in data.split_info.items():
        ids = {m.value: [str(i) for i in f.ids] for m, f in data.splits[name].features.items()} if how.get("source") != "store" else {}
        out[name] = {**how, **({"ids": ids} if ids else {})}
    runs.write_json(path, out)


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


def improved(loss: float, best: float, min_delta: float) -> bool:
    """``loss`` (a lower-is-better score) counts as a fall when it is below ``best`` by more than
    the fraction ``min_delta`` of ``|best|`` (metrics enter negated, so a rise counts the same way).

    Relative, like ``ReduceLROnPlateau(threshold_mode="rel")``, so one tolerance fits the
    InfoNCE of paper 000, EAO's weighted sums and CVS's triplet losses alike.
    """
    return loss < best - min_delta * abs(best) if math.isfinite(best) else not math.isnan(loss)


def make_optimiser(cfg: TrainConfig, params):
    params = list(params)
    # fused: one kernel for all tensors instead of a Python loop over them (same update rule);
    # train.optim.AdamW is torch's, minus the ~1.4 s import of torch's compiler (see there)
    opt = AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(params))
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)


def _fused(params) -> dict:
    devices = {p.device.type for p in params}
    return {"fused": True} if params and devices <= {"cpu", "cuda"} and all(p.dtype == torch.float32 for p in params) else {}


class PartMeans:
    """Per-part means of step outputs, summed on the device: one host sync per epoch, not per step.

    A step's parts are stacked into one vector and added to the running sum of the steps with
    the same parts (two kernels per step whatever the part count; issue 12 item 4).
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


def autocast_for(cfg: TrainConfig, device: torch.device) -> Callable:
    """What a training step runs under (a factory of context managers): bf16 autocast on CUDA
    when ``cfg.amp``, nothing on the CPU. ``cache=False`` inside a CUDA graph's capture, which
    cannot keep autocast's casts across steps."""
    if cfg.amp and device.type == "cuda":
        return lambda cache=True: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return lambda cache=True: contextlib.nullcontext()


class Runner:
    """The epochs of a run, one stage at a time: train steps, held-out loss, quick recall,
    early stopping, checkpoints; ``append`` counts the ``metrics.jsonl`` lines for resume."""

    def __init__(self, cfg, strategy, model, train_split, hold_split, run: Path, device, log):
        self.cfg, self.strategy, self.model, self.run, self.device, self.log = cfg, strategy, model, run, device, log
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
            for out, n in self.strategy.held_out(self.model, self.hold, epoch):
                parts.add(out, n)
        return parts.means(self.cfg.holdout)

    def train_epoch(self, epoch: int, opt) -> dict[str, float]:
        self.model.train()
        parts = PartMeans()
        step = self.graphed_steps(opt) if self.graphed else (lambda batch: self.train_step(batch, opt))
        for batch in self.strategy.batches(self.train_split, epoch, train=True):
            parts.add(step(batch))
        return parts.means("train")

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
        res = quick_recall(self.strategy, self.model, self.hold, ks=ks, map_r=map_r or 50)
        value = res.get(key, float("nan"))
        return (-value if math.isfinite(value) else math.inf), {f"{cfg.holdout}/{cfg.monitor}": value}

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
            t0 = time.perf_counter()
            record = {"epoch": epoch, **({"stage": p.stage + 1} if staged else {}), **self.train_epoch(epoch, opt)}
            record.update(self.strategy.composition)
            sched.step()
            record.update(self.held_out_loss(epoch))
            record.update(quick_recall(self.strategy, self.model, self.hold, cap=QUICK_ROWS))
            score, extra = self.score(record)
            record.update(extra)
            record["seconds"] = time.perf_counter() - t0
            self.append(p, record)
            hold = record[f"loss_{cfg.holdout}"]
            shown = "".join(f"  {k} {v:.4f}" for k, v in extra.items())
            self.log(f"epoch {epoch:3d}/{cfg.epochs}  train {record['loss_train']:.4f}  {cfg.holdout} {hold:.4f}{shown}  "
                     f"R@10 {record.get('recall/mean@10', float('nan')):.3f}  ({record['seconds']:.1f}s)")
            p.epoch = epoch
            if fixed or improved(score, p.best, cfg.min_delta):
                p.best, p.best_epoch, p.stale = score, epoch, 0
                save_checkpoint(run / checkpoint.BEST, self.model, epoch, cfg)
            else:
                p.stale += 1
                if p.stale >= cfg.patience:
                    p.stop_reason = patience_msg
            save_last(run / checkpoint.LAST, self.model, opt, sched, cfg, p)
        if fixed:
            p.stop_reason = f"fixed {cfg.epochs} epochs (keep: last)"
        if p.best_epoch == 0:
            save_checkpoint(run / checkpoint.BEST, self.model, 0, cfg)
        self.model.load_state_dict(checkpoint.load(run / checkpoint.BEST)["model"])
        if staged:  # the stage's kept weights go on to the next stage
            record = {"stage": p.stage + 1, "stage_name": stage.name, "best_epoch": p.best_epoch,
                      f"best_{_signal_name(cfg)}": _signal_value(cfg, p.best), "stage_seconds": time.perf_counter() - t_stage}
            self.append(p, {**record, **self.strategy.end_stage(self.model, stage)})
            self.log(f"stage {p.stage + 1}/{n_stages} ({stage.name}) done: best epoch {p.best_epoch}")
        return p


def save_checkpoint(path: Path, model, epoch: int, cfg: TrainConfig) -> None:
    """The best weights so far (what ``--from`` and the end of a stage load); no optimiser, resume uses the last."""
    checkpoint.save(path, {"model": model.state_dict(), "epoch": epoch, "config": cfg.to_dict()})


def save_last(path: Path, model, opt, sched, cfg: TrainConfig, progress: Progress) -> None:
    """Everything ``resume`` needs to continue after ``progress`` (stage, epoch) as if never stopped."""
    checkpoint.save(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                           "epoch": progress.epoch, "config": cfg.to_dict(), "rng": checkpoint.rng_state(),
                           "progress": dataclasses.asdict(progress)})


def restore(state: dict, path: Path, model, opt, sched) -> None:
    """Weights, optimiser, schedule and RNG from a loaded ``last.safetensors`` (``path`` names it in errors)."""
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        checkpoint.restore_rng(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: the checkpoint does not fit the model of this config "
                         f"(changed a model setting on resume?): {str(exc).splitlines()[0]}") from None
