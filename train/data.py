"""Loading cached features into memory once, and the held-out splits.

:func:`load_train_data` gives a :class:`TrainData` (one :class:`SplitData` per split). The
held-out split follows :class:`Holdout`: the store's ``val`` items, else a seeded stratified
slice of ``train`` (and of a store with no split at all, a test slice too), recorded in the
run's ``splits.json``; a modality the slice leaves without val items (at most one train item
per class) is listed in ``split_info["val"]["left_out"]`` and left out of the monitor. Why these slices: docs/notes/train.md.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from mmx.cache import LoadedFeatures, find_store
from mmx.cache.modality import Modality


@dataclasses.dataclass
class SplitData:
    """The modalities of one split, in memory. ``classes[m]`` indexes ``TrainData.class_names``."""

    features: dict[Modality, LoadedFeatures]
    classes: dict[Modality, Any]  # LongTensor (N_m,) on the data device; -1 when unlabelled
    classes_host: dict[Modality, np.ndarray] = dataclasses.field(default_factory=dict)  # the same, on the host

    def host_classes(self, m: Modality) -> np.ndarray:
        """``classes[m]`` as a host array, for samplers: the one built at load, else read from
        the device once and kept (a sampler per pass must not wait for the device each pass)."""
        if m not in self.classes_host:
            self.classes_host[m] = self.classes[m].cpu().numpy()
        return self.classes_host[m]

    @property
    def modalities(self) -> list[Modality]:
        return list(self.features)

    def pooled(self, m: Modality):
        return self.features[m].pooled


@dataclasses.dataclass
class TrainData:
    splits: dict[str, SplitData]
    class_names: list[str]
    dims: dict[Modality, int]
    meta: dict[Modality, dict]
    # how each split was formed: {"val": {"source": "train slice", "seed", "fraction", ...}}
    split_info: dict = dataclasses.field(default_factory=dict)
    pooled_as_tokens: list[Modality] = dataclasses.field(default_factory=list)  # see load_train_data


STORED_SPLITS = ("train", "val", "test")


def _units(features: dict) -> tuple[dict, dict]:
    """Per modality, each item's draw unit and stratum (see the module docstring)."""
    unit, stratum = {}, {}
    for m, f in features.items():
        groups, labels, ids = (np.asarray([str(x) for x in a]) for a in (f.groups, f.labels, f.ids))
        unit[m] = [("g", g) if g else ("i", m.value, i) for g, i in zip(groups, ids)]
        stratum[m] = [("g", lab) if g else ("i", m.value, lab) for g, lab in zip(groups, labels)]
    return unit, stratum


def stratified_pick(features: dict, eligible: dict, fraction: float, seed: int, salt: int) -> dict:
    """Per modality, a bool mask of the items drawn: ``fraction`` of the units of each stratum.

    ``eligible[m]``: bool mask of the items that may be drawn. Each stratum with at least two
    units gives ``round(fraction * n)`` of them, at least one and never all, so every class
    stays in both parts. Units are sorted before the shuffle and each stratum has its own
    generator, seeded by (seed, salt, stratum), so a stratum's draw depends neither on store
    order nor on the other strata (``--add-modality`` leaves the others' slices as they were).
    """
    unit, stratum = _units(features)
    by_stratum: dict = {}
    for m in features:
        for u, st, ok in zip(unit[m], stratum[m], eligible[m]):
            if ok:
                by_stratum.setdefault(st, set()).add(u)
    drawn = set()
    for st in sorted(by_stratum):
        units = sorted(by_stratum[st])
        n = len(units)
        k = 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))
        rng = np.random.default_rng([seed, salt, zlib.crc32(repr(st).encode())])
        drawn.update(units[i] for i in rng.permutation(n)[:k])
    return {m: np.array([u in drawn for u in unit[m]], bool) & eligible[m] for m in features}


@dataclasses.dataclass
class Holdout:
    """Which split early stopping and selection watch, and how missing splits are formed.

    ``split``: ``val`` (default: the store's, else a slice of train) or ``test`` (paper 000
    Sec. III-D stops on the test loss; an explicit option only).
    """

    split: str = "val"
    fraction: float = 0.1  # of each stratum of train, when the store has no val items
    test_fraction: float = 0.2  # of each stratum of all items, when the store has no split at all
    seed: int = 0

    def assign(self, features: dict) -> tuple[dict, dict]:
        """``(modality -> split name per item, split_info)``; items of other splits keep theirs."""
        names = {m: np.asarray([str(x) for x in f.splits]) for m, f in features.items()}
        info: dict = {}
        if not any(np.isin(n, STORED_SPLITS).any() for n in names.values()):
            everything = {m: np.ones(len(n), bool) for m, n in names.items()}
            test = stratified_pick(features, everything, self.test_fraction, self.seed, 1)
            names = {m: np.where(test[m], "test", "train") for m in names}
            info["test"] = {"source": "derived: the store has no split", "fraction": self.test_fraction,
                            "seed": self.seed, "stratified": "by class; grouped items by group"}
        if self.split == "val":
            has = {m.value: bool((n == "val").any()) for m, n in names.items()}
            if all(has.values()):
                info["val"] = {"source": "store"}
            elif any(has.values()):
                lacking = sorted(m for m, h in has.items() if not h)
                raise ValueError(f"cannot train on this cache: the store has val items for "
                                 f"{', '.join(sorted(m for m, h in has.items() if h))} but none for {', '.join(lacking)}; "
                                 "give every modality val items, or choose the holdout with --set holdout=test")
            else:
                train = {m: n == "train" for m, n in names.items()}
                val = stratified_pick(features, train, self.fraction, self.seed, 2)
                names = {m: np.where(val[m], "val", n) for m, n in names.items()}
                info["val"] = {"source": "train slice", "fraction": self.fraction, "seed": self.seed,
                               "stratified": "by class; grouped items by group"}
        return names, info

    def splits(self) -> list[str]:
        return ["train", self.split] + ([] if self.split == "test" else ["test"])


def dataset_modalities(cache_root: str, dataset: str) -> list[Modality]:
    """The modalities with a store of ``dataset`` under ``cache_root``, in the shared order."""
    from mmx.cache import list_stores

    have = {s.modality for s in list_stores(cache_root, dataset) if s.dataset == dataset}
    return [m for m in Modality if m in have]


def load_train_data(
    cache_root: str,
    dataset: str,
    modalities: list[Modality],
    splits: list[str],
    backbones: dict[str, str] | None = None,
    tokens: bool = False,
    need_labels: bool = True,
    need_groups: bool = False,
    device: Any = None,
    holdout: Holdout | None = None,
    picks: dict[str, str] | None = None,
) -> TrainData:
    """Load every (modality, split) once; report every problem at once before training.

    ``picks`` (modality -> store path, folder name or key prefix: the config's ``stores``)
    picks a store outright; ``backbones`` (modality -> backbone name) picks among several.

    With ``holdout``, ``splits`` is ignored: the store is read whole and split by
    :meth:`Holdout.assign` into ``holdout.splits()``.

    ``tokens``: the strategy needs token sequences (EAO). A store with pooled features only
    (pre-extracted benchmarks ship nothing else) is then viewed as one-token sequences: item
    ``i``'s sequence is its pooled vector alone, and the modality is listed
    in ``TrainData.pooled_as_tokens`` so the run can say so. Stores with tokens load them.
    """
    import torch

    problems: list[str] = []
    stores = {}
    for m in modalities:
        try:
            stores[m] = find_store(cache_root, dataset, m, (backbones or {}).get(m.value), (picks or {}).get(m.value))
        except FileNotFoundError as exc:
            have = ", ".join(h.value for h in dataset_modalities(cache_root, dataset)) or "none"
            problems.append(f"{exc}; or leave {m.value} out of --modalities (dataset {dataset!r} has: {have})")
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("cannot train on this cache:\n  " + "\n  ".join(problems))

    if holdout is not None:
        splits = holdout.splits()
    one_token = [m for m, store in stores.items() if tokens and not store.has_tokens]
    # one read of each store for all splits
    wholes = {m: store.load(split=None if holdout else splits, tokens=tokens and m not in one_token, device=device)
              for m, store in stores.items()}
    wholes = {m: pooled_as_tokens(w) if m in one_token else w for m, w in wholes.items()}
    names, split_info = holdout.assign(wholes) if holdout else ({m: w.splits for m, w in wholes.items()}, {})
    loaded: dict[str, dict[Modality, LoadedFeatures]] = {s: {} for s in splits}
    for m, whole in wholes.items():
        for s in splits:
            loaded[s][m] = whole.select(np.flatnonzero(names[m] == s))
    derived = split_info.get("val", {}).get("source") == "train slice"
    for s in splits:
        for m, f in loaded[s].items():
            if len(f) == 0 and s == "val" and derived:
                # a modality with at most one train item per class has none to spare for val:
                # it trains, and the monitor watches the other modalities (train/monitor.py)
                split_info["val"].setdefault("left_out", []).append(m.value)
            elif len(f) == 0:
                problems.append(f"{m.value}: no items in split {s!r} (ok items of complete shards)")
            elif need_labels and any(str(x) == "" for x in f.labels):
                problems.append(f"{m.value}/{s}: {sum(str(x) == '' for x in f.labels)} item(s) have no label; class-aligned training needs labels")
            elif need_groups and any(str(x) == "" for x in f.groups):
                problems.append(f"{m.value}/{s}: items without a group; instance-aligned training needs groups")
    left = split_info.get("val", {}).get("left_out", [])
    if left and len(loaded["val"]) - len(left) < 2:
        problems.append(f"no val items could be derived for {', '.join(left)}: each of its classes has at most one train item, "
                        "so fewer than two modalities are left to watch; add items, or watch the test split with --set holdout=test")
    if problems:
        raise ValueError("cannot train on this cache:\n  " + "\n  ".join(problems))

    names = sorted({str(x) for per in loaded.values() for f in per.values() for x in f.labels if str(x)})
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for s, per in loaded.items():
        host = {m: np.array([index.get(str(x), -1) for x in f.labels], np.int64) for m, f in per.items()}
        classes = {m: torch.as_tensor(c, device=device) for m, c in host.items()}
        out[s] = SplitData(features=per, classes=classes, classes_host=host)
    return TrainData(
        splits=out,
        class_names=names,
        dims={m: st.dim for m, st in stores.items()},
        meta={m: st.meta for m, st in stores.items()},
        split_info=split_info,
        pooled_as_tokens=one_token,
    )


def pooled_as_tokens(f: LoadedFeatures) -> LoadedFeatures:
    """A view of pooled-only features as sequences of one token each (no copy)."""
    import torch

    offsets = torch.arange(len(f) + 1, device=f.pooled.device)
    return dataclasses.replace(f, tokens=f.pooled, offsets=offsets)
