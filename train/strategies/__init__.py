"""The strategy table: one entry per strategy, feeding ``click.Choice`` and validation.

Entries name the class by import path, so ``mmx --help`` lists strategies without
importing torch.
"""

from __future__ import annotations

import importlib

STRATEGIES: dict[str, str] = {
    "joint": "mmx.train.strategies.fuerer:JointStrategy",
    "roundrobin": "mmx.train.strategies.fuerer:RoundRobinStrategy",
    "eao": "mmx.train.strategies.eao:EverythingAtOnceStrategy",
    "cvs": "mmx.train.strategies.cvs:CVSStrategy",
    "mcvs": "mmx.train.strategies.cvs:MCVSStrategy",
    "rvs": "mmx.train.strategies.cvs:RVSStrategy",
    "stagewise": "mmx.train.strategies.cvs:StagewiseStrategy",
}


def get_strategy(name: str):
    """The strategy class registered under ``name``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    module, cls = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(module), cls)
