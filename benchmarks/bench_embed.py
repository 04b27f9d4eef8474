"""Benchmark: ``mmx embed`` against ``mmx extract`` on the same files, items per second.

On real media of the embedded demo dataset (images and spoken digits, ``--per-class`` of each
digit and split), in one run with threads pinned:

1. extract: :func:`mmx.extract.runner.extract` of each modality into a fresh cache (the
   baseline: decoding workers, batches of 32, one batch in flight);
2. a small ``joint`` run trained on that cache (not timed);
3. opening the run: from its folder (``space.json``) and, as a run without that record opens,
   through the training cache;
4. embed, as before: the loop ``mmx embed`` ran until it went through extraction's loop
   (each item decoded in the main process, batches of 16), kept here as the reference;
5. embed, now: :func:`mmx.pipeline.embed.embed_items` (extraction's loop and workers).

Every timed step embeds or extracts the same items, each including its backbone's load (the
libraries are imported and each model loaded once before any clock starts); 4 and 5 alternate
``--repeats`` times and the best pass counts; their embeddings are checked to agree. Prints
items/s and the ratios to extract, with the machine load (``uptime``).

    OMP_NUM_THREADS=2 python benchmarks/bench_embed.py --per-class 4 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path


def _manifest(root: Path, per_class: int, modalities: tuple[str, ...]) -> Path:
    from mmx.pipeline.demo.run import DATA

    with open(DATA / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows, seen = reader.fieldnames, [], {}
        for r in reader:
            key = (r["modality"], r["split"], r["label"])
            if r["modality"] in modalities and seen.get(key, 0) < per_class:
                seen[key] = seen.get(key, 0) + 1
                rows.append(r)
    data = root / "data"
    for r in rows:
        if r["uri"]:
            (data / r["uri"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DATA / r["uri"], data / r["uri"])
    path = data / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def _serial_embed(space, modality, items: list[dict], batch_size: int = 16):
    """The loop ``mmx embed`` ran before it used extraction's: decode each item in this process,
    then the backbone on batches of ``batch_size``, then the run's model."""
    import dataclasses

    import numpy as np
    import torch

    from mmx.cache.store import LoadedFeatures
    from mmx.pipeline.embed import encoder_for, store_for
    from mmx.train.data import pooled_as_tokens

    store = store_for(space, modality)
    encoder = encoder_for(store, str(space.device))
    dtype = np.dtype(store.meta["dtype"])
    tokens, pooled = [], []
    for start in range(0, len(items), batch_size):
        samples = [encoder.prep.prepare(it) for it in items[start : start + batch_size]]
        with torch.inference_mode():
            outs = encoder.forward(encoder.prep.collate(samples), batch_size)
        for t, p in outs:
            tokens.append(np.asarray(t, np.float32).reshape(-1, encoder.dim).astype(dtype).astype(np.float32))
            pooled.append(np.asarray(p, np.float32).astype(dtype).astype(np.float32))
    n = len(items)
    lengths = np.array([len(t) for t in tokens], np.int64)
    feats = LoadedFeatures(modality=store.modality, ids=np.array([it["id"] for it in items], dtype=object),
                           labels=np.array([""] * n, dtype=object), groups=np.array([""] * n, dtype=object),
                           splits=np.array(["query"] * n, dtype=object), pooled=torch.as_tensor(np.stack(pooled)),
                           tokens=torch.as_tensor(np.concatenate(tokens)),
                           offsets=torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)])), meta=store.meta)
    feats = feats if store.has_tokens else pooled_as_tokens(feats)
    return space.embed_features(modality, dataclasses.replace(feats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=4, help="Items of each digit and split, per modality.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="Decoding workers (default: extraction's default).")
    ap.add_argument("--modalities", default="image,audio")
    ap.add_argument("--repeats", type=int, default=2, help="Embed passes of each kind, alternated; the best counts.")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from mmx.cache.modality import Modality
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import default_workers, extract
    from mmx.pipeline.embed import embed_items, open_space
    from mmx.train.config import resolve
    from mmx.train.loop import train

    mods = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    workers = default_workers("cpu") if args.workers is None else args.workers
    print(f"load before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    root = Path(tempfile.mkdtemp(prefix="mmx-bench-embed-"))
    try:
        manifest = _manifest(root, args.per_class, mods + ("text",))
        cache = root / "cache"
        rates = {}
        for m in mods + ("text",):  # imports and first model load paid before the clock starts
            from mmx.extract.backbones import DEFAULT_BACKBONE, build_encoder

            build_encoder(DEFAULT_BACKBONE[Modality.parse(m)])
        for m in mods + ("text",):
            t = time.perf_counter()
            s = extract(str(manifest), m, str(cache), "digits",
                        ExtractConfig(shard_size=256, workers=workers, device="cpu", progress=False, threads=args.threads))
            if m != "text":
                rates[m] = {"items": s["ok"], "extract": s["ok"] / (time.perf_counter() - t)}
        warnings.simplefilter("ignore")  # the small splits' cautions
        run = train(resolve(["fuerer-tri"], overrides={"dataset": "digits", "cache": str(cache), "device": "cpu",
                                                       "modalities": ["text", *mods], "out": str(root / "runs"),
                                                       "name": "r", "epochs": 1, "embed_dim": 32, "batch_size": 10,
                                                       "threads": args.threads}), log=lambda s: None)
        t = time.perf_counter()
        space = open_space(run)
        open_record = time.perf_counter() - t
        (run / "space.json").rename(root / "space.json")
        t = time.perf_counter()
        open_space(run)
        open_cache = time.perf_counter() - t
        (root / "space.json").rename(run / "space.json")
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        print(f"threads {args.threads}, decoding workers {workers}, per class {args.per_class}", flush=True)
        print(f"open the run: {open_record:.2f}s from its folder, {open_cache:.2f}s through the training cache", flush=True)
        print("| modality | items | extract items/s | embed before items/s | embed now items/s | before/extract | now/extract | max abs diff |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for m in mods:
            items = [{"id": r["id"], "uri": str((manifest.parent / r["uri"]).resolve()), "text": ""} for r in rows if r["modality"] == m]
            best_before = best_now = float("inf")
            for _ in range(args.repeats):  # alternated, so a change in the machine's load hits both
                t = time.perf_counter()
                before = _serial_embed(space, Modality.parse(m), items)
                best_before = min(best_before, time.perf_counter() - t)
                t = time.perf_counter()
                now = embed_items(space, Modality.parse(m), items, workers=workers)
                best_now = min(best_now, time.perf_counter() - t)
            rates[m]["embed before"] = len(items) / best_before
            rates[m]["embed now"] = len(items) / best_now
            rates[m]["max |now - before|"] = float(np.abs(now - before).max())
            r = rates[m]
            print(f"| {m} | {r['items']} | {r['extract']:.1f} | {r['embed before']:.1f} | {r['embed now']:.1f} | "
                  f"{r['embed before'] / r['extract']:.2f} | {r['embed now'] / r['extract']:.2f} | {r['max |now - before|']:.1e} |",
                  flush=True)
        print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
