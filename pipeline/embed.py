"""Embedding new media into a trained space (``mmx embed``, ``mmx search``).

:func:`open_space` rebuilds a run through :func:`mmx.train.prepare.open_trained` (the path
training takes: its config, data, normalisation, strategy and kept weights); a query then goes
the way the run's items went: the store's backbone and preprocessing rebuilt from its
metadata (:func:`encoder_for`), the store's precision, the run's normalisation, and the
strategy's own ``embed`` (:meth:`Space.embed_features`), so it is comparable with the gallery.
:func:`save_gallery` writes ``mmx embed -o``'s file: rows of unit length, flagged as such.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mmx.cache.modality import Modality


@dataclasses.dataclass
class Space:
    """A trained run, ready to embed: its config, strategy, model (eval mode) and data."""

    run: Path
    cfg: Any
    strategy: Any
    model: Any
    data: Any
    device: Any
    normalizer: Any  # the run's own feature normalisation (train/normalize.py), applied before the model

    @property
    def modalities(self) -> list[Modality]:
        return [Modality.parse(m) for m in self.cfg.modalities]

    def embed_features(self, modality: Modality, features) -> np.ndarray:
        """``(N, d)`` float32 embeddings of ``features`` (one modality's LoadedFeatures) by the strategy."""
        import torch

        from mmx.train.data import SplitData

        if not self.strategy.needs_tokens:  # loaded as training loaded them: pooled only
            features = dataclasses.replace(features, tokens=None, offsets=None)
        empty = {m: f.select([]) for m, f in self.data.splits["train"].features.items()}
        split_features = {**empty, modality: self.normalizer.apply_features(features)}
        classes = {m: torch.full((len(f),), -1, dtype=torch.long, device=self.device) for m, f in split_features.items()}
        split = SplitData(features=split_features, classes=classes)
        with torch.no_grad():
            out = self.strategy.embed(self.model, split)
        return out[modality.value].float().cpu().numpy()


def open_space(run: str | Path, device: str = "cpu") -> Space:
    """Load run ``run``: its config, the cache it trained on, its model with the kept weights."""
    from mmx.train.prepare import open_trained

    prep = open_trained(run, device)
    return Space(Path(run), prep.cfg, prep.strategy, prep.model, prep.data, prep.device, prep.norm)


def store_for(space: Space, modality: Modality):
    """The store the run trained ``modality`` on (found as training found it)."""
    from mmx.cache import find_store

    if modality not in space.modalities:
        raise ValueError(f"{space.run}: the run has no {modality.value} (it embeds {', '.join(space.cfg.modalities)})")
    cfg = space.cfg
    return find_store(cfg.cache, cfg.dataset, modality, cfg.backbones.get(modality.value), cfg.stores.get(modality.value))


def encoder_for(store, device: str = "cpu"):
    """The backbone of ``store`` with its preprocessing, rebuilt from the store's metadata and checked against it."""
    from mmx.extract.backbones import build_encoder, get_backbone

    backbone, prep = store.meta["backbone"], store.meta["preprocessing"]
    info = get_backbone(backbone["name"])
    weights = None if info.weights.startswith(("package:", "none")) else backbone.get("weights")
    # the settable options; the rest of the record (e.g. the resampler) follows from them and is checked below
    options = {k: v for k, v in prep.items() if k in info.defaults}
    encoder = build_encoder(backbone["name"], options, weights).to(device)
    if encoder.meta() != backbone or encoder.preprocessing() != prep:
        raise ValueError(f"{store.path}: the backbone rebuilt from the store's metadata differs from it "
                         f"({encoder.meta()} / {encoder.preprocessing()} vs {backbone} / {prep}); "
                         "was the store written by another mmx version? Re-extract it.")
    return encoder


def backbone_features(encoder, store, items: list[dict], batch_size: int = 16):
    """LoadedFeatures of ``items`` (dicts with id, uri or text) as the store would hold them.

    Decoding errors name the item; features are rounded to the store's dtype (float16).
    """
    import torch

    from mmx.cache.store import LoadedFeatures
    from mmx.train.data import pooled_as_tokens

    dtype = np.dtype(store.meta["dtype"])
    tokens, pooled = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        samples = []
        for it in chunk:
            try:
                samples.append(encoder.prep.prepare(it))
            except Exception as exc:  # one clear line naming the input
                raise ValueError(f"{it.get('uri') or it['id']}: cannot read it as {store.modality.value} ({exc})") from None
        with torch.inference_mode():
            outs = encoder.forward(encoder.prep.collate(samples), batch_size)
        for t, p in outs:
            tokens.append(np.asarray(t, np.float32).reshape(-1, encoder.dim).astype(dtype).astype(np.float32))
            pooled.append(np.asarray(p, np.float32).astype(dtype).astype(np.float32))
    lengths = np.array([len(t) for t in tokens], np.int64)
    n = len(items)
    feats = LoadedFeatures(
        modality=store.modality,
        ids=np.array([it["id"] for it in items], dtype=object),
        labels=np.array([str(it.get("label") or "") for it in items], dtype=object),
        groups=np.array([""] * n, dtype=object), splits=np.array(["query"] * n, dtype=object),
        pooled=torch.as_tensor(np.stack(pooled) if pooled else np.zeros((0, encoder.dim), np.float32)),
        tokens=torch.as_tensor(np.concatenate(tokens) if tokens else np.zeros((0, encoder.dim), np.float32)),
        offsets=torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)])),
        meta=store.meta,
    )
    return feats if store.has_tokens else pooled_as_tokens(feats)


def modality_of_file(path: str) -> Modality:
    """A file's modality from its extension (what ``mmx fetch`` files media under)."""
    ext = Path(path).suffix.lower().lstrip(".")
    for modality, exts in _EXTENSIONS.items():
        if ext in exts:
            return modality
    known = ", ".join(f"{m.value}: {' '.join(sorted(e))}" for m, e in _EXTENSIONS.items())
    raise ValueError(f"{path}: cannot tell its modality from the extension {ext!r}; known: {known}")


_EXTENSIONS = {
    Modality.IMAGE: {"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"},
    Modality.AUDIO: {"wav", "flac", "mp3", "ogg", "m4a", "aiff", "aif"},
    Modality.VIDEO: {"mp4", "webm", "avi", "mkv", "mov", "flv", "mpg", "mpeg"},
    Modality.TEXT: {"txt"},
}


def embed_items(space: Space, modality: Modality, items: list[dict], device: str | None = None) -> np.ndarray:
    """``(N, d)`` embeddings of items of one modality (``{"id", "uri"}`` or ``{"id", "text"}``).

    The backbone runs on ``device``, by default the space's (``mmx embed --device``), with
    extraction's precision there (bf16 autocast on CUDA)."""
    store = store_for(space, modality)
    features = backbone_features(encoder_for(store, str(space.device) if device is None else device), store, items)
    features = dataclasses.replace(features, pooled=features.pooled.to(space.device), tokens=features.tokens.to(space.device),
                                   offsets=features.offsets.to(space.device))
    return space.embed_features(modality, features)


def save_gallery(path: str | Path, arrays: dict) -> None:
    """Write ``arrays`` (``emb`` and its columns) to the ``.npz`` ``path``, atomically, with ``emb``'s
    rows scaled to unit length and the flag :data:`~mmx.eval.search.UNIT_NORM_KEY` set: search ranks
    by cosine, so it reads such a gallery as it is and scales it never again."""
    from mmx.cache.atomic import atomic_path
    from mmx.eval.search import UNIT_NORM_KEY, unit_rows

    with atomic_path(path) as tmp:
        np.savez(tmp, **{**arrays, "emb": unit_rows(np.array(arrays["emb"], np.float32)), UNIT_NORM_KEY: np.bool_(True)})
