"""The feature cache: the contract between extraction and training.

Only this package knows how features are laid out on disk. Other stages use its API:
:func:`create_store` / :meth:`FeatureStore.write_shard` to write, :func:`list_stores`
to find stores, :meth:`FeatureStore.load` to bring a modality into memory, and
:meth:`FeatureStore.info` for metadata.
"""

from mmx.cache.store import (
    CacheKeyMismatch,
    CorruptStoreError,
    FeatureStore,
    IncompleteStoreWarning,
    LoadedFeatures,
    StoreError,
    StoreLockedError,
    StoreSpec,
    StoreWriteError,
    create_store,
    find_store,
    list_stores,
    open_store,
    store_path,
)

__all__ = [
    "CacheKeyMismatch",
    "CorruptStoreError",
    "FeatureStore",
    "IncompleteStoreWarning",
    "LoadedFeatures",
    "StoreError",
    "StoreLockedError",
    "StoreSpec",
    "StoreWriteError",
    "create_store",
    "find_store",
    "list_stores",
    "open_store",
    "store_path",
]
