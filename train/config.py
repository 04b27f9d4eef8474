"""Typed training config: dataclass defaults, YAML presets, CLI overrides; unknown keys are errors.

Strategy-specific settings live in ``options`` (a free dict each strategy validates itself),
so adding a strategy never changes this class.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

AUTO = "auto"  # a numeric setting resolved once the data is loaded (tau: Strategy.tau_for)
AUTO_FIELDS = ("tau",)  # the numeric settings that also take AUTO
MAX_EPOCHS = 999_999  # epochs of a stage at most; an epoch's extra passes draw above it (loop.pass_draw)


def is_auto(name: str, value: Any) -> bool:
    """Whether ``value`` is ``auto`` for a setting that takes it in place of a number."""
    return name in AUTO_FIELDS and value == AUTO


@dataclasses.dataclass
class TrainConfig:
    strategy: str = "joint"
    dataset: str = "synthetic"
    cache: str = ""  # cache root; empty: the default root (--cache, $MMX_CACHE, ./.mmx-cache)
    modalities: list = dataclasses.field(default_factory=list)  # empty: every modality the dataset has
    backbones: dict = dataclasses.field(default_factory=dict)  # modality -> backbone, when a cache has several
    stores: dict = dataclasses.field(default_factory=dict)  # modality -> store path, folder name or key prefix
    alignment: str = "class"  # "class" (paper 000/002) or "instance" (paper 001)
    # split that early stopping and selection watch: "val" (the store's, else a seeded slice of
    # train, train/data.py) or "test" (paper 000 Sec. III-D; an explicit option, never the default)
    holdout: str = "val"
    val_fraction: float = 0.1  # of each class (or group stratum) of train, when the store has no val
    test_fraction: float = 0.2  # when the store has no split at all (a manifest without `split`)
    monitor: str = "loss"  # the held-out signal: "loss", or a retrieval mean over pairs: "mAP@R", "mAP", "R@K"
    keep: str = "best"  # "best": early stopping, the best epoch's weights; "last": a fixed number of epochs
    # features -> heads: standardize (train-split statistics), l2 (per row), none; auto: the
    # strategy's default (train/normalize.py); config.yaml records the resolved mode
    normalize: str = "auto"
    epochs: int = 200
    patience: int = 5  # epochs in a row without a better held-out signal before stopping
    # optimiser steps an epoch has at least: a pass over the train split with fewer steps is
    # followed by fresh passes until the epoch has them (0: one pass; docs/training.md)
    min_steps: int = 0
    # relative tolerance: a held-out signal counts as better only when it beats best by min_delta * |best|
    min_delta: float = 0.0
    batch_size: int = 128  # classes per batch (class-aligned) or groups per batch (instance-aligned)
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_decay: float = 1.0  # multiplicative per epoch (EAO uses 0.9)
    # InfoNCE temperature (paper 000 Sec. III-C, after [38]); "auto": the strategy's for the data's
    # alignment, resolved when the data is loaded (Strategy.tau_for); config.yaml records the number
    tau: float | str = 0.05
    embed_dim: int = 256  # joint space (paper 000 Sec. III-B)
    dropout: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA only
    # deterministic kernels (torch.use_deterministic_algorithms): on CUDA the scatter-adds of EAO's
    # fusion and CVS's triplets are otherwise summed in a varying order, so two runs (or a run and
    # its --resume) differ in the last bits; slower there, no effect on the CPU's results
    deterministic: bool = False
    cuda_graphs: bool = False  # replay training steps from CUDA graphs where they keep their shape (train/graphs.py)
    threads: int = 0  # torch CPU threads; 0: mmx.cache.threads.default_threads(), the value used is recorded
    out: str = "runs"
    name: str = ""  # run folder name; empty: date + key settings
    options: dict = dataclasses.field(default_factory=dict)  # strategy-specific settings

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _shown(value: Any) -> str:
    """``value`` as typed when it is printable text, else its repr (an error stays one line)."""
    return value if isinstance(value, str) and value.isprintable() and value.strip() == value and value else repr(value)


def _coerce(name: str, value: Any) -> Any:
    """Values from YAML or ``--set key=value`` into the field's type."""
    default = TrainConfig().__getattribute__(name)
    if is_auto(name, value):
        return value
    if isinstance(value, str):
        if isinstance(default, bool):
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{name}: expected true/false, got {value!r}")
            return low in ("true", "1", "yes")
        if isinstance(default, (int, float)):
            kind = type(default)
            try:
                return kind(value)
            except ValueError:
                example = "20" if kind is int else "0.001"
                raise ValueError(f"{name}={_shown(value)}: {name} expects {'an integer' if kind is int else 'a number'}, "
                                 f"e.g. --set {name}={example}") from None
        if isinstance(default, list):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(default, dict):
            from mmx.cache.files import parse_yaml

            parsed = parse_yaml(value, name)
            if not isinstance(parsed, dict):
                raise ValueError(f"{name}: expected a mapping, got {value!r}")
            return parsed
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# the numeric settings that make no sense below a bound: (field, smallest value, what it means)
_LOWER_BOUNDS = (
    ("epochs", 1, "epochs to train"),
    ("batch_size", 1, "classes or groups per batch"),
    ("patience", 1, "epochs without improvement before stopping"),
    ("embed_dim", 1, "joint-space size"),
    ("min_steps", 0, "optimiser steps per epoch at least"),
)


def check_values(cfg: TrainConfig) -> list[str]:
    """Values that would train to a meaningless result (a batch of 0 trains nothing and scores 1.0).

    Refused up front, each naming the fix, before any data is loaded.
    """
    problems = []
    for name, low, meaning in _LOWER_BOUNDS:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int):
            problems.append(f"{name}={v!r}: expected an integer ({meaning}), e.g. --set {name}={max(low, 1) * 20}")
        elif v < low:
            problems.append(f"{name}={v}: must be at least {low} ({meaning}); pass e.g. --{name.replace('_', '-')} "
                            f"{getattr(TrainConfig(), name)}")
    if isinstance(cfg.epochs, int) and cfg.epochs > MAX_EPOCHS:
        problems.append(f"epochs={cfg.epochs}: at most {MAX_EPOCHS:,} epochs a stage")
    if cfg.name:
        from mmx.cache.names import id_problem

        problem = id_problem(cfg.name)
        if problem:
            problems.append(f"--name {cfg.name!r}: {problem}; use a plain folder name")
    for name in ("lr", "tau"):
        v = getattr(cfg, name)
        if is_auto(name, v):
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            problems.append(f"{name}={v!r}: must be a positive number, e.g. --set {name}={getattr(TrainConfig(), name)}")
    return problems


def merge(cfg: TrainConfig, values: dict, source: str) -> TrainConfig:
    """``cfg`` with ``values`` applied; unknown keys raise, naming ``source``."""
    unknown = sorted(_shown(k) for k in set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    data = cfg.to_dict()
    for k, v in values.items():
        try:
            v = _coerce(k, v)
        except ValueError as exc:
            raise ValueError(str(exc) if source in ("--set", "command line") else f"{source}: {exc}") from None
        _check_type(k, v, source)
        if k == "options" and isinstance(v, dict):
            data["options"] = {**data["options"], **v}
        else:
            data[k] = v
    return TrainConfig(**data)


def _check_type(name: str, value: Any, source: str) -> None:
    """A value of the field's type (an int where a float is expected is fine), else one line naming ``source``."""
    if is_auto(name, value):
        return
    default = getattr(TrainConfig(), name)
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
          else isinstance(value, kind) and not isinstance(value, bool) if kind is int
          else isinstance(value, kind))
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"{source}: {name}: expected {kind.__name__}, got {type(value).__name__} {shown}")


def preset_names() -> list[str]:
    folder = resources.files("mmx.train.presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_yaml(path_or_preset: str) -> tuple[dict, str]:
    """A YAML file's mapping, or a shipped preset's by name."""
    p = Path(path_or_preset)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        from mmx.cache import files

        data, source = files.read_yaml(p, what="config file") or {}, str(p)
    else:
        names = preset_names()
        if path_or_preset not in names:
            raise ValueError(f"unknown preset {path_or_preset!r}; known: {', '.join(names) or 'none'}")
        text = (resources.files("mmx.train.presets") / f"{path_or_preset}.yaml").read_text()
        source = f"preset {path_or_preset}"
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of config keys")
    return data, source


def resolve(presets: list[str] = (), overrides: dict | None = None, sets: list[str] = ()) -> TrainConfig:
    """Defaults <- the strategy's paper settings <- presets/files (in order) <- explicit overrides
    <- ``key=value`` strings.

    The strategy is the one the layers above name last (``joint`` when none does); its
    ``paper_settings`` (train/strategies) sit under every preset, so a preset
    only names a variant and ``--strategy rvs`` with no other setting is paper 004's RVS.
    """
    layers = [load_yaml(p)[::-1] for p in presets]
    if overrides:
        layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k.startswith("options."):
            layers.append(("--set", {"options": {k[len("options."):]: yaml.safe_load(v)}}))
        else:
            layers.append(("--set", {k: v}))

    def apply(cfg: TrainConfig) -> TrainConfig:
        for source, values in layers:
            cfg = merge(cfg, values, source)
        return cfg

    strategy = apply(TrainConfig()).strategy
    return apply(merge(TrainConfig(), paper_settings(strategy), f"strategy {strategy!r} defaults"))


def paper_settings(name: str) -> dict:
    """The paper settings of strategy ``name`` (its class's ``paper_settings``)."""
    from mmx.train.strategies import get_strategy

    return dict(get_strategy(name).paper_settings)


def save(cfg: TrainConfig, path: Path) -> None:
    from mmx.cache.atomic import atomic_write_bytes

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # config.yaml is read back by a loader that refuses aliases
            return True

    atomic_write_bytes(Path(path), yaml.dump(cfg.to_dict(), Dumper=Dumper, sort_keys=False).encode())


def load(path: Path) -> TrainConfig:
    """A run's ``config.yaml``: a bounded regular file, safe YAML without aliases or tags, known keys only."""
    from mmx.cache import files

    data = files.read_yaml(path, what="config file") or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return merge(TrainConfig(), data, str(path))
