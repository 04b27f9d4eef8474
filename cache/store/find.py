"""Finding stores under a cache root: :func:`list_stores`, :func:`find_store`."""

from __future__ import annotations

import os
from pathlib import Path

from mmx.cache.modality import Modality
from mmx.cache.names import check_name
from mmx.cache.store.feature_store import FeatureStore
from mmx.cache.store.layout import slug


def list_stores(root: str | os.PathLike, dataset: str | None = None) -> list[FeatureStore]:
    """Every feature store under a cache root (optionally of one dataset), sorted by path."""
    root = Path(root)
    base = root / slug(check_name(dataset, "dataset name")) if dataset else root
    if not root.exists():
        return []
    out = []
    for p in sorted(base.glob("**/*.zarr")):
        if p.name.startswith("."):
            continue
        try:
            out.append(FeatureStore(p))
        except (FileNotFoundError, ValueError):
            continue
    return out


def find_store(
    root: str | os.PathLike, dataset: str, modality: Modality | str, backbone: str | None = None,
    store: str | None = None,
) -> FeatureStore:
    """The one store of ``dataset``/``modality`` (and ``backbone``, when several exist).

    ``store`` picks one store outright: its path, its folder name, or a prefix (6+ characters)
    of its cache key, as ``mmx cache ls`` prints them. Two stores of one backbone name (say,
    two ``fps`` settings) differ only there, so it is the choice that always works.
    """
    mod = Modality.parse(modality)
    if store:
        return _pick_store(root, dataset, mod, store)
    found = [s for s in list_stores(root, dataset) if s.modality == mod and s.dataset == dataset]
    if backbone is not None:
        found = [s for s in found if s.backbone.get("name") == backbone]
    if len(found) == 1:
        return found[0]
    if not found:
        what = f"{mod.value} features of dataset {dataset!r}" + (f" from backbone {backbone!r}" if backbone else "")
        have = sorted({f"{s.dataset}/{s.modality.value}/{s.backbone.get('name')}" for s in list_stores(root)})
        raise FileNotFoundError(
            f"no {what} in cache {root}; stores present: {', '.join(have) or 'none'}. "
            f"Run 'mmx extract --modality {mod.value}' or 'mmx cache synthesize' first"
        )
    listing = "; ".join(f"{s.path} (backbone {s.backbone.get('name')}, key {s.key[:10]})" for s in found)
    raise ValueError(
        f"several {mod.value} stores for dataset {dataset!r}: {listing}. Choose one with "
        f"'mmx train --store {mod.value}=PATH_OR_KEY' (or 'stores: {{{mod.value}: PATH_OR_KEY}}' in a config file)"
    )


def _pick_store(root: str | os.PathLike, dataset: str, mod: Modality, choice: str) -> FeatureStore:
    """The store named by ``choice`` (a path, a folder name or a key prefix), checked against ``mod``/``dataset``."""
    if Path(choice).is_dir():
        found = [FeatureStore(choice)]
    else:
        candidates = [s for s in list_stores(root, dataset) if s.modality == mod]
        found = [s for s in candidates if s.path.name == choice or (len(choice) >= 6 and s.key.startswith(choice))]
        if len(found) != 1:
            have = ", ".join(f"{s.path.name} (key {s.key[:10]})" for s in candidates) or "none"
            raise FileNotFoundError(
                f"--store {mod.value}={choice}: {'no' if not found else 'several'} {mod.value} store(s) of dataset "
                f"{dataset!r} in cache {root} match; give a store path, folder name or 6+ characters of its key; "
                f"present: {have}")
    picked = found[0]
    if picked.modality != mod or picked.dataset != dataset:
        raise ValueError(f"--store {mod.value}={choice}: {picked.path} holds {picked.modality.value} features of "
                         f"dataset {picked.dataset!r}, not {mod.value} of {dataset!r}")
    return picked
