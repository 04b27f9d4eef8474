"""Build ``mmx demo``'s embedded dataset: spoken digits, MNIST, sentences and clips, class-aligned.

Run from the repository root (rebuilds ``pipeline/demo/data/`` from scratch, deterministically)::

    python -m mmx.pipeline.demo.build_dataset --source ../shared/datasets/digits-src

Sources (see ``data/LICENSES.md``): the Free Spoken Digit Dataset (CC BY-SA 4.0) and MNIST
test rows 5000-9999 (CC BY-SA 3.0). The ten classes are the digits 0-9; every modality has
items of every class in every split, so the set is class-aligned like XMediaNet (paper 000).

Splits, chosen so no test item is ever seen in training or model selection:

* audio: speakers george and jackson give train takes and (other takes) val; speaker lucas
  is the test set, so test audio is an unheard voice;
* image and video: disjoint MNIST rows per split (a row is used at most once in the set);
* text: every sentence is distinct; each split draws its own sentences from the pool of
  (language x wording x numeral-or-word) variants, so no test sentence occurs in train;
* video: a digit glides across a 64x64 canvas for 2 s at 8 fps; every third clip carries a
  spoken digit of the same class and split as its sound track.

The sizes (``SIZES``) keep the whole ``mmx demo`` within minutes on two CPU cores and the
data at a few MB; grow them here and rebuild to get a larger set.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

DIGITS = list(range(10))
SPLITS = ("train", "val", "test")
# items per class and split
SIZES = {
    "image": {"train": 24, "val": 6, "test": 10},
    "text": {"train": 20, "val": 5, "test": 8},
    "video": {"train": 8, "val": 3, "test": 4},
}
AUDIO_TRAIN_SPEAKERS = ("george", "jackson")
AUDIO_TEST_SPEAKER = "lucas"
AUDIO_TAKES = {"train": range(0, 8), "val": range(8, 10), "test": range(0, 6)}  # per speaker
FPS, SECONDS, CANVAS = 8, 2, 64
SEED = 14

WORDS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
    "de": ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"],
    "es": ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
}
TEMPLATES = {
    "en": ["a handwritten {d}", "someone says {d} out loud", "the digit {d}", "a short clip of the number {d} moving",
           "this is a {d}", "the number {d}, written by hand", "a voice counting: {d}", "a picture of a {d}",
           "I can see a {d} on the page", "{d} is the answer"],
    "fr": ["le chiffre {d}", "quelqu'un dit {d}", "un {d} écrit à la main", "c'est un {d}", "le nombre {d} bouge"],
    "de": ["die Ziffer {d}", "jemand sagt {d}", "eine handgeschriebene {d}", "das ist eine {d}", "die Zahl {d} bewegt sich"],
    "es": ["el número {d}", "alguien dice {d}", "un {d} escrito a mano", "esto es un {d}", "el dígito {d} se mueve"],
}


def sentences(digit: int) -> list[str]:
    """Every distinct sentence about ``digit``: each language's wordings, with the digit as word and as numeral."""
    out = []
    for lang, templates in TEMPLATES.items():
        for t in templates:
            for form in (WORDS[lang][digit], str(digit)):
                out.append(t.format(d=form))
    return sorted(set(out))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    samples, rate = sf.read(str(path), dtype="int16")
    return samples, rate


def _trim(samples: np.ndarray, rate: int) -> np.ndarray:
    """Cut leading and trailing near-silence (keeps 50 ms around the voiced part)."""
    level = np.abs(samples.astype(np.float32))
    loud = np.flatnonzero(level > 0.05 * level.max()) if level.max() > 0 else np.arange(len(samples))
    pad = rate // 20
    return samples[max(0, loud[0] - pad) : loud[-1] + pad + 1]


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    import soundfile as sf

    sf.write(str(path), samples, rate, subtype="PCM_16")


def _clip(digit_image: np.ndarray, rng: np.random.Generator, audio: tuple[np.ndarray, int] | None) -> bytes:
    """A 2 s H.264 clip of ``digit_image`` gliding across the canvas (+ an AAC sound track)."""
    import av

    n = FPS * SECONDS
    start, end = rng.integers(0, CANVAS - 28, 2), rng.integers(0, CANVAS - 28, 2)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width = video.height = CANVAS
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "28", "preset": "veryslow"}
        sound = None
        if audio is not None:
            sound = out.add_stream("aac", rate=audio[1])
            sound.layout = "mono"
        for i in range(n):
            y, x = np.round(start + (end - start) * i / (n - 1)).astype(int)
            canvas = np.zeros((CANVAS, CANVAS), np.uint8)
            canvas[y : y + 28, x : x + 28] = digit_image
            frame = av.VideoFrame.from_ndarray(np.repeat(canvas[:, :, None], 3, 2), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples, rate = audio
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            frame.time_base = Fraction(1, rate)
            frame.pts = 0
            for packet in sound.encode(frame):
                out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return buf.getvalue()


def _audio_files(source: Path) -> dict[tuple[int, str], list[Path]]:
    """``(digit, split) -> recordings`` following the speaker split of the module docstring."""
    out: dict[tuple[int, str], list[Path]] = {}
    for d in DIGITS:
        for split in SPLITS:
            speakers = (AUDIO_TEST_SPEAKER,) if split == "test" else AUDIO_TRAIN_SPEAKERS
            out[(d, split)] = [source / "fsdd" / f"{d}_{s}_{t}.wav" for s in speakers for t in AUDIO_TAKES[split]]
    return out


def build(source: Path, out: Path, *, sizes: dict = SIZES, audio_of: dict | None = None,
          skip_rows: frozenset[int] = frozenset(), seed: int = SEED) -> list[dict]:
    """Write media and ``manifest.csv`` under ``out``; returns the manifest rows.

    The keywords shape another set from the same sources (benchmarks/build_digits_b.py): items per
    split, ``(digit, split) -> recordings`` (default: this module's speaker split), MNIST source
    rows to leave out, and the seed."""
    rng = np.random.default_rng(seed)
    mnist = np.load(source / "mnist_t10k_5000-9999.npz")
    images, labels, source_rows = mnist["images"], mnist["labels"], mnist["source_index"]
    if out.exists():
        shutil.rmtree(out / "media", ignore_errors=True)
    for m in ("image", "audio", "video"):
        (out / "media" / m).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    audio_of = audio_of or _audio_files(source)
    for d in DIGITS:
        # MNIST rows of this digit, each used once
        pool = [r for r in rng.permutation(np.flatnonzero(labels == d)) if int(source_rows[r]) not in skip_rows]
        texts = list(rng.permutation(sentences(d)))
        for split in SPLITS:
            for i in range(sizes["image"][split]):
                r = pool.pop()
                item = f"img-{d}-{int(source_rows[r])}"
                (out / "media/image" / f"{item}.png").write_bytes(_png(images[r]))
                rows.append({"id": item, "modality": "image", "uri": f"media/image/{item}.png", "text": "", "label": str(d), "split": split})
            for i in range(sizes["text"][split]):
                rows.append({"id": f"txt-{d}-{split}-{i}", "modality": "text", "uri": "", "text": texts.pop(), "label": str(d), "split": split})
            recordings = audio_of[(d, split)]
            for path in recordings:
                samples, rate = _read_wav(path)
                item = f"wav-{path.stem.replace('_', '-')}"
                _write_wav(out / "media/audio" / f"{item}.wav", _trim(samples, rate), rate)
                rows.append({"id": item, "modality": "audio", "uri": f"media/audio/{item}.wav", "text": "", "label": str(d), "split": split})
            for i in range(sizes["video"][split]):
                r = pool.pop()
                sound = None
                if i % 3 == 0:
                    samples, rate = _read_wav(recordings[int(rng.integers(len(recordings)))])
                    sound = (_trim(samples, rate), rate)
                item = f"vid-{d}-{int(source_rows[r])}" + ("-spoken" if sound else "")
                (out / "media/video" / f"{item}.mp4").write_bytes(_clip(images[r], rng, sound))
                rows.append({"id": item, "modality": "video", "uri": f"media/video/{item}.mp4", "text": "", "label": str(d), "split": split})
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "modality", "uri", "text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/datasets/digits-src", help="digits-src folder (FSDD + MNIST rows)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"), help="output folder")
    args = parser.parse_args(argv)
    rows = build(Path(args.source), Path(args.out))
    counts: dict[str, int] = {}
    for r in rows:
        counts[f"{r['modality']}/{r['split']}"] = counts.get(f"{r['modality']}/{r['split']}", 0) + 1
    print(f"wrote {len(rows)} items to {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
