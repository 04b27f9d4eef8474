"""Decoding real media into arrays: images (Pillow), audio (soundfile, PyAV), video (PyAV), text.

Every decoder raises :class:`DecodeError` with a message a user can act on when a file cannot
be used (corrupt, truncated, empty, no video stream, too large); the extraction loop turns it
into a ``failed`` status in the store and goes on. Heavy libraries are imported inside the
functions, so the package imports fast. The choices where the papers are silent (EXIF, alpha,
frames by timestamp, mono audio resampled in blocks): docs/notes/extract.md.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default for Image.MAX_IMAGE_PIXELS
# packets a video's frame plan reads before it gives up and decodes every frame (as many as
# 600 s at 333 fps; a few MiB of timestamps)
MAX_PLAN_PACKETS = 200_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DecodeError(RuntimeError):
    """A media file that cannot be decoded into something a backbone can read.

    ``kind`` is ``mmx fetch``'s failure kind for the same problem (``undecodable``,
    ``decompression_bomb``, ``not_found``), which the extraction runner puts first in the
    item's error message.
    """

    def __init__(self, message: str, kind: str = "undecodable"):
        super().__init__(message)
        self.kind = kind


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DecodeError(f"file not found: {p}", "not_found")
    if not p.is_file():
        raise DecodeError(f"not a regular file: {p}", "not_found")
    if p.stat().st_size == 0:
        raise DecodeError(f"empty file (0 bytes): {p}")
    return p


# -- text -----------------------------------------------------------------------------
# The characters of a text item that are ever read: 128 characters for each of the 512 word
# pieces of the longest text backbone (BERT-small; MiniLM reads 256), where English averages
# 4-5, so the tokenizer's truncation, not this cap, decides what is embedded. A text file is
# read up to 4 bytes per character of it and no further; an inline text is cut to it before
# any normalising or tokenising.
TEXT_MAX_CHARS = 65_536


def normalise_text(text: str) -> str:
    """The first :data:`TEXT_MAX_CHARS` characters, NFC-normalised and stripped; raises on text
    that is empty after that."""
    text = unicodedata.normalize("NFC", str(text)[:TEXT_MAX_CHARS]).strip()
    if not text:
        raise DecodeError("empty text")
    return text


def read_text(path: str | os.PathLike) -> str:
    """A text file's first :data:`TEXT_MAX_CHARS` characters (UTF-8, BOM tolerated), NFC-normalised.

    At most ``4 * TEXT_MAX_CHARS`` bytes (and a BOM) are read, whatever the file's size.
    """
    import codecs

    p = _check_file(path)
    limit = 4 * TEXT_MAX_CHARS + 3
    with open(p, "rb") as f:
        raw = f.read(limit + 1)
    whole = len(raw) <= limit
    try:
        # a file cut here may end inside a character: the incremental decoder keeps that tail back
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(raw[:limit], final=whole)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8 text: {p} ({exc.reason} at byte {exc.start})") from exc
    return normalise_text(text)


# -- images ---------------------------------------------------------------------------
def _to_rgb(im: Any) -> Any:
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: scale the observed range to 8 bits rather than clip it
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Any:
    """Open an image as an RGB ``PIL.Image`` with EXIF orientation applied.

    ``draft`` lets a JPEG decode at a reduced scale that is still at least ``draft``
    pixels on each side (much faster for large photos about to be resized down).
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    p = _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p)
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?): {p}",
                                  "decompression_bomb")
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"cannot decode image {p}: {exc}", "decompression_bomb") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"cannot decode image {p}: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated/corrupt data surfaces as these
        raise DecodeError(f"corrupt or truncated image {p}: {exc}") from exc


def image_to_uint8(im: Any, size: int) -> np.ndarray:
    """``(3, size, size)`` uint8, resized (bilinear, aspect not kept).

    Workers hand uint8 pixels to the model process (4x less to copy between processes
    than float32); normalisation happens there, on the model's device.
    """
    from PIL import Image

    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


# -- audio ----------------------------------------------------------------------------
BLOCK_SAMPLES = 1 << 18  # decoded input samples (frames x channels) held at once: 1 MiB of float32


def load_audio(path: str | os.PathLike, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 samples at ``sample_rate``: the first ``max_seconds`` of the file (all of it when None).

    Decoding, the mix-down and resampling run a block at a time (at most
    :data:`BLOCK_SAMPLES` decoded samples, whatever the rate and channel count), and decoding
    stops once ``max_seconds`` are in: a small file that decodes to hours of 192 kHz
    8-channel audio costs the same memory as a short mono one, namely the output
    (``max_seconds * sample_rate`` floats) plus one block. A longer file is cut to its first
    ``max_seconds``.
    """
    p = _check_file(path)
    try:
        y = _MonoStream(sample_rate, max_seconds).run(_soundfile_blocks(p))
    except DecodeError:
        raise
    except Exception:
        y = _MonoStream(sample_rate, max_seconds).run(_pyav_blocks(p))
    if y.size == 0:
        raise DecodeError(f"empty audio (no samples): {p}")
    if not np.isfinite(y).all():
        raise DecodeError(f"audio with non-finite samples: {p}")
    return y


class _MonoStream:
    """Blocks of ``(frames, channels)`` float32 at rate ``sr`` in, mono at ``sample_rate`` out.

    The mix-down is the mean of the channels; resampling is soxr's streaming resampler (the
    same engine and quality, HQ, as ``soxr.resample`` on the whole signal).
    """

    def __init__(self, sample_rate: int, max_seconds: float | None):
        self.rate, self.max_seconds = sample_rate, max_seconds
        self.limit = None if max_seconds is None else int(round(max_seconds * sample_rate))

    def run(self, blocks) -> np.ndarray:
        out, have, resampler, taken, in_limit = [], 0, None, 0, None
        for block, sr in blocks:
            if in_limit is None and self.max_seconds is not None:
                in_limit = int(self.max_seconds * sr) + 1
            if in_limit is not None:
                block = block[: in_limit - taken]
            taken += len(block)
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            if sr != self.rate and resampler is None:
                import soxr

                resampler = soxr.ResampleStream(sr, self.rate, 1, dtype="float32")
            piece = resampler.resample_chunk(mono) if resampler is not None else mono.copy()
            out.append(piece)
            have += len(piece)
            if in_limit is not None and taken >= in_limit:
                break
        if resampler is not None:
            out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        y = np.concatenate(out) if out else np.zeros(0, np.float32)
        if self.limit is not None:
            y = y[: self.limit]
        return np.ascontiguousarray(y, dtype=np.float32)


def _soundfile_blocks(p: Path):
    """``(frames, channels)`` float32 blocks of at most :data:`BLOCK_SAMPLES` samples, via libsndfile."""
    import soundfile as sf

    with sf.SoundFile(str(p)) as f:
        frames = max(1024, BLOCK_SAMPLES // max(1, f.channels))
        while True:
            block = f.read(frames=frames, dtype="float32", always_2d=True)
            if not len(block):
                return
            yield block, f.samplerate


def _pyav_blocks(p: Path):
    """The same, frame by frame through PyAV (MP3, M4A, Ogg, WebM, ...); a truncated tail ends the
    stream after what decoded, a file where nothing decodes is a :class:`DecodeError`."""
    import av

    try:
        container = av.open(str(p))
    except Exception as exc:
        raise DecodeError(f"cannot open audio {p}: {exc}") from exc
    with container:
        if not container.streams.audio:
            raise DecodeError(f"no audio stream in {p}")
        stream = container.streams.audio[0]
        converter = None  # planar float at the stream's own rate and layout: the mix-down is ours
        decoded = False
        try:
            for frame in container.decode(stream):
                if converter is None:
                    converter = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
                for out in converter.resample(frame):
                    decoded = True
                    yield out.to_ndarray().T, out.sample_rate  # (frames, channels)
        except av.error.FFmpegError as exc:
            if not decoded:
                raise DecodeError(f"corrupt audio {p}: {exc}") from exc


# -- video ----------------------------------------------------------------------------
def sample_video_frames(path: str | os.PathLike, fps: float, max_frames: int | None = None, *,
                        max_pixels: int = DEFAULT_MAX_PIXELS, size: int | None = None,
                        max_side: int | None = None) -> list:
    """RGB ``PIL.Image`` frames sampled at ``fps`` from the stream's timestamps.

    The first frame at or after each target time ``k / fps`` (relative to the stream's
    first timestamp) is kept. A clip shorter than ``1 / fps`` still gives its first frame.

    Only the frames it keeps and the frames they are predicted from are decoded: the packets'
    timestamps are read first (no decoding), the kept frames chosen from them, and FFmpeg told
    to skip every other non-reference frame (B-frames, mostly), which nothing depends on. The
    frames are those of decoding everything (:func:`_sample_every_frame`, checked bit for bit in
    the tests); where the plan cannot be made or a planned frame does not come out of the
    decoder (no timestamps, a damaged stream), every frame is decoded instead.

    Bounded cost: a stream whose frames have more than ``max_pixels`` pixels is refused from
    its header, before a frame is decoded (``decompression_bomb``, as for an image), and so is
    any frame past that size; with ``size``, a kept frame wider or taller than ``max_side``
    (default ``size``) is resized to ``size x size`` (bilinear, as :func:`image_to_uint8`)
    as soon as it is decoded, so only small frames are held, however long or large the video.
    """
    p = _check_file(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    plan = _frame_plan(p, fps, max_frames, max_pixels)
    frames = _sample_planned(p, plan, max_pixels, size, max_side) if plan else None
    if frames is None:
        frames = _sample_every_frame(p, fps, max_frames, max_pixels=max_pixels, size=size, max_side=max_side)
    return frames


def _open_video(p: Path, max_pixels: int):
    """(container, its first video stream), the stream's frame size checked from its header.

    The stream decodes on one thread. Video is decoded in the extraction's worker processes,
    which are the parallelism (as many as the cores the model leaves); FFmpeg's frame threads
    there only added work: 18-24% more CPU a clip on the shared H.264 clips for no shorter
    wall time on two cores, CPU taken from the model beside them (benchmarks/RESULTS.md,
    Extraction). Threading changes no pixel: FFmpeg's decoders are bit-exact either way."""
    import av

    try:
        container = av.open(str(p))
    except Exception as exc:
        raise DecodeError(f"cannot open video {p}: {exc}") from exc
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DecodeError(f"no video stream in {p} (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # see the docstring
    try:
        _check_frame_pixels(p, stream.codec_context.width, stream.codec_context.height, max_pixels)
    except DecodeError:
        container.close()
        raise
    return container, stream


def _frame_plan(p: Path, fps: float, max_frames: int | None, max_pixels: int) -> dict[int, int] | None:
    """``{pts: copies}`` of the frames :func:`_sample_every_frame` keeps, from the packets'
    timestamps alone (demuxed, not decoded); None where the packets do not say (a packet
    without a timestamp, no time base, an unreadable container, over :data:`MAX_PLAN_PACKETS`
    packets: the caller decodes everything).

    With ``max_frames``, demuxing stops at the first packet whose dts reaches the frame chosen
    for the last target time: a frame is shown no earlier than it is decoded (pts >= dts) and
    dts only grows, so no later packet holds an earlier frame. Where a packet breaks either
    rule the stream is demuxed to its end."""
    import av

    container, stream = _open_video(p, max_pixels)
    with container:
        if not stream.time_base:
            return None
        tb = float(stream.time_base)
        seen: set[int] = set()
        # the smallest pts, and the smallest a millisecond past the last target time (so its
        # frame comes after the one chosen for that target, whatever the rounding)
        first = chosen = None
        last_dts, ordered, new_firsts, early = None, max_frames is not None, 0, False
        horizon = (max_frames - 1) / fps + 1e-3 if max_frames is not None else 0.0
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue  # the demuxer's closing empty packet
                if packet.pts is None or len(seen) >= MAX_PLAN_PACKETS:
                    return None
                q = packet.pts
                seen.add(q)
                if not ordered:
                    continue
                if packet.dts is None or q < packet.dts or (last_dts is not None and packet.dts < last_dts):
                    ordered = False
                    continue
                last_dts = packet.dts
                if first is None or q < first:  # a valid stream lowers it in its first packets only
                    first, new_firsts = q, new_firsts + 1
                    if new_firsts > 64:  # each costs a pass over what was seen: a stream built to be slow
                        ordered = False
                        continue
                    chosen = min((x for x in seen if x * tb - first * tb >= horizon), default=None)
                elif q * tb - first * tb >= horizon and (chosen is None or q < chosen):
                    chosen = q
                if chosen is not None and packet.dts >= chosen:
                    early = True
                    break
        except av.error.FFmpegError:
            return None
    if not seen:
        return None
    plan: dict[int, int] = {}
    rule = _Sampling(fps, max_frames)
    for q in sorted(seen):  # the frames in presentation order
        if rule.reaches(q * tb):
            plan[q] = rule.take(q * tb)
            if rule.full:
                break
    if early and not rule.full:  # cannot happen by the stop's rule; decode everything if it does
        return None
    return plan


def _sample_planned(p: Path, plan: dict[int, int], max_pixels: int, size: int | None,
                    max_side: int | None) -> list | None:
    """The planned frames, decoding only them and the reference frames (FFmpeg's
    ``skip_frame = NONREF`` for every other packet); None where a planned frame did not come
    out of the decoder (the caller decodes everything)."""
    import av

    container, stream = _open_video(p, max_pixels)
    context = stream.codec_context
    wanted, kept, skipping = dict(plan), {}, None
    with container:
        try:
            for packet in container.demux(stream):
                skip = packet.size > 0 and packet.pts not in wanted
                if skip is not skipping:  # read per packet, also by frame threads
                    context.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
                for frame in packet.decode():
                    _check_frame_pixels(p, frame.width, frame.height, max_pixels)
                    if frame.pts in wanted:
                        kept[frame.pts] = _small(_rgb(frame), size, max_side)
                        del wanted[frame.pts]
                if not wanted:
                    break
        except av.error.FFmpegError:
            return None
    if wanted:
        return None
    return [kept[q] for q in sorted(plan) for _ in range(plan[q])]


def _sample_every_frame(p: Path, fps: float, max_frames: int | None = None, *,
                        max_pixels: int = DEFAULT_MAX_PIXELS, size: int | None = None,
                        max_side: int | None = None) -> list:
    """:func:`sample_video_frames` decoding every frame (the reference, and the way where
    the packets' timestamps do not allow a plan)."""
    import av

    frames: list = []
    container, stream = _open_video(p, max_pixels)
    with container:
        tb = float(stream.time_base) if stream.time_base else None
        rule = _Sampling(fps, max_frames)
        try:
            for frame in container.decode(stream):
                _check_frame_pixels(p, frame.width, frame.height, max_pixels)
                if frame.pts is not None and tb is not None:
                    t = frame.pts * tb
                elif frame.time is not None:
                    t = float(frame.time)
                else:  # no timestamps at all: assume the nominal rate
                    rate = float(stream.average_rate or 25)
                    t = (frame.index if hasattr(frame, "index") else len(frames)) / rate
                if rule.reaches(t):
                    image = _small(_rgb(frame), size, max_side)
                    frames += [image] * rule.take(t)
                    if rule.full:
                        break
        except av.error.FFmpegError as exc:
            if not frames:
                raise DecodeError(f"corrupt video {p}: {exc}") from exc
    if not frames:
        raise DecodeError(f"no decodable video frames in {p}")
    return frames


class _Sampling:
    """The rule both ways of sampling apply to the frames in presentation order: the first frame
    at or after each target time ``k / fps`` (``k`` counted from the first frame's time) is kept,
    at most ``max_frames`` in all. A gap in a variable-frame-rate stream covers several targets:
    the frame after it stands for each of them (nearest neighbour), so tokens stay one per
    ``1 / fps`` seconds."""

    def __init__(self, fps: float, max_frames: int | None):
        self.fps, self.max_frames, self.t0, self.k = fps, max_frames, None, 0

    def reaches(self, t: float) -> bool:
        """Whether a frame at ``t`` seconds reaches the next target (the first frame sets the origin)."""
        if self.t0 is None:
            self.t0 = t
        return t - self.t0 + 1e-6 >= self.k / self.fps

    def take(self, t: float) -> int:
        """How many targets the frame at ``t`` stands for, counting them as taken."""
        n = 0
        while self.reaches(t) and not self.full:
            n += 1
            self.k += 1
        return n

    @property
    def full(self) -> bool:
        return self.max_frames is not None and self.k >= self.max_frames


def _rgb(frame) -> Any:
    """A decoded video frame as an RGB ``PIL.Image``, converted on the calling thread. The frame
    keeps its swscale context; one with slice threads (PyAV's default) hangs when it is freed
    in a forked child, such as a DataLoader worker started after this process decoded video,
    waiting for threads the child does not have. The pixels are the same either way."""
    return frame.to_image(threads=1)


def _check_frame_pixels(p: Path, width: int, height: int, max_pixels: int) -> None:
    if width and height and width * height > max_pixels:
        raise DecodeError(f"video frames of {width}x{height} pixels exceed the limit of {max_pixels} "
                          f"(decompression bomb?): {p}", "decompression_bomb")


def _small(im: Any, size: int | None, max_side: int | None) -> Any:
    """``im`` resized to ``size x size`` when a side is over ``max_side`` (default ``size``); else itself."""
    if size is None:
        return im
    from PIL import Image

    limit = max_side or size
    if max(im.size) > limit and im.size != (size, size):
        return im.resize((size, size), Image.BILINEAR)
    return im
