"""Training steps replayed from CUDA graphs (``cuda_graphs: true``, ``mmx train --cuda-graphs``).

A step of small heads is a few hundred small kernels whose launches, not the GPU, set the
pace; a CUDA graph launches a whole recorded step (forward, loss, backward, fused AdamW) with
one call. :class:`StepGraphs` keeps one graph per batch signature; :func:`reason_not` says
why a run cannot use them. Without dropout a graphed run trains like an eager one. The
capture rules: docs/notes/train.md.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.utils import _pytree as pytree

WARMUP = 2  # eager steps of a signature before it is captured


class Graph:
    """A captured step: ``replay()`` reruns it on ``inputs`` (static tensors, in the order of the
    batch's leaves) and leaves the step's outputs in ``out``."""

    def __init__(self, inputs: list, replay: Callable[[], None], out: dict):
        self.inputs, self.replay, self.out = inputs, replay, out


def cuda_capture(step: Callable[[], dict]) -> tuple[Callable[[], None], dict]:
    """Record ``step`` into a CUDA graph; returns its replay and the step's (static) outputs."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph.replay, out


@contextlib.contextmanager
def side_stream():
    """Run the enclosed eager work on a side stream that waits for, and is waited for by, the current one."""
    main = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)


def reason_not(cfg, strategy, device: torch.device) -> str | None:
    """Why steps of this run will not be replayed from graphs although ``cuda_graphs`` asks for it, else None."""
    if not cfg.cuda_graphs:
        return None
    if device.type != "cuda":
        return f"cuda_graphs: the device is {device.type}, not CUDA: every step runs eagerly"
    if not strategy.graphable:
        return f"cuda_graphs: {strategy.name}'s steps change shape from batch to batch: every step runs eagerly"
    return None


class StepGraphs:
    """The training steps of one pass: eager, or replayed from a graph per batch signature.

    ``eager(batch) -> out``: the loop's step (forward, ``zero_grad``, backward, optimiser step);
    ``step(batch) -> out``: the same step as recorded in a graph, without ``zero_grad`` (a graph
    writes its gradients, the ones it allocated when captured). ``capture(step) -> (replay,
    out)`` and ``warm()`` (a context for the warm-up steps) default to CUDA's; tests pass others.
    """

    def __init__(self, eager: Callable, step: Callable, opt, capture=None, warm=None):
        if not all(group.get("fused") for group in opt.param_groups):
            raise ValueError("CUDA graphs need the fused AdamW (train.optim.make_optimiser)")
        self.eager, self.step, self.opt = eager, step, opt
        self.capture, self.warm = capture or cuda_capture, warm or side_stream
        self.graphs: dict = {}  # signature -> Graph, or the count of its warm-up steps so far
        self.counts = {"eager": 0, "captured": 0, "replayed": 0}

    def __call__(self, batch) -> dict:
        leaves, spec = pytree.tree_flatten(batch)
        tensors = [x for x in leaves if x is not None]
        if not all(isinstance(x, torch.Tensor) for x in tensors):
            self.counts["eager"] += 1
            return self.eager(batch)  # host arrays in the batch: the step's shape depends on them
        key = (str(spec), tuple((tuple(x.shape), x.dtype, x.device) for x in tensors))
        entry = self.graphs.get(key, 0)
        if isinstance(entry, int):
            if entry < WARMUP:
                self.graphs[key] = entry + 1
                self.counts["eager"] += 1
                with self.warm():
                    return self.eager(batch)
            entry = self.graphs[key] = self._capture(leaves, spec)
        for static, x in zip(entry.inputs, tensors):
            static.copy_(x)
        entry.replay()
        self.counts["replayed"] += 1
        return entry.out

    def _capture(self, leaves: list, spec) -> Graph:
        inputs = [x.clone() for x in leaves if x is not None]
        it = iter(inputs)
        batch = pytree.tree_unflatten([None if x is None else next(it) for x in leaves], spec)
        for group in self.opt.param_groups:
            group["capturable"] = True  # the fused kernel is the same; the step's checks then allow capture
        self.opt.zero_grad(set_to_none=True)  # the graph allocates the gradients it writes
        replay, out = self.capture(lambda: self.step(batch))
        self.counts["captured"] += 1
        return Graph(inputs, replay, out)
