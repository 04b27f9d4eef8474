"""Benchmark: training from memory on the XMediaNet-scale synthetic cache.

Paper 000's strategies (presets ``fuerer-roundrobin``, ``fuerer-tri``, ``fuerer-quad``: batch
128 classes, lr 1e-3, tau 0.05, 256-d heads, early stopping on the test loss with patience 1
and a relative tolerance of 2%; see the presets for why) on
``SyntheticConfig.preset("xmedianet")`` (pooled only, 200 classes, 40000/35268/8280/7876
items). Reported: seconds per epoch (mean; each epoch includes the held-out loss and the
quick held-out Recall@K), seconds until early stopping (the whole ``train`` call, loading
included), the epoch count and the final held-out mean R@1 and R@10; the ratio to the 60 s target.

``eao`` needs tokens, and a token cache of the full XMediaNet at its backbone widths does not
fit a small machine, so its cache keeps XMediaNet's item counts and classes for the modalities
EAO uses (text 40000, audio 8280, video 7876; image left out) with 2-4 tokens per item
(``tokens=(2, 4)``); it is class-aligned, so EAO trains on class pseudo-groups. The small CPU
configuration (token dim 256, one block, 4 heads, batch 128, 256-d joint space) runs
``--eao-epochs`` epochs (default 1) and reports seconds per epoch.

    python benchmarks/bench_train.py                    # caches in a temporary folder
    python benchmarks/bench_train.py --cache DIR        # build once into DIR, reuse later
    python benchmarks/bench_train.py --only eao --threads 2
    python benchmarks/bench_train.py --max-epochs 12      # per-epoch figures without waiting for the stop
    python benchmarks/bench_train.py --device cuda --only quad,quad-graphs   # eager steps vs CUDA graphs

``quad-graphs`` is ``fuerer-quad`` with ``cuda_graphs: true`` (train/graphs.py): its steps are
replayed from CUDA graphs on a GPU (on a CPU the run says so and runs eagerly).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

TARGET_S = 60.0


def _run(cfg, label: str) -> dict:
    from mmx.eval.runs import read_jsonl
    from mmx.train.loop import train

    t = time.perf_counter()
    run = train(cfg)
    total = time.perf_counter() - t
    summary = json.loads((run / "metrics.json").read_text())
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["epoch"] > 0]
    per_epoch = sum(r["seconds"] for r in epochs) / max(len(epochs), 1)
    row = {
        "run": label, "epochs": len(epochs), "best_epoch": summary["best_epoch"], "s_per_epoch": per_epoch,
        "s_total": total, "R@1": summary["final"].get("recall/mean@1", float("nan")),
        "R@10": summary["final"].get("recall/mean@10", float("nan")), "stop": summary["stop_reason"],
    }
    print(f"{label:12s} epochs {row['epochs']:3d} (best {row['best_epoch']:3d})  {per_epoch:6.2f} s/epoch  "
          f"{total:7.1f} s total  (x{total / TARGET_S:.2f} of the {TARGET_S:.0f} s target)  R@1 {row['R@1']:.3f}  R@10 {row['R@10']:.3f}  [{row['stop']}]",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=None, help="cache root to build once and reuse (default: a temporary folder)")
    ap.add_argument("--only", default="roundrobin,tri,quad,eao", help="comma-separated subset of roundrobin,tri,quad,quad-graphs,eao")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: mmx's default, mmx.cache.threads)")
    ap.add_argument("--eao-epochs", type=int, default=1)
    ap.add_argument("--max-epochs", type=int, default=0, help="cap on epochs for the paper-000 runs (0: the preset's 200)")
    ap.add_argument("--min-delta", type=float, default=None, help="relative early-stopping tolerance (default: the preset's)")
    ap.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: the preset's)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from mmx.cache.synthesize import SyntheticConfig, synthesize
    from mmx.train.config import resolve

    from mmx.cache.threads import set_threads

    set_threads(args.threads)  # train() sets it again from the config, to the same value
    only = set(args.only.split(","))
    root = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="mmx-bench-train-"))
    out = Path(tempfile.mkdtemp(prefix="mmx-bench-runs-"))
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, cache {root}")
    try:
        if only & {"roundrobin", "tri", "quad", "quad-graphs"}:
            t = time.perf_counter()
            synthesize(root, SyntheticConfig.preset("xmedianet", dataset="xmedianet"))
            print(f"xmedianet cache ready in {time.perf_counter() - t:.1f} s", flush=True)
        common = {"cache": str(root), "dataset": "xmedianet", "out": str(out), "device": args.device, "threads": args.threads}
        for key, preset in (("roundrobin", "fuerer-roundrobin"), ("tri", "fuerer-tri"), ("quad", "fuerer-quad"), ("quad-graphs", "fuerer-quad")):
            if key in only:
                extra = {"epochs": args.max_epochs or None, "min_delta": args.min_delta, "patience": args.patience,
                         "cuda_graphs": key.endswith("-graphs") or None}
                _run(resolve([preset], {**common, **extra}), key)
        if "eao" in only:
            x = SyntheticConfig.preset("xmedianet")
            t = time.perf_counter()
            synthesize(root, SyntheticConfig(
                dataset="xmedianet-tokens", classes=x.classes, tokens=(2, 4), test_fraction=x.test_fraction,
                items={m: x.items[m] for m in ("text", "audio", "video")}, dims={m: x.dims[m] for m in ("text", "audio", "video")},
            ))
            print(f"xmedianet-tokens cache ready in {time.perf_counter() - t:.1f} s", flush=True)
            cfg = resolve(["eao"], {**common, "dataset": "xmedianet-tokens", "batch_size": 128, "embed_dim": 256,
                                    "epochs": args.eao_epochs, "lr": 1e-4},
                          ["options.token_dim=256", "options.heads=4", "options.mlp_dim=256", "options.depth=1"])
            _run(cfg, "eao-small")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if not args.cache:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
