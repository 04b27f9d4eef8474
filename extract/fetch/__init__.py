"""``mmx fetch``: download the media of a manifest, survive link rot, resume after a kill.

URL-distributed datasets rot (paper 000, Sec. III-A: 88.2% of XMediaNet's images, 78.8% of
its videos and 82.8% of its audio were still reachable). This module turns a manifest whose
``uri`` column holds URLs or local paths into a dataset folder::

    DATASET_DIR/
      media/<modality>/<safe id>.<real extension>   validated files only
      fetch/journal.jsonl    one line per finished item (source of truth, append-only)
      fetch/status.csv       one row per manifest item, failed ones included
      fetch/report.md, fetch/report.json              link-rot report (mmx.extract.fetch.report)
      manifest.fetched.csv   the manifest of the available items, uris pointing at media/

Choices where the issue is silent:

* the updated manifest keeps text items and ``ok`` media only, so later stages never see a
  URL; every other item is in ``fetch/status.csv`` and the report with its failure kind;
* a plain rerun skips every item that already has a final status (an ``ok`` one only while its
  file is still there with the recorded size); ``retry_failed`` retries the transient kinds
  (:data:`~mmx.extract.fetch.status.TRANSIENT_KINDS`), ``retry_all`` every failure;
* memory: the manifest is never held whole; it is validated, planned, fed to the workers and
  summarised in chunks (:mod:`mmx.extract.fetch.manifest`), and a fixed pool of workers pulls
  from a queue of bounded size. What still grows with the manifest is a few bytes per item:
  one bit of the work list and 16 bytes of :class:`~mmx.extract.fetch.status.JournalIndex`
  (8 bytes of id hash while validating); see benchmarks/RESULTS.md;
* local paths (and ``file://``) are only read below ``allowed_roots`` (default: the
  manifest's folder), validated like downloads, then hard-linked, or copied when linking fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from pathlib import Path

from mmx.extract.fetch.status import OK, RECHECKED_KINDS, TRANSIENT_KINDS

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_HASHED_STEM = re.compile(r"-[0-9a-f]{10}$")
_MEDIA_EXTENSIONS = ("jpg", "png", "gif", "webp", "bmp", "tif", "wav", "flac", "mp3", "aiff", "m4a",
                     "ogg", "mp4", "webm", "avi", "flv", "mpg", "txt")


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


def safe_stem(item_id: str) -> str:
    """A file name stem for ``item_id`` that stays in its folder; distinct ids get distinct stems.

    The manifest already refuses separators and '..'. An id made of ``[A-Za-z0-9._-]`` only
    is its own stem, unless it ends like a hashed stem (``-`` and 10 hex digits); every other
    id becomes its cleaned form (at most 100 characters) plus ``-`` and the first 10 hex
    digits of its sha1. So an unchanged id can never equal a hashed stem (``a b`` and
    ``a_b-7dbde93504`` both meant ``a_b-7dbde93504`` before), and two hashed stems are equal
    only if the sha1 prefixes collide, which :func:`mmx.extract.fetch.manifest.scan_manifest`
    refuses, naming both ids.
    """
    cleaned = _SAFE_CHARS.sub("_", item_id).lstrip(".") or "_"
    if cleaned != item_id or _HASHED_STEM.search(item_id):
        cleaned = f"{cleaned[:100]}-{hashlib.sha1(item_id.encode()).hexdigest()[:10]}"
    return cleaned


def is_url(uri: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri))


def allowed_roots_key(cfg: FetchConfig) -> list[str]:
    """The ``--allow-root`` options of a run as its journal records them: a rerun with others rechecks
    the items they refused (``RECHECKED_KINDS``), a plain rerun does not."""
    return sorted(str(r) for r in cfg.allowed_roots)


def needs_fetch(rec: dict | None, uri: str, root: Path, cfg: FetchConfig) -> bool:
    """Whether an item whose last journal record is ``rec`` must be (re)fetched in this run."""
    if rec is None or rec.get("uri", "") != uri:
        return True
    status = rec.get("status", "")
    if status == OK:
        path = rec.get("path") or ""
        if not path:
            return False  # inline text
        try:
            return (root / path).stat().st_size != int(rec.get("bytes") or 0)
        except OSError:
            return True
    if cfg.retry_all or (status in RECHECKED_KINDS and rec.get("allowed_roots") != allowed_roots_key(cfg)):
        return True
    return cfg.retry_failed and status in TRANSIENT_KINDS


def sweep_partial_files(media: Path) -> int:
    """Delete ``.part`` files left by a killed run; they never count as media."""
    removed = 0
    if media.is_dir():
        for part in media.glob("*/.*.part"):
            part.unlink(missing_ok=True)
            removed += 1
    return removed


def place_file(tmp: str, folder: Path, stem: str, extension: str) -> Path:
    """Rename a validated temp file into place, dropping an older copy with another extension."""
    final = folder / f"{stem}.{extension}"
    os.replace(tmp, final)
    for ext in _MEDIA_EXTENSIONS:
        other = folder / f"{stem}.{ext}"
        if ext != extension and other.exists():
            other.unlink(missing_ok=True)
    return final


def link_or_copy(src: Path, tmp: str) -> str:
    """Hard-link ``src`` to ``tmp`` (no extra disk), else copy; returns the file's sha256."""
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    digest = hashlib.sha256()
    with open(tmp, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_manifest(manifest_path, out_dir, cfg: FetchConfig | None = None):
    """Fetch every item of a manifest into ``out_dir``; returns a :class:`FetchSummary`."""
    from mmx.extract.fetch.run import run_fetch

    return run_fetch(manifest_path, out_dir, cfg or FetchConfig())
