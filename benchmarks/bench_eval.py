"""All metrics of one split at XMediaNet test scale, both relevance modes.

8000 text, 8000 image, 2000 audio, 2000 video items; 200 classes; 256-d synthetic,
class-structured embeddings (class centre + noise); groups so that instance relevance has one
match per modality. Computes Recall@1/5/10, mAP@50, full mAP, MedR and MeanR for the 12 pairs
and the 4 ``-> Any`` galleries, class and instance relevance in one pass, and reports wall time,
process CPU time and peak memory (ru_maxrss; on CUDA also the device's peak allocation), with
the matrix product alone as a baseline (the floor of any exact method that scores every query
against every item), on the same device as the metrics. On CUDA both timings start after a
warm-up (the context and cuBLAS start outside them) and end after the device has finished.

    python benchmarks/bench_eval.py [--scale 1.0] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def synthetic_split(scale: float, classes: int = 200, dim: int = 256, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    sizes = {"text": 8000, "image": 8000, "audio": 2000, "video": 2000}
    n_groups = int(2000 * scale)
    data = {}
    for name, n in sizes.items():
        n = int(n * scale)
        groups = np.arange(n) % n_groups
        labels = groups % classes  # a group's items share a class, as in an instance-aligned set
        emb = centres[labels] + 3.0 * rng.normal(size=(n, dim)).astype(np.float32)
        data[name] = {"emb": emb, "label": labels.astype(str), "group": groups.astype(str)}
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch

    from mmx.eval.evaluate import evaluate_split

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    data = synthetic_split(args.scale)
    n = sum(len(d["emb"]) for d in data.values())
    counts = ", ".join(f"{k} {len(v['emb'])}" for k, v in data.items())
    print(f"items: {counts} ({n} in all); device {device}; "
          f"torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}; load {os.getloadavg()[0]:.1f}")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    g = torch.cat([torch.nn.functional.normalize(torch.as_tensor(d["emb"]), dim=1) for d in data.values()]).to(device)
    g[:1] @ g.T  # noqa: B018 - warm-up
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, len(g), 2048):
        g[lo : lo + 2048] @ g.T  # noqa: B018 - the baseline: only the similarities
    sync()
    base_wall, base_cpu = time.perf_counter() - t0, time.process_time() - c0
    del g
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    t0, c0 = time.perf_counter(), time.process_time()
    res = evaluate_split(data, ("class", "instance"), device=device)
    sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    for rel, r in res.items():
        m, a = r["pairs_mean"], r["any_mean"]
        print(f"{rel:9s} pairs mean R@1 {m['R@1']:.3f} R@10 {m['R@10']:.3f} mAP@50 {m['mAP@50']:.3f} "
              f"mAP {m['mAP']:.3f} MedR {m['MedR']:.1f} | any R@1 {a['R@1']:.3f} mAP {a['mAP']:.3f}")
    print(f"similarities only (baseline): wall {base_wall:.2f} s, cpu {base_cpu:.2f} s")
    print(f"all metrics, both relevances:  wall {wall:.2f} s, cpu {cpu:.2f} s "
          f"(x{wall / base_wall:.1f} the baseline's wall time)")
    print(f"peak RSS {rss:.0f} MiB (before: {rss0:.0f} MiB; the embeddings alone are "
          f"{sum(d['emb'].nbytes for d in data.values()) / 2**20:.0f} MiB)"
          + (f"; peak {device} allocation {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if cuda else ""))


if __name__ == "__main__":
    main()
