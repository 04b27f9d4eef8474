"""Benchmark: how host-bound training is, and before/after against another checkout.

On a GPU a step of four 256-d heads is a few microseconds of kernels, so its time is what the
host spends around them: Python, the sampler, index copies, kernel launches, host syncs. This
measures that part on any device. At ``--width tiny`` (every feature 8-d, an 8-d space) the
kernels cost next to nothing on a CPU too, so ms/step there is the host overhead per step, the
proxy for a GPU run's floor; ``--width paper`` uses XMediaNet's widths and the papers' spaces
(256-d paper 000, 512-d CVS) to show what a CPU run costs.

Data: ``SyntheticConfig.preset("xmedianet")`` item counts and 200 classes (text 40000, image
35268, audio 8280, video 7876, 80/20 split). Timed, each through the training loop's own
``Runner`` (sampler, gather, forward, loss, backward, fused AdamW, per-epoch loss read):

* ``quad``: joint on the four modalities (paper 000), one training epoch, ms per step;
* ``roundrobin``: the six pairs of the four modalities, one epoch, ms per step;
* ``heldout``: the held-out loss of ``quad`` over the test split, ms per pass;
* ``recall``: the per-epoch quick Recall@K of ``quad`` (2000-row subsets), ms per pass;
* ``cvs``: CVS on the four modalities, ``--cvs-steps`` steps, ms per step.

Each figure is the median over ``--repeats`` rounds. ``--baseline DIR`` (a folder holding a
checkout named ``mmx``, e.g. a ``git worktree`` of an older commit) measures that code too,
in a child process alternating round by round with this one (each going first every other
round), and prints after/before ratios, so both sides see the same machine load.

    python benchmarks/bench_train_host.py --width tiny --threads 1
    python benchmarks/bench_train_host.py --width paper --baseline /tmp/base-path --repeats 3
    python benchmarks/bench_train_host.py --device cuda --width paper
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("quad", "roundrobin", "heldout", "recall", "cvs")
MODALITIES = ["text", "image", "audio", "video"]
TINY = 8  # feature and embedding width of --width tiny


def build_cache(root: Path, width: str) -> str:
    """The XMediaNet-scale synthetic cache of ``width`` under ``root`` (reused when complete); its dataset name."""
    from mmx.cache.synthesize import SyntheticConfig, synthesize

    dataset = f"xmedianet-{width}"
    extra = {"dims": {m: TINY for m in MODALITIES}} if width == "tiny" else {}
    synthesize(root, SyntheticConfig.preset("xmedianet", dataset=dataset, **extra))
    return dataset


class Bench:
    """One strategy, model and Runner over the loaded data; ``time_*`` return ms."""

    def __init__(self, data, strategy: str, width: str, device, out: Path):
        import torch

        from mmx.train.config import TrainConfig
        from mmx.train.loop import Runner
        from mmx.train.optim import make_optimiser
        from mmx.train.strategies import get_strategy

        cls = get_strategy(strategy)
        embed = TINY if width == "tiny" else cls.paper_settings.get("embed_dim", 256)
        cfg = TrainConfig(strategy=strategy, modalities=MODALITIES, embed_dim=embed, batch_size=128, holdout="test",
                          alignment="class", device=str(device), out=str(out))
        self.strategy = cls(cfg, data, device)
        torch.manual_seed(0)
        self.model = self.strategy.build_model().to(device)
        self.opt, _ = make_optimiser(cfg, self.strategy.parameters(self.model))
        self.runner = Runner(cfg, self.strategy, self.model, data.splits["train"], data.splits["test"], out, device,
                             lambda s: None)
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.steps = 0
        step = self.strategy.step

        def counted(model, batch):
            self.steps += 1
            return step(model, batch)

        self.strategy.step = counted

    def _timed(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t) * 1000

    def train_ms_per_step(self, epoch: int, limit: int = 0) -> float:
        """One training epoch (its first ``limit`` batches when given), in ms per step."""
        if limit:
            batches = type(self.strategy).batches
            self.strategy.batches = lambda split, e, train: itertools.islice(batches(self.strategy, split, e, train), limit)
        self.steps = 0
        ms = self._timed(lambda: self.runner.train_epoch(epoch, self.opt))
        if limit:
            del self.strategy.batches
        return ms / max(self.steps, 1)

    def heldout_ms(self, epoch: int) -> float:
        return self._timed(lambda: self.runner.held_out_loss(epoch))

    def recall_ms(self) -> float:
        from mmx.train.monitor import QUICK_ROWS, quick_recall

        return self._timed(lambda: quick_recall(self.strategy, self.model, self.runner.hold, cap=QUICK_ROWS))


def measure(args) -> None:
    """The child's side: load once, then one JSON line of figures per round read from stdin."""
    import torch

    from mmx.cache.modality import Modality
    from mmx.train.data import load_train_data

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mods = [Modality.parse(m) for m in MODALITIES]
    data = load_train_data(args.cache, args.dataset, mods, ["train", "test"], device=device)
    out = Path(tempfile.mkdtemp(prefix="mmx-bench-host-"))  # the Runner's run folder; nothing is written there
    atexit.register(shutil.rmtree, out, True)
    parts = args.only.split(",")
    benches = {}
    if {"quad", "heldout", "recall"} & set(parts):
        benches["joint"] = Bench(data, "joint", args.width, device, out)
    if "roundrobin" in parts:
        benches["roundrobin"] = Bench(data, "roundrobin", args.width, device, out)
    if "cvs" in parts:
        benches["cvs"] = Bench(data, "cvs", args.width, device, out)
    warm = {"joint": lambda b: b.train_ms_per_step(1, 3), "roundrobin": lambda b: b.train_ms_per_step(1, 3),
            "cvs": lambda b: b.train_ms_per_step(1, 3)}
    for name, b in benches.items():
        warm[name](b)
    print("ready", flush=True)
    for k, _ in enumerate(sys.stdin, start=2):
        row = {}
        for part in parts:
            if part == "quad":
                row[part] = benches["joint"].train_ms_per_step(k)
            elif part == "roundrobin":
                row[part] = benches["roundrobin"].train_ms_per_step(k)
            elif part == "heldout":
                row[part] = benches["joint"].heldout_ms(k)
            elif part == "recall":
                row[part] = benches["joint"].recall_ms()
            elif part == "cvs":
                row[part] = benches["cvs"].train_ms_per_step(k, args.cvs_steps)
        print(json.dumps(row), flush=True)


class Child:
    """A measuring process over one checkout (``path``: the folder that holds ``mmx``)."""

    def __init__(self, path: str, argv: list[str]):
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"the measuring process over {path} failed to start (see its error above)")

    def round(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="", help="cache root to build once and reuse (default: a temporary folder)")
    ap.add_argument("--width", choices=("tiny", "paper"), default="tiny")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cvs-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned: figures on a shared machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline", default="", help="folder holding an older checkout named mmx, measured alternately")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return measure(args)

    root = Path(args.cache or tempfile.mkdtemp(prefix="mmx-bench-host-cache-"))
    t = time.perf_counter()
    dataset = build_cache(root, args.width)
    print(f"cache {root} ({dataset}) ready in {time.perf_counter() - t:.1f} s; device {args.device}, "
          f"{args.threads} thread(s), width {args.width}", flush=True)
    argv = ["--cache", str(root), "--dataset", dataset, "--width", args.width, "--only", args.only,
            "--cvs-steps", str(args.cvs_steps), "--threads", str(args.threads), "--device", args.device]
    here = str(Path(__file__).resolve().parent.parent.parent)  # the folder holding this checkout
    try:
        sides = {"after" if args.baseline else "now": Child(os.environ.get("PYTHONPATH", here), argv)}
        if args.baseline:
            sides["before"] = Child(args.baseline, argv)
        rows: dict = {s: [] for s in sides}
        for k in range(args.repeats):
            order = list(sides.items())
            for side, child in order[::-1] if k % 2 else order:  # each side goes first every other round
                rows[side].append(child.round())
        for child in sides.values():
            child.close()
    finally:
        if not args.cache:
            shutil.rmtree(root, ignore_errors=True)
    report(rows, args.only.split(","), args.width)


def report(rows: dict, parts: list[str], width: str) -> None:
    unit = {"quad": "ms/step", "roundrobin": "ms/step", "heldout": "ms/pass", "recall": "ms/pass", "cvs": "ms/step"}
    med = {s: {p: statistics.median(r[p] for r in rs) for p in parts} for s, rs in rows.items()}
    for p in parts:
        line = f"{p:10s} {width:5s} " + "  ".join(f"{s} {med[s][p]:8.2f} {unit[p]}" for s in med)
        if "before" in med:
            line += f"  after/before x{med['after'][p] / med['before'][p]:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
