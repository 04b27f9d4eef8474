"""Training steps replayed from CUDA graphs (train/graphs.py, `--cuda-graphs`).

On the CPU a stand-in for CUDA's capture keeps a graph's rules: capture records and runs
nothing, a replay reads the graph's own input tensors (copied in before it) and overwrites its
own output tensors, it writes the gradients that were absent at capture and adds to those that
were present, it replays the learning rate it recorded, and the optimiser must be capturable and
have its state before capture (see StandIn). With that, a pass of graphed steps must train
exactly like the eager pass (dropout 0). What the stand-in cannot see, a step that depends on
host values beyond its batch's shapes, shows in the operations two batches run. Real capture
(streams, memory pools, kernels) is for the `gpu` test at the end.
"""

import contextlib

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from mmx.cache.modality import Modality
from mmx.train import graphs, loop
from mmx.train.config import TrainConfig
from mmx.train.data import Holdout, load_train_data
from mmx.train.optim import make_optimiser
from mmx.train.strategies import get_strategy

import test_hostbound


class_cache, instance_cache = test_hostbound.class_cache, test_hostbound.instance_cache  # the same caches (fixtures)


def runner_for(cache, strategy, mods, alignment="class", device="cpu", batch_size=5, **kw):
    cfg = TrainConfig(strategy=strategy, cache=str(cache), modalities=mods, alignment=alignment, batch_size=batch_size, embed_dim=16,
                      dropout=0.0, threads=1, device=device, **kw)
    dev = torch.device(device)
    data = load_train_data(str(cache), cfg.dataset, Modality.parse_list(mods), [], tokens=False, need_labels=alignment == "class",
                           need_groups=alignment == "instance", device=dev,
                           holdout=Holdout(cfg.holdout, cfg.val_fraction, cfg.test_fraction, cfg.seed))
    s = get_strategy(strategy)(cfg, data, dev)
    torch.manual_seed(0)
    model = s.build_model().to(dev)
    if len(s.stages()) > 1:
        s.begin_stage(model, s.stages()[-1])  # a later stage: frozen parts, its own blocks and batches
    opt, _ = make_optimiser(cfg, s.parameters(model))
    return loop.Runner(cfg, s, model, data.splits["train"], data.splits[cfg.holdout], None, dev, lambda x: None), opt


class StandIn:
    """CUDA's capture as far as a CPU can: ``capture`` records (runs nothing), ``replay`` runs the
    recorded step on the graph's inputs and overwrites its outputs. As on CUDA: capture needs a
    capturable optimiser; a gradient absent at capture is written afresh by every replay, one
    present is added to (the captured backward accumulates into that buffer); the learning rate
    is the one recorded; optimiser state made during capture would be made again (zeroed) by
    every replay, so none may be."""

    def __init__(self, opt):
        self.opt, self.captured = opt, []

    def capture(self, step):
        groups = self.opt.param_groups
        assert all(g["capturable"] for g in groups), "capture of an optimiser step whose param_groups' capturable is False"
        params = [p for g in groups for p in g["params"]]
        kept = {p: p.grad for p in params if p.grad is not None}
        lrs, states = [g["lr"] for g in groups], len(self.opt.state)
        out: dict = {}
        self.captured.append(out)

        def replay():
            assert [g["lr"] for g in groups] == lrs, "a graph replays the learning rate it recorded"
            for p in params:
                p.grad = kept.get(p)
            new = step()
            assert len(self.opt.state) == states, "optimiser state made inside a graph: every replay would reset it"
            with torch.no_grad():
                if out:
                    for k, v in new.items():
                        out[k].copy_(v)  # the same output tensors, overwritten
                else:
                    out.update(new)

        return replay, out


@pytest.fixture
def stand_in(monkeypatch):
    """Every StepGraphs made in the test captures with a StandIn and warms up without a side stream."""
    made = []

    def capture(step):
        return made[-1].capture(step)

    monkeypatch.setattr(graphs, "cuda_capture", capture)
    monkeypatch.setattr(graphs, "side_stream", contextlib.nullcontext)
    return made


def graphed_epoch(runner, opt, stand_in, epoch=1):
    stand_in.append(StandIn(opt))
    runner.graphed = True
    return epoch_and_steps(runner, opt, epoch)


def epoch_and_steps(runner, opt, epoch):
    """A pass of ``runner`` and the StepGraphs it ran its steps with."""
    out = runner.train_epoch(epoch, opt)
    return out, runner.step_graphs


# the multi-stage ones at their last stage (an epoch of it: one pass over the new modality)
GRAPHABLE = {"joint": {}, "roundrobin": {}, "cvs": {}, "mcvs": {"batch_size": 2}, "rvs": {"batch_size": 2},
             "stagewise": {"options": {"classes_per_stage": 6}}}


def test_the_graphable_strategies_are_these():
    from mmx.train.strategies import STRATEGIES

    assert sorted(n for n in STRATEGIES if get_strategy(n).graphable) == sorted(GRAPHABLE)


@pytest.mark.parametrize("strategy", sorted(GRAPHABLE))
def test_a_graphed_pass_trains_exactly_like_the_eager_one(class_cache, stand_in, strategy):
    mods = ["text", "image", "audio", "video"] if strategy != "stagewise" else ["text", "image"]
    eager_runner, eager_opt = runner_for(class_cache, strategy, mods, **GRAPHABLE[strategy])
    graph_runner, graph_opt = runner_for(class_cache, strategy, mods, **GRAPHABLE[strategy])
    for epoch in (1, 2):  # the second pass replays the first's graphs (the same learning rate)
        want = eager_runner.train_epoch(epoch, eager_opt)
        got, steps = graphed_epoch(graph_runner, graph_opt, stand_in, epoch)
        assert steps.counts["captured"] >= 1 and steps.counts["replayed"] >= 2, steps.counts
        assert got == pytest.approx(want, rel=1e-6)
    for (name, a), b in zip(eager_runner.model.named_parameters(), graph_runner.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name
    # and the optimiser's moments followed the same steps
    for a, b in zip(eager_opt.state.values(), graph_opt.state.values()):
        assert torch.allclose(a["exp_avg"], b["exp_avg"], rtol=1e-6, atol=1e-9)
        assert float(a["step"]) == float(b["step"])


class Ops(TorchDispatchMode):
    """The operations a step runs, each with its non-tensor arguments and its tensors' shapes."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = pytree.tree_leaves((args, kwargs or {}))
        self.ops.append((str(func), tuple(self.key(x) for x in leaves)))
        return func(*args, **(kwargs or {}))

    @staticmethod
    def key(x):
        if isinstance(x, torch.Tensor):
            return x.shape, x.dtype
        plain = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
        return x if isinstance(x, plain) else type(x).__name__  # e.g. the profiler's record handles


# reads of device values (a wait, not allowed while capturing) and tensors made from host values
# (a graph keeps the values of its capture)
HOST_BOUND = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique", "aten.lift_fresh")


@pytest.mark.parametrize("strategy", sorted(GRAPHABLE))
def test_a_graphable_step_runs_the_same_operations_whatever_its_batch_holds(class_cache, strategy):
    """What the stand-in cannot check: a graph replays the operations of its capture, so the step
    may not depend on host values beyond its batch's shapes. Two batches of one signature must run
    the same operations with the same arguments, none of them a read back or a host-made tensor."""
    mods = ["text", "image", "audio", "video"] if strategy != "stagewise" else ["text", "image"]
    runner, opt = runner_for(class_cache, strategy, mods, **GRAPHABLE[strategy])
    by_shape: dict = {}
    for batch in runner.strategy.batches(runner.train_split, 1, train=True):
        leaves, spec = pytree.tree_flatten(batch)
        by_shape.setdefault((str(spec), tuple(getattr(x, "shape", x) for x in leaves)), []).append(batch)
    first, second = next(b for b in by_shape.values() if len(b) >= 2)[:2]
    assert not all(a is None or torch.equal(a, b) for a, b in zip(pytree.tree_leaves(first), pytree.tree_leaves(second)))
    runner.train_step(first, opt)  # the optimiser's state exists before capture (the warm-up)
    traces = []
    for batch in (first, second):
        with Ops() as ops:
            runner.train_step(batch, opt, graphed=True)
        traces.append(ops.ops)
    assert traces[0] == traces[1]
    assert not [op for op, _ in traces[0] if op.startswith(HOST_BOUND)]


def test_graphs_are_kept_from_pass_to_pass_until_the_learning_rate_moves(class_cache, stand_in):
    """A capture costs a device sync and a cache flush, so a run keeps its graphs across passes;
    they recorded the learning rate, so a pass after the schedule moved it captures anew (the
    stand-in fails a replay with another rate than the recorded one), training as eager steps do."""
    mods = ["text", "image", "audio"]
    eager_runner, eager_opt = runner_for(class_cache, "joint", mods)
    graph_runner, graph_opt = runner_for(class_cache, "joint", mods)
    eager_runner.train_epoch(1, eager_opt)
    _, first = graphed_epoch(graph_runner, graph_opt, stand_in, 1)
    captured = first.counts["captured"]
    eager_runner.train_epoch(2, eager_opt)
    _, second = graphed_epoch(graph_runner, graph_opt, stand_in, 2)
    assert second is first and second.counts["captured"] == captured  # replayed, nothing captured again
    for opt in (eager_opt, graph_opt):  # what the schedule does between passes
        for g in opt.param_groups:
            g["lr"] *= 0.5
    want = eager_runner.train_epoch(3, eager_opt)
    got, third = graphed_epoch(graph_runner, graph_opt, stand_in, 3)
    assert third is not first and third.counts["captured"] >= 1
    assert got == pytest.approx(want, rel=1e-6)
    for a, b in zip(eager_runner.model.parameters(), graph_runner.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_each_signature_warms_up_then_gets_its_own_graph(class_cache, stand_in):
    runner, opt = runner_for(class_cache, "roundrobin", ["text", "image", "audio"])
    _, steps = graphed_epoch(runner, opt, stand_in)
    shapes = [k for k, v in steps.graphs.items() if isinstance(v, graphs.Graph)]
    assert len(shapes) == steps.counts["captured"] >= 3  # at least one per pair: a pair's batch is its own signature
    assert steps.counts["eager"] == sum(min(v, graphs.WARMUP) if isinstance(v, int) else graphs.WARMUP for v in steps.graphs.values())


def test_batches_with_absent_rows_run_eagerly(instance_cache, stand_in):
    runner, opt = runner_for(instance_cache, "joint", ["text", "image", "audio"], alignment="instance")
    batches = list(runner.strategy.batches(runner.train_split, 1, train=True))
    masked = sum(bool(b["present"]) for b in batches)
    assert 0 < masked < len(batches)
    _, steps = graphed_epoch(runner, opt, stand_in)
    assert steps.counts["eager"] >= masked
    assert steps.counts["eager"] + steps.counts["replayed"] == len(batches)


def test_a_replay_overwrites_its_outputs_and_the_epoch_mean_still_counts_every_step(class_cache, stand_in):
    """PartMeans must copy a step's values: a graph's output tensors are the same objects every replay."""
    runner, opt = runner_for(class_cache, "joint", ["text", "image"])
    got, steps = graphed_epoch(runner, opt, stand_in)
    captured = stand_in[-1].captured[0]
    assert steps.counts["replayed"] >= 2
    assert np.isfinite(got["loss_train"]) and got["loss_train"] != pytest.approx(float(captured["loss"]), rel=1e-9)


def test_graphs_need_the_fused_optimiser(class_cache):
    runner, _ = runner_for(class_cache, "joint", ["text", "image"])
    plain = torch.optim.AdamW(runner.model.parameters())
    with pytest.raises(ValueError, match="fused AdamW"):
        graphs.StepGraphs(lambda b: None, lambda b: None, plain)


def test_when_graphs_cannot_be_used_the_run_says_why(class_cache):
    cfg = TrainConfig(strategy="joint", cuda_graphs=True)
    joint, eao = get_strategy("joint"), get_strategy("eao")
    assert "the device is cpu" in graphs.reason_not(cfg, joint, torch.device("cpu"))
    assert "eao's steps change shape" in graphs.reason_not(cfg, eao, torch.device("cuda"))
    assert graphs.reason_not(cfg, joint, torch.device("cuda")) is None
    assert graphs.reason_not(TrainConfig(strategy="joint"), joint, torch.device("cpu")) is None  # not asked for


def test_cuda_graphs_on_a_cpu_trains_eagerly_and_says_so(class_cache, tmp_path):
    from click.testing import CliRunner

    from mmx.pipeline.cli import main

    res = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--strategy", "joint", "--cache", str(class_cache), "--modalities", "text,image",
                                    "--epochs", "1", "--batch-size", "5", "--out", str(tmp_path), "--device", "cpu",
                                    "--cuda-graphs"])
    assert res.exit_code == 0, res.output
    assert "cuda_graphs: the device is cpu, not CUDA: every step runs eagerly" in res.output
    (run,) = tmp_path.iterdir()
    assert "cuda_graphs: true" in (run / "config.yaml").read_text()


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", sorted(GRAPHABLE))
def test_cuda_graphed_passes_train_like_eager_ones(class_cache, strategy):
    """On a GPU: real capture and replay, the same training as eager steps (dropout 0), within
    float tolerance (the same kernels; bf16 autocast off to compare closely); the multi-stage
    strategies at their last stage, with the earlier stages' parts frozen."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available here")
    mods = ["text", "image", "audio", "video"] if strategy != "stagewise" else ["text", "image"]
    eager_runner, eager_opt = runner_for(class_cache, strategy, mods, device="cuda", amp=False, **GRAPHABLE[strategy])
    graph_runner, graph_opt = runner_for(class_cache, strategy, mods, device="cuda", amp=False, cuda_graphs=True, **GRAPHABLE[strategy])
    assert graph_runner.graphed
    for epoch in (1, 2):
        want = eager_runner.train_epoch(epoch, eager_opt)
        got, steps = epoch_and_steps(graph_runner, graph_opt, epoch)
        assert steps.counts["captured"] >= 1 and steps.counts["replayed"] >= 2, steps.counts
        assert got == pytest.approx(want, rel=1e-4)
    for (name, a), b in zip(eager_runner.model.named_parameters(), graph_runner.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
