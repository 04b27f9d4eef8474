"""Preparers of the image, video-frame and text backbones: they run in the decoding workers.

Image and frame preparers hand over uint8 pixels, which the model side normalises on its device.
With ``on_device`` (set by :meth:`~mmx.extract.encoder_base.Encoder.to` on CUDA) an image at most
twice the model's input size per side keeps its own size and the GPU resizes it; larger ones are
resized here, so what crosses the worker queues stays bounded. Why: docs/notes/extract.md.
"""

from __future__ import annotations

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import Preparer, local_path


class ImagePreparer(Preparer):
    """``(1, 3, S, S)`` uint8 pixels of an image, normalised on the model side.

    ``on_device`` (set by :meth:`~mmx.extract.encoder_base.Encoder.to` on CUDA): images at most twice ``S`` per side
    keep their own size, for the model side to resize (:meth:`~mmx.extract.encoder_base.RowEncoder.resize_pixels`).
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
        return self.pixels(decode.sample_video_frames(local_path(item), self.fps, max_frames, max_pixels=self.max_pixels,
                                                      size=self.size, max_side=2 * self.size if self.on_device else self.size))


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
