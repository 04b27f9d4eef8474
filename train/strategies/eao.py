"""Everything at Once (Shvetsova et al., paper 001): fusion transformer + combinatorial loss.

The model is :class:`mmx.train.fusion.EverythingAtOnce`; the loss is
:func:`mmx.train.losses.combinatorial_loss` over the terms of ``options.terms`` (``eao``:
eq. 3 over the combinations up to a triplet, Sec. 3.2.3, which is eq. 2 for three
modalities; ``single-pair``; ``pairwise``; ``all``: eq. 3; or a list such as
``[text-video, text-audio+video]``), weighted by ``options.weights`` and ``default_weight``.
``options.audio_encoder: davenet`` trains an audio CNN with the model and
``audio_shift_seconds`` shifts the audio in training (Sec. 4.1, :mod:`mmx.train.audio_encoder`).
``options.positives: class`` (class-aligned data) makes same-class rows positives in every term.
:data:`EAO_OPTIONS` are the options (small defaults), :data:`EAO_PAPER_SETTINGS` the paper's
settings (Sec. 4.1 and its reference code). Readings, groups and pseudo-groups: docs/notes/train.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import torch
from torch import nn

from mmx.cache.modality import Modality
from mmx.eval.metrics import LATE
from mmx.train.audio_encoder import AUDIO_ENCODERS, DavenetEncoder, shift_tokens, tokens_per_second
from mmx.train.fusion import EverythingAtOnce
from mmx.train.losses import combinatorial_loss
from mmx.train.samplers import group_table, make_sampler, to_device
from mmx.train.strategies.base import Strategy

EAO_OPTIONS = {
    "token_dim": 256,  # paper: 4096
    "depth": 1,
    "heads": 4,  # paper: 64
    "mlp_dim": 0,  # 0: token_dim (paper: 4096 = token_dim)
    "fusion": "shared",  # shared | separate | none (Table 4)
    "cls_token": False,  # Table 5 (implies a shared final projection)
    "shared_projection": False,  # Table 5
    "positional": False,  # Table 6: learned positional embeddings
    "terms": "eao",  # eao | pairwise | all | list of "X-Y"
    "weights": {"text-video": 1.0},
    "default_weight": 0.1,
    "max_tokens": 0,  # 0: no limit; else keep the first max_tokens tokens of an item
    "final_norm": False,  # the reference builds a final LayerNorm and never applies it
    "init": "vit",  # vit: truncated normal as the reference | torch: PyTorch's default
    "audio_encoder": "none",  # none: the cached audio tokens as they are | davenet: a CNN trained with the model (Sec. 4.1)
    "audio_dim": 256,  # davenet's channels and output width (paper: 4096)
    "audio_shift_seconds": 4.0,  # training only: audio read from a random offset of up to this many seconds (Sec. 4.1)
    # pair: a row's own row is its one positive (the paper's eq. 4); class: on class-aligned data
    # every same-class row of the batch is a positive too (Khosla et al. 2020, as joint's option)
    "positives": "pair",
}
ORDER = list(Modality)
CLASSES = "classes"  # the batch key of each row's class (options.positives: class); never a modality name


@dataclasses.dataclass
class Rows:
    """Row metadata of a fused embedding: one row per group."""

    ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray


def canonical(subset) -> tuple:
    """Modalities of a subset in the shared order (text, image, audio, video)."""
    return tuple(sorted((Modality.parse(str(m)) for m in subset), key=ORDER.index))


def parse_term(text: str) -> tuple[tuple, tuple]:
    if text.count("-") != 1:
        raise ValueError(f"loss term {text!r}: expected X-Y with X, Y '+'-joined modalities, e.g. text-audio+video")
    x, y = (canonical(s.split("+")) for s in text.split("-"))
    if set(x) & set(y):
        raise ValueError(f"loss term {text!r}: the two sides share a modality")
    return x, y


def build_terms(modalities: list, spec, weights: dict, default_weight: float) -> list[tuple]:
    """``[(X, Y, weight)]`` for ``spec`` over ``modalities`` (see the module docstring)."""
    mods = canonical(modalities)
    singles = [(m,) for m in mods]
    if isinstance(spec, (list, tuple)):
        pairs = [parse_term(str(t)) for t in spec]
        outside = sorted({m.value for x, y in pairs for m in x + y if m not in mods})
        if outside:
            raise ValueError(f"loss terms name modalities not in play: {', '.join(outside)}")
    elif spec == "pairwise":
        pairs = list(itertools.combinations(singles, 2))
    elif spec == "single-pair":
        pairs = list(itertools.combinations(singles, 2))
        pairs += [((m,), p) for m in mods for p in itertools.combinations([o for o in mods if o != m], 2)]
    elif spec in ("eao", "all"):
        # eq. 3: every two disjoint subsets; eao takes the subsets "up to a triplet" (Sec. 3.2.3)
        largest = len(mods) - 1 if spec == "all" else min(3, len(mods) - 1)
        subsets = [canonical(c) for r in range(1, largest + 1) for c in itertools.combinations(mods, r)]
        pairs = [(x, y) for x, y in itertools.combinations(subsets, 2) if not set(x) & set(y)]
    else:
        raise ValueError(f"options.terms must be eao, single-pair, pairwise, all or a list of X-Y terms, not {spec!r}")
    lookup = {}
    for key, w in (weights or {}).items():
        x, y = parse_term(str(key))
        lookup[frozenset([x, y])] = float(w)
    # weights of terms not in play (text-video in a run without video) simply apply to nothing
    return [(x, y, lookup.get(frozenset([x, y]), float(default_weight))) for x, y in pairs]


# Paper 001 Sec. 4.1 and its reference code: Adam lr 5e-5 decayed x0.9 per epoch, tau 0.05, 2240
# in-batch negatives (the reference's batch of 224 videos x 10 clips each), a fixed 15 epochs (the last weights kept), a 4096-d token space with one 64-head block and
# MLP 4096, a 6144-d joint space, dropout 0 (the reference's). A GPU job at this size; the
# option defaults above stay small for tests and CPU tries that build the strategy directly.
EAO_PAPER_SETTINGS = {"lr": 5e-5, "lr_decay": 0.9, "weight_decay": 0.0, "tau": 0.05, "batch_size": 2240, "epochs": 15,
              "keep": "last", "monitor": "loss", "alignment": "auto", "embed_dim": 6144, "dropout": 0.0,
              "options": {"token_dim": 4096, "heads": 64, "mlp_dim": 4096}}


class EverythingAtOnceStrategy(Strategy):
    name = "eao"
    paper_settings = EAO_PAPER_SETTINGS
    # tau: auto (the eao-cpu preset): paper 001's 0.05 on instance-aligned data (its own); 0.2 on
    # class-aligned batches, chosen on val on both digits sets (benchmarks/bench_tau.py, as joint's)
    taus = {"instance": 0.05, "class": 0.2}
    needs_tokens = True
    alignment = "any"
    options = EAO_OPTIONS
    cpu_preset = "eao-cpu"  # what a refused CPU run is pointed to (train/sizing.py)

    def __init__(self, cfg, data, device):
        super().__init__(cfg, data, device)
        if self.opt["positives"] == "class" and cfg.alignment != "class":
            raise ValueError(f"eao: options.positives=class needs class-aligned data; this run is {cfg.alignment}-aligned")
        self.terms = build_terms(self.modalities, self.opt["terms"], self.opt["weights"], self.opt["default_weight"])
        self.subsets = sorted({s for x, y, _ in self.terms for s in (x, y)}, key=lambda s: (len(s), [ORDER.index(m) for m in s]))
        self._groups: dict = {}
        self._token_counts: dict = {}
        self.audio_shift = self._audio_shift()

    @classmethod
    def check(cls, cfg) -> list[str]:
        problems = super().check(cfg)
        opts = {**cls.option_defaults(), **cfg.options}
        for k in ("token_dim", "depth", "heads"):
            if not isinstance(opts[k], int) or opts[k] < 1:
                problems.append(f"eao: options.{k} must be a positive integer, got {opts[k]!r}")
        if not isinstance(opts["mlp_dim"], int) or opts["mlp_dim"] < 0:
            problems.append(f"eao: options.mlp_dim must be a non-negative integer, got {opts['mlp_dim']!r}")
        if isinstance(opts["token_dim"], int) and isinstance(opts["heads"], int) and opts["heads"] > 0 and opts["token_dim"] % opts["heads"]:
            problems.append(f"eao: options.token_dim ({opts['token_dim']}) must be divisible by options.heads ({opts['heads']})")
        if opts["fusion"] not in ("shared", "separate", "none"):
            problems.append(f"eao: options.fusion must be shared, separate or none, not {opts['fusion']!r}")
        if opts["init"] not in ("vit", "torch"):
            problems.append(f"eao: options.init must be vit or torch, not {opts['init']!r}")
        if opts["cls_token"] and opts["fusion"] == "none":
            problems.append("eao: options.cls_token needs a transformer (fusion shared or separate)")
        if not isinstance(opts["max_tokens"], int) or opts["max_tokens"] < 0:
            problems.append(f"eao: options.max_tokens must be a non-negative integer, got {opts['max_tokens']!r}")
        if opts["audio_encoder"] not in AUDIO_ENCODERS:
            problems.append(f"eao: options.audio_encoder must be one of {', '.join(AUDIO_ENCODERS)}, not {opts['audio_encoder']!r}")
        elif opts["audio_encoder"] != "none" and cfg.modalities and Modality.AUDIO not in Modality.parse_list(cfg.modalities):
            problems.append(f"eao: options.audio_encoder {opts['audio_encoder']} needs audio among the modalities")
        if not isinstance(opts["audio_dim"], int) or isinstance(opts["audio_dim"], bool) or opts["audio_dim"] < 1:
            problems.append(f"eao: options.audio_dim must be a positive integer, got {opts['audio_dim']!r}")
        shift = opts["audio_shift_seconds"]
        if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not 0 <= shift < float("inf"):
            problems.append(f"eao: options.audio_shift_seconds must be a non-negative number of seconds, got {shift!r}")
        if not isinstance(opts["weights"], dict):
            problems.append("eao: options.weights must be a mapping of X-Y terms to weights")
        if opts["positives"] not in ("pair", "class"):
            problems.append(f"eao: options.positives must be pair (paper 001) or class (all same-class rows), not {opts['positives']!r}")
        elif opts["positives"] == "class" and cfg.alignment == "instance":
            problems.append("eao: options.positives=class needs class-aligned data (alignment: class), not instance-aligned groups")
        try:
            build_terms(cfg.modalities, opts["terms"], opts["weights"] if isinstance(opts["weights"], dict) else {}, opts["default_weight"])
        except ValueError as exc:
            problems.append(f"eao: {exc}")
        return problems

    @classmethod
    def footprint(cls, cfg, shapes, batch: int, device: str = "cpu"):
        """Parameters, activations and FLOPs of a step at ``batch`` rows on ``device`` (train/sizing.py)."""
        from mmx.train.sizing import fusion_footprint

        o = {**cls.option_defaults(), **cfg.options}
        terms = build_terms(cfg.modalities, o["terms"], o["weights"], o["default_weight"])
        subsets = list(dict.fromkeys(tuple(m.value for m in s) for x, y, _ in terms for s in (x, y)))
        return fusion_footprint(cfg, o, shapes, batch, subsets, len(terms), device)

    # -- model ----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        o = self.opt
        max_positions = 0
        if o["positional"]:
            lengths = [int((f.offsets[1:] - f.offsets[:-1]).max()) for s in self.data.splits.values() for f in s.features.values() if len(f)]
            max_positions = min(max(lengths), o["max_tokens"]) if o["max_tokens"] else max(lengths)
        dims = {m.value: self.data.dims[m] for m in self.modalities}
        encoders = {}
        if o["audio_encoder"] == "davenet" and Modality.AUDIO in self.modalities:
            encoders[Modality.AUDIO.value] = DavenetEncoder(dims[Modality.AUDIO.value], o["audio_dim"])
            dims[Modality.AUDIO.value] = o["audio_dim"]
        return EverythingAtOnce(
            dims, encoders=encoders,
            token_dim=o["token_dim"], embed_dim=self.cfg.embed_dim, depth=o["depth"], heads=o["heads"],
            mlp_dim=o["mlp_dim"], dropout=self.cfg.dropout, fusion=o["fusion"], cls_token=o["cls_token"],
            shared_projection=o["shared_projection"], max_positions=max_positions, final_norm=o["final_norm"], init=o["init"],
        )

    def _audio_shift(self) -> int:
        """The largest training shift of the audio in tokens: ``audio_shift_seconds`` at the
        token rate the audio store records; 0 where it records none (imported features)."""
        seconds = float(self.opt["audio_shift_seconds"])
        if Modality.AUDIO not in self.modalities or not seconds:
            return 0
        rate = tokens_per_second(self.data.meta.get(Modality.AUDIO, {}).get("backbone", {}).get("token_rate"))
        if rate is None:
            warnings.warn("eao: the audio store records no token rate in time, so its tokens are not shifted "
                          "(options.audio_shift_seconds applies to extracted audio)", stacklevel=2)
            return 0
        return int(seconds * rate + 1e-9)

    def _lengths(self, split, m: Modality) -> np.ndarray:
        """Tokens per item of modality ``m`` of ``split``, kept on the host (read once per split)."""
        key = (id(split), m)
        if key not in self._token_counts:
            offsets = split.features[m].offsets.cpu().numpy()
            self._token_counts[key] = np.diff(offsets)
        return self._token_counts[key]

    def _padded(self, split, m: Modality, rows: torch.Tensor, host: np.ndarray, rng: np.random.Generator | None = None):
        """Item rows -> tokens (B, T, D), valid (B, T), present (B,), and the two masks on the host.

        ``rows``: the rows on the device, absent ones as any valid row; ``host``: the same on the
        host, -1 = absent. With ``rng`` (training) the audio of a row is read from a random
        offset (Sec. 4.1's shifts), cyclically within the item, before any ``max_tokens`` cut.
        Lengths and presence come from the host, so neither the padded width
        ``T`` nor the fusion model's choice of real tokens waits for the device (see
        :meth:`EverythingAtOnce.tokenize`).
        """
        f = split.features[m]
        full = np.where(host >= 0, self._lengths(split, m)[np.maximum(host, 0)], 0)
        length = np.minimum(full, self.opt["max_tokens"]) if self.opt["max_tokens"] else full
        t = int(length.max()) if len(host) else 0
        ar = torch.arange(t, device=rows.device)
        valid = ar[None, :] < to_device(length, rows.device)[:, None]  # (B, T)
        pos = ar[None, :]
        if rng is not None and m == Modality.AUDIO and self.audio_shift:
            shift = shift_tokens(full, self.audio_shift, rng)
            pos = (pos + to_device(shift, rows.device)[:, None]) % to_device(np.maximum(full, 1), rows.device)[:, None]
        idx = (f.offsets[rows][:, None] + pos).clamp(max=max(len(f.tokens) - 1, 0))
        x = f.tokens[idx] * valid[..., None]  # (B, T, D_m), padding zeroed
        host_masks = (np.arange(t)[None, :] < length[:, None], length > 0)
        return x, valid, to_device(host_masks[1], rows.device), host_masks

    def _inputs(self, split, host: dict, rows: dict | None = None, rng: np.random.Generator | None = None) -> dict:
        """Batch inputs per modality name; ``rows`` (device views of ``host``) are copied when not
        given; ``rng`` draws the training shifts of the audio."""
        out = {}
        for m, h in host.items():
            h = np.asarray(h)
            r = rows[m] if rows is not None else to_device(np.maximum(h, 0), split.features[m].offsets.device)
            out[m.value] = self._padded(split, m, r, h, rng)
        return out

    def batches(self, split, epoch, train):
        sampler = make_sampler(split, self.modalities, self.cfg.alignment, self.cfg.batch_size, self.batch_seed(epoch, train))
        if train:
            self.composition = sampler.composition
        device = split.features[self.modalities[0]].offsets.device
        # its own stream, seeded by the epoch, so a resumed run draws the same shifts
        rng = np.random.default_rng([self.batch_seed(epoch, train), 1]) if train and self.audio_shift else None
        first = self.modalities[0]
        for host, rows in sampler.plan().on_device(device):
            batch = self._inputs(split, host, rows, rng)
            if self.opt["positives"] == "class":  # class-aligned rows: every modality's item of a row has its class
                batch[CLASSES] = split.classes[first].index_select(0, rows[first])  # (B,)
            yield batch

    def step(self, model, batch):
        names = {s: tuple(m.value for m in s) for s in self.subsets}
        fused = model.embed_subsets(batch, list(names.values()))  # every subset in one pass
        embs = {s: fused[n] for s, n in names.items()}  # each (B, embed_dim)
        present = {s: np.all([batch[m][3][1] for m in n], 0) for s, n in names.items()}  # host masks: no wait
        return combinatorial_loss(embs, present, self.terms, self.cfg.tau, batch.get(CLASSES))

    # -- embeddings for eval ----------------------------------------------------------------
    def _group_rows(self, split) -> tuple:
        key = id(split)
        if key not in self._groups:
            names, first, _ = group_table({m: split.features[m].groups for m in self.modalities})
            self._groups[key] = (names, first)
        return self._groups[key]

    def fused_subsets(self) -> list[tuple]:
        """Saved for eval on instance-aligned data: every pair (Table 4 compares t->va also for
        models trained without fused terms) and every larger subset the loss uses."""
        if self.cfg.alignment != "instance":
            return []
        pairs = {canonical(p) for p in itertools.combinations(self.modalities, 2)}
        found = pairs | {s for s in self.subsets if len(s) > 1}
        return sorted(found, key=lambda s: (len(s), [ORDER.index(m) for m in s]))

    @torch.no_grad()
    def _embed_rows(self, model, split, subset: tuple, rows: dict) -> torch.Tensor:
        """Embeddings of row ``r`` of every ``rows[m]`` of ``subset`` together, in chunks of 512
        rows (their padded tokens are what bounds the memory here)."""
        names = tuple(m.value for m in subset)
        n = len(next(iter(rows.values())))
        return self.embed_chunks(lambda r: model(self._inputs(split, {m: rows[m][r] for m in subset}), names).float(),
                                 np.arange(n), chunk=512)

    @torch.no_grad()
    def embed(self, model, split):
        """Single modalities; on instance-aligned data also each fused subset twice: one joint
        pass (``audio+video``, paper 001's "va") and the late fusion of the separately embedded
        modalities (``audio+video.late``, Table 4's "v+a": ``norm(norm(e_v) + norm(e_a))``, the
        reference's ``v+a_embed`` up to its factor 1/2, which the cosine ignores)."""
        out = {}
        for m in self.modalities:
            out[m.value] = self._embed_rows(model, split, (m,), {m: np.arange(len(split.features[m]))})
        names, first = self._group_rows(split)
        for s in self.fused_subsets():
            keep = np.all([first[m] >= 0 for m in s], 0)
            name = "+".join(m.value for m in s)
            out[name] = self._embed_rows(model, split, s, {m: first[m][keep] for m in s})
            rows = [torch.as_tensor(first[m][keep], device=out[m.value].device) for m in s]
            late = torch.stack([out[m.value][r] for m, r in zip(s, rows)]).sum(0)  # singles are L2-normalised
            out[name + LATE] = torch.nn.functional.normalize(late, dim=-1)
        return out

    def rows(self, split, name: str):
        if "+" not in name:
            return super().rows(split, name)
        subset = canonical(name.removesuffix(LATE).split("+"))
        names, first = self._group_rows(split)
        keep = np.all([first[m] >= 0 for m in subset], 0)
        labels = np.asarray(split.features[subset[0]].labels)[first[subset[0]][keep]]
        return Rows(ids=names[keep], labels=labels, groups=names[keep])
