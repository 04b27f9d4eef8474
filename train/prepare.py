"""From a config to everything a run needs, on one path for training and for inference.

:func:`validate` checks a config before anything loads and reports every problem at once;
:func:`check_data` does the same for the loaded data (alignment, :func:`checks.learnability`).
:func:`prepare` goes config -> validated config -> size (:func:`size_up`, before anything
loads) -> data (loaded, checked, normalised) -> strategy -> model -> stages, and
:func:`open_run_folder` writes what a run folder holds before the first step.
:func:`open_trained` takes a finished run folder (or an exported bundle) back along the same
path to its strategy and model with the kept weights (``mmx embed``, ``mmx search``), from the
run folder alone: :func:`space_record` writes the model's shape there at training time and
:func:`recorded_data` rebuilds from it a one-item stand-in of the data (no cache read). Runs
from before that record open through their training cache.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from mmx.cache.device import resolve_device
from mmx.cache.modality import Modality
from mmx.cache.names import name_problem
from mmx.cache.threads import set_threads
from mmx.eval import runs
from mmx.train import checkpoint, checks, normalize, sizing
from mmx.train import config as config_mod
from mmx.train.config import AUTO, TrainConfig
from mmx.train.data import Holdout, TrainData, dataset_modalities, load_train_data
from mmx.train.monitor import parse_monitor
from mmx.train.runtime import seed_everything
from mmx.train.strategies import get_strategy

_TRAIN_DIR = str(Path(__file__).resolve().parent)


@dataclasses.dataclass
class Prepared:
    """A run ready for its first step (or a trained run ready to embed)."""

    cfg: TrainConfig  # validated and concrete: modalities, threads, alignment and normalize resolved
    data: TrainData  # normalised as the model sees it
    norm: normalize.Normalizer
    strategy: Any
    model: Any
    stages: list  # the strategy's stages ([None]: one)
    device: Any
    cautions: list = dataclasses.field(default_factory=list)  # said before the first step of a new run


def caution_channel(warn: Callable[[str], None] | None) -> Callable[..., None]:
    """The one way a run's cautions reach the user: ``warn(message)`` when given, else
    :func:`warnings.warn` pointing at the caller's line outside ``mmx.train``."""
    if warn is not None:
        return lambda message, category=UserWarning: warn(message)

    def say(message: str, category=UserWarning) -> None:
        level, frame = 1, sys._getframe(0)
        while frame.f_back is not None and frame.f_code.co_filename.startswith(_TRAIN_DIR):
            frame, level = frame.f_back, level + 1
        warnings.warn(message, category, stacklevel=level)

    return say


def complete(cfg: TrainConfig, data: TrainData | None = None, log=lambda s: None) -> TrainConfig:
    """``cfg`` with the default cache root, and with every modality of the dataset (or of ``data``) when it names none."""
    if not cfg.cache:
        from mmx.cache.paths import default_cache_root

        cfg = dataclasses.replace(cfg, cache=str(default_cache_root()))
    if not cfg.modalities and data is None:
        found = dataset_modalities(cfg.cache, cfg.dataset)
        if not found:
            raise ValueError(f"no features of dataset {cfg.dataset!r} in cache {cfg.cache}; check --dataset and --cache, "
                             "or run 'mmx extract' first")
        cfg = dataclasses.replace(cfg, modalities=[m.value for m in found])
        log(f"modalities: {', '.join(cfg.modalities)} (all the dataset has; choose with --modalities)")
    elif not cfg.modalities:
        cfg = dataclasses.replace(cfg, modalities=[m.value for m in data.splits["train"].modalities])
    return cfg


def validate(cfg: TrainConfig, resume: str | Path | None = None) -> tuple[TrainConfig, type]:
    """``cfg`` with its modalities and ``normalize`` made concrete, and its strategy class.

    Raises one ``ValueError`` listing every problem of the config (values, the strategy's
    options, the held-out protocol, names, the resume folder), each with its fix.
    """
    problems = config_mod.check_values(cfg)
    try:
        strategy_cls = get_strategy(cfg.strategy)
    except ValueError as exc:
        problems.append(str(exc))
        strategy_cls = None
    if strategy_cls is not None:
        problems += strategy_cls.check(cfg)
    if cfg.alignment not in ("class", "instance", "auto"):
        problems.append(f"alignment must be class, instance or auto, not {cfg.alignment!r}")
    elif strategy_cls is not None and strategy_cls.alignment not in ("any", cfg.alignment) and cfg.alignment != "auto":
        problems.append(f"strategy {cfg.strategy!r} needs {strategy_cls.alignment}-aligned data, not alignment={cfg.alignment}")
    problems += check_protocol(cfg) + _resume_problems(resume)
    for value, what in ((cfg.dataset, "dataset"), (cfg.name, "name"), (cfg.holdout, "holdout")):
        if value and (why := name_problem(value, what)):  # each becomes a folder name
            problems.append(f"{what} {value!r}: {why}; use a plain name (letters, digits, '_', '-', single '.')")
    try:
        mods = Modality.parse_list(cfg.modalities)
    except ValueError as exc:
        problems.append(str(exc))
        mods = []
    if strategy_cls is not None:
        try:
            cfg = dataclasses.replace(cfg, normalize=normalize.resolve(cfg.normalize, strategy_cls))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("invalid training config:\n  " + "\n  ".join(problems))
    return dataclasses.replace(cfg, modalities=[m.value for m in mods]), strategy_cls


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


def _resume_problems(resume) -> list[str]:
    if resume is None or (Path(resume) / checkpoint.LAST).exists():
        return []
    if (Path(resume) / "last.pt").exists():
        return [f"--resume {resume}: this run predates mmx's safe checkpoint format (a pickled last.pt, "
                "which mmx no longer loads because loading it can run code); train it again"]
    return [f"--resume {resume}: no {checkpoint.LAST} there (not a run folder, or it stopped before training started)"]


def load_data(cfg: TrainConfig, strategy_cls, device, keys: bool = True) -> TrainData:
    """The features of ``cfg`` on ``device``, with the held-out split it names. ``keys``: require
    the labels (class alignment) or groups (instance alignment) that training needs; an
    embedding pass needs neither."""
    return load_train_data(
        cfg.cache, cfg.dataset, Modality.parse_list(cfg.modalities), [], cfg.backbones,
        tokens=strategy_cls.needs_tokens,
        need_labels=keys and cfg.alignment == "class",
        need_groups=keys and cfg.alignment == "instance",
        device=device,
        holdout=Holdout(cfg.holdout, cfg.val_fraction, cfg.test_fraction, cfg.seed),
        picks=cfg.stores,
    )


def resolve_alignment(cfg: TrainConfig, strategy_cls, data) -> str:
    """``cfg.alignment`` made concrete: ``auto`` picks ``instance`` when every loaded item has a
    group, else ``class``; raises when the data cannot serve it."""
    wanted = cfg.alignment if cfg.alignment != "auto" else strategy_cls.alignment
    if wanted not in ("class", "instance"):
        grouped = all(all(str(g) for g in f.groups) for s in data.splits.values() for f in s.features.values())
        wanted = "instance" if grouped else "class"
    if wanted == "class":
        unlabelled = sorted({f"{f.modality.value}/{name}" for name, s in data.splits.items() for f in s.features.values()
                             if any(str(x) == "" for x in f.labels)})
        if unlabelled:
            raise ValueError(f"cannot train on this cache: class-aligned batches need labels, and {', '.join(unlabelled)} have items without one")
    return wanted


def check_data(cfg: TrainConfig, strategy_cls, data: TrainData) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with its alignment resolved, and the cautions about ``data`` (said before the first
    step); raises listing what makes the data unusable (nothing to learn, a missing split)."""
    if cfg.holdout not in data.splits:
        raise ValueError(f"holdout {cfg.holdout!r}: the data given has splits {', '.join(data.splits)} only")
    cfg = dataclasses.replace(cfg, alignment=resolve_alignment(cfg, strategy_cls, data))
    if cfg.tau == AUTO:
        cfg = dataclasses.replace(cfg, tau=strategy_cls.tau_for(cfg.alignment))
    refusals, cautions = checks.learnability(cfg, data)
    if refusals:
        raise ValueError("cannot train on this cache:\n  " + "\n  ".join(refusals))
    return cfg, cautions


def fit_normalizer(cfg: TrainConfig, data: TrainData, resume) -> normalize.Normalizer:
    """A resumed run keeps the statistics it started with; an extension keeps those of the run it
    extends (its frozen heads saw them) and fits only the new modality; a new run fits them all."""
    if resume is not None:
        return normalize.load(resume)
    if cfg.options.get("extend_from"):
        base = Path(cfg.options["extend_from"])  # the extended run's checkpoint, in its run folder
        return normalize.extend(normalize.load(base.parent if base.is_file() else base), data.splits["train"])
    return normalize.fit(cfg.normalize, data.splits["train"])


def size_up(cfg: TrainConfig, strategy_cls, device, data: TrainData | None, log, say, force: bool = False):
    """The run's size from its config and the stores' metadata, said before anything loads;
    raises one line naming what fits when it will not fit the machine (train/sizing.py), unless
    ``force``. Returns the estimate (None for strategies that do not size themselves)."""
    if strategy_cls.footprint is None:
        return None
    try:
        shapes = (sizing.shapes_from_data(cfg, data) if data is not None
                  else sizing.shapes_from_cache(cfg, strategy_cls.needs_tokens))
    except (FileNotFoundError, ValueError, KeyError):
        return None  # loading the data says what is missing, with its fix
    est = sizing.estimate(cfg, strategy_cls, shapes, device, cfg.threads)
    log(f"size: {est.summary()}")
    problem = sizing.refusal(cfg, strategy_cls, shapes, device, cfg.threads, sizing.available_bytes(device), est)
    if problem and not force:
        raise ValueError(problem)
    if problem:
        say(f"--force: {problem}")
    return est


def prepare(cfg: TrainConfig, log=lambda s: None, warn=None, data: TrainData | None = None,
            resume: str | Path | None = None, force: bool = False) -> Prepared:
    """Everything before the first step of a run (see the module docstring). ``warn``: a
    :func:`caution_channel`; ``data``: features already loaded (else the cache's); ``force``:
    train even where the run is sized past the machine (:func:`size_up`)."""
    say = warn or caution_channel(None)
    cfg, strategy_cls = validate(complete(cfg, data, log), resume)
    cfg = dataclasses.replace(cfg, threads=set_threads(cfg.threads))
    device = resolve_device(cfg.device)
    size_up(cfg, strategy_cls, device, data, log, say, force)
    seed_everything(cfg.seed)
    if data is None:
        data = load_data(cfg, strategy_cls, device)
    for name, how in data.split_info.items():
        log(f"{name} split: {describe_split(how)}")
    if data.pooled_as_tokens:
        log(f"{', '.join(m.value for m in data.pooled_as_tokens)}: pooled features only; each item is a one-token sequence")
    cfg, cautions = check_data(cfg, strategy_cls, data)
    norm = fit_normalizer(cfg, data, resume)
    cfg = dataclasses.replace(cfg, normalize=norm.mode)
    for line in normalize.scale_warnings(data.splits["train"], norm.mode, data.meta):
        say(line, normalize.FeatureScaleWarning)
    data = norm.apply_data(data)
    strategy = strategy_cls(cfg, data, device)
    model = strategy.build_model().to(device)
    if cfg.options.get("extend_from"):  # mmx train --from RUN --add-modality M (train/extend.py)
        strategy.warm_start(model, cfg.options["extend_from"])
    return Prepared(cfg, data, norm, strategy, model, strategy.stages(), device, cautions)


def open_run_folder(prep: Prepared, resume: str | Path | None, hold=None) -> Path:
    """The run folder (a new one named by ``cfg.name`` or by date and settings, or the resumed
    one) with ``config.yaml``, ``splits.json`` and ``normalizer.json`` written in it. ``hold``: a
    :class:`contextlib.ExitStack` that keeps the folder's writer lock (:func:`runs.writer_lock`)
    from before the first write until it closes."""
    cfg = prep.cfg
    if resume is None:
        run = (runs.named_run_dir(cfg.out, cfg.name) if cfg.name
               else runs.new_run_dir(cfg.out, [cfg.strategy, "-".join(m[0] for m in cfg.modalities)]))
    else:
        run = Path(resume)
    if hold is not None:
        hold.enter_context(runs.writer_lock(run, "mmx train" + (f" --resume {run}" if resume is not None else "")))
    config_mod.save(cfg, run / "config.yaml")  # before the first step
    if resume is None:
        write_splits(run / "splits.json", prep.data)
    prep.norm.save(run)  # what mmx embed applies before the model (normalize.load)
    runs.write_space(run, space_record(cfg, prep.data))  # what rebuilds the model without the cache
    return run


def space_record(cfg: TrainConfig, data: TrainData) -> dict:
    """The model's shape and each modality's store record (:func:`mmx.eval.runs.read_space`):
    dimensions, class names, the longest token sequence of any split (a strategy may size its
    positions by it), whether a pooled store was viewed as one-token sequences, and the store's
    metadata (backbone identity and options, preprocessing, dtype), from which ``mmx embed``
    rebuilds the backbone. ``store`` is None for features given in memory with no store record."""
    mods = {}
    for m in Modality.parse_list(cfg.modalities):
        lengths = [int((f.offsets[1:] - f.offsets[:-1]).max()) for s in data.splits.values()
                   for mm, f in s.features.items() if mm == m and len(f) and f.offsets is not None]
        meta = data.meta.get(m) or {}
        store = dict(meta) if all(k in meta for k in ("backbone", "preprocessing", "dtype", "tokens")) else None
        mods[m.value] = {"dim": int(data.dims[m]), "max_tokens": max(lengths, default=1),
                         "one_token": m in data.pooled_as_tokens, "store": store}
    return {"dataset": cfg.dataset, "class_names": [str(c) for c in data.class_names], "modalities": mods}


def recorded_data(record: dict, tokens: bool, device) -> TrainData:
    """A stand-in for the data a run trained on, from its :func:`space_record`: one all-zero item
    per modality, in split ``train``, as long in tokens as the longest the run saw (``tokens``:
    the strategy reads sequences), with the recorded dimensions, class names and store metadata.
    Building a strategy and its model reads no more than that; embedding selects none of its rows."""
    import numpy as np
    import torch

    from mmx.cache import LoadedFeatures
    from mmx.train.data import SplitData

    features, classes, dims, meta = {}, {}, {}, {}
    for name, rec in record["modalities"].items():
        m, d, t = Modality.parse(name), rec["dim"], rec["max_tokens"]
        one = lambda value: np.array([value], dtype=object)  # noqa: E731
        features[m] = LoadedFeatures(
            modality=m, ids=one("shape"), labels=one(""), groups=one(""), splits=one("train"),
            pooled=torch.zeros((1, d), device=device),
            tokens=torch.zeros((t, d), device=device) if tokens else None,
            offsets=torch.tensor([0, t], device=device) if tokens else None,
            meta=dict(rec["store"] or {}))
        classes[m] = torch.full((1,), -1, dtype=torch.long, device=device)
        dims[m], meta[m] = d, dict(rec["store"] or {})
    split = SplitData(features, classes, {m: np.full(1, -1, np.int64) for m in features})
    return TrainData(splits={"train": split}, class_names=list(record["class_names"]), dims=dims, meta=meta,
                     pooled_as_tokens=[Modality.parse(n) for n, r in record["modalities"].items() if r["one_token"] and tokens])


def write_splits(path: Path, data) -> None:
    """``splits.json``: how each split was formed and, for derived ones, the ids in it."""
    out = {}
    for name, how in data.split_info.items():
        ids = {m.value: [str(i) for i in f.ids] for m, f in data.splits[name].features.items()} if how.get("source") != "store" else {}
        out[name] = {**how, **({"ids": ids} if ids else {})}
    runs.write_json(path, out)


def describe_split(how: dict) -> str:
    if how.get("source") == "store":
        return "the store's"
    return f"{how['source']}, seeded ({how['seed']}), {how['fraction']:.0%} of each class ({how['stratified']})"


def open_trained(run: str | Path, device: str = "cpu", log: Callable[[str], None] = lambda s: None) -> Prepared:
    """A finished run folder (or exported bundle) ready to embed: its config, a stand-in of its
    data (:func:`recorded_data`; the training cache for a run without ``space.json``, said
    through ``log``), its own normalisation, its strategy, and its model in eval mode with the
    kept weights, in the last stage it trained. ``Prepared.data.meta`` holds each modality's
    store record."""
    run = Path(run)
    for need in ("config.yaml", checkpoint.BEST):
        if not (run / need).exists():  # a FIFO or device there is refused by name when read
            raise FileNotFoundError(f"{run}: no {need}; is this a finished run folder of 'mmx train'?")
    loaded = config_mod.load(run / "config.yaml")
    try:
        cfg, strategy_cls = validate(loaded)
    except ValueError as exc:  # the run's own file no longer makes a valid run: one line naming it
        raise ValueError(f"{run / 'config.yaml'}: {'; '.join(x.strip() for x in str(exc).splitlines()[1:])}") from None
    dev = resolve_device(device)
    norm = normalize.load(run)
    record = runs.read_space(run)
    if record is not None:
        recorded = sorted(record["modalities"])
        if recorded != sorted(cfg.modalities):
            raise ValueError(f"{run / runs.SPACE}: records {', '.join(recorded)} where config.yaml trains "
                             f"{', '.join(cfg.modalities)}; restore the run's own files")
        data = norm.apply_data(recorded_data(record, strategy_cls.needs_tokens, dev))
    else:
        log(f"{run}: no {runs.SPACE} (trained by an older mmx), so its model is rebuilt from the training cache "
            f"{cfg.cache}; 'mmx export {run} OUT' writes a bundle that needs no cache")
        data = norm.apply_data(load_data(cfg, strategy_cls, dev, keys=False))
    strategy = strategy_cls(cfg, data, dev)
    model = strategy.build_model().to(dev)
    stages = strategy.stages()
    strategy.begin_stage(model, stages[-1])
    checkpoint.load_weights(model, checkpoint.load(run / checkpoint.BEST).get("model"), run / checkpoint.BEST)
    model.eval()
    return Prepared(cfg, data, norm, strategy, model, stages, dev)
