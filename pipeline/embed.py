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


def open_space(run: str | Path, device: str = "cpu", log=lambda s: None) -> Space:
    """Load run ``run`` (a run folder or an exported bundle): its config, its model with the kept
    weights, the store records it trained on. ``log`` hears when an older run needs its cache."""
    from mmx.train.prepare import open_trained

    prep = open_trained(run, device, log)
    return Space(Path(run), prep.cfg, prep.strategy, prep.model, prep.data, prep.device, prep.norm)


@dataclasses.dataclass
class RecordedStore:
    """What embedding reads of the store a run trained a modality on: its metadata, as the run recorded it."""

    path: str  # where the record is, for messages
    modality: Modality
    meta: dict

    @property
    def has_tokens(self) -> bool:
        return bool(self.meta["tokens"])


def store_for(space: Space, modality: Modality) -> RecordedStore:
    """The record of the store the run trained ``modality`` on (no cache read)."""
    if modality not in space.modalities:
        raise ValueError(f"{space.run}: the run has no {modality.value} (it embeds {', '.join(space.cfg.modalities)})")
    meta = space.data.meta.get(modality) or {}
    if "backbone" not in meta or "preprocessing" not in meta:
        raise ValueError(f"{space.run}: the run records no store for {modality.value} (trained on features given in "
                         "memory), so new media cannot be embedded; query it with --like ID or --vector FILE")
    return RecordedStore(f"{space.run} ({modality.value} store {str(meta.get('key', ''))[:12]})", modality, meta)


def embeddable(meta: dict) -> bool:
    """Whether mmx can rebuild the backbone a store records (a registered one, not imported features)."""
    from mmx.extract.backbones import BACKBONES

    return isinstance(meta.get("backbone"), dict) and meta["backbone"].get("name") in BACKBONES


def encoder_for(store, device: str = "cpu"):
    """The backbone of ``store`` with its preprocessing, rebuilt from the store's metadata and checked against it."""
    from mmx.extract.backbones import build_encoder, get_backbone

    backbone, prep = store.meta["backbone"], store.meta["preprocessing"]
    if not embeddable(store.meta):
        raise ValueError(f"{store.path}: its {store.modality.value} features came from outside mmx (backbone "
                         f"{backbone.get('name')!r}), so mmx cannot embed new media for it; query by a gallery item "
                         "(--like ID) or by a vector (--vector FILE)")
    info = get_backbone(backbone["name"])
    weights = None if info.weights.startswith(("package:", "none")) else backbone.get("weights")
    # the settable options; the rest of the record (e.g. the resampler) follows from them and is checked below
    options = {k: v for k, v in prep.items() if k in info.defaults}
    try:
        encoder = build_encoder(backbone["name"], options, weights).to(device)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # options of a damaged or foreign record
        text = str(exc).strip().splitlines()
        raise ValueError(f"{store.path}: cannot rebuild backbone {backbone['name']!r} from the options recorded "
                         f"({text[0] if text else type(exc).__name__}); use the run's own files or re-extract and retrain") from None
    if encoder.meta() != backbone or encoder.preprocessing() != prep:
        raise ValueError(f"{store.path}: the backbone rebuilt from the store's metadata differs from it "
                         f"({encoder.meta()} / {encoder.preprocessing()} vs {backbone} / {prep}); "
                         "was the store written by another mmx version? Re-extract it.")
    return encoder


class _Collected:
    """Where :func:`mmx.extract.shards.extract_shards` hands a finished shard: kept in memory, not written."""

    has_tokens = True  # keep every item's tokens; the run's store record decides what is used

    def __init__(self):
        self.shards: dict[int, tuple] = {}

    def write_shard(self, k, pooled, status, tokens=None, errors=None, sources=None) -> None:
        self.shards[k] = (pooled, status, tokens, errors or {})


def backbone_features(encoder, store, items: list[dict], batch_size: int = 32, workers: int | None = None,
                      on_items=None):
    """LoadedFeatures of ``items`` (dicts with id, uri or text) as the store would hold them.

    The items go through extraction's own loop (:func:`mmx.extract.shards.extract_shards`):
    ``workers`` decoding processes (default: extraction's, none for a single batch), the
    same batches, checks of each local file and one batch in flight on the device; features
    are rounded to the store's dtype (float16). ``on_items(n)`` is called after each batch.
    An item that cannot be read is one error naming it.
    """
    import os

    import torch

    from mmx.cache.store import LoadedFeatures
    from mmx.extract.decode import DEFAULT_MAX_PIXELS
    from mmx.extract.runner import default_workers
    from mmx.extract.shards import LocalGate, extract_shards
    from mmx.train.data import pooled_as_tokens

    dtype = np.dtype(store.meta["dtype"])
    if workers is None:
        workers = 0 if len(items) <= max(1, encoder.items_per_batch(batch_size)) else default_workers(str(encoder.device))
    # the files named are the ones to read: each may sit anywhere, and gets extraction's checks
    roots = tuple(sorted({os.path.dirname(os.path.realpath(it["uri"])) for it in items if it.get("uri")}))
    gate = LocalGate(store.modality.value, roots,
                     int(store.meta.get("preprocessing", {}).get("max_pixels", DEFAULT_MAX_PIXELS)),
                     probe=store.modality is not Modality.IMAGE)
    out = _Collected()
    if items:
        extract_shards(encoder, out, {0: items}, batch_size, workers, on_items=on_items, gate=gate)
    pooled, status, tokens, errors = out.shards.get(0, (np.zeros((0, encoder.dim), np.float32), [], [], {}))
    if errors:
        first = next(it for it in items if it["id"] in errors)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"{first.get('uri') or first['id']}: cannot read it as {store.modality.value} "
                         f"({errors[first['id']]}){more}")
    pooled = np.asarray(pooled, np.float32).astype(dtype).astype(np.float32)
    tokens = [np.asarray(t, np.float32).astype(dtype).astype(np.float32) for t in tokens]
    lengths = np.array([len(t) for t in tokens], np.int64)
    n = len(items)
    feats = LoadedFeatures(
        modality=store.modality,
        ids=np.array([it["id"] for it in items], dtype=object),
        labels=np.array([str(it.get("label") or "") for it in items], dtype=object),
        groups=np.array([""] * n, dtype=object), splits=np.array(["query"] * n, dtype=object),
        pooled=torch.as_tensor(pooled),
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


def embed_items(space: Space, modality: Modality, items: list[dict], device: str | None = None,
                on_items=None, workers: int | None = None) -> np.ndarray:
    """``(N, d)`` embeddings of items of one modality (``{"id", "uri"}`` or ``{"id", "text"}``).

    The backbone runs on ``device``, by default the space's (``mmx embed --device``), with
    extraction's precision there (bf16 autocast on CUDA) and its decoding ``workers``
    (:func:`backbone_features`); ``on_items(n)`` hears each batch's item count."""
    store = store_for(space, modality)
    encoder = encoder_for(store, str(space.device) if device is None else device)
    features = backbone_features(encoder, store, items, workers=workers, on_items=on_items)
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
