"""A small real-media cache and two runs trained on it, for the self-contained run, export and API tests.

Text, image and audio items of the embedded demo dataset (2 per digit in train, 1 in val and
test) are copied into a folder, extracted with the offline default backbones and trained by
two strategies that rebuild differently: ``joint`` (heads on pooled features) and ``eao``
(a fusion transformer on token sequences, with positions sized by the longest sequence). The
cache can then be moved away (:meth:`Space.without_cache`) to prove a run needs only its folder.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import shutil
import warnings
from pathlib import Path

from mmx.pipeline.demo.run import DATA

MODALITIES = ("text", "image", "audio")
PER_SPLIT = {"train": 2, "val": 1, "test": 1}


@dataclasses.dataclass
class Trained:
    root: Path
    manifest: Path
    cache: Path
    runs: dict  # name -> run folder

    @contextlib.contextmanager
    def without_cache(self):
        """The cache moved away for the block (as if deleted), then put back."""
        away = self.cache.with_name("cache-moved-away")
        self.cache.rename(away)
        try:
            yield
        finally:
            away.rename(self.cache)

    def rows(self) -> dict:
        with open(self.manifest, newline="") as f:
            return {r["id"]: r for r in csv.DictReader(f)}

    def item(self, row: dict) -> dict:
        uri = row["uri"]
        return {"id": row["id"], "uri": str((self.manifest.parent / uri).resolve()) if uri else "", "text": row["text"]}


def build(root: Path) -> Trained:
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import extract

    data = root / "data"
    data.mkdir(parents=True)
    with open(DATA / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows, seen = reader.fieldnames, [], {}
        for r in reader:
            key = (r["modality"], r["split"], r["label"])
            if r["modality"] in MODALITIES and seen.get(key, 0) < PER_SPLIT.get(r["split"], 0):
                seen[key] = seen.get(key, 0) + 1
                rows.append(r)
    for r in rows:
        if r["uri"]:
            (data / r["uri"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DATA / r["uri"], data / r["uri"])
    manifest = data / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    shutil.copyfile(DATA / "LICENSES.md", data / "LICENSES.md")
    cache = root / "cache"
    for m in MODALITIES:
        extract(str(manifest), m, str(cache), "digits", ExtractConfig(shard_size=64, workers=0, device="cpu", progress=False))
    common = {"dataset": "digits", "cache": str(cache), "device": "cpu", "holdout": "val", "embed_dim": 32, "seed": 0}
    with warnings.catch_warnings():  # the tiny splits' cautions (chance recall, feature scale) are expected here
        warnings.simplefilter("ignore")
        runs = _train(common, root)
    return Trained(root, manifest, cache, runs)


def _train(common: dict, root: Path) -> dict:
    from mmx.train.config import resolve
    from mmx.train.loop import train

    return {
        "joint": train(resolve(["fuerer-tri"], overrides={**common, "out": str(root / "runs"), "name": "joint",
                                                         "epochs": 2, "batch_size": 10}), log=lambda s: None),
        "eao": train(resolve(["eao-cpu"], overrides={**common, "out": str(root / "runs"), "name": "eao", "epochs": 1,
                                                    "min_steps": 1, "batch_size": 20,
                                                    "options": {"token_dim": 32, "mlp_dim": 32, "heads": 2, "positional": True}}),
                     log=lambda s: None),
    }
