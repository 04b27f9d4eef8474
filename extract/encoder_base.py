"""The encoder contract every backbone implements (:func:`mmx.extract.backbones.build_encoder` builds them).

An :class:`Encoder` is split in two, because decoding runs in worker processes and the model in
the main process (or a dask worker): its ``prep``, a light picklable :class:`Preparer`, decodes
one item into arrays (``prepare``) and stacks several into a batch (``collate``); the encoder
holds the frozen model and turns a collated batch into one ``(tokens (T_i, D), pooled (D,))``
pair per item (``forward``), or starts that work and returns a :class:`Pending` (``launch``).
:class:`RowEncoder` is the base of backbones that give one token per row (image, frame, window).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from mmx.extract import decode

Output = tuple  # (tokens (T, D) float32, pooled (D,) float32)


class Preparer:
    """Decodes and preprocesses items; runs in DataLoader worker processes."""

    def prepare(self, item: dict) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def collate(self, samples: list) -> Any:
        """Default: each sample is a ``(T_i, ...)`` array of rows; stack them all."""
        import torch

        counts = [len(s) for s in samples]
        rows = np.concatenate(samples, 0) if samples else np.zeros((0,))
        return torch.from_numpy(np.ascontiguousarray(rows)), counts


def local_path(item: dict) -> str:
    uri = item.get("uri") or ""
    if not uri:
        raise decode.DecodeError("no uri for a media item")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise decode.DecodeError(f"not a local file: {uri} (run 'mmx fetch' first and extract from its manifest)")
    return uri


class Pending:
    """A batch's outputs, possibly still being computed or copied back on the device.

    ``result()`` waits (on a CUDA event, when there is one) and returns one
    :data:`Output` per item.
    """

    def __init__(self, finish, value, event=None):
        self._finish, self._value, self._event = finish, value, event

    @classmethod
    def done(cls, outputs: list) -> "Pending":
        return cls(lambda v: v, outputs)

    @classmethod
    def to_host(cls, features, finish) -> "Pending":
        """``finish(array)`` once ``features`` (a device tensor) has reached the host.

        On CUDA the copy goes into pinned memory without blocking, and an event marks its end.
        """
        import torch

        host, event = features, None
        if features.device.type == "cuda":
            host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
            host.copy_(features, non_blocking=True)  # queued on the features' device's stream
            event = torch.cuda.Event()
            # on that stream, not the current device's: with --device cuda:1 an event on cuda:0
            # would be passed at once and the host would read the buffer before the copy filled it
            event.record(torch.cuda.current_stream(features.device))
        return cls(lambda t: finish(t.numpy()), host, event)

    def result(self) -> list:
        if self._event is not None:
            self._event.synchronize()
        return self._finish(self._value)


def split_rows(flat: np.ndarray, counts: list[int]) -> list[Output]:
    """Per item: its ``counts[i]`` rows as tokens, and their mean as the pooled vector."""
    out, pos = [], 0
    for c in counts:
        tokens = flat[pos : pos + c]
        pos += c
        out.append((tokens, tokens.mean(0)))
    return out


class Encoder:
    """A frozen backbone ready to extract. Built by :func:`mmx.extract.backbones.build_encoder`.

    Subclasses implement ``forward`` (synchronous), or ``launch`` and a ``forward`` that
    waits for it.
    """

    def __init__(self, info, options: dict):
        self.info = info
        self.options = dict(options)
        self.device = "cpu"
        self.dim: int = int(info.dim) if info.dim else 0
        self.prep: Preparer = Preparer()

    # metadata that goes into the store key
    def meta(self) -> dict:
        return {
            "name": self.info.name,
            "dim": self.dim,
            "token_rate": self.token_rate(),
            "weights": self.options.get("weights") or self.info.weights,
            "modality": self.info.modality.value,
        }

    def token_rate(self) -> str:
        return self.info.token_rate

    def scale(self) -> dict | None:
        """The output scale, recorded in the store when it is arbitrary (so training need not guess)."""
        return None

    def preprocessing(self) -> dict:
        return {k: v for k, v in sorted(self.options.items()) if k != "weights"}

    channels_last = False  # conv backbones: NHWC on CUDA, where cuDNN's bf16 convolutions want it
    resizes_on_device = False  # image/frame backbones whose preparer can leave resizing to the GPU

    def to(self, device: str) -> "Encoder":
        import torch

        self.device = str(device)
        model = getattr(self, "model", None)
        if model is not None:
            model.to(device, memory_format=torch.channels_last if self._nhwc() else torch.contiguous_format)
        if self.resizes_on_device:
            self.prep.on_device = self.device.startswith("cuda")
        return self

    def _nhwc(self) -> bool:
        return self.channels_last and self.device.startswith("cuda")

    def items_per_batch(self, batch_size: int) -> int:
        return batch_size

    def forward(self, batch: Any, batch_size: int) -> list[Output]:  # pragma: no cover
        raise NotImplementedError

    def launch(self, batch: Any, batch_size: int) -> Pending:
        """Start ``forward`` on ``batch``; this default runs it to the end."""
        return Pending.done(self.forward(batch, batch_size))


class RowEncoder(Encoder):
    """Items are stacks of rows (frames, windows, images); each row becomes one token."""

    def embed(self, x):  # (n, *row) -> (n, D)
        raise NotImplementedError

    def normalise_pixels(self, x):
        """uint8 ``(..., 3, H, W)`` -> float32 ``(x / 255 - mean) / std`` with the preparer's mean/std."""
        mean, std = self._pixel_stats(x.device)
        return (x.float() / 255.0 - mean) / std

    def _pixel_stats(self, device):
        """The preparer's mean and std as ``(3, 1, 1)`` float32 tensors on ``device``, made once per
        device: a CUDA tensor built from Python numbers is a blocking copy, which waits for all the
        device has queued (the batch in flight), so building them per batch held every launch
        until the previous batch was done."""
        import torch

        made = self.__dict__.setdefault("_stats_on", {})
        if device not in made:
            made[device] = tuple(torch.tensor(v, dtype=torch.float32).view(3, 1, 1).to(device)
                                 for v in (self.prep.mean, self.prep.std))
        return made[device]

    def resize_pixels(self, rows: list):
        """uint8 ``(T_i, 3, H_i, W_i)`` arrays of any sizes -> float ``(sum T_i, 3, S, S)`` on the device,
        values 0-255, in order: rows of one size are moved and resized together, then put back in
        item order by one cat of views (no index tensor: copying one to the device would wait for
        the batch in flight)."""
        import torch
        import torch.nn.functional as F

        size = self.prep.size
        by_shape: dict = {}
        for i, r in enumerate(rows):
            by_shape.setdefault(tuple(r.shape[-2:]), []).append(i)
        pieces: list = [None] * len(rows)
        for shape, members in by_shape.items():
            # each sample moves as the loader pinned it (a cat on the host would copy into pageable memory)
            x = torch.cat([torch.as_tensor(rows[i]).to(self.device, non_blocking=True) for i in members]).float()
            if shape != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            for i, part in zip(members, x.split([len(rows[i]) for i in members])):
                pieces[i] = part
        return torch.cat(pieces) if pieces else torch.zeros((0, 3, size, size), device=self.device)

    def launch(self, batch: Any, batch_size: int) -> Pending:
        import torch

        rows, counts = batch
        resized = isinstance(rows, list)  # pixels left at their own sizes by an on-device preparer
        if resized:
            rows = self.resize_pixels(rows)
        feats = []
        for s in range(0, len(rows), max(1, batch_size)):
            x = rows[s : s + batch_size].to(self.device, non_blocking=True)
            if resized or x.dtype == torch.uint8:  # pixels: (..., 3, H, W)
                x = self.normalise_pixels(x)
            if self._nhwc() and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device):
                feats.append(self.embed(x).float())
        flat = torch.cat(feats) if feats else torch.zeros((0, self.dim))
        return Pending.to_host(flat, lambda a: split_rows(a, counts))

    def forward(self, batch: Any, batch_size: int) -> list[Output]:
        return self.launch(batch, batch_size).result()


def autocast(device: str):
    """fp16/bf16 autocast on CUDA (bf16 where supported); nothing on the CPU."""
    import torch

    if str(device).startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
