"""CVS vs M-CVS vs RVS: time per iteration and per stage on the XMediaNet-scale synthetic cache.

Thesis 004 Fig. 27 / paper 002 Fig. 3: CVS retrains every block when a modality is added, so
its time per iteration grows with the modalities; M-CVS trains only the new modality's head
and blocks, so it should stay about flat. Per configuration: ``--steps`` timed training
steps after two warm-up steps (batch 128 items per modality, 512-d space, the paper's
settings), reported as ms/iteration, and the seconds of one epoch of that stage
extrapolated from the sampler's batch count (``--full-epoch`` runs the epoch instead). A step
is ``mmx train``'s (``Runner.train_step``: bf16 autocast on CUDA, the fused AdamW).
``--cuda-graphs`` adds a row: CVS on 4 modalities with its steps replayed from CUDA graphs
(train/graphs.py; on a CPU the same eager steps).

    python benchmarks/bench_train_cvs.py [--cache DIR] [--steps 20] [--device cpu|cuda] [--cuda-graphs]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.cache.modality import Modality
from mmx.train import graphs
from mmx.train.config import TrainConfig
from mmx.train.data import load_train_data
from mmx.train.loop import Runner
from mmx.train.optim import make_optimiser
from mmx.train.strategies import get_strategy

ORDER = ["image", "text", "video", "audio"]  # paper 002 stage order


def time_stage(strategy, model, stage, steps: int, full: bool, device, graphed: bool = False) -> tuple[float, float, int]:
    """(ms per iteration, seconds per epoch, batches per epoch) of one stage; ``graphed``: steps
    replayed from CUDA graphs (the warm-up and capture steps not timed, but with ``full`` every
    step of the epoch is)."""
    strategy.begin_stage(model, stage)
    opt, _ = make_optimiser(strategy.cfg, strategy.parameters(model))
    split = strategy.data.splits["train"]
    runner = Runner(strategy.cfg, strategy, model, split, split, None, device, print)
    eager = lambda batch: runner.train_step(batch, opt)  # noqa: E731
    step = graphs.StepGraphs(eager, lambda batch: runner.train_step(batch, opt, graphed=True), opt) if graphed else eager
    batches = list(strategy.batches(split, 1, train=True))
    n = len(batches)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    untimed = 2 + (graphs.WARMUP + 1 if graphed else 0)
    todo = batches if full else [batches[i % n] for i in range(steps + untimed)]
    for k, batch in enumerate(todo):
        sync()
        t0 = time.perf_counter()
        step(batch)
        sync()
        if full or k >= untimed:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    return ms, (sum(times) if full else ms / 1000 * n), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="", help="cache root to build once and reuse (default: a temp folder)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--full-epoch", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--cuda-graphs", action="store_true", help="also CVS on 4 modalities with CUDA graphs (a GPU only)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    root = Path(args.cache or tempfile.mkdtemp(prefix="mmx-bench-cvs-"))
    t0 = time.perf_counter()
    synthesize(root, SyntheticConfig.preset("xmedianet"))  # reuses complete stores
    mods = [Modality.parse(m) for m in ORDER]
    data = load_train_data(str(root), "synthetic", mods, ["train", "test"], device=device)
    print(f"cache ready and loaded in {time.perf_counter() - t0:.1f}s on {device} ({torch.get_num_threads()} threads)")

    def strategy_for(name: str, modalities: list[str], **options):
        cfg = TrainConfig(strategy=name, modalities=modalities, embed_dim=512, batch_size=128, options=options)
        problems = get_strategy(name).check(cfg)
        assert not problems, problems
        s = get_strategy(name)(cfg, data, device)
        torch.manual_seed(0)
        return s, s.build_model().to(device)

    rows = []
    # CVS from scratch with 2, 3, 4 modalities (Fig. 27: CVS restarts when a modality is added)
    for n in (2, 3, 4):
        s, model = strategy_for("cvs", ORDER[:n])
        ms, sec, nb = time_stage(s, model, s.stages()[0], args.steps, args.full_epoch, device)
        rows.append(("cvs", n, "+".join(ORDER[:n]), len(s.stages()[0].blocks), ms, sec, nb))
    if args.cuda_graphs:
        if device.type != "cuda":
            print("--cuda-graphs: not a CUDA device, the cvs-graphs row runs the same eager steps")
        s, model = strategy_for("cvs", ORDER)
        ms, sec, nb = time_stage(s, model, s.stages()[0], args.steps, args.full_epoch, device, graphed=device.type == "cuda")
        rows.append(("cvs-graphs", 4, "+".join(ORDER), len(s.stages()[0].blocks), ms, sec, nb))
    for name in ("mcvs", "rvs"):
        s, model = strategy_for(name, ORDER)
        for stage in s.stages():
            ms, sec, nb = time_stage(s, model, stage, args.steps, args.full_epoch, device)
            rows.append((name, None, stage.name, len(stage.blocks), ms, sec, nb))
    # modalities in the space after each stage, for the Fig. 27 comparison
    counts = {"mcvs": [2, 3, 4], "rvs": [2, 3, 4]}
    print(f"\n{'strategy':9} {'modalities':>10} {'stage':>22} {'blocks':>6} {'ms/iter':>9} {'s/epoch':>9} {'iters':>6}")
    seen: dict = {}
    for name, n, stage, blocks, ms, sec, nb in rows:
        if n is None:
            n = counts[name][seen.get(name, 0)]
            seen[name] = seen.get(name, 0) + 1
        print(f"{name:9} {n:>10} {stage:>22} {blocks:>6} {ms:>9.1f} {sec:>9.1f} {nb:>6}")
    cvs = {n: ms for name, n, _, _, ms, _, _ in rows if name == "cvs"}
    if args.cuda_graphs:
        print(f"4 modalities: CUDA graphs / eager = {[ms for name, *_, ms, _, _ in rows if name == 'cvs-graphs'][0] / cvs[4]:.2f}")
    mcvs = [ms for name, _, _, _, ms, _, _ in rows if name == "mcvs"]
    print(f"\nms/iter growth 2 -> 4 modalities: CVS x{cvs[4] / cvs[2]:.2f}, M-CVS (stage 3 vs stage 1) x{mcvs[-1] / mcvs[0]:.2f}")
    print(f"4 modalities: M-CVS last stage / CVS = {mcvs[-1] / cvs[4]:.2f}")


if __name__ == "__main__":
    main()
