"""Where mmx keeps things by default, resolved in one place so every command agrees."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MMX_CACHE"
DEFAULT_CACHE_DIR = ".mmx-cache"


def default_cache_root(option: str | os.PathLike | None = None) -> Path:
    """The feature-cache root: ``option`` (a ``--cache`` value), else ``$MMX_CACHE``, else ``./.mmx-cache``.

    An empty option or an empty variable counts as not given.
    """
    if option:
        return Path(option)
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env) if env else Path(DEFAULT_CACHE_DIR)
