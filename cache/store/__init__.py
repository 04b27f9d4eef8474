"""The zarr feature store: one store per (dataset, modality, backbone-and-preprocessing).

Create a store with :func:`create_store`, write it one item shard at a time
(:meth:`FeatureStore.write_shard`), find it with :func:`list_stores` / :func:`find_store`,
open it with :func:`open_store` and load a modality with :meth:`FeatureStore.load`;
:meth:`FeatureStore.verify` checks every chunk. The layout on disk and the reasons behind it
are in docs/notes/cache.md.
"""

from mmx.cache.store.errors import (
    CacheKeyMismatch,
    CorruptStoreError,
    IncompleteStoreWarning,
    StoreError,
    StoreLockedError,
    StoreWriteError,
)
from mmx.cache.store.feature_store import FeatureStore, create_store, open_store
from mmx.cache.store.find import find_store, list_stores
from mmx.cache.store.integrity import Problem
from mmx.cache.store.layout import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SHARD_SIZE,
    INTEGRITY,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_PENDING,
    StoreSpec,
    ids_digest,
    store_path,
)
from mmx.cache.store.read import LoadedFeatures

__all__ = [
    "CacheKeyMismatch",
    "CorruptStoreError",
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_SHARD_SIZE",
    "FeatureStore",
    "INTEGRITY",
    "IncompleteStoreWarning",
    "LoadedFeatures",
    "Problem",
    "SCHEMA_VERSION",
    "STATUS_FAILED",
    "STATUS_NAMES",
    "STATUS_OK",
    "STATUS_PENDING",
    "StoreError",
    "StoreLockedError",
    "StoreSpec",
    "StoreWriteError",
    "create_store",
    "find_store",
    "ids_digest",
    "list_stores",
    "open_store",
    "store_path",
]
