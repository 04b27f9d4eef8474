"""Stage-wise class learning (thesis 004 Sec. 3.4, Tables 12-13) on a real cache: what the stage-1
classes keep after every stage, with and without rehearsal of earlier stages' classes.

    OMP_NUM_THREADS=1 python benchmarks/bench_stagewise.py --cache C --dataset digits --seeds 0,1,2 \\
        [--rehearsal none,seen] [--set key=value ...]

Prints, per setting, the mean over seeds of mAP@50 on test (image->text and text->image) on the
stage-1 classes and on all classes after every stage, and the share of its stage-1 score the
stage-1 rows keep at the end (the thesis keeps about 95% on Pascal, Table 13).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rehearsal", default="none,seen")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)

    import torch

    from mmx.train.config import resolve
    from mmx.train.loop import train

    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f}; settings: {args.set or 'stagewise defaults'}")
    for rehearsal in args.rehearsal.split(","):
        per_seed = []
        with tempfile.TemporaryDirectory() as out:
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = resolve(["stagewise"], overrides={"dataset": args.dataset, "cache": args.cache, "out": out, "seed": seed,
                                                        "device": "cpu", "threads": 1},
                              sets=[f"options.rehearsal={rehearsal}", *args.set])
                run = train(cfg, warn=lambda *a: None)
                per_seed.append([json.loads(x) for x in open(run / "metrics.jsonl") if '"stage_name"' in x])
        stages = per_seed[0]
        print(f"\nrehearsal={rehearsal}: {cfg.epochs} epochs per stage, keep {cfg.keep}, {len(per_seed)} seed(s); "
              "mAP@50 on test, mean (sd) over seeds")
        print("| eval on | query -> target | " + " | ".join(f"stage {s['stage']} ({s['stage_name']})" for s in stages)
              + " | stage-1 score kept |")
        print("|---|---|" + "---:|" * (len(stages) + 1))
        for part, what in (("stage1", "stage-1 classes"), ("all", "all classes")):
            for pair in ("image->text", "text->image"):
                key = f"map@50/{part}/{pair}"
                cells, means = [], []
                for k in range(len(stages)):
                    vals = [runs[k][key] for runs in per_seed]
                    means.append(statistics.mean(vals))
                    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    cells.append(f"{means[-1]:.3f} ({sd:.3f})")
                kept = [runs[-1][key] / runs[0][key] for runs in per_seed if runs[0][key]]
                shown = f"{statistics.mean(kept):.0%} (min {min(kept):.0%})" if part == "stage1" and kept else ""
                print(f"| {what} | {pair} | " + " | ".join(cells) + f" | {shown} |")


if __name__ == "__main__":
    main()
