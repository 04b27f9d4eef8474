"""Backbones from the Hugging Face hub (or a local directory) through ``transformers``.

Image towers (:class:`HubImage`, e.g. ResNet-50), AST and CLAP audio (:class:`HubAudio`,
:class:`ClapAudio`), VideoMAE and X-CLIP video (:class:`VideoMAE`, :class:`XClipWindows`).
The ``weights`` option goes straight to ``from_pretrained`` (a hub id or a local directory; the
usual ``HF_*`` variables apply); :func:`hub_call` names the fix when it cannot be loaded.
Audio and video are seen in ``window_seconds`` windows, one token per window (recorded in the
store). Why these models: docs/notes/extract.md.
"""

from __future__ import annotations

import re

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import Preparer, RowEncoder, local_path
from mmx.extract.preparers import FramesPreparer, ImagePreparer


HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub answers a TCP connect within ``timeout`` s: checked once, so an offline machine
    goes straight to the local cache instead of spending half a minute on retries."""
    import socket

    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_call(fn, weights: str, **kwargs):
    """``fn(weights)`` with a clear message when the weights cannot be found offline.

    A hub id (not a local folder) with ``HF_HUB_OFFLINE`` unset first checks that the hub is
    reachable; when it is not, ``local_files_only`` makes transformers read its cache at once.
    The advice in the error names only what applies: unsetting ``HF_HUB_OFFLINE`` only when set.
    """
    import os
    from pathlib import Path

    set_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    unreachable = False
    if not set_offline and not Path(weights).exists() and not hub_reachable():
        unreachable = True
        kwargs = {**kwargs, "local_files_only": True}
    try:
        return fn(weights, **kwargs)
    except OSError as exc:
        if set_offline:
            fix = "a hub id that is in the local cache, a local directory, or unset HF_HUB_OFFLINE"
        elif unreachable:
            fix = (f"{HUB_HOST[0]} is unreachable from here, so only the local cache was tried: "
                   "a local directory (--weights), or a machine with network access")
        else:
            fix = "a hub id that exists, or a local directory (--weights)"
        raise FileNotFoundError(f"cannot load {weights!r} through transformers: {str(exc).splitlines()[0]} (give {fix})") from exc


def image_settings(weights: str, default_size: int = 224) -> dict:
    """Input size, mean and std from the model's image processor (ImageNet defaults when absent)."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(weights)
    except (OSError, ValueError):
        return {"image_size": default_size, "mean": list(decode.IMAGENET_MEAN), "std": list(decode.IMAGENET_STD), "processor": "default"}
    size = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"height": size}
    side = size.get("height") or size.get("shortest_edge") or default_size
    mean = list(getattr(proc, "image_mean", None) or decode.IMAGENET_MEAN)
    std = list(getattr(proc, "image_std", None) or decode.IMAGENET_STD)
    # the processor's family, not its backend: transformers picks a Pil, torchvision or fast class by
    # what is installed, and installing torchvision must not change the cache key
    family = re.sub(r"(Pil|Fast)$", "", type(proc).__name__)
    return {"image_size": int(side), "mean": [float(m) for m in mean], "std": [float(s) for s in std], "processor": family}


class _HubImageBase(RowEncoder):
    model_class = "AutoModel"

    def _load(self, options):
        import transformers

        weights = options.get("weights") or self.info.weights
        self.model = hub_call(getattr(transformers, self.model_class).from_pretrained, weights).eval()
        self.settings = image_settings(weights, options.get("image_size") or 224)
        return self.settings

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), **self.settings, "resize": "bilinear-squash"}


class HubImage(_HubImageBase):
    """An image backbone whose ``pooler_output`` is the pooled feature (ResNet: 2048-d)."""

    channels_last = True  # ResNet and the other image towers of transformers are convolutional
    resizes_on_device = True

    def __init__(self, info, options):
        super().__init__(info, options)
        s = self._load(options)
        self.prep = ImagePreparer(s["image_size"], s["mean"], s["std"], options["max_pixels"], True)
        cfg = self.model.config
        self.dim = int(cfg.hidden_sizes[-1] if hasattr(cfg, "hidden_sizes") else cfg.hidden_size)

    def embed(self, x):
        return self.model(pixel_values=x).pooler_output.flatten(1)


class VideoWindowPreparer(FramesPreparer):
    """``(W, F, 3, S, S)``: ``F`` frames evenly over each ``window_seconds`` window."""

    def __init__(self, num_frames: int, window_seconds: float, **kw):
        super().__init__(fps=num_frames / window_seconds, **kw)
        self.num_frames = num_frames

    def prepare(self, item: dict) -> np.ndarray:
        frames = super().prepare(item)  # (n, 3, S, S)
        w = -(-len(frames) // self.num_frames)
        pad = w * self.num_frames - len(frames)
        if pad:  # the last window is short: repeat its last frame
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, 0)])
        return frames.reshape(w, self.num_frames, *frames.shape[1:])


class VideoMAE(_HubImageBase):
    """Video: VideoMAE over ``window_seconds`` windows; token = mean of its patch tokens."""

    model_class = "VideoMAEModel"

    def __init__(self, info, options):
        super().__init__(info, options)
        s = self._load(options)
        cfg = self.model.config
        self.prep = VideoWindowPreparer(
            int(cfg.num_frames), float(options["window_seconds"]), max_seconds=options["max_seconds"],
            size=int(cfg.image_size), mean=s["mean"], std=s["std"], max_pixels=decode.DEFAULT_MAX_PIXELS, draft=False,
        )
        self.settings["image_size"] = int(cfg.image_size)
        self.settings["num_frames"] = int(cfg.num_frames)
        self.dim = int(cfg.hidden_size)

    def token_rate(self) -> str:
        return f"{1 / self.options['window_seconds']:g} per second"

    def items_per_batch(self, batch_size: int) -> int:
        return max(1, batch_size // 16)

    def embed(self, x):
        return self.model(pixel_values=x).last_hidden_state.mean(1)


class XClipWindows(VideoMAE):
    """Video: the X-CLIP vision tower (with its cross-frame message tokens) over windows of
    ``num_frames`` frames; token = mean of the window's per-frame pooled outputs."""

    model_class = "XCLIPVisionModel"

    def embed(self, x):  # (W, F, 3, S, S)
        w, f = x.shape[:2]
        return self.model(pixel_values=x.flatten(0, 1)).pooler_output.view(w, f, -1).mean(1)


class FeatureExtractorPreparer(Preparer):
    """A preparer holding the hub model's feature extractor (``self.weights``), loaded on first use
    in the process that prepares (a decode worker), never pickled to it."""

    weights: str
    _fe = None

    def __getstate__(self):
        return {**self.__dict__, "_fe": None}

    @property
    def feature_extractor(self):
        if self._fe is None:
            from transformers import AutoFeatureExtractor

            self._fe = hub_call(AutoFeatureExtractor.from_pretrained, self.weights)
        return self._fe


class AudioWindowPreparer(FeatureExtractorPreparer):
    """Waveform cut into ``window_seconds`` windows, each through the model's feature extractor."""

    def __init__(self, weights: str, window_seconds: float, max_seconds: float):
        self.weights, self.window_seconds, self.max_seconds = weights, window_seconds, max_seconds

    def prepare(self, item: dict) -> np.ndarray:
        fe = self.feature_extractor
        y = decode.load_audio(local_path(item), int(fe.sampling_rate), self.max_seconds or None)
        step = int(round(self.window_seconds * fe.sampling_rate))
        windows = [y[s : s + step] for s in range(0, len(y), step)]
        feats = fe(windows, sampling_rate=fe.sampling_rate, return_tensors="np")
        key = "input_values" if "input_values" in feats else "input_features"
        return np.asarray(feats[key], np.float32)


class HubAudio(RowEncoder):
    """AST (``ASTModel``, pooled output) or the CLAP audio tower (``audio_embeds``)."""

    model_class = "ASTModel"

    def __init__(self, info, options):
        super().__init__(info, options)
        import transformers

        weights = options.get("weights") or info.weights
        self.model = hub_call(getattr(transformers, self.model_class).from_pretrained, weights).eval()
        self.prep = AudioWindowPreparer(str(weights), float(options["window_seconds"]), options["max_seconds"])
        fe = self.prep.feature_extractor  # fail here, not in a worker
        self.sample_rate = int(fe.sampling_rate)
        cfg = self.model.config
        self.dim = int(getattr(cfg, "projection_dim", None) or cfg.hidden_size)

    def token_rate(self) -> str:
        return f"{1 / self.options['window_seconds']:g} per second"

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "sample_rate": self.sample_rate, "feature_extractor": type(self.prep.feature_extractor).__name__}

    def embed(self, x):
        if self.model_class == "ASTModel":
            return self.model(input_values=x).pooler_output
        return self.model(input_features=x).audio_embeds


class ClapAudio(HubAudio):
    model_class = "ClapAudioModelWithProjection"
