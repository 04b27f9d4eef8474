"""Build "digits-b", the second real dataset of the defaults study (benchmarks/bench_defaults.py).

Real media from ``../shared/datasets/digits-src`` (MNIST test rows 5000-9999, FSDD), built
like ``mmx demo``'s dataset (pipeline/demo/build_dataset.py, whose helpers it calls) but
disjoint from it and shaped differently, so a default chosen on both is not fitted to one set:

* images and clips: MNIST rows the demo set does not use (the demo's rows are read from its
  manifest and left out), about twice as many per class;
* audio: other takes (10-39) and another unheard test speaker: train and val from lucas and
  george, test from jackson (the demo tests on lucas);
* text: the same pool of sentence templates as the demo (it is small: 50 per digit), drawn
  with another seed, so sentences recur across the two sets (not across this set's splits);
* video: a digit gliding over the canvas, every third clip with a spoken digit of its split.

It is the same domain (digits) as the demo set, not an independent benchmark: say so when
quoting figures measured on it. Run from the repository root::

    python benchmarks/build_digits_b.py --source ../shared/datasets/digits-src --out /tmp/digits-b
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from mmx.pipeline.demo import build_dataset as demo

SIZES = {"image": {"train": 40, "val": 10, "test": 15}, "text": {"train": 25, "val": 8, "test": 10},
         "video": {"train": 12, "val": 4, "test": 6}}
SPEAKERS = {"train": ("lucas", "george"), "val": ("lucas", "george"), "test": ("jackson",)}
TAKES = {"train": range(10, 30), "val": range(30, 36), "test": range(10, 30)}
SEED = 2026


def _demo_rows() -> set[int]:
    """MNIST source rows the demo set uses (its image and clip ids carry them)."""
    with open(demo.Path(demo.__file__).parent / "data" / "manifest.csv", newline="", encoding="utf-8") as f:
        return {int(r["id"].split("-")[2]) for r in csv.DictReader(f) if r["modality"] in ("image", "video")}


def build(source: Path, out: Path) -> list[dict]:
    rng = np.random.default_rng(SEED)
    mnist = np.load(source / "mnist_t10k_5000-9999.npz")
    images, labels, source_rows = mnist["images"], mnist["labels"], mnist["source_index"]
    used = _demo_rows()
    for m in ("image", "audio", "video"):
        (out / "media" / m).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for d in demo.DIGITS:
        pool = [r for r in rng.permutation(np.flatnonzero(labels == d)) if int(source_rows[r]) not in used]
        texts = list(rng.permutation(demo.sentences(d)))
        for split in demo.SPLITS:
            for _ in range(SIZES["image"][split]):
                r = pool.pop()
                item = f"img-{d}-{int(source_rows[r])}"
                (out / "media/image" / f"{item}.png").write_bytes(demo._png(images[r]))
                rows.append({"id": item, "modality": "image", "uri": f"media/image/{item}.png", "text": "", "label": str(d), "split": split})
            for i in range(SIZES["text"][split]):
                rows.append({"id": f"txt-{d}-{split}-{i}", "modality": "text", "uri": "", "text": texts.pop(), "label": str(d), "split": split})
            recordings = [source / "fsdd" / f"{d}_{s}_{t}.wav" for s in SPEAKERS[split] for t in TAKES[split]]
            for path in recordings:
                samples, rate = demo._read_wav(path)
                item = f"wav-{path.stem.replace('_', '-')}"
                demo._write_wav(out / "media/audio" / f"{item}.wav", demo._trim(samples, rate), rate)
                rows.append({"id": item, "modality": "audio", "uri": f"media/audio/{item}.wav", "text": "", "label": str(d), "split": split})
            for i in range(SIZES["video"][split]):
                r = pool.pop()
                sound = None
                if i % 3 == 0:
                    samples, rate = demo._read_wav(recordings[int(rng.integers(len(recordings)))])
                    sound = (demo._trim(samples, rate), rate)
                item = f"vid-{d}-{int(source_rows[r])}" + ("-spoken" if sound else "")
                (out / "media/video" / f"{item}.mp4").write_bytes(demo._clip(images[r], rng, sound))
                rows.append({"id": item, "modality": "video", "uri": f"media/video/{item}.mp4", "text": "", "label": str(d), "split": split})
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "modality", "uri", "text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/datasets/digits-src")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = build(Path(args.source), Path(args.out))
    counts: dict[str, int] = {}
    for r in rows:
        counts[f"{r['modality']}/{r['split']}"] = counts.get(f"{r['modality']}/{r['split']}", 0) + 1
    print(f"wrote {len(rows)} items to {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
