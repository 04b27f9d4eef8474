"""The feature store as one object, and the two ways to get one: :func:`create_store`, :func:`open_store`.

:class:`FeatureStore` is composed of its parts: the layout and attributes
(:mod:`~mmx.cache.store.layout`), reading (:mod:`~mmx.cache.store.read`), writing
(:mod:`~mmx.cache.store.write`) and integrity checks (:mod:`~mmx.cache.store.integrity`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mmx.cache.files import refuse_links
from mmx.cache.store.errors import CacheKeyMismatch
from mmx.cache.store.integrity import StoreIntegrity
from mmx.cache.store.layout import DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_SIZE, StoreSpec, ids_digest, spec_diff, store_path
from mmx.cache.store.read import StoreReader
from mmx.cache.store.write import StoreWriter, build_store


class FeatureStore(StoreReader, StoreWriter, StoreIntegrity):
    """An open feature store. Create one with :func:`create_store`, open with :func:`open_store`.

    The parts share one object: loading runs the integrity part's checks, and the integrity
    and writing parts read columns and tokens through the reading part.
    """


def create_store(
    root_or_path: str | os.PathLike,
    spec: StoreSpec,
    ids: Sequence[str],
    labels: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    dtype: str = "float16",
    tokens: bool = True,
    exact_path: bool = False,
    scale: dict | None = None,
) -> FeatureStore:
    """Create the store for ``spec`` (or open it, when it exists with the same key).

    The store is built in a temporary folder and renamed into place, so a killed process
    never leaves a half-created store. With ``exact_path`` the first argument is the
    store's path; otherwise it is a cache root and :func:`store_path` picks the path.
    ``scale`` (the extractor's output scale when it is arbitrary, e.g. log-mel in dB:
    ``{"unit", "arbitrary", ...}``) is recorded in the attributes, also into an existing store
    that lacks it (it does not change the features, so it is not part of the key).
    """
    path = Path(root_or_path) if exact_path else refuse_links(root_or_path, store_path(root_or_path, spec), "--cache")
    if spec.items != ids_digest(ids):
        raise ValueError("spec.items does not match the ids given; build it with ids_digest(ids)")
    if path.exists():
        store = open_store(path, expected=spec)
        if scale and store.meta.get("scale") != scale:
            store.set_scale(scale)
        return store
    build_store(path, spec, ids, labels, groups, splits, shard_size, chunk_rows, dtype, tokens, scale)
    return open_store(path, expected=spec)


def open_store(path: str | os.PathLike, expected: StoreSpec | str | None = None) -> FeatureStore:
    """Open a store; with ``expected`` (a spec or a key), refuse one built differently."""
    store = FeatureStore(path)
    if expected is None:
        return store
    want_key = expected if isinstance(expected, str) else expected.key()
    if store.key != want_key:
        have = store.spec().as_dict()
        if isinstance(expected, StoreSpec):
            diffs = spec_diff(have, expected.as_dict())
            detail = "; ".join(diffs) if diffs else "(same fields, different key)"
        else:
            detail = f"asked for key {want_key[:12]}"
        raise CacheKeyMismatch(
            f"{store.path} holds features for a different configuration: store key {store.key[:12]}, "
            f"asked {want_key[:12]}. Differences: {detail}. Use another cache path or the matching config."
        )
    return store
