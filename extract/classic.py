"""Classic features with no learned weights: log-mel and MFCC audio, bag-of-words text.

Audio: one token per ``token_seconds`` window, the mean of its frames (a clip shorter than a
window still gives one). Text: lower-cased word counts over the ``max_features`` most frequent
words of the training split, one token per item; the vocabulary is part of the store key.
Computed entirely in the decoding workers (``embed`` is the identity). The papers' settings
(paper 002, Table I): docs/notes/extract.md.
"""

from __future__ import annotations

import collections
import hashlib
import re
import unicodedata
from typing import Iterable

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import Preparer, RowEncoder, local_path

_WORD = re.compile(r"\w+", re.UNICODE)


class SignalAudioPreparer(Preparer):
    def __init__(self, kind: str, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, n_mfcc: int, token_seconds: float, max_seconds: float):
        self.kind, self.sr, self.n_fft, self.hop = kind, sample_rate, n_fft, hop_length
        self.n_mels, self.n_mfcc, self.token_seconds, self.max_seconds = n_mels, n_mfcc, token_seconds, max_seconds
        self.filterbank = mel_filterbank(sample_rate, n_fft, n_mels)

    def prepare(self, item: dict) -> np.ndarray:
        y = decode.load_audio(local_path(item), self.sr, self.max_seconds or None)
        return signal_tokens(y, self)


def mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's Slaney mel filterbank ``(n_mels, 1 + n_fft // 2)``; computed once, in the parent."""
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


def signal_tokens(y: np.ndarray, p: "SignalAudioPreparer") -> np.ndarray:
    """``(T, D)`` float32: frame features averaged per ``token_seconds`` window.

    The STFT is librosa's default (centred, zero-padded, periodic Hann window), written
    with numpy so the decoding workers do not pay librosa's first-call JIT each. Frames are
    computed :data:`FRAME_BLOCK` at a time (each frame's transform is independent, so the
    result is the same up to float32 rounding in the mel product), so the windowed copies and spectra of a 600 s clip (some 400 MiB
    at once) never exist together: a worker holds the samples, the frame features and one block.
    """
    pad = p.n_fft // 2
    yp = np.pad(y.astype(np.float32, copy=False), (pad, pad))
    if len(yp) < p.n_fft:
        yp = np.pad(yp, (0, p.n_fft - len(yp)))
    n_frames = 1 + (len(yp) - p.n_fft) // p.hop
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(p.n_fft) / p.n_fft)).astype(np.float32)
    frames = np.concatenate([_frame_features(yp, start, min(start + FRAME_BLOCK, n_frames), window, p)
                             for start in range(0, n_frames, FRAME_BLOCK)])
    per_token = max(1, int(round(p.token_seconds * p.sr / p.hop)))
    n_tokens = max(1, int(np.ceil(len(y) / (p.token_seconds * p.sr) - 1e-9)))
    return np.stack([frames[k * per_token : (k + 1) * per_token].mean(0) for k in range(n_tokens) if k * per_token < len(frames)])


FRAME_BLOCK = 2048  # STFT frames per block: about 20 s at the default hop, some 10 MiB of temporaries


def _frame_features(yp: np.ndarray, start: int, stop: int, window: np.ndarray, p: "SignalAudioPreparer") -> np.ndarray:
    """``(stop - start, D)`` float32 log-mel (or MFCC) features of frames ``start..stop`` of ``yp``."""
    import scipy.fft

    idx = np.arange(p.n_fft)[None, :] + p.hop * np.arange(start, stop)[:, None]
    power = np.abs(np.fft.rfft(yp[idx] * window, axis=1)) ** 2  # (frames, 1 + n_fft // 2)
    mel = power.astype(np.float32) @ p.filterbank.T  # (frames, n_mels)
    logmel = 10.0 * np.log10(np.maximum(mel, 1e-10))  # dB, reference 1.0, no top_db clipping
    if p.kind == "mfcc":
        return scipy.fft.dct(logmel, axis=1, type=2, norm="ortho")[:, : p.n_mfcc].astype(np.float32)
    return logmel.astype(np.float32)


class SignalAudio(RowEncoder):
    """Log-mel (``kind='logmel'``) or MFCC (``kind='mfcc'``) tokens, one per second by default."""

    kind = "logmel"

    def __init__(self, info, options):
        super().__init__(info, options)
        o = options
        self.prep = SignalAudioPreparer(self.kind, o["sample_rate"], o["n_fft"], o["hop_length"], o["n_mels"], o.get("n_mfcc", 0), o["token_seconds"], o["max_seconds"])
        self.dim = int(o["n_mfcc"] if self.kind == "mfcc" else o["n_mels"])

    def token_rate(self) -> str:
        return f"{1 / self.options['token_seconds']:g} per second"

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "features": self.kind, "db_reference": 1.0, "mono": "mean", "resampler": "soxr"}

    def scale(self) -> dict:
        """Raw decibels (reference 1.0) or their cepstrum: a large common offset, no unit scale."""
        unit = "dB (power, reference 1.0)" if self.kind == "logmel" else "DCT-II of dB log-mel (orthonormal)"
        return {"unit": unit, "arbitrary": True, "note": "standardise before training (normalize: standardize)"}

    def embed(self, x):
        return x


class MFCCAudio(SignalAudio):
    kind = "mfcc"


# -- bag of words ---------------------------------------------------------------------
def words(text: str, lowercase: bool = True) -> list[str]:
    text = unicodedata.normalize("NFC", text)
    return _WORD.findall(text.lower() if lowercase else text)


def build_vocabulary(texts: Iterable[str], max_features: int, min_df: int = 1, lowercase: bool = True) -> list[str]:
    """The ``max_features`` words with the highest document frequency (ties alphabetical)."""
    df: collections.Counter = collections.Counter()
    for t in texts:
        df.update(set(words(t, lowercase)))
    ranked = sorted((w for w, c in df.items() if c >= min_df), key=lambda w: (-df[w], w))
    return sorted(ranked[:max_features])


class BowPreparer(Preparer):
    def __init__(self, vocabulary: list[str], lowercase: bool):
        self.index = {w: i for i, w in enumerate(vocabulary)}
        self.lowercase = lowercase

    def prepare(self, item: dict) -> np.ndarray:
        text = decode.normalise_text(item["text"]) if item.get("text") else decode.read_text(local_path(item))
        v = np.zeros((1, len(self.index)), np.float32)
        for w in words(text, self.lowercase):
            j = self.index.get(w)
            if j is not None:
                v[0, j] += 1.0
        return v


class BagOfWords(RowEncoder):
    """Word-count vectors over a vocabulary from the training split (``options['vocabulary']``)."""

    def __init__(self, info, options):
        super().__init__(info, options)
        vocab = options.get("vocabulary")
        if not vocab:
            raise ValueError("bag-of-words needs a vocabulary; the runner builds it from the manifest's training split")
        self.prep = BowPreparer(list(vocab), bool(options["lowercase"]))
        self.dim = len(vocab)

    def preprocessing(self) -> dict:
        pre = super().preprocessing()
        pre["vocabulary_sha256"] = hashlib.sha256("\n".join(pre["vocabulary"]).encode()).hexdigest()
        return pre

    def embed(self, x):
        return x
