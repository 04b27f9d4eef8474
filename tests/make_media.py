"""The media files the tests decode, fetch and extract, generated (PIL, soundfile, PyAV) so tests carry them.

A fresh clone has no ``../shared/media``, and a test that read it would skip for a user while
CI ran it. These files mirror those files' paths and formats (size,
sample rate, channels, duration, codec) so the tests' expectations hold; their content is
synthetic (gradients and shapes, tones and noise, moving squares). Only one check needs real
content, the ImageNet class of a real dog photo: it is marked ``shared_files`` (opt-in).

Run ``python tests/make_media.py FOLDER`` to write them somewhere to look at.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

# relative path -> (width, height) of the images the tests use
IMAGES = {
    "imagebind/dog_image.jpg": (640, 480),
    "imagebind/car_image.jpg": (640, 427),
    "imagebind/bird_image.jpg": (640, 512),
    "languagebind/image/0.jpg": (256, 453),
    "languagebind/image/1.jpg": (256, 456),
}
# relative path -> (sample rate, channels, frames), as the files they stand in for
SOUNDS = {
    "imagebind/dog_audio.wav": (44100, 2, 115110),
    "imagebind/car_audio.wav": (44100, 1, 220500),
    "imagebind/bird_audio.wav": (44100, 2, 220500),
    "languagebind/audio/0.wav": (16000, 1, 163872),
    "languagebind/audio/1.wav": (16000, 1, 163872),
}
# relative path -> seconds (H.264, no audio track)
VIDEOS = {"languagebind/video/0.mp4": 8.2, "languagebind/video/1.mp4": 9.0}


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    from PIL import Image, ImageDraw

    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h)], -1)
    img = Image.fromarray((base + rng.integers(0, 24, (h, w, 3))).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        draw.ellipse([x0, y0, x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))],
                     fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img.save(path, quality=90)


def _sound(path: Path, rate: int, channels: int, frames: int, seed: int) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    tones = sum(0.15 * np.sin(2 * np.pi * f * t) for f in rng.uniform(150, 3000, 3))
    signal = tones * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)) + 0.02 * rng.normal(size=frames)
    data = np.stack([signal * (1 - 0.2 * c) for c in range(channels)], 1) if channels > 1 else signal
    sf.write(str(path), data.astype(np.float32), rate, subtype="PCM_16")


def _video(path: Path, seconds: float, seed: int, fps: int = 10, size: tuple[int, int] = (160, 120)) -> None:
    import av

    w, h = size
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(round(seconds * fps)):
            frame = np.full((h, w, 3), 40 + 3 * i % 200, np.uint8)
            x, y = (5 * i) % (w - 30), (3 * i) % (h - 30)
            frame[y:y + 30, x:x + 30] = rng.integers(0, 256, 3, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_media(root: Path) -> Path:
    """Write every test media file under ``root`` (same relative paths as the files they stand in for)."""
    root = Path(root)
    for seed, (rel, size) in enumerate(IMAGES.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _image(root / rel, size, seed)
    for seed, (rel, spec) in enumerate(SOUNDS.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _sound(root / rel, *spec, seed)
    for seed, (rel, seconds) in enumerate(VIDEOS.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _video(root / rel, seconds, seed)
    return root


if __name__ == "__main__":
    print(make_media(Path(sys.argv[1])))


def random_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small random-noise JPEGs ``im000.jpg``... in ``folder`` (image items for extract tests)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"im{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths
