"""Synthetic feature caches in the real schema (open_clip's ``--dataset-type synthetic``).

:func:`synthesize` writes one store per modality from a :class:`SyntheticConfig` (or a preset in
:data:`PRESETS`): classes, or instance-aligned groups, seen by every modality through its own
fixed random map, so modalities align only after training. The model is in docs/notes/cache.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mmx.cache.store import FeatureStore, StoreSpec, create_store, ids_digest
from mmx.cache.modality import Modality

# XMediaNet as paper 000 could obtain it (Sec. III-A), with the dimensions of its backbones
# (BERT-small 512, ResNet50 2048, VGGish 128, MoViNet-A2 600).
XMEDIANET = {
    "classes": 200,
    "items": {"text": 40000, "image": 35268, "audio": 8280, "video": 7876},
    "dims": {"text": 512, "image": 2048, "audio": 128, "video": 600},
    "tokens": None,
    "test_fraction": 0.2,
}
PRESETS: dict[str, dict[str, Any]] = {
    "xmedianet": XMEDIANET,
    "small": {
        "classes": 10,
        "items": {"text": 200, "image": 200, "audio": 100, "video": 100},
        "dims": {"text": 32, "image": 48, "audio": 16, "video": 24},
        "tokens": (2, 6),
        "test_fraction": 0.2,
    },
}


@dataclasses.dataclass
class SyntheticConfig:
    dataset: str = "synthetic"
    classes: int = 10
    items: dict = dataclasses.field(default_factory=lambda: {"text": 200, "image": 200, "audio": 100, "video": 100})
    dims: dict = dataclasses.field(default_factory=lambda: {"text": 32, "image": 48, "audio": 16, "video": 24})
    tokens: tuple[int, int] | None = (2, 6)  # (min, max) tokens per item, or None for pooled only
    alignment: str = "class"  # "class" or "instance"
    latent_dim: int = 16
    noise: float = 0.6  # within-class spread of the latent, relative to the class spread (1.0)
    feature_noise: float = 0.1
    token_noise: float = 0.3
    missing: float = 0.0  # instance-aligned: fraction of groups that lack each non-text modality
    test_fraction: float = 0.2
    shard_size: int = 1024
    seed: int = 0

    @classmethod
    def preset(cls, name: str, **overrides) -> "SyntheticConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown synthetic preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def validate(self) -> None:
        problems = []
        if self.alignment not in ("class", "instance"):
            problems.append(f"alignment must be 'class' or 'instance', not {self.alignment!r}")
        if self.classes < 1:
            problems.append("classes must be at least 1")
        for m in self.items:
            try:
                Modality.parse(m)
            except ValueError as exc:
                problems.append(str(exc))
            if m not in self.dims:
                problems.append(f"no dimension given for modality {m!r}")
        if self.tokens is not None and not (1 <= self.tokens[0] <= self.tokens[1]):
            problems.append(f"tokens must be (min, max) with 1 <= min <= max, not {self.tokens}")
        if not 0 <= self.test_fraction < 1:
            problems.append("test_fraction must be in [0, 1)")
        if not 0 <= self.missing < 1:
            problems.append(f"missing must be in [0, 1), not {self.missing}")
        for name in ("noise", "feature_noise", "token_noise"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        bad = [f"{m}={n}" for m, n in self.items.items() if int(n) < 1]
        bad += [f"{m}={d}" for m, d in self.dims.items() if int(d) < 1]
        if bad:
            problems.append(f"items and dims must be positive ({', '.join(bad)})")
        if problems:
            raise ValueError("bad synthetic config: " + "; ".join(problems))


def _split_of(index_in_class: np.ndarray, count_in_class: np.ndarray, test_fraction: float) -> np.ndarray:
    """The last ``test_fraction`` of each class's items (at least one when it has two) go to test."""
    n_test = np.floor(count_in_class * test_fraction + 0.5).astype(int)
    n_test = np.where((count_in_class >= 2) & (n_test == 0) & (test_fraction > 0), 1, n_test)
    return np.where(index_in_class >= count_in_class - n_test, "test", "train")


def synthesize(root: str | Path, config: SyntheticConfig) -> dict[Modality, FeatureStore]:
    """Write one store per modality under cache ``root``; return them by modality."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    k = config.latent_dim
    prototypes = rng.standard_normal((config.classes, k)).astype(np.float32)
    stores = {}

    if config.alignment == "instance":
        n_groups = max(config.items.values())
        group_class = np.arange(n_groups) % config.classes
        group_latent = prototypes[group_class] + config.noise * rng.standard_normal((n_groups, k)).astype(np.float32)
        idx_in_class = np.arange(n_groups) // config.classes
        count = np.bincount(group_class, minlength=config.classes)[group_class]
        group_split = _split_of(idx_in_class, count, config.test_fraction)

    for name, n in config.items.items():
        mod = Modality.parse(name)
        mrng = np.random.default_rng([config.seed, list(Modality).index(mod) + 1])
        d = int(config.dims[name])
        if config.alignment == "class":
            cls = np.arange(n) % config.classes
            latent = prototypes[cls] + config.noise * mrng.standard_normal((n, k)).astype(np.float32)
            idx_in_class = np.arange(n) // config.classes
            split = _split_of(idx_in_class, np.bincount(cls, minlength=config.classes)[cls], config.test_fraction)
            groups = [""] * n
            ids = [f"{name}-{i:06d}" for i in range(n)]
        else:
            members = np.arange(n_groups)
            if mod is not Modality.TEXT and config.missing > 0:
                members = members[mrng.random(n_groups) >= config.missing]
            if n < len(members):
                # a random subset, not the first n: groups are ordered by index within class,
                # so the first n would all be train groups and the test split would be empty
                members = np.sort(mrng.choice(members, n, replace=False))
            cls = group_class[members]
            latent = group_latent[members] + 0.1 * config.noise * mrng.standard_normal((len(members), k)).astype(np.float32)
            split = group_split[members]
            groups = [f"g{g:06d}" for g in members]
            ids = [f"{name}-{g:06d}" for g in members]
            n = len(members)
        a = mrng.standard_normal((k, d)).astype(np.float32) / np.sqrt(k)
        pooled = np.tanh(latent @ a) + config.feature_noise * mrng.standard_normal((n, d)).astype(np.float32)

        spec = StoreSpec(
            dataset=config.dataset,
            modality=mod,
            backbone={"name": "synthetic", "dim": d, "token_rate": 1.0, "weights": f"synthetic:seed={config.seed}"},
            preprocessing={k_: v for k_, v in dataclasses.asdict(config).items() if k_ not in ("dataset", "shard_size")},
            items=ids_digest(ids),
        )
        store = create_store(
            root, spec, ids, labels=[f"class{c:03d}" for c in cls], groups=groups, splits=list(split),
            shard_size=config.shard_size, tokens=config.tokens is not None,
        )
        done = set(store.complete_shards())
        for s in range(store.n_shards):
            if s in done:
                continue
            lo, hi = store.shard_range(s)
            toks = None
            block = pooled[lo:hi]
            if config.tokens is not None:
                srng = np.random.default_rng([config.seed, list(Modality).index(mod) + 1, s])
                lengths = srng.integers(config.tokens[0], config.tokens[1] + 1, hi - lo)
                toks = [x + config.token_noise * srng.standard_normal((t, d)).astype(np.float32) for x, t in zip(block, lengths)]
                block = np.stack([t.mean(0) for t in toks])
            store.write_shard(s, block, tokens=toks)
        stores[mod] = store
    return stores
