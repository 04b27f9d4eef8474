"""Search spaces of ``mmx sweep``: a default per strategy, overridable from a YAML file.

A space maps a config key (``lr``, ``batch_size``, ...) or a strategy option (``options.margins``)
to a range ``{low, high, log}`` (float, or int when both ends are integers) or a list
``{choices: [...]}``. A YAML file ``{strategy: {key: spec or null}}`` replaces the named keys of
that strategy's default space (``null`` drops one). :func:`suggest` turns an Optuna trial into
config values; a scalar drawn for a list-valued option (``options.margins``) fills the whole list.
"""

from __future__ import annotations

from typing import Any

# Ranges around each paper's setting (paper 000: lr 1e-3, tau 0.05, and mmx's 0.2 on class-aligned
# data, batch 128; CVS/thesis 004: lr 1e-3, margins 1.0, 50 epochs; EAO: lr 5e-5 with decay 0.9,
# 15 epochs), wide enough to reach the small-data end the papers never ran (batches of tens of
# items, longer patience).
_LR = {"low": 1e-4, "high": 3e-3, "log": True}
_DECAY = {"choices": [0.0, 1e-5, 1e-4, 1e-3]}
_FUERER = {"lr": _LR, "weight_decay": _DECAY, "batch_size": {"choices": [16, 32, 64, 128]},
           "tau": {"low": 0.02, "high": 0.5, "log": True}, "patience": {"choices": [3, 5, 10]}}
_CVS = {"lr": _LR, "weight_decay": _DECAY, "batch_size": {"choices": [16, 32, 64, 128]},
        "options.margins": {"low": 0.2, "high": 2.0, "log": True}, "epochs": {"choices": [10, 25, 50]}}
DEFAULT_SPACES: dict[str, dict[str, dict]] = {
    "joint": _FUERER,
    "roundrobin": _FUERER,
    "eao": {"lr": {"low": 1e-5, "high": 1e-3, "log": True}, "weight_decay": _DECAY,
            "batch_size": {"choices": [32, 64, 128, 256]}, "tau": {"low": 0.02, "high": 0.2, "log": True},
            "epochs": {"choices": [5, 10, 15, 25]}},
    "cvs": _CVS,
    "mcvs": _CVS,
    "rvs": _CVS,
    "stagewise": _CVS,
}


def _check_spec(strategy: str, key: str, spec: Any) -> str | None:
    where = f"search space of {strategy}: {key}"
    if not isinstance(spec, dict):
        return f"{where}: expected {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}"
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            return f"{where}: choices must be a non-empty list and stand alone, got {spec!r}"
        if not all(isinstance(c, (int, float, str, bool)) for c in choices):
            return f"{where}: choices must be numbers, strings or booleans, got {choices!r}"
        return None
    if not {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        return f"{where}: expected keys low, high and optionally log, got {sorted(spec)}"
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        return f"{where}: low and high must be numbers with low < high, got {low!r}, {high!r}"
    if spec.get("log") and low <= 0:
        return f"{where}: a log range needs low > 0, got {low!r}"
    return None


def known_keys(strategy: str) -> set[str]:
    from mmx.train.config import FIELDS
    from mmx.train.strategies import get_strategy

    fixed = {"strategy", "dataset", "cache", "modalities", "seed", "device", "out", "name", "options", "threads", "holdout"}
    return ({k for k in FIELDS if k not in fixed}
            | {f"options.{k}" for k in get_strategy(strategy).option_defaults()})


def resolve_space(strategy: str, overrides: dict | None = None, source: str = "search space file") -> dict[str, dict]:
    """The default space of ``strategy`` with ``overrides`` (``{key: spec or None}``) applied."""
    from mmx.train.strategies import get_strategy

    get_strategy(strategy)  # unknown strategy: one clear error
    space = dict(DEFAULT_SPACES.get(strategy, {"lr": _LR, "weight_decay": _DECAY}))
    for key, spec in (overrides or {}).items():
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = spec
    known = known_keys(strategy)
    problems = [f"{source}: {strategy}: unknown key {k!r} (a config key or options.NAME of the strategy)"
                for k in space if k not in known]
    problems += [p for k, s in space.items() if (p := _check_spec(strategy, k, s))]
    if problems:
        raise ValueError("; ".join(problems))
    if not space:
        raise ValueError(f"{source}: the search space of {strategy} is empty; name at least one key")
    return space


def load_space_file(path: str) -> dict[str, dict]:
    """``{strategy: {key: spec or None}}`` from a YAML file; unknown strategies are errors."""
    from pathlib import Path

    from mmx.cache import files
    from mmx.train.strategies import STRATEGIES

    data = files.read_yaml(Path(path), what="search space file") or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise ValueError(f"{path}: expected a mapping strategy -> {{key: spec}}, e.g. joint: {{lr: {{low: 1e-4, high: 1e-2, log: true}}}}")
    unknown = [s for s in data if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"{path}: unknown strategy {', '.join(map(repr, unknown))}; known: {', '.join(STRATEGIES)}")
    return {s: (v or {}) for s, v in data.items()}


def distributions(space: dict[str, dict]) -> dict:
    """Optuna distributions of a resolved space (a fixed set, so ``study.ask`` needs no callback)."""
    import optuna

    out = {}
    for key, spec in space.items():
        if "choices" in spec:
            out[key] = optuna.distributions.CategoricalDistribution(spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log_float"):
            out[key] = optuna.distributions.IntDistribution(spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            out[key] = optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def config_values(strategy: str, params: dict) -> dict:
    """Drawn ``params`` as config values: ``options.X`` into ``options``, scalars filling list options."""
    from mmx.train.strategies import get_strategy

    defaults = get_strategy(strategy).option_defaults()
    values: dict[str, Any] = {}
    for key, v in params.items():
        if key.startswith("options."):
            name = key[len("options."):]
            if isinstance(defaults.get(name), list) and not isinstance(v, list):
                v = [v] * len(defaults[name])
            values.setdefault("options", {})[name] = v
        else:
            values[key] = v
    return values
