"""A run sized to its machine before anything heavy: memory and time from the config alone.

:func:`shapes_from_cache` reads what sizing needs from the stores' metadata and small columns
(dimensions, token counts, items per split), not the features; :func:`estimate` turns a config,
those shapes and a device into parameters, the peak memory of a training step and of the
held-out pass, and the time of a step and of the run; :func:`refusal` says, in one line, when a
run will not fit the machine (memory on any device; on a CPU also :data:`CPU_BUDGET_S`) and names
the preset or ``--set`` that fits. Strategies size themselves (``footprint``); the
Everything-at-Once accounting, tensor by tensor, is :func:`fusion_footprint`. How each figure is
made and how it was checked against measured peaks: docs/notes/sizing.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

GIB = 2**30
# A CPU run estimated to take longer than this is refused unless forced: mmx's CPU settings are
# meant to train in minutes; longer runs are a GPU's, or a deliberate --force.
CPU_BUDGET_S = 30 * 60
# Sustained fp32 matmul rate per thread and memory traffic rate of a CPU core, for the time
# estimate: measured on the project's 2-core machine with benchmarks/bench_sizing.py (an order
# of magnitude elsewhere).
CPU_FLOPS_PER_THREAD = 40e9
CPU_BYTES_PER_S = 4e9
DISK_BYTES_PER_S = 300e6
MEMORY_HEADROOM = 0.9  # of the available memory a run may plan to use


@dataclasses.dataclass
class Shapes:
    """What sizing needs to know about a dataset, per modality name: feature ``dims``, real tokens
    per item (``tokens_mean``; ``tokens_max``, the padded width of a batch), ``items`` and
    ``token_rows`` (all splits, for the features held in memory); and the rows a batch can draw
    from the ``train`` and held-out splits (groups, or items of the largest modality)."""

    dims: dict
    tokens_mean: dict
    tokens_max: dict
    items: dict
    token_rows: dict
    train_units: int
    holdout_units: int


@dataclasses.dataclass
class Footprint:
    """A strategy's size at one batch: parameters, resident bytes of a training step's
    activations (what its forward keeps for backward), of a no-grad step and of an embedding
    chunk, and the FLOPs and bytes kept of one training step."""

    params: int
    train_bytes: float
    eval_bytes: float
    embed_bytes: float
    step_flops: float
    step_traffic: float


@dataclasses.dataclass
class Estimate:
    """The whole run: ``batch`` as drawn (clipped to the train split), steps per epoch, bytes of
    the features, the model state (weights, gradients, AdamW's moments) and the two peaks, and
    the seconds of a step and of the run."""

    strategy: str
    device: str
    threads: int
    batch: int
    steps_per_epoch: int
    epochs: int
    params: int
    data_bytes: float
    state_bytes: float
    train_bytes: float
    holdout_bytes: float
    checkpoint_bytes: float
    step_seconds: float
    run_seconds: float

    @property
    def peak_bytes(self) -> float:
        """Features + model state + the largest of a training step, a held-out pass and the
        writing of ``last.safetensors`` (a copy of weights and moments, then their serialised bytes)."""
        return self.data_bytes + self.state_bytes + max(self.train_bytes, self.holdout_bytes, self.checkpoint_bytes)

    def summary(self) -> str:
        mins = self.run_seconds / 60
        took = f"{mins:.0f} min" if mins >= 1 else f"{self.run_seconds:.0f} s"
        where = f"{self.threads} thread(s)" if self.device == "cpu" else self.device
        return (f"{self.params / 1e6:.1f}M parameters, batch {self.batch}, {self.steps_per_epoch} step(s) per epoch; "
                f"about {self.peak_bytes / GIB:.1f} GiB at its peak (features {self.data_bytes / GIB:.2f}, model and "
                f"optimiser {self.state_bytes / GIB:.2f}, train step {self.train_bytes / GIB:.2f}, held-out pass "
                f"{self.holdout_bytes / GIB:.2f}, checkpoint {self.checkpoint_bytes / GIB:.2f}) and about {took} on {where}")


# -- shapes ------------------------------------------------------------------------------------
def _train_and_holdout(split: np.ndarray, holdout: str, val_fraction: float, test_fraction: float) -> tuple:
    """Boolean masks of the items that end in train and in the held-out split, as
    :class:`mmx.train.data.Holdout` will form them (derived slices by their fractions)."""
    split = np.asarray([str(s) for s in split])
    n = len(split)
    stored = np.isin(split, ["train", "val", "test"]).any()
    if not stored:  # a derived test split first
        rank = np.arange(n) / max(n, 1)
        split = np.where(rank < test_fraction, "test", "train")
    train = split == "train"
    if holdout == "test":
        return train, split == "test"
    if (split == "val").any():
        return train, split == "val"
    order = np.cumsum(train) / max(int(train.sum()), 1)
    val = train & (order <= val_fraction)
    return train & ~val, val


def _units(keys: dict, alignment: str) -> int:
    """Rows a batch can draw: groups with two or more modalities (instance), or items of the
    largest modality (class; the sampler fills P classes x K items up to that many)."""
    if not keys:
        return 0
    if alignment == "instance":
        seen: dict = {}
        for groups in keys.values():
            for g in set(groups) - {""}:
                seen[g] = seen.get(g, 0) + 1
        return sum(1 for n in seen.values() if n >= min(2, len(keys)))
    return max(len(v) for v in keys.values())


def shapes_from_cache(cfg, tokens: bool) -> Shapes:
    """Shapes read from the stores of ``cfg`` (metadata, split and group columns, token
    lengths), without loading a feature."""
    from mmx.cache.modality import Modality
    from mmx.cache.store.find import find_store

    dims, mean, top, items, rows, train_keys, hold_keys = {}, {}, {}, {}, {}, {}, {}
    grouped = True
    for m in Modality.parse_list(cfg.modalities):
        store = find_store(cfg.cache, cfg.dataset, m, (cfg.backbones or {}).get(m.value), (cfg.stores or {}).get(m.value))
        ok = _ok_rows(store)
        split = store.column("split")[ok]
        groups = np.asarray([str(g) for g in store.column("group")[ok]])
        grouped &= bool(len(groups)) and bool((groups != "").all())
        train, hold = _train_and_holdout(split, cfg.holdout, cfg.val_fraction, cfg.test_fraction)
        if tokens and store.has_tokens:
            length = store.token_lengths()[ok]
        else:
            length = np.ones(len(split), np.int64)
        name = m.value
        dims[name], items[name], rows[name] = store.dim, len(split), int(length.sum())
        mean[name] = float(length.mean()) if len(length) else 1.0
        top[name] = int(length.max()) if len(length) else 1
        train_keys[name], hold_keys[name] = groups[train], groups[hold]
    alignment = cfg.alignment if cfg.alignment != "auto" else ("instance" if grouped else "class")
    return Shapes(dims, mean, top, items, rows, _units(train_keys, alignment), _units(hold_keys, alignment))


def _ok_rows(store) -> np.ndarray:
    """Rows of the complete shards (what a load reads; failed items are few and counted in)."""
    keep = np.zeros(store.n_items, bool)
    for k in store.complete_shards():
        s, e = store.shard_range(k)
        keep[s:e] = True
    return keep


def shapes_from_data(cfg, data) -> Shapes:
    """The same from features already in memory (a caller that passes ``data`` to :func:`train`)."""
    dims, mean, top, items, rows = {}, {}, {}, {}, {}
    for m in data.splits["train"].modalities:
        lengths = []
        for split in data.splits.values():
            f = split.features[m]
            off = f.offsets.cpu().numpy() if f.offsets is not None else np.arange(len(f) + 1)
            lengths.append(np.diff(off))
        length = np.concatenate(lengths)
        dims[m.value], items[m.value], rows[m.value] = int(data.dims[m]), len(length), int(length.sum())
        mean[m.value] = float(length.mean()) if len(length) else 1.0
        top[m.value] = int(length.max()) if len(length) else 1

    def units(split) -> int:
        grouped = all(all(str(g) for g in f.groups) for f in split.features.values())
        align = cfg.alignment if cfg.alignment != "auto" else ("instance" if grouped else "class")
        return _units({m.value: np.asarray([str(g) for g in f.groups]) if align == "instance" else np.arange(len(f))
                       for m, f in split.features.items()}, align)

    hold = data.splits.get(cfg.holdout) or data.splits["train"]
    return Shapes(dims, mean, top, items, rows, units(data.splits["train"]), units(hold))


# -- the Everything-at-Once accounting ----------------------------------------------------------
def fusion_model(opts: dict, dims: dict, embed_dim: int, dropout: float = 0.0, max_positions: int = 0, device="meta"):
    """The fusion model of ``opts`` (eao's options) on ``device``: on ``meta`` it allocates
    nothing, so its parameters are counted exactly before anything is built for real."""
    import torch

    from mmx.train.fusion import EverythingAtOnce

    from mmx.train.audio_encoder import DavenetEncoder

    dims, encoders = dict(dims), {}
    with torch.device(device):
        if opts.get("audio_encoder") == "davenet" and "audio" in dims:  # as eao's build_model adds it
            encoders["audio"] = DavenetEncoder(dims["audio"], opts["audio_dim"])
            dims["audio"] = opts["audio_dim"]
        return EverythingAtOnce(dims, encoders=encoders, token_dim=opts["token_dim"], embed_dim=embed_dim, depth=opts["depth"],
                                heads=opts["heads"], mlp_dim=opts["mlp_dim"], dropout=dropout, fusion=opts["fusion"],
                                cls_token=opts["cls_token"], shared_projection=opts["shared_projection"],
                                max_positions=max_positions, final_norm=opts["final_norm"], init=opts["init"])


def davenet_footprint(b: int, length: int, d_in: int, channels: int, blocks: int = 2, kernel: int = 3) -> tuple[list, float]:
    """The tensors :class:`~mmx.train.audio_encoder.DavenetEncoder` keeps for backward over a
    padded ``(b, length, d_in)`` batch, and its forward FLOPs. Kept (what autograd saves): the
    normalised input and its masked transpose (the stem's input); the stem's ReLU output and its
    masked copy; per residual block the inner ReLU output and its masked copy (the second
    convolution's input) and the same two after the sum. A convolution's output that a ReLU
    consumes, the sum and the last masked output are freed as the pass goes on."""
    x_in, x_c = b * length * d_in * 4.0, b * length * channels * 4.0
    kept = [x_in] * 2 + [x_c] * 2 + [x_c] * (4 * blocks)
    flops = 2.0 * b * length * (d_in * channels + blocks * 2 * kernel * channels * channels + channels * channels)
    return kept, flops


def resident(tensors: list, device: str = "cpu", backward: bool = True) -> float:
    """Bytes resident for ``tensors`` (sizes in bytes) alive at once. On a CPU glibc's malloc
    keeps freed blocks below its mmap threshold (which grows to 32 MiB) in its heap, where a
    training step's backward, freeing activations between new gradients, fragments them: such
    blocks cost :data:`HEAP_SLACK` times their size (measured, docs/notes/sizing.md); larger
    ones are mapped and given back whole, and a no-grad pass frees in the order it allocates.
    CUDA's caching allocator keeps :data:`CUDA_SLACK` over what is live."""
    if device == "cuda":
        return CUDA_SLACK * sum(tensors)
    slack = HEAP_SLACK if backward else 1.0
    return sum(t * (slack if t < MMAP_MAX else 1.0) for t in tensors)


HEAP_SLACK = 1.8
MMAP_MAX = 32 * 2**20
CUDA_SLACK = 1.2


def fusion_footprint(cfg, opts: dict, shapes: Shapes, batch: int, subsets: list, terms: int, device: str = "cpu") -> Footprint:
    """Everything at Once at ``batch`` rows: the tensors its step keeps for backward, counted as
    the code in train/fusion.py, train/losses.py and the strategy's batches makes them.

    ``subsets``: the subsets one step embeds (tuples of modality names); ``terms``: how many
    contrastive terms its loss has. Every row is taken as present and every item as the mean
    token count, padded to the longest (class-aligned batches and the reference's fixed clips
    are so).
    """
    mods = list(dict.fromkeys(m for s in subsets for m in s))
    d, heads, e = opts["token_dim"], opts["heads"], cfg.embed_dim
    h = opts["mlp_dim"] or d
    cap = opts["max_tokens"] or None
    lmean = {m: min(shapes.tokens_mean[m], cap or math.inf) for m in mods}
    lmax = {m: min(shapes.tokens_max[m], cap or shapes.tokens_max[m]) for m in mods}
    max_positions = max(lmax.values()) if opts["positional"] else 0
    params = sum(p.numel() for p in fusion_model(opts, {m: shapes.dims[m] for m in mods}, e, 0.0, max_positions).parameters())
    cls = 1 if opts["cls_token"] else 0
    fuse = "none" if opts["depth"] == 0 else opts["fusion"]
    davenet = "audio" in mods and opts.get("audio_encoder") == "davenet"
    enc = {m: (opts["audio_dim"] if davenet and m == "audio" else shapes.dims[m]) for m in mods}  # what the projections read
    if fuse != "shared":  # each modality through its own transformer (or none), alone
        subsets = [(m,) for m in mods]
    F4 = 4.0

    def pass_(b: int, subs: list, train: bool) -> tuple[float, float, float]:
        """(resident bytes at the peak, matmul FLOPs of the forward, bytes the step writes) of
        one pass over ``b`` rows embedding ``subs``: with ``train`` everything kept for backward
        (the peak is reached as backward starts, measured), else the most one operation holds."""
        c = {m: sum(m in s for s in subs) for m in mods}
        used = [m for m in mods if c[m]]
        n_in = sum(b * lmean[m] for m in used) + cls * b  # real tokens, each projected once
        n = sum(c[m] * b * lmean[m] for m in used) + cls * b * len(subs)  # sequence tokens over all subsets
        k = sum(lmax[m] for m in used) + cls  # key slots per row (padded)
        q = sum(c[m] * lmax[m] for m in used) + cls * len(subs)  # query slots per row
        rows = sum(len(s) + cls for s in subs) * b  # pooled rows: one per (subset, modality) or [cls]
        padded = [b * lmax[m] * (shapes.dims[m] + 2) * F4 for m in used]  # the batch's (B, T, D) inputs and indices
        gathered = [b * lmean[m] * enc[m] * F4 for m in used]  # real tokens: the projections' inputs
        projected = [b * lmean[m] * d * F4 for m in used]  # each of: linear out, gate, product, LayerNorm out
        flops = sum(b * lmean[m] * 2 * (enc[m] * d + d * d) for m in used)
        kept = padded + gathered + projected * 3 + [n_in * d * F4]  # the last: the modalities' tokens concatenated
        at_attention = padded + [n_in * d * F4] * 2 + [n_in * 3 * d * F4, n * d * F4]  # tokens, norm1, qkv, the residual
        if davenet and "audio" in used:
            dav_kept, dav_flops = davenet_footprint(b, lmax["audio"], shapes.dims["audio"], opts["audio_dim"])
            kept += dav_kept
            flops += dav_flops
            at_attention += [b * lmax["audio"] * opts["audio_dim"] * F4] * 2  # its output, and the gather of real tokens
        if fuse == "none":
            kept.append(n * d * F4)
            at_attention = [0.0]
        else:
            blocks = opts["depth"] * (len(used) if fuse == "separate" else 1)
            probs = b * heads * k * q * F4  # the first block's (B, H, K, Q) attention probabilities
            first = [n_in * d * F4, b * k * 3 * d * F4, probs] + [n * d * F4] * 3 + [n * h * F4]
            kept += first * (blocks if fuse == "separate" else 1)
            # gathered q, k, v; the scores and the probabilities; their output and its gather back to tokens
            at_attention += [b * k * 3 * d * F4, probs, probs, b * q * d * F4, n * d * F4]
            flops += n_in * 2 * 3 * d * d + b * 2 * k * k * d + b * 2 * q * k * d + n * 2 * (d * d + d * h)
            for _ in range(opts["depth"] - 1 if fuse == "shared" else 0):  # later blocks: padded attention per subset size
                lens = [sum(lmax[m] for m in s) + cls for s in subs]
                kept += [b * heads * L * L * F4 for L in lens] + [n * d * F4] * 5 + [n * h * F4] * 2 + [n * 3 * d * F4]
                flops += n * 2 * (4 * d * d + 2 * d * h) + sum(b * 4 * L * L * d for L in lens)
            kept += [rows * d * F4, rows * h * F4] * 2  # pooled outputs and the MLP's pooled hidden rows
            flops += rows * 2 * h * d
        kept += [rows * d * F4] + [rows * e * F4] * 5 + [len(subs) * b * e * F4] * 2  # gated projections, eq. 1
        flops += rows * 2 * (d * e + e * e)
        if not train:
            return resident(at_attention, device, backward=False), flops, 0.0
        kept += [b * e * F4] * (2 * terms) + [b * b * F4] * (3 * terms)  # normalised rows, logits, log-softmaxes
        flops += terms * 2 * b * b * e
        return resident(kept, device), flops, sum(kept)

    train_peak, fwd, traffic = pass_(batch, subsets, True)
    hold_peak, _, _ = pass_(batch, subsets, False)
    chunk = min(512, batch)
    embed_peak = max(pass_(chunk, [s], False)[0] for s in subsets)
    return Footprint(params, train_peak, max(hold_peak, embed_peak), embed_peak, 3 * fwd, 3 * traffic)


# -- the run --------------------------------------------------------------------------------------
def estimate(cfg, strategy_cls, shapes: Shapes, device, threads: int = 1) -> Estimate | None:
    """The run of ``cfg`` on ``device``; None when the strategy does not size itself."""
    footprint = strategy_cls.footprint
    if footprint is None:
        return None
    batch = max(1, min(cfg.batch_size, shapes.train_units or cfg.batch_size))
    hold_batch = max(1, min(cfg.batch_size, shapes.holdout_units or cfg.batch_size))
    dev = str(getattr(device, "type", device))
    fp = footprint(cfg, shapes, batch, dev)
    held = footprint(cfg, shapes, hold_batch, dev) if hold_batch != batch else fp
    passes = -(-max(shapes.train_units, 1) // batch)
    steps = passes * max(1, -(-(cfg.min_steps or 0) // passes))  # whole passes until min_steps
    if dev == "cpu":
        rate = CPU_FLOPS_PER_THREAD * threads
        state = 28.0 * fp.params  # AdamW reads weights, gradients and moments and writes three of them
        step_s = fp.step_flops / rate + (fp.step_traffic + state) / CPU_BYTES_PER_S
        hold_steps = -(-max(shapes.holdout_units, 1) // hold_batch)
        hold_s = hold_steps * (held.step_flops / 3 / rate + held.step_traffic / 3 / CPU_BYTES_PER_S)
        saves = 16.0 * fp.params / DISK_BYTES_PER_S  # last.safetensors (weights, moments) and the best weights
        run_s = cfg.epochs * (steps * step_s + 2 * hold_s + saves)  # held-out loss and recall each epoch
    else:
        step_s = run_s = 0.0  # a GPU's time is its own; only its memory is checked
    data = sum((shapes.token_rows[m] + shapes.items[m]) * shapes.dims[m] * 4.0 for m in shapes.dims)
    amp = 0.75 if dev == "cuda" and cfg.amp else 1.0  # bf16 autocast halves matmul outputs, not the fp32 rest
    saving = 24.0 * fp.params if dev == "cpu" else 0.0  # checkpoint copies go to host memory, not the device's
    return Estimate(cfg.strategy, dev, threads, batch, steps, cfg.epochs, fp.params, data, 16.0 * fp.params,
                    fp.train_bytes * amp, held.eval_bytes * amp, saving, step_s, run_s)


def available_bytes(device) -> float:
    """Memory a run may use: on a CPU the kernel's MemAvailable (and the cgroup's limit when
    lower), on CUDA the device's total memory."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return float(torch.cuda.get_device_properties(dev).total_memory)
    avail = math.inf
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def fits(est: Estimate, capacity: float) -> bool:
    """Within :data:`MEMORY_HEADROOM` of ``capacity``, and on a CPU within :data:`CPU_BUDGET_S`."""
    return est.peak_bytes <= MEMORY_HEADROOM * capacity and (est.device != "cpu" or est.run_seconds <= CPU_BUDGET_S)


def refusal(cfg, strategy_cls, shapes: Shapes, device, threads: int, capacity: float,
            est: Estimate | None = None) -> str | None:
    """One line when ``cfg`` will not fit ``capacity`` bytes (or, on a CPU, the time budget),
    naming what fits; None when it fits or the strategy does not size itself. ``est``: the
    run's :func:`estimate`, when the caller has it."""
    est = est or estimate(cfg, strategy_cls, shapes, device, threads)
    if est is None or fits(est, capacity):
        return None
    why = []
    if est.peak_bytes > MEMORY_HEADROOM * capacity:
        why.append(f"needs about {est.peak_bytes / GIB:.1f} GiB where {capacity / GIB:.1f} GiB are available")
    if est.device == "cpu" and est.run_seconds > CPU_BUDGET_S:
        why.append(f"would take about {est.run_seconds / 60:.0f} min where the CPU budget is {CPU_BUDGET_S / 60:.0f} min")
    fix, fixed = suggestion(cfg, strategy_cls, shapes, device, threads, capacity)
    said = (f"use {fix} ({fixed.summary()})" if fix else
            "no smaller setting mmx knows fits; use a smaller --batch-size or a GPU (--device cuda)")
    return (f"{cfg.strategy} {' and '.join(why)} ({est.params / 1e6:.0f}M parameters, batch {est.batch}, "
            f"{est.steps_per_epoch} step(s) x {est.epochs} epochs on {est.device}): {said}, or pass --force to train anyway")


FLAGS = {"batch_size": "--batch-size", "epochs": "--epochs", "lr": "--lr"}
KEPT = ("dataset", "cache", "modalities", "backbones", "stores", "device", "threads", "out", "name", "seed", "holdout",
        "val_fraction", "test_fraction", "deterministic", "amp", "cuda_graphs")  # what a suggestion never changes


def changes(cfg, other) -> list[str]:
    """``other``'s settings that differ from ``cfg``'s, as command-line flags."""
    a, b = cfg.to_dict(), other.to_dict()
    out = []
    for k, v in b.items():
        if k in KEPT or k == "options" or a.get(k) == v:
            continue
        out.append(f"{FLAGS[k]} {v}" if k in FLAGS else f"--set {k}={v}")
    for k, v in b["options"].items():
        if a["options"].get(k, v) != v or k not in a["options"]:
            out.append(f"--set options.{k}={json.dumps(v)}")
    return out


def suggestion(cfg, strategy_cls, shapes: Shapes, device, threads: int, capacity: float) -> tuple[str, Any]:
    """``(flags, estimate)`` of the nearest setting that fits, ``("", None)`` when none does.

    Tried in turn: on a CPU the strategy's CPU preset (``cpu_preset``) with the run's data
    settings; then halving the batch; then, for time alone, fewer epochs; each from the run's
    own config, then from the preset's. Named as the flags that differ from the run, or as the
    preset when more than three do."""
    from mmx.train import config as config_mod

    bases = [("", cfg)]
    preset = strategy_cls.cpu_preset
    if preset and str(getattr(device, "type", device)) == "cpu":
        kept = {k: getattr(cfg, k) for k in KEPT}
        bases.insert(0, (f"--preset {preset}", config_mod.resolve([preset], kept)))

    def candidates():
        for flag, base in bases:
            if base is not cfg:
                yield flag, base
        for flag, base in bases[::-1]:
            b = estimate(base, strategy_cls, shapes, device, threads).batch
            while b > 8:
                b //= 2
                yield flag, dataclasses.replace(base, batch_size=b)
        for flag, base in bases[::-1]:
            est = estimate(base, strategy_cls, shapes, device, threads)
            if est.peak_bytes <= MEMORY_HEADROOM * capacity and est.run_seconds > 0:
                epochs = int(CPU_BUDGET_S / (est.run_seconds / est.epochs))
                if epochs >= 1:
                    yield flag, dataclasses.replace(base, epochs=epochs)

    for flag, c in candidates():
        est = estimate(c, strategy_cls, shapes, device, threads)
        if est is not None and fits(est, capacity):
            diff = changes(cfg, c)
            if flag and len(diff) > 3:
                base = next(b for f, b in bases if f == flag)
                diff = [flag] + changes(base, c)
            return " ".join(diff), est
    return "", None
