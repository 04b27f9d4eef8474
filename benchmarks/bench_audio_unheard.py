"""Audio from an unheard speaker: the demo's quad-modal run with each audio backbone.

Builds the demo data (``mmx demo``'s fetch stage: the embedded digits set served on
127.0.0.1 and fetched), extracts image, text and video with their offline defaults and audio
with every backbone named, trains the demo's quad-modal run (``fuerer-quad`` with the demo's
sizes, early stopping on val) once per audio backbone and seed, and reports per pair R@10 and
mAP on val (the training speakers' other takes) and on test (speaker lucas, never heard in
training), plus the labels of the top 5 images for the docs' audio search example
(``wav-7-lucas-0.wav``) and, for each of lucas's clips of a seven, how many of its top 5
images are sevens.

    python benchmarks/bench_audio_unheard.py [--out DIR] [--backbones logmel speech-embedding]
        [--seeds 0 1 2] [--threads 1] [--json FILE]

``--out`` keeps the fetched data, caches and runs (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

QUERY = "wav-7-lucas-0.wav"


def build(out: Path, backbones: list[str], threads: int) -> tuple[Path, dict]:
    """Fetch the demo data and extract every modality (audio once per backbone); returns the
    fetched manifest and the audio extraction seconds per backbone."""
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import extract
    from mmx.pipeline.demo.run import DATASET, Layout, fetch_stage

    layout = Layout(out)
    fetched = fetch_stage(layout, lambda s: None, progress=False)
    manifest = fetched.layout.manifest
    seconds = {}
    for m in ("text", "image", "video"):
        extract(str(manifest), m, str(layout.cache), DATASET, ExtractConfig(shard_size=64, workers=0, device="cpu", threads=threads))
    for b in backbones:
        t0 = time.perf_counter()
        s = extract(str(manifest), "audio", str(layout.cache), DATASET,
                    ExtractConfig(backbone=b, shard_size=64, workers=0, device="cpu", threads=threads))
        seconds[b] = time.perf_counter() - t0 if not s["skipped"] else float("nan")
    return manifest, seconds


def pairs(res: dict, split: str) -> dict:
    return {f"{p['query']}->{p['target']}": (round(p["R@10"], 3), round(p["mAP"], 3)) for p in res["splits"][split]["pairs"]}


def search_labels(run: Path, manifest: Path, queries: list[Path], k: int = 5) -> dict:
    """``mmx search RUN --file Q --target image --top k``'s hit labels, per query file."""
    from click.testing import CliRunner

    from mmx.pipeline.cli import main

    args = ["search", str(run), "--target", "image", "--top", str(k), "--json", "--manifest", str(manifest), "--device", "cpu"]
    for q in queries:
        args += ["--file", str(q)]
    r = CliRunner().invoke(main, args)
    if r.exit_code != 0:
        raise RuntimeError(f"mmx search failed: {r.output}")
    out: dict = {q.stem: [] for q in queries}
    for line in r.output.splitlines():
        if line.startswith("{"):
            hit = json.loads(line)
            out[hit["query"]].append(hit["label"])
    return out


def run_one(out: Path, manifest: Path, backbone: str, seed: int, threads: int) -> dict:
    from mmx.eval.evaluate import evaluate_run
    from mmx.pipeline.demo.run import RUNS, Layout
    from mmx.train.loop import train

    layout = Layout(out)
    spec = next(r for r in RUNS if r.name == "quad-modal")
    cfg = spec.config(layout.cache, layout.runs / f"quad-{backbone}-{seed}", False, seed)
    cfg = dataclasses.replace(cfg, backbones={"audio": backbone}, threads=threads)
    t0 = time.perf_counter()
    run = train(cfg, log=lambda s: None, warn=lambda s: None)
    seconds = time.perf_counter() - t0
    res = evaluate_run(run, ["val", "test"], "class")
    sevens = sorted((manifest.parent / "media" / "audio").glob("wav-7-lucas-*.wav"))
    labels = search_labels(run, manifest, sevens)
    test = pairs(res, "test")
    audio_it = [test[k][0] for k in ("audio->image", "audio->text")]
    return {"backbone": backbone, "seed": seed, "train_seconds": round(seconds, 1),
            "best_epoch": json.loads((run / "metrics.json").read_text()).get("best_epoch"),
            "val": pairs(res, "val"), "test": test, "test audio->image/text mean R@10": round(float(np.mean(audio_it)), 3),
            "readme_top5": labels[Path(QUERY).stem],
            "sevens_in_top5": {q: sum(lab == "7" for lab in v) for q, v in labels.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="")
    ap.add_argument("--backbones", nargs="+", default=["logmel", "speech-embedding"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min); threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        manifest, ext_seconds = build(out, args.backbones, args.threads)
        print("audio extraction seconds (260 clips; nan = reused):", {b: round(s, 1) for b, s in ext_seconds.items()})
        rows = []
        for b in args.backbones:
            for seed in args.seeds:
                r = run_one(out, manifest, b, seed, args.threads)
                print(json.dumps(r), flush=True)
                rows.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    keys = sorted(rows[0]["test"])
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    print("\nTest split (audio: unheard speaker), R@10, mean ± std over seeds " + " ".join(map(str, args.seeds)))
    print("| audio backbone | " + " | ".join(keys) + " | audio->image/text mean | README query top-5 labels (seed order) | sevens in top 5 (6 clips x seeds) |")
    print("|" + "---|" * (len(keys) + 4))
    for b in args.backbones:
        mine = [r for r in rows if r["backbone"] == b]

        def cell(k, split="test"):
            v = np.array([r[split][k][0] for r in mine])
            return f"{v.mean():.3f} ± {v.std():.3f}"

        mean = np.array([r["test audio->image/text mean R@10"] for r in mine])
        top = "; ".join(" ".join(r["readme_top5"]) for r in mine)
        hits = sum(sum(r["sevens_in_top5"].values()) for r in mine)
        total = sum(5 * len(r["sevens_in_top5"]) for r in mine)
        print(f"| {b} | " + " | ".join(cell(k) for k in keys) + f" | {mean.mean():.3f} ± {mean.std():.3f} | {top} | {hits}/{total} |")
    print("\nVal split (training speakers' other takes), audio pairs R@10:")
    for b in args.backbones:
        mine = [r for r in rows if r["backbone"] == b]
        print(f"  {b}: " + ", ".join(f"{k} {np.mean([r['val'][k][0] for r in mine]):.3f}" for k in keys if "audio" in k))


if __name__ == "__main__":
    main()
