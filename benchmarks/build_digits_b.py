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
    """The demo's builder with this set's sizes, speakers and seed, leaving out the demo's MNIST rows."""
    recordings = {(d, split): [source / "fsdd" / f"{d}_{s}_{t}.wav" for s in SPEAKERS[split] for t in TAKES[split]]
                  for d in demo.DIGITS for split in demo.SPLITS}
    return demo.build(source, out, sizes=SIZES, audio_of=recordings, skip_rows=frozenset(_demo_rows()), seed=SEED)


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
