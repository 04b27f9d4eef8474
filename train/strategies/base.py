"""What every strategy provides to the one training loop (open_clip's task/ pattern).

A strategy owns its model, its batches and its loss; the loop never branches on strategy.
Subclasses implement ``build_model``, ``batches``, ``step`` and ``embed``; the rest has a
default here: one stage (``stages() == [None]``, ``begin_stage``/``end_stage`` doing nothing),
the batch seed of an epoch (:meth:`Strategy.batch_seed`), embedding in chunks
(:meth:`Strategy.embed_chunks`) and the parameters frozen by a warm start (:meth:`Strategy.warm_start`).

Multi-stage strategies (M-CVS, RVS, stage-wise) return their stages (objects with a ``name``)
from ``stages()``. Everything a stage changes (which parameters train, which blocks the loss
uses) must follow from ``begin_stage`` alone: a resumed run calls it for the recorded stage
only, then loads the weights and optimiser from ``last.safetensors``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from mmx.cache.modality import Modality
from mmx.train.config import TrainConfig
from mmx.train.data import SplitData, TrainData


# Set by `mmx train --from RUN --add-modality M` (train/extend.py), whatever the strategy.
EXTENSION_OPTIONS = {"extend_from": "", "trained_modalities": []}


class Strategy:
    name: str = ""
    needs_tokens: bool = False
    alignment: str = "class"  # the sampler the data needs: "class" or "instance"
    min_modalities: int = 2
    # config values of the strategy's paper, under every preset (train/config.py ``resolve``)
    paper_settings: dict = {}
    default_normalize: str = "standardize"  # what normalize: auto means (train/normalize.py)
    options: dict = {}  # the strategy's ``cfg.options`` with their defaults; other keys are errors
    extra_options: dict = {}  # a subclass's additions to its parent's ``options``
    # whether a step's work is fixed by its batch's tensor shapes alone, so that `cuda_graphs`
    # can replay it (train/graphs.py); batches holding host arrays still run eagerly
    graphable: bool = False
    # whether an instance over a subset of the modalities computes the held-out figures of a model
    # built for all of them (a modality without held-out items is then left out of the monitor)
    monitor_subset: bool = False
    # sizing before anything loads (train/sizing.py): a classmethod ``footprint(cfg, shapes,
    # batch, device)`` returning a sizing.Footprint, or None when the strategy does not size itself
    footprint = None
    cpu_preset: str = ""  # the preset a run refused on a CPU is pointed to

    def __init__(self, cfg: TrainConfig, data: TrainData, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.modalities = [Modality.parse(m) for m in cfg.modalities]
        self.opt = {**self.option_defaults(), **cfg.options}
        # the training batches as drawn (``batch/...`` fields of metrics.jsonl), set by ``batches``
        self.composition: dict = {}
        # parameter names loaded from the extended run and frozen (``warm_start``); stages keep them frozen
        self.frozen: set[str] = set()

    @classmethod
    def option_defaults(cls) -> dict:
        return {**EXTENSION_OPTIONS, **cls.options, **cls.extra_options}

    @classmethod
    def check(cls, cfg: TrainConfig) -> list[str]:
        """Problems with the config alone (before loading anything); empty when fine."""
        problems = []
        known = cls.option_defaults()
        unknown = sorted(set(cfg.options) - set(known))
        if unknown:
            problems.append(f"strategy {cls.name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if len(cfg.modalities) < cls.min_modalities:
            problems.append(f"strategy {cls.name!r} needs at least {cls.min_modalities} modalities, got {cfg.modalities}")
        return problems

    # tau "auto" by the data's alignment (class or instance); an alignment a strategy does not
    # name gets the config's default
    taus: dict[str, float] = {}

    @classmethod
    def tau_for(cls, alignment: str) -> float:
        """The temperature ``tau: auto`` means for ``alignment`` (class or instance)."""
        return cls.taus.get(alignment, TrainConfig.tau)

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def warm_start(self, model: nn.Module, path) -> None:
        """Load the checkpoint of the run being extended into ``model`` and freeze what it holds."""
        from mmx.train.extend import warm_start

        self.frozen = warm_start(model, path)

    # -- stages: one by default --------------------------------------------------------------
    def stages(self) -> list:
        """The stages the epoch loop runs in turn; ``[None]``: one stage, nothing to switch."""
        return [None]

    def begin_stage(self, model: nn.Module, stage) -> None:
        """Set what trains in ``stage`` (called on entering it, and on resuming inside it)."""

    def end_stage(self, model: nn.Module, stage) -> dict:
        """Extra fields of the stage's line in ``metrics.jsonl``, once its kept weights are loaded."""
        return {}

    def report(self, records: list[dict]) -> list[str]:
        """Lines the run prints at its end from its ``metrics.jsonl`` records (stage-wise
        learning: its per-stage table); none by default."""
        return []

    def batch_seed(self, epoch: int, train: bool) -> int:
        """The sampler seed of an epoch's batches: a new draw per training epoch, and one fixed
        draw for the held-out batches, so the early-stopping loss is comparable across epochs."""
        return self.cfg.seed * 100_003 + epoch if train else self.cfg.seed + 7

    def embed_chunks(self, fn, x, chunk: int = 4096) -> torch.Tensor:
        """``fn`` over rows ``x`` (a tensor or array) in chunks of ``chunk`` rows, concatenated:
        ``(N, embed_dim)``, bounding the memory of a pass over a whole split."""
        out = [fn(x[i : i + chunk]) for i in range(0, len(x), chunk)]
        if out:
            return torch.cat(out)
        if isinstance(x, torch.Tensor):
            return x.new_zeros((0, self.cfg.embed_dim))
        return torch.zeros((0, self.cfg.embed_dim), device=self.device)

    def parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """What the optimiser updates (strategies that freeze parts override this)."""
        return [p for p in model.parameters() if p.requires_grad]

    def batches(self, split: SplitData, epoch: int, train: bool) -> Iterable[Any]:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, "loss/<part>": scalar, ...}`` for one batch."""
        raise NotImplementedError

    @torch.no_grad()
    def held_out(self, model: nn.Module, split: SplitData, epoch: int) -> Iterable[tuple[dict, int]]:
        """The held-out loss's step outputs as ``(outputs summed over n batches, n)``: by default
        :meth:`step` on each held-out batch. Strategies override it to embed the split once
        instead of once per batch; the numbers must stay :meth:`step`'s."""
        for batch in self.batches(split, epoch, train=False):
            yield self.step(model, batch), 1

    def rows(self, split: SplitData, name: str) -> Any:
        """Row metadata (``.ids``, ``.labels``, ``.groups``) of the embedding named ``name``.

        Single modalities are the split's items; strategies that save fused subsets
        (``audio+video``, rows = groups) override this for those names.
        """
        try:
            return split.features[Modality.parse(name)]
        except (ValueError, KeyError):
            raise KeyError(f"strategy {self.name!r} returned embeddings {name!r} with no row metadata") from None

    @torch.no_grad()
    def embed(self, model: nn.Module, split: SplitData) -> dict[str, torch.Tensor]:
        """Embeddings of every item of ``split``, keyed by modality (or fused subset) name."""
        raise NotImplementedError
