"""The optimiser and schedule of a run (:func:`make_optimiser`): torch's AdamW without the
import of torch's compiler (about 1.4 s per run), and an exponential decay per epoch.

:class:`AdamW` calls torch's own implementations under the guards that would import
``torch._dynamo`` (``__wrapped__``), so the update rule, fused kernel and state dict are
torch's; where a torch version stops exposing them, the guarded methods run (slower start-up,
same results). Details: docs/notes/train.md.
"""

from __future__ import annotations

import inspect

import torch


def _unguarded(method):
    """The function under torch's guards (and profiler hook) of ``method``; ``method`` when there are none."""
    return inspect.unwrap(method)


_ADD_PARAM_GROUP = _unguarded(torch.optim.Optimizer.add_param_group)
_ZERO_GRAD = _unguarded(torch.optim.Optimizer.zero_grad)
_STATE_DICT = _unguarded(torch.optim.Optimizer.state_dict)
_LOAD_STATE_DICT = _unguarded(torch.optim.Optimizer.load_state_dict)
_ADAMW_STEP = _unguarded(torch.optim.AdamW.step)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (fused, foreach or plain, as torch picks) that never imports torch's compiler."""

    def add_param_group(self, param_group) -> None:
        _ADD_PARAM_GROUP(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _ZERO_GRAD(self, set_to_none)

    def state_dict(self):
        return _STATE_DICT(self)

    def load_state_dict(self, state_dict) -> None:
        _LOAD_STATE_DICT(self, state_dict)

    def step(self, closure=None):
        # what _use_grad_for_differentiable does outside torch.compile: no autograd through the update
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _ADAMW_STEP(self, closure)


def make_optimiser(cfg, params):
    """``(AdamW, ExponentialLR)`` over ``params`` with ``cfg``'s rate, weight decay and per-epoch decay."""
    params = list(params)
    # fused: one kernel for all tensors instead of a Python loop over them (same update rule)
    opt = AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(params))
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)


def _fused(params) -> dict:
    devices = {p.device.type for p in params}
    return {"fused": True} if params and devices <= {"cpu", "cuda"} and all(p.dtype == torch.float32 for p in params) else {}
