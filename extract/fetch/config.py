"""``FetchConfig`` (the knobs of ``mmx fetch``) and ``FetchLayout`` (where a dataset folder keeps what)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass
class FetchConfig:
    """Knobs of ``mmx fetch``; the defaults suit a public dataset over the internet."""

    workers: int = 32
    per_host: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    item_timeout: float = 300.0          # total seconds per attempt, so a trickling server ends
    retries: int = 3                     # extra attempts for transient failures
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0
    max_bytes: int = 512 * 2**20
    max_pixels: int = 89_478_485         # Pillow's own decompression-bomb threshold
    max_redirects: int = 5
    allowed_roots: tuple[str, ...] = ()  # for local paths; empty: the manifest's folder
    retry_failed: bool = False
    retry_all: bool = False
    modalities: tuple[str, ...] = ()     # empty: every modality of the manifest
    user_agent: str = "mmx-fetch/0.1 (+research dataset download)"
    progress: bool = True
    validate_threads: int = 2


@dataclasses.dataclass(frozen=True)
class FetchLayout:
    """Where everything of one dataset folder lives."""

    root: Path

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def meta(self) -> Path:
        return self.root / "fetch"

    @property
    def journal(self) -> Path:
        return self.meta / "journal.jsonl"

    @property
    def status(self) -> Path:
        return self.meta / "status.csv"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.fetched.csv"


def allowed_roots_key(cfg: FetchConfig) -> list[str]:
    """The ``--allow-root`` options of a run as its journal records them: a rerun with others rechecks
    the items they refused (``RECHECKED_KINDS``), a plain rerun does not."""
    return sorted(str(r) for r in cfg.allowed_roots)
