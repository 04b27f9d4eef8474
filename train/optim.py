"""torch's AdamW without the import of torch's compiler, which costs about 1.4 s per run.

Every ``torch.optim.Optimizer`` wraps ``add_param_group``, ``zero_grad``, ``state_dict``,
``load_state_dict`` (``torch._disable_dynamo``) and ``step`` (``_use_grad_for_differentiable``)
in guards that import ``torch._dynamo`` on first use, so that ``torch.compile`` does not
trace into them. mmx never compiles its optimiser, so the guards protect nothing here, yet
importing the compiler was about half of the ~6 s CPU start-up of ``mmx train`` (issue 12,
item 5). :class:`AdamW` calls the very same torch implementations underneath those guards
(``__wrapped__``, which ``functools.wraps`` records): the update rule, the fused kernel, the
state dict format and the interplay with ``torch.optim.lr_scheduler`` are torch's own.
Where a torch version stops exposing ``__wrapped__``, the guarded method is used (slower
start-up, same results); ``tests/train/test_optim.py`` notices either way.
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
