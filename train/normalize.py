"""Normalisation between the feature cache and the heads, fitted on the training split.

``TrainConfig.normalize``: ``standardize`` (per dimension, train-split mean and std, saved as
``normalizer.json``), ``l2`` (per row) or ``none`` (the papers' setting); ``auto`` is the
strategy's ``default_normalize``. :func:`fit`, :func:`extend` and :func:`load` give a
:class:`Normalizer`; :func:`scale_warnings` names modalities far out of scale before training.
Why standardisation is the default: docs/notes/train.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("standardize", "l2", "none")
FILE = "normalizer.json"
MIN_STD = 1e-6  # relative to the modality's median per-dimension std: below it a dimension is only centred
_FORMAT = 1


class FeatureScaleWarning(UserWarning):
    """A modality's features are far out of scale with the others, or nearly constant."""


@dataclasses.dataclass
class Normalizer:
    """A fitted normalisation: ``stats[modality][kind] = {"mean", "std"}`` (float32 arrays).

    ``kind`` is ``pooled`` or ``tokens``; ``stats`` is empty for ``l2`` and ``none``.
    """

    mode: str
    stats: dict = dataclasses.field(default_factory=dict)

    def apply(self, modality: str, x: Any, kind: str = "pooled") -> Any:
        """``x`` (rows of ``modality``'s features, a torch tensor or numpy array) normalised."""
        if self.mode == "none":
            return x
        if self.mode == "l2":
            norm = (x * x).sum(-1, keepdims=True) ** 0.5 if isinstance(x, np.ndarray) else x.norm(dim=-1, keepdim=True)
            return x / (norm.clip(1e-12) if isinstance(x, np.ndarray) else norm.clamp_min(1e-12))
        key = str(getattr(modality, "value", modality))
        if key not in self.stats or kind not in self.stats[key]:
            raise KeyError(f"normaliser: no {kind} statistics for modality {key!r} (fitted on: {', '.join(self.stats) or 'none'})")
        s = self.stats[key][kind]
        if x.shape[-1] != len(s["mean"]):
            raise ValueError(f"{FILE}: {key} {kind} statistics have {len(s['mean'])} dimensions, the features "
                             f"{x.shape[-1]}; the run was trained on another store: use its own cache or retrain")
        if isinstance(x, np.ndarray):
            return ((x - s["mean"]) / s["std"]).astype(np.float32)
        import torch

        mean = torch.as_tensor(s["mean"], device=x.device, dtype=x.dtype)
        std = torch.as_tensor(s["std"], device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def apply_features(self, f):
        """A :class:`~mmx.cache.LoadedFeatures` with its pooled features and tokens normalised (a copy)."""
        m = f.modality.value
        out = dataclasses.replace(f)
        if f.pooled is not None:
            out.pooled = self.apply(m, f.pooled, "pooled")
        if f.tokens is not None:
            out.tokens = self.apply(m, f.tokens, "tokens")
        return out

    def apply_data(self, data):
        """A :class:`~mmx.train.data.TrainData` with every split normalised (the input is left as it is)."""
        if self.mode == "none":
            return data
        from mmx.train.data import SplitData

        splits = {name: SplitData({m: self.apply_features(f) for m, f in s.features.items()}, s.classes, s.classes_host)
                  for name, s in data.splits.items()}
        return dataclasses.replace(data, splits=splits)

    # -- the run folder ----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": _FORMAT,
            "mode": self.mode,
            "stats": {m: {k: {n: [float(v) for v in a] for n, a in s.items()} for k, s in kinds.items()}
                      for m, kinds in self.stats.items()},
        }

    @classmethod
    def from_json(cls, obj: dict, source: str = "normalizer.json") -> "Normalizer":
        """The normaliser ``obj`` describes, once every statistic is a finite vector (std > 0) of one
        length per modality and kind; else one line naming ``source``."""
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT or obj.get("mode") not in MODES:
            raise ValueError(f"{source}: not a normaliser this mmx can read (format {_FORMAT}, mode one of {', '.join(MODES)})")
        raw = obj.get("stats", {})
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: stats must map each modality to its statistics; retrain the run or restore the file")
        stats = {}
        for m, kinds in raw.items():
            if not isinstance(kinds, dict) or set(kinds) - {"pooled", "tokens"}:
                raise ValueError(f"{source}: stats of {m!r} must map 'pooled' and/or 'tokens' to a mean and a std")
            stats[m] = {k: _checked_stats(s, f"{source}: {m}/{k}") for k, s in kinds.items()}
        return cls(obj["mode"], stats)

    def save(self, run: str | Path) -> Path:
        from mmx.eval.runs import write_json

        path = Path(run) / FILE
        write_json(path, self.to_json())
        return path


def _checked_stats(s: Any, where: str) -> dict:
    """``{"mean", "std"}`` as float32 vectors of one length, finite, std > 0: a NaN, Inf or zero
    statistic would turn every feature it touches into NaN or Inf, and every embedding with it."""
    if not isinstance(s, dict) or set(s) != {"mean", "std"}:
        raise ValueError(f"{where}: expected exactly a mean and a std")
    out = {}
    for n in ("mean", "std"):
        a = s[n]
        if not isinstance(a, list) or not a or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a):
            raise ValueError(f"{where}: {n} must be a non-empty list of numbers")
        with np.errstate(over="ignore"):
            out[n] = np.asarray(a, np.float32)
        if not np.isfinite(out[n]).all():
            raise ValueError(f"{where}: {n} holds non-finite values (NaN or inf) at dimension {int(np.argmax(~np.isfinite(out[n])))}; "
                             "embeddings through it would be NaN: retrain the run or restore the file")
    if len(out["mean"]) != len(out["std"]):
        raise ValueError(f"{where}: mean has {len(out['mean'])} dimensions, std {len(out['std'])}")
    if not (out["std"] > 0).all():
        raise ValueError(f"{where}: std is zero or negative at dimension {int(np.argmax(~(out['std'] > 0)))}; "
                         "dividing by it gives inf or NaN: retrain the run or restore the file")
    return out


def _moments(x) -> dict:
    """Per-dimension mean and population std (float64 sums, float32 result) of ``x`` (N, D)."""
    import torch

    x64 = torch.as_tensor(x).double()
    mean = x64.mean(0)
    std = ((x64 - mean) ** 2).mean(0).sqrt()
    return {"mean": mean.float().cpu().numpy(), "std": std.float().cpu().numpy()}


def _safe_std(std: np.ndarray) -> np.ndarray:
    """``std`` with dimensions that are (nearly) constant set to 1: those are only centred."""
    typical = float(np.median(std)) if len(std) else 0.0
    floor = MIN_STD * typical if typical > 0 else MIN_STD
    return np.where(std > floor, std, 1.0).astype(np.float32)


def fit(mode: str, train_split) -> Normalizer:
    """The normaliser of ``mode`` fitted on ``train_split`` (a :class:`SplitData`)."""
    if mode not in MODES:
        raise ValueError(f"normalize must be one of {', '.join(MODES)} or auto, not {mode!r}")
    if mode != "standardize":
        return Normalizer(mode)
    stats = {}
    for m, f in train_split.features.items():
        kinds = {}
        for kind in ("pooled", "tokens"):
            x = getattr(f, kind)
            if x is None or len(x) == 0:
                continue
            s = _moments(x)
            kinds[kind] = {"mean": s["mean"], "std": _safe_std(s["std"])}
        stats[m.value] = kinds
    return Normalizer(mode, stats)


def extend(base: Normalizer, train_split) -> Normalizer:
    """``base`` (the normaliser of a run being extended) plus statistics for the modalities it
    lacks, fitted on ``train_split``: the run's own modalities keep exactly what their frozen
    heads were trained on, so their embeddings stay bitwise equal."""
    fitted = fit(base.mode, train_split)
    return Normalizer(base.mode, {**fitted.stats, **base.stats})


def load(run: str | Path) -> Normalizer:
    """The normaliser a run was trained with (``none`` for runs from before normalisation existed)."""
    path = Path(run) / FILE
    if not path.exists() and not path.is_symlink():  # a dangling link is a damaged run, not an old one
        if (Path(run) / "config.yaml").exists():
            return Normalizer("none")
        raise FileNotFoundError(f"{run}: not a run folder (no config.yaml)")
    from mmx.cache import files

    return Normalizer.from_json(files.read_json(path, what="normaliser"), str(path))


def resolve(mode: str, strategy_cls) -> str:
    """``auto`` -> the strategy's default; anything else must be one of :data:`MODES`."""
    if mode == "auto":
        return strategy_cls.default_normalize
    if mode not in MODES:
        raise ValueError(f"normalize must be one of auto, {', '.join(MODES)}, not {mode!r}")
    return mode


# -- the check before training -------------------------------------------------------------------

OUT_OF_SCALE = 10.0  # ratio of RMS row norms between two modalities that earns a warning
NEARLY_CONSTANT = 1e-3  # spread (RMS distance to the mean row) relative to the RMS row norm


def scale_stats(train_split) -> dict[str, dict[str, float]]:
    """Per modality: ``norm`` (RMS row norm), ``spread`` (RMS distance of a row to the mean row),
    ``offset`` (norm of the mean row) and ``between`` (share of the variance between classes)."""
    import torch

    out = {}
    for m, f in train_split.features.items():
        if f.pooled is None or len(f.pooled) == 0:
            continue
        x = f.pooled.double()
        mean = x.mean(0)
        total = float(((x - mean) ** 2).sum(1).mean())
        classes = train_split.classes[m]
        between = math.nan
        if total > 0 and bool((classes >= 0).all()):
            uniq, inv = torch.unique(classes, return_inverse=True)
            sums = torch.zeros((len(uniq), x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, inv, x)
            counts = torch.bincount(inv, minlength=len(uniq)).to(x.dtype)
            centres = sums / counts[:, None]
            between = float((counts * ((centres - mean) ** 2).sum(1)).sum() / len(x)) / total
        out[m.value] = {
            "norm": float((x * x).sum(1).mean().sqrt()),
            "spread": math.sqrt(total),
            "offset": float(mean.norm()),
            "between": between,
        }
    return out


def scale_problems(stats: dict[str, dict[str, float]], meta: dict | None = None) -> list[str]:
    """One line per modality whose features are far out of scale with the others or nearly constant."""
    lines = []
    norms = {m: s["norm"] for m, s in stats.items() if s["norm"] > 0}
    for m, s in stats.items():
        desc = (f"RMS row norm {s['norm']:.4g}, mean-row norm {s['offset']:.4g}, spread {s['spread']:.4g}"
                + ("" if math.isnan(s["between"]) else f", {100 * s['between']:.0f}% of the variance between classes"))
        scale = ((meta or {}).get(m) or {}).get("scale")
        if scale:
            desc += f"; the store records its scale as {scale.get('unit', '?')}" + (" (arbitrary)" if scale.get("arbitrary") else "")
        if s["norm"] == 0 or s["spread"] <= NEARLY_CONSTANT * s["norm"]:
            lines.append(f"{m} features are nearly constant; {m}: {desc}")
            continue
        ref = _reference_norm(norms, m)
        if ref is not None:
            ratio = s["norm"] / ref[1]
            if ratio >= OUT_OF_SCALE or ratio <= 1 / OUT_OF_SCALE:
                lines.append(f"{m} features are {ratio:.3g}x the scale of {ref[0]}'s (RMS row norm {ref[1]:.4g}); {m}: {desc}")
    return lines


def _reference_norm(norms: dict[str, float], m: str) -> tuple[str, float] | None:
    """What ``m``'s scale is compared with: the median RMS row norm of all modalities when there
    are three or more (so one outlier is named, not the others), else the other modality when
    ``m`` is the larger of two (so a pair out of scale is named once)."""
    if m not in norms or len(norms) < 2:
        return None
    if len(norms) >= 3:
        return "the median modality", float(np.median(list(norms.values())))
    other = next(k for k in norms if k != m)
    return (other, norms[other]) if norms[m] > norms[other] else None


def scale_warnings(train_split, mode: str, meta: dict | None = None) -> list[str]:
    """One caution per modality of the raw training features that is far out of scale with the
    others or nearly constant, with what ``mode`` does about it (the loop says them once)."""
    lines = scale_problems(scale_stats(train_split), {m.value: v for m, v in (meta or {}).items()})
    advice = {
        "none": "set normalize: standardize (or --set normalize=standardize) to put the modalities on one scale",
        "l2": "normalize: l2 fixes the row norms but not a large common offset; standardize removes both",
        "standardize": "normalize: standardize rescales them with train-split statistics",
    }[mode]
    return [f"feature scale: {line}; {advice}" for line in lines]
