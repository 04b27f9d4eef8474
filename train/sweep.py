"""``mmx sweep``: a hyperparameter search per strategy that selects on val, then the chosen setting over seeds.

:func:`sweep` runs, per strategy, an Optuna study (TPE) whose trials are training runs scored by a
val retrieval metric (the mean over query->target pairs of ``objective``, from the run's saved val
embeddings: a trial never reads the test split). The study lives in ``FOLDER/study.journal``
(Optuna's journal storage), so a sweep cut off at any point continues where it stopped: finished
trials are kept, a trial that was running is re-queued with its setting. Trials run in this
process (``jobs=1``), in ``jobs`` spawned processes, or as tasks on a dask.distributed scheduler
(the one ``mmx extract --dask-scheduler`` uses; the sweep folder and the cache must be on a
filesystem every worker sees). Then :func:`repeat` trains each strategy's best setting again
with seeds ``1..seeds`` and :mod:`mmx.train.sweep_report` writes ``report.json`` / ``report.md``: test
figures as mean ± sd over seeds and paired bootstrap intervals of the differences between
strategies (reported, never used to choose). Folder layout: ``sweep.yaml`` (what was asked),
``study.journal``, ``<strategy>/trials/trial-NNNN``, ``<strategy>/seeds/seed-N``, the reports.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from mmx.train.sweep_space import config_values, distributions, load_space_file, resolve_space

OBJECTIVES = ("mAP", "mAP@50", "R@1", "R@5", "R@10")


@dataclasses.dataclass
class SweepSpec:
    folder: str
    strategies: list
    dataset: str
    cache: str = ""
    modalities: list = dataclasses.field(default_factory=list)
    trials: int = 20
    seeds: int = 3
    jobs: int = 1
    dask_scheduler: Any = None  # an address, or a distributed.Client
    space_file: str | None = None
    objective: str = "mAP"
    relevance: str | None = None  # None: the runs' alignment (class unless instance-aligned)
    sets: list = dataclasses.field(default_factory=list)  # KEY=VALUE fixed for every run
    seed: int = 0  # of the sampler and of every trial's run
    device: str = "auto"
    threads: int = 0  # per run; 0: the cores shared out over the jobs

    def problems(self) -> list[str]:
        from mmx.train.strategies import STRATEGIES

        out = [f"unknown strategy {s!r}; known: {', '.join(STRATEGIES)}" for s in self.strategies if s not in STRATEGIES]
        if not self.strategies:
            out.append("name at least one strategy (--strategy joint)")
        if len(set(self.strategies)) < len(self.strategies):
            out.append(f"a strategy is named twice: {', '.join(self.strategies)}")
        if self.objective not in OBJECTIVES:
            out.append(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        for name, low in (("trials", 1), ("seeds", 0), ("jobs", 1)):
            if getattr(self, name) < low:
                out.append(f"--{name} must be at least {low}, got {getattr(self, name)}")
        return out


def _ks_map_r(objective: str) -> tuple[tuple[int, ...], int]:
    if objective.startswith("R@"):
        return (1, 5, 10, int(objective[2:])), 50
    if objective.startswith("mAP@"):
        return (1, 5, 10), int(objective[4:])
    return (1, 5, 10), 50


def run_task(task: dict) -> dict:
    """One training run and its evaluation on one split (a trial: val; a seed run: test).

    A function of plain data, so it runs the same in this process, a spawned one or a dask worker.
    A run folder without ``metrics.json`` (cut off mid-way) starts over; a finished one is reused.
    """
    from mmx.cache.threads import set_threads
    from mmx.eval.evaluate import default_relevance, evaluate_run
    from mmx.train.config import TrainConfig, merge
    from mmx.train.loop import train

    cfg = merge(TrainConfig(), task["config"], "sweep")
    if task.get("threads"):
        set_threads(task["threads"])
    run = Path(cfg.out) / cfg.name
    if run.exists() and not (run / "metrics.json").is_file():
        shutil.rmtree(run)
    started = time.perf_counter()
    if not run.exists():
        warned: list[str] = []
        train(cfg, warn=warned.append)
    relevance = task.get("relevance") or default_relevance(cfg.to_dict())
    ks, map_r = _ks_map_r(task["objective"])
    res = evaluate_run(run, [task["split"]], relevance, ks, map_r)["splits"][task["split"]]
    return {"run": str(run), "value": res["pairs_mean"].get(task["objective"]), "relevance": relevance,
            "pairs_mean": {k: v for k, v in res["pairs_mean"].items() if k not in ("query", "target", "rows", "chance")},
            "seconds": time.perf_counter() - started}


class _Inline:
    """Runs each task as it is submitted, in this process (``jobs=1``): simple and deterministic."""

    capacity = 1

    def submit(self, fn, task):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(task))
        except Exception as exc:  # a failed trial is recorded as failed, the sweep goes on
            fut.set_exception(exc)
        return fut

    def close(self):
        pass


class _Processes:
    def __init__(self, jobs: int):
        import multiprocessing

        # spawn: a fresh interpreter per worker, never a fork of a process holding torch threads
        self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        self.capacity = jobs

    def submit(self, fn, task):
        return self.pool.submit(fn, task)

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Dask:
    def __init__(self, scheduler, jobs: int):
        from distributed import Client

        self.client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        self.own = self.client is not scheduler
        threads = sum(self.client.nthreads().values()) or 1
        self.capacity = jobs if jobs > 1 else threads

    def submit(self, fn, task):
        return self.client.submit(fn, task, pure=False, key=f"mmx-sweep-{task['config']['name']}-{os.urandom(4).hex()}")

    def close(self):
        if self.own:
            self.client.close()


def _pool(spec: SweepSpec):
    if spec.dask_scheduler is not None:
        return _Dask(spec.dask_scheduler, spec.jobs)
    return _Processes(spec.jobs) if spec.jobs > 1 else _Inline()


def _threads_per_run(spec: SweepSpec) -> int:
    if spec.threads:
        return spec.threads
    if spec.dask_scheduler is not None:
        return 0  # each worker keeps its own default
    return max(1, (os.cpu_count() or 1) // spec.jobs)


def base_config(spec: SweepSpec, strategy: str) -> dict:
    """Every run's config of ``strategy`` before the drawn values: its defaults and ``spec.sets``."""
    from mmx.cache.paths import default_cache_root
    from mmx.train.config import resolve

    cfg = resolve([], {"strategy": strategy, "dataset": spec.dataset, "cache": spec.cache or str(default_cache_root()),
                       "modalities": list(spec.modalities) or None, "device": spec.device, "seed": spec.seed},
                  list(spec.sets))
    if cfg.holdout != "val":
        raise ValueError(f"a sweep selects on val; holdout={cfg.holdout!r} would select on {cfg.holdout} (drop --set holdout)")
    return cfg.to_dict()


def _task(spec: SweepSpec, base: dict, strategy: str, params: dict, out: Path, name: str, split: str, seed: int) -> dict:
    from mmx.train.config import TrainConfig, merge

    cfg = merge(merge(TrainConfig(), base, "sweep"), config_values(strategy, params), f"search space of {strategy}")
    cfg.out, cfg.name, cfg.seed = str(out), name, seed
    return {"config": cfg.to_dict(), "split": split, "objective": spec.objective, "relevance": spec.relevance,
            "threads": _threads_per_run(spec)}


def _storage(folder: Path):
    import optuna

    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # Optuna 3.x
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "study.journal")))


def open_study(folder: Path, strategy: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=strategy, storage=_storage(folder), direction="maximize", load_if_exists=True)


def _recover(study, log, dists: dict) -> None:
    """Trials left running by a sweep that was cut off: failed (marked interrupted) and re-queued
    with their setting. A trial cut off while its setting was being drawn (``study.ask`` writes
    each value on its own) has none to retry: it is failed as interrupted and not counted, so a
    new trial takes its place."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if set(t.params) == set(dists):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            log(f"  trial {t.number} was cut off: queued again with its setting")
        else:
            log(f"  trial {t.number} was cut off while its setting was drawn: a new trial takes its place")


def _finished(study) -> int:
    """Trials that count towards the asked total: complete, or failed by their own error."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")))


def _wait_any(pending: dict) -> list:
    while True:
        done = [f for f in pending if f.done()]
        if done:
            return done
        time.sleep(0.05)


def search(spec: SweepSpec, strategy: str, pool, log: Callable[[str], None] = print):
    """Run ``strategy``'s study up to ``spec.trials`` counted trials; returns the study."""
    import optuna

    folder = Path(spec.folder)
    overrides = load_space_file(spec.space_file).get(strategy) if spec.space_file else None
    space = resolve_space(strategy, overrides, spec.space_file or "search space")
    dists = distributions(space)
    base = base_config(spec, strategy)
    study = open_study(folder, strategy)
    _recover(study, log, dists)
    # a new seed per resumption: the sampler's random start never redraws the settings already tried
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials))
    todo = spec.trials - _finished(study)
    if todo <= 0:
        log(f"{strategy}: {_finished(study)} trial(s) already done")
    pending: dict = {}
    while todo > 0 or pending:
        while todo > 0 and len(pending) < pool.capacity:
            trial = study.ask(dists)
            task = _task(spec, base, strategy, trial.params, folder / strategy / "trials", f"trial-{trial.number:04d}",
                         "val", spec.seed)
            pending[pool.submit(run_task, task)] = trial
            todo -= 1
        for fut in _wait_any(pending):
            trial = pending.pop(fut)
            try:
                out = fut.result()
            except Exception as exc:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log(f"  {strategy} trial {trial.number} failed: {type(exc).__name__}: {exc}")
                continue
            trial.set_user_attr("run", out["run"])
            trial.set_user_attr("val", out["pairs_mean"])
            if out["value"] is None:
                trial.set_user_attr("error", f"no val {spec.objective}")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log(f"  {strategy} trial {trial.number}: no val {spec.objective} (an empty val split?)")
                continue
            study.tell(trial, out["value"])
            shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            log(f"  {strategy} trial {trial.number}: val {spec.objective} {out['value']:.4f}  ({shown})")
    return study


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def repeat(spec: SweepSpec, studies: dict, pool, log: Callable[[str], None] = print) -> tuple[dict, dict, list]:
    """Each study's best setting (highest val score; ties: the earlier trial) trained with seeds
    ``1..spec.seeds`` and evaluated on test (finished seed runs are reused, not retrained)."""
    from optuna.trial import TrialState

    folder = Path(spec.folder)
    chosen, pending = {}, {}
    for strategy, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            log(f"{strategy}: no trial finished; nothing to repeat")
            continue
        best = max(done, key=lambda t: (t.value, -t.number))
        chosen[strategy] = {"trial": best.number, "params": best.params, "val": best.value, "trials": len(done)}
        base = base_config(spec, strategy)
        for s in range(1, spec.seeds + 1):
            task = _task(spec, base, strategy, best.params, folder / strategy / "seeds", f"seed-{s}", "test", s)
            pending[pool.submit(run_task, task)] = (strategy, s)
    runs: dict[str, list] = {s: [] for s in chosen}
    failed = []
    while pending:
        for fut in _wait_any(pending):
            strategy, s = pending.pop(fut)
            try:
                runs[strategy].append(fut.result())
            except Exception as exc:
                failed.append(f"{strategy} seed {s}: {type(exc).__name__}: {exc}")
                log(f"  {strategy} seed {s} failed: {type(exc).__name__}: {exc}")
    return chosen, runs, failed


def _check_folder(spec: SweepSpec, folder: Path) -> None:
    """A folder holds one sweep: resuming with another dataset, objective or space would mix studies."""
    import yaml

    from mmx.cache.atomic import atomic_write_bytes

    asked = {"dataset": spec.dataset, "modalities": list(spec.modalities), "objective": spec.objective,
             "relevance": spec.relevance, "sets": list(spec.sets), "seed": spec.seed,
             "space": {s: resolve_space(s, load_space_file(spec.space_file).get(s) if spec.space_file else None)
                       for s in spec.strategies}}
    path = folder / "sweep.yaml"
    if path.is_file():
        from mmx.cache import files

        before = files.read_yaml(path, what="sweep record") or {}
        clash = [k for k in ("dataset", "modalities", "objective", "relevance", "sets", "seed") if before.get(k) != asked[k]]
        clash += [f"space of {s}" for s in spec.strategies if s in (before.get("space") or {}) and before["space"][s] != asked["space"][s]]
        if clash:
            raise ValueError(f"{folder} holds a sweep with another {', '.join(clash)}; give a new --out folder "
                             "(or the same settings to continue that sweep)")
        asked["space"] = {**(before.get("space") or {}), **asked["space"]}
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # read back by a loader that refuses aliases (spaces share range dicts)
            return True

    atomic_write_bytes(path, yaml.dump(asked, Dumper=Dumper, sort_keys=False).encode())


def sweep(spec: SweepSpec, log: Callable[[str], None] = print) -> dict:
    """Search every strategy, repeat each best setting over seeds, write the report; returns it."""
    from mmx.train.sweep_report import build_report

    problems = spec.problems()
    if problems:
        raise ValueError("; ".join(problems))
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    from mmx.cache.store.locks import hold_exclusive

    # one sweep per folder: trials left running in its study are then stale by definition
    fd = os.open(folder / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    busy = lambda holder: ValueError(f"{folder} is being swept by another process ({holder}); "  # noqa: E731
                                     "wait for it or stop it, then rerun to continue")
    try:
        with hold_exclusive(fd, f"mmx sweep {folder}", busy):
            for strategy in spec.strategies:  # bad --set values: refused before anything is recorded
                base_config(spec, strategy)
            _check_folder(spec, folder)
            pool = _pool(spec)
            try:
                studies = {}
                for strategy in spec.strategies:
                    log(f"{strategy}: searching ({spec.trials} trials, val {spec.objective}, {pool.capacity} at a time)")
                    studies[strategy] = search(spec, strategy, pool, log)
                chosen, runs, failed = repeat(spec, studies, pool, log)
                return build_report(spec, chosen, runs, failed, log)
            finally:
                pool.close()
    finally:
        os.close(fd)
