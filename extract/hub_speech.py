"""Speech encoders through ``transformers``: the Whisper encoder, wav2vec 2.0 and HuBERT.

Each sees the clip in chunks (Whisper: its own 30 s window, padded as its feature extractor
pads; wav2vec 2.0 / HuBERT: ``chunk_seconds``, the last chunk as long as what is left, never
padded), keeps the hidden states of the frames that hold audio (50 per second), and averages
them over ``token_seconds`` windows: one token per window, ``pooled`` their mean. Chunks of one
length run together, so an item's numbers do not depend on the other items of its batch.
Why: docs/notes/extract.md.
"""

from __future__ import annotations

import math

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import Encoder, Output, autocast, local_path
from mmx.extract.hub import FeatureExtractorPreparer, hub_call


class SpeechPreparer(FeatureExtractorPreparer):
    """An item -> its chunks through the model's feature extractor, and its length in samples."""

    def __init__(self, weights: str, chunk_seconds: float | None, max_seconds: float, min_samples: int = 1):
        self.weights, self.chunk_seconds, self.max_seconds = weights, chunk_seconds, max_seconds
        self.min_samples = min_samples  # a chunk shorter than the first frame's span is padded with silence to it

    def chunk_samples(self) -> int:
        fe = self.feature_extractor
        if self.chunk_seconds is None:  # Whisper: the extractor's own window
            return int(fe.n_samples)
        return max(1, int(round(self.chunk_seconds * fe.sampling_rate)))

    def prepare(self, item: dict):
        fe = self.feature_extractor
        sr = int(fe.sampling_rate)
        y = decode.load_audio(local_path(item), sr, self.max_seconds or None)
        step = self.chunk_samples()
        chunks = [y[s : s + step] for s in range(0, len(y), step)] or [np.zeros(0, np.float32)]
        lengths = [len(c) for c in chunks]
        chunks = [np.pad(c, (0, max(0, self.min_samples - len(c)))) for c in chunks]
        key = "input_features" if self.chunk_seconds is None else "input_values"
        inputs = [np.asarray(fe(c, sampling_rate=sr, return_tensors="np")[key][0], np.float32) for c in chunks]
        return inputs, lengths

    def collate(self, samples: list):
        return [s[0] for s in samples], [s[1] for s in samples]


class _SpeechEncoder(Encoder):
    model_class = ""
    chunk_option = True  # False: the feature extractor fixes the chunk (Whisper)

    def __init__(self, info, options):
        super().__init__(info, options)
        import transformers

        weights = options.get("weights") or info.weights
        token_seconds = float(options["token_seconds"])
        model = hub_call(getattr(transformers, self.model_class).from_pretrained, weights)
        self.model = self._tower(model).eval()
        chunk = float(options["chunk_seconds"]) if self.chunk_option else None
        if chunk is not None and chunk <= 0:
            raise ValueError(f"chunk_seconds must be > 0 for backbone {info.name!r}, not {chunk}")
        self.prep = SpeechPreparer(str(weights), chunk, options["max_seconds"], self._min_samples())
        fe = self.prep.feature_extractor  # fail here, not in a worker
        self.sample_rate = int(fe.sampling_rate)
        self.hop = self._hop_samples(fe)  # samples per output frame
        if token_seconds * self.sample_rate < self.hop:
            raise ValueError(f"token_seconds must be at least one frame ({self.hop / self.sample_rate:g} s) "
                             f"for backbone {info.name!r}, not {token_seconds}")
        cfg = self.model.config
        self.dim = int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    def _tower(self, model):
        return model

    def _min_samples(self) -> int:
        return 1

    def _hop_samples(self, fe) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def token_rate(self) -> str:
        return f"{1 / self.options['token_seconds']:g} per second"

    def preprocessing(self) -> dict:
        fe = self.prep.feature_extractor
        settings = {k: v for k, v in fe.to_dict().items() if isinstance(v, (int, float, str, bool)) and not k.startswith("_")}
        return {**super().preprocessing(), "sample_rate": self.sample_rate, "chunk_samples": self.prep.chunk_samples(),
                "feature_extractor": type(fe).__name__, "extractor_settings": dict(sorted(settings.items()))}

    def hidden(self, x):  # (k, ...) inputs -> (k, F, D) frame states
        raise NotImplementedError

    def forward(self, batch, batch_size: int) -> list[Output]:
        import torch

        inputs, lengths = batch
        flat = [(i, j) for i, chunks in enumerate(inputs) for j in range(len(chunks))]
        by_shape: dict = {}
        for i, j in flat:
            by_shape.setdefault(inputs[i][j].shape, []).append((i, j))
        states: dict = {}
        for members in by_shape.values():
            for s in range(0, len(members), max(1, batch_size)):
                part = members[s : s + batch_size]
                x = torch.from_numpy(np.stack([inputs[i][j] for i, j in part])).to(self.device)
                with autocast(self.device):
                    h = self.hidden(x).float().cpu().numpy()
                for (i, j), hk in zip(part, h):
                    states[i, j] = hk
        return [self._tokens([states[i, j] for j in range(len(inputs[i]))], lengths[i]) for i in range(len(inputs))]

    def _tokens(self, chunk_states: list, lengths: list) -> Output:
        """Frames that hold audio, placed at their time, averaged per ``token_seconds`` window."""
        step = self.prep.chunk_samples()
        frames, times = [], []
        for j, (h, n) in enumerate(zip(chunk_states, lengths)):
            keep = min(len(h), max(1, math.ceil(n / self.hop)))
            frames.append(h[:keep])
            times.append((j * step + np.arange(keep) * self.hop) / self.sample_rate)
        frames, times = np.concatenate(frames), np.concatenate(times)
        window = np.floor(times / float(self.options["token_seconds"]) + 1e-9).astype(np.int64)
        ids, first = np.unique(window, return_index=True)
        sums = np.add.reduceat(frames.astype(np.float64), first, axis=0)
        counts = np.diff(np.append(first, len(frames)))[:, None]
        tokens = (sums / counts).astype(np.float32)
        return tokens, tokens.mean(0)


class WhisperEncoder(_SpeechEncoder):
    """Whisper's encoder (from ``WhisperModel``; the decoder is dropped), over 30 s windows."""

    model_class = "WhisperModel"
    chunk_option = False

    def _tower(self, model):
        return model.get_encoder()

    def _hop_samples(self, fe) -> int:
        return int(fe.hop_length) * 2  # the encoder's second convolution has stride 2

    def hidden(self, x):
        return self.model(input_features=x).last_hidden_state


class Wav2Vec2Audio(_SpeechEncoder):
    """wav2vec 2.0's last hidden states over the waveform."""

    model_class = "Wav2Vec2Model"

    def _hop_samples(self, fe) -> int:
        return int(np.prod(self.model.config.conv_stride))

    def _min_samples(self) -> int:
        """The span of the first output frame (400 samples for the base models)."""
        span = 1
        for k, s in zip(reversed(self.model.config.conv_kernel), reversed(self.model.config.conv_stride)):
            span = (span - 1) * s + k
        return span

    def hidden(self, x):
        return self.model(input_values=x).last_hidden_state


class HubertAudio(Wav2Vec2Audio):
    """HuBERT's last hidden states over the waveform."""

    model_class = "HubertModel"
