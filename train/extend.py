"""Adding a modality to a trained run without changing it (``mmx train --from RUN --add-modality M``).

Strategy-agnostic: the new model is built for the old modalities plus the new ones, every
tensor of RUN's checkpoint is loaded into it and frozen, and only what is new trains. For
M-CVS and RVS this is a further stage (paper 002 III-A: "the weights of all the modalities
already present in the M-CVS are frozen"; thesis 3.3-A); for paper 000's heads it trains
the new head against frozen heads. Embeddings of the old modalities depend only on
frozen tensors, so they stay bitwise equal.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from mmx.train import checkpoint
from mmx.train import config as config_mod


def extension_config(run: str | Path, add: list[str], overrides: dict | None = None, sets=()):
    """RUN's config with ``add`` appended to its modalities and the warm start set.

    ``overrides`` (non-None values) and ``sets`` (``key=value``) apply on top, as for any run.
    """
    run = Path(run)
    problems = []
    if not (run / "config.yaml").exists():
        problems.append(f"{run}: no config.yaml; --from needs a run folder written by mmx train")
    if not (run / checkpoint.BEST).exists():
        old = " (it has a pickled checkpoint.pt: it predates mmx's safe checkpoint format, train it again)"
        problems.append(f"{run}: no {checkpoint.BEST} to extend" + (old if (run / "checkpoint.pt").exists() else ""))
    if problems:
        raise ValueError("cannot extend this run:\n  " + "\n  ".join(problems))
    cfg = config_mod.load(run / "config.yaml")
    old = list(cfg.modalities)
    twice = [m for m in add if m in old]
    if twice:
        raise ValueError(f"--add-modality {', '.join(twice)}: already in {run} ({', '.join(old)})")
    if not add:
        raise ValueError("--from needs at least one --add-modality")
    options = {**cfg.options, "extend_from": str(run / checkpoint.BEST), "trained_modalities": old}
    cfg = dataclasses.replace(cfg, modalities=old + list(add), options=options, name="")
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    if values:
        cfg = config_mod.merge(cfg, values, "command line")
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k.startswith("options."):
            cfg = config_mod.merge(cfg, {"options": {k[len("options."):]: yaml.safe_load(v)}}, "--set")
        else:
            cfg = config_mod.merge(cfg, {k: v}, "--set")
    return cfg


def warm_start(model, path: str | Path) -> set[str]:
    """Load every tensor of the checkpoint at ``path`` into ``model`` and freeze it; return the names
    loaded (``Strategy.warm_start`` keeps them, so that stages which set what trains leave them frozen).

    Raises listing every problem when the checkpoint does not fit the new model (a tensor
    the model lacks, or a different shape, e.g. when the class set changed).
    """
    state = checkpoint.load(path)["model"]
    own = model.state_dict()
    problems = [f"{k}: in the checkpoint, not in the new model" for k in state if k not in own]
    problems += [f"{k}: shape {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the new model"
                 for k, v in state.items() if k in own and own[k].shape != v.shape]
    if problems:
        raise ValueError(f"checkpoint {path} does not fit the extended model (same strategy options and classes needed):\n  "
                         + "\n  ".join(problems))
    model.load_state_dict(state, strict=False)
    loaded = set(state)
    for name, p in model.named_parameters():
        if name in loaded:
            p.requires_grad_(False)
    return loaded
