"""Loading cached features into memory once, and the checks that run before any step."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmx.cache import LoadedFeatures, find_store
from mmx.cache.modality import Modality


@dataclasses.dataclass
class SplitData:
    """The modalities of one split, in memory. ``classes[m]`` indexes ``TrainData.class_names``."""

    features: dict[Modality, LoadedFeatures]
    classes: dict[Modality, Any]  # LongTensor (N_m,) on the data device; -1 when unlabelled

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
) -> TrainData:
    """Load every (modality, split) once; report every problem at once before training."""
    import torch

    problems: list[str] = []
    stores = {}
    for m in modalities:
        try:
            stores[m] = find_store(cache_root, dataset, m, (backbones or {}).get(m.value))
        except (FileNotFoundError, ValueError) as exc:
            problems.append(str(exc))
    for m, store in stores.items():
        if tokens and not store.has_tokens:
            problems.append(f"{m.value}: the store {store.path} has pooled features only; this strategy needs tokens")
    if problems:
        raise ValueError("cannot train on this cache:\n  " + "\n  ".join(problems))

    loaded: dict[str, dict[Modality, LoadedFeatures]] = {s: {} for s in splits}
    for m, store in stores.items():
        whole = store.load(split=splits, tokens=tokens, device=device)  # one read of the store for all splits
        for s in splits:
            loaded[s][m] = whole.select(np.flatnonzero(whole.splits == s))
    for s in splits:
        for m, f in loaded[s].items():
            if len(f) == 0:
                problems.append(f"{m.value}: no items in split {s!r} (ok items of complete shards)")
            elif need_labels and any(str(x) == "" for x in f.labels):
                problems.append(f"{m.value}/{s}: {sum(str(x) == '' for x in f.labels)} item(s) have no label; class-aligned training needs labels")
            elif need_groups and any(str(x) == "" for x in f.groups):
                problems.append(f"{m.value}/{s}: items without a group; instance-aligned training needs groups")
    if problems:
        raise ValueError("cannot train on this cache:\n  " + "\n  ".join(problems))

    names = sorted({str(x) for per in loaded.values() for f in per.values() for x in f.labels if str(x)})
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for s, per in loaded.items():
        classes = {
            m: torch.as_tensor(np.array([index.get(str(x), -1) for x in f.labels], np.int64), device=device)
            for m, f in per.items()
        }
        out[s] = SplitData(features=per, classes=classes)
    return TrainData(
        splits=out,
        class_names=names,
        dims={m: st.dim for m, st in stores.items()},
        meta={m: st.meta for m, st in stores.items()},
    )
