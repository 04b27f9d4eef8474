"""Deciding whether downloaded bytes, or a local file, are the media a manifest promised.

Four checks, cheapest first: :func:`content_type_problem`, the magic bytes (:func:`sniff`, which
also gives the real extension), the size cap (while streaming) and a decode probe
(:func:`probe`); failure kinds ``wrong_type``, ``undecodable`` and ``decompression_bomb``. A
local file passes :func:`admit_local` first (``forbidden_path`` outside the allowed roots), in
``mmx fetch`` and ``mmx extract`` alike. Why: docs/notes/extract.md.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

# Formats by magic bytes: name -> (extension, modalities it can carry).
# Containers such as MP4, Ogg, WebM and Matroska may hold audio or video; the probe decides.
FORMATS: dict[str, tuple[str, frozenset[str]]] = {
    "jpeg": ("jpg", frozenset({"image"})),
    "png": ("png", frozenset({"image"})),
    "gif": ("gif", frozenset({"image"})),
    "webp": ("webp", frozenset({"image"})),
    "bmp": ("bmp", frozenset({"image"})),
    "tiff": ("tif", frozenset({"image"})),
    "wav": ("wav", frozenset({"audio"})),
    "flac": ("flac", frozenset({"audio"})),
    "mp3": ("mp3", frozenset({"audio"})),
    "aiff": ("aiff", frozenset({"audio"})),
    "m4a": ("m4a", frozenset({"audio"})),
    "ogg": ("ogg", frozenset({"audio", "video"})),
    "mp4": ("mp4", frozenset({"audio", "video"})),
    "webm": ("webm", frozenset({"audio", "video"})),
    "avi": ("avi", frozenset({"video"})),
    "flv": ("flv", frozenset({"video"})),
    "mpeg": ("mpg", frozenset({"video"})),
    "html": ("html", frozenset()),
    "text": ("txt", frozenset({"text"})),
}

# Content types that say nothing about the content; the magic bytes decide.
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/binary",
                  "application/x-download", "application/download", "application/force-download"}
# Content types that are acceptable for a modality besides its own ``<modality>/*`` family.
_ALSO_OK = {
    "image": set(),
    "audio": {"application/ogg", "video/mp4", "video/webm", "video/ogg", "application/mp4"},
    "video": {"application/ogg", "application/mp4", "application/x-matroska", "application/x-mpegurl"},
    "text": {"application/json", "application/xml"},
}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``kind`` is None when the bytes pass; otherwise a failure kind and a message."""

    kind: str | None
    message: str = ""
    format: str = ""
    extension: str = ""


def content_type_problem(content_type: str, modality: str) -> str | None:
    """Why ``content_type`` cannot be a ``modality`` item, or None when it may be."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _GENERIC_TYPES or mime in _ALSO_OK.get(modality, set()):
        return None
    if mime.split("/", 1)[0] == modality and not (modality == "text" and mime == "text/html"):
        return None
    return f"content type {mime!r} where {modality} was expected"


def sniff(head: bytes) -> str | None:
    """The format named by the first bytes of a file, or None when unknown."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return "m4a" if head[8:12] in (b"M4A ", b"M4B ") else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        return "mp3"
    if _looks_like_html(head):
        return "html"
    return None


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<?xml", b"<svg"))


def local_source(uri: str, resolved: str, roots: list[Path]) -> tuple[Path | None, str, str]:
    """The real path of a local ``uri`` (``resolved``: the path it names), or None with a failure kind and a message."""
    from urllib.parse import unquote, urlsplit

    raw = unquote(urlsplit(uri).path) if uri.lower().startswith("file://") else resolved
    real = Path(os.path.realpath(raw))
    if not any(real == root or root in real.parents for root in roots):
        return None, "forbidden_path", (f"{raw!r}{'' if str(real) == raw else f', which resolves to {str(real)!r},'} is outside "
                                        f"the allowed roots ({', '.join(map(str, roots))}); --allow-root admits another folder")
    if not real.is_file():
        return None, "not_found", f"local file {raw!r} does not exist or is not a file"
    if real.stat().st_size == 0:
        return None, "undecodable", f"empty file (0 bytes): {raw!r}"
    return real, "", ""


def admit_local(uri: str, resolved: str, modality: str, roots: list[Path], *, max_pixels: int,
                with_probe: bool = True) -> tuple[Path | None, Verdict]:
    """The one gate a local file passes before mmx uses it: allowed root, then :func:`check_file`.

    Returns the real path (None when refused) and the verdict; used by ``mmx fetch`` before it
    links a local file and by ``mmx extract`` before it decodes one. ``roots`` are real paths.
    ``with_probe=False``: magic bytes only, for a caller whose own decode follows at once.
    """
    real, kind, why = local_source(uri, resolved, roots)
    if real is None:
        return None, Verdict(kind, why)
    verdict = check_file(str(real), modality, max_pixels=max_pixels, with_probe=with_probe)
    return (real if verdict.kind is None else None), verdict


def check_file(path: str, modality: str, *, max_pixels: int, with_probe: bool = True) -> Verdict:
    """Magic bytes and (``with_probe``) the decode probe of a complete file (run in a worker thread)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if modality == "text":
        return _check_text(path, head)
    fmt = sniff(head)
    if fmt is None:
        return Verdict("wrong_type", f"unknown format (first bytes {head[:8].hex()}) where {modality} was expected")
    ext, modalities = FORMATS[fmt]
    if modality not in modalities:
        return Verdict("wrong_type", f"{fmt} content where {modality} was expected", fmt, ext)
    problem = probe(path, modality, fmt, max_pixels=max_pixels) if with_probe else None
    if problem:
        return Verdict(problem[0], problem[1], fmt, ext)
    return Verdict(None, "", fmt, ext)


def _check_text(path: str, head: bytes) -> Verdict:
    if _looks_like_html(head):
        return Verdict("wrong_type", "HTML page where plain text was expected", "html", "html")
    try:
        with open(path, encoding="utf-8") as fh:
            fh.read()
    except UnicodeDecodeError as exc:
        return Verdict("undecodable", f"not UTF-8 text: {exc}", "text", "txt")
    return Verdict(None, "", "text", "txt")


def probe(path: str, modality: str, fmt: str, *, max_pixels: int) -> tuple[str, str] | None:
    """A cheap decode of the file; ``(kind, message)`` when it fails, else None."""
    try:
        if modality == "image":
            return _probe_image(path, max_pixels)
        if fmt == "wav":
            return _probe_wav(path)
        if fmt in ("mp4", "m4a"):
            problem = _mp4_boxes_problem(path)
            if problem:
                return "undecodable", problem
        return _probe_av(path, modality, max_pixels)
    except Exception as exc:  # every decoder error means the same thing here
        return "undecodable", f"{type(exc).__name__}: {exc}"


def _probe_image(path: str, max_pixels: int) -> tuple[str, str] | None:
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns (and past 2x its own limit raises) on huge images; our cap is explicit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    return "decompression_bomb", f"{width}x{height} pixels exceeds the cap of {max_pixels}"
                im.verify()
            with Image.open(path) as im:
                # A reduced-size decode reads every byte (catching truncated files) at a
                # fraction of the cost: JPEG decodes at 1/8 scale via the DCT.
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                im.load()
        except Image.DecompressionBombError as exc:
            return "decompression_bomb", str(exc)
    return None


def _probe_wav(path: str) -> tuple[str, str] | None:
    import soundfile

    info = soundfile.info(path)
    if info.frames <= 0:
        return "undecodable", "WAV file without audio frames"
    # libsndfile quietly shortens a WAV whose data chunk runs past the end of the file, so
    # compare the chunk's declared size with the bytes actually there.
    declared, present = _wav_data_sizes(path)
    if declared is not None and declared > present:
        return "undecodable", f"WAV data chunk declares {declared} bytes but only {present} are present"
    return None


def _wav_data_sizes(path: str) -> tuple[int | None, int]:
    """Declared and present sizes of a WAV's ``data`` chunk (declared None when streamed)."""
    import os
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mark a stream written without knowing its length.
                declared = None if chunk_size in (0, 0xFFFFFFFF) else chunk_size
                return declared, size - offset - 8
            offset += 8 + chunk_size + (chunk_size & 1)
    return None, 0


def _mp4_boxes_problem(path: str) -> str | None:
    """A truncated MP4 whose index comes first still decodes its first frame; its top-level
    boxes, though, then run past the end of the file."""
    import os
    import struct

    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as fh:
        while offset + 8 <= size:
            fh.seek(offset)
            box_size, box_type = struct.unpack(">I4s", fh.read(8))
            if box_size == 1:
                box_size = struct.unpack(">Q", fh.read(8))[0]
            elif box_size == 0:
                return None  # the last box runs to the end of the file by definition
            if box_size < 8:
                return f"MP4 box {box_type!r} has an impossible size {box_size}"
            if offset + box_size > size:
                return f"MP4 box {box_type.decode('latin-1')!r} runs past the end of the file (truncated)"
            offset += box_size
    return None


def _probe_av(path: str, modality: str, max_pixels: int) -> tuple[str, str] | None:
    import av

    with av.open(path, metadata_errors="ignore") as container:
        streams = container.streams.video if modality == "video" else container.streams.audio
        if not streams:
            return "undecodable", f"container has no {modality} stream"
        w, h = (streams[0].codec_context.width, streams[0].codec_context.height) if modality == "video" else (0, 0)
        if w * h > max_pixels:  # the image cap, from the stream's header, before a frame is decoded
            return "decompression_bomb", f"video frames of {w}x{h} pixels exceed the cap of {max_pixels}"
        for frame in container.decode(streams[0]):
            return None
    return "undecodable", f"no {modality} frame could be decoded"
