"""Media files of a dataset folder: safe file names, temp files put into place, leftovers swept."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from pathlib import Path

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_HASHED_STEM = re.compile(r"-[0-9a-f]{10}$")
_MEDIA_EXTENSIONS = ("jpg", "png", "gif", "webp", "bmp", "tif", "wav", "flac", "mp3", "aiff", "m4a",
                     "ogg", "mp4", "webm", "avi", "flv", "mpg", "txt")


def safe_stem(item_id: str) -> str:
    """A file name stem for ``item_id`` that stays in its folder; distinct ids get distinct stems.

    The manifest already refuses separators and '..'. An id made of ``[A-Za-z0-9._-]`` only
    is its own stem, unless it ends like a hashed stem (``-`` and 10 hex digits); every other
    id becomes its cleaned form (at most 100 characters) plus ``-`` and the first 10 hex
    digits of its sha1. So an unchanged id can never equal a hashed stem (the id
    ``a_b-7dbde93504`` is hashed too, and cannot take the stem of ``a b``), and two hashed stems are equal
    only if the sha1 prefixes collide, which :func:`mmx.extract.fetch.manifest.scan_manifest`
    refuses, naming both ids.
    """
    cleaned = _SAFE_CHARS.sub("_", item_id).lstrip(".") or "_"
    if cleaned != item_id or _HASHED_STEM.search(item_id):
        cleaned = f"{cleaned[:100]}-{hashlib.sha1(item_id.encode()).hexdigest()[:10]}"
    return cleaned


def is_url(uri: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri))


# files of a dataset folder that mmx fetch opens for writing by name (the rest are written to a
# temporary and renamed, which replaces a link instead of following it)
_WRITTEN_BY_NAME = ("fetch/.lock", "fetch/journal.jsonl", "fetch/.status.csv.tmp", "fetch/.status.parquet.tmp",
                    ".manifest.fetched.csv.tmp")


def check_dataset_folder(root: Path) -> None:
    """Refuse a dataset folder where a planted symbolic link would take a write elsewhere: the
    folders ``fetch/``, ``media/`` and ``media/<modality>/``, or a file fetch opens by name.
    Checked before anything is written; one line naming the link and its target."""
    from mmx.cache.files import refuse_links

    for sub in ("fetch", "media", *_WRITTEN_BY_NAME):
        refuse_links(root, root / sub, "--out")
    if (root / "media").is_dir():
        for folder in (root / "media").iterdir():
            refuse_links(root, folder, "--out")


def sweep_partial_files(media: Path) -> int:
    """Delete ``.part`` files left by a killed run; they never count as media."""
    removed = 0
    if media.is_dir():
        for part in media.glob("*/.*.part"):
            part.unlink(missing_ok=True)
            removed += 1
    return removed


def place_file(tmp: str, folder: Path, stem: str, extension: str, older_copies: bool = True) -> Path:
    """Rename a validated temp file into place, dropping an older copy with another extension.

    ``older_copies=False`` where none can exist (the folder was empty when the run began, and a
    run places each stem once): the look for them is one ``stat`` per known extension, 17 an
    item, an eighth of a small file's fetch."""
    if folder.is_symlink():  # planted while fetching: the temporary is inside, and stays there
        raise OSError(errno.ELOOP, "a symbolic link where mmx keeps media; remove it", str(folder))
    final = folder / f"{stem}.{extension}"
    os.replace(tmp, final)
    if not older_copies:
        return final
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
