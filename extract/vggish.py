"""VGGish (AudioSet) through torchaudio's pipeline bundle (extra: ``pip install 'mmx[torchaudio]'``).

The bundle's input processor turns 16 kHz audio into 0.96 s log-mel examples (96 frames x 64
bands); the model gives one 128-d embedding per example: one token per example, ``pooled`` their
mean. Weights: the bundle's (``VGGISH.get_model()``, downloaded once into torch's hub cache) or a
local state-dict file (``--weights FILE``). The processor's constants are recorded in the cache
key. torchaudio is imported only when the backbone is built. Why: docs/notes/extract.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import Preparer, RowEncoder, local_path


def import_vggish():
    """``(bundle, model class, implementation module)`` from torchaudio."""
    try:
        from torchaudio.prototype.pipelines import VGGISH
        from torchaudio.prototype.pipelines._vggish import _vggish_impl
    except (ImportError, RuntimeError) as exc:  # absent, built for another torch, or a release without the bundle
        raise ImportError(f"backbone 'vggish' needs torchaudio with its VGGish bundle: pip install 'mmx[torchaudio]' ({exc})") from None
    return VGGISH, _vggish_impl.VGGish, _vggish_impl


def processor_settings(impl) -> dict:
    """The input processor's constants (sample rate, STFT and mel settings, example length)."""
    return {k.strip("_").lower(): v for k, v in sorted(vars(impl).items())
            if k.startswith("_") and k.strip("_").isupper() and isinstance(v, (int, float))}


class VGGishPreparer(Preparer):
    """An item -> ``(n, 1, 96, 64)`` float32 log-mel examples; a clip shorter than one example is
    padded with silence to one."""

    def __init__(self, sample_rate: int, example_seconds: float, max_seconds: float):
        self.sample_rate, self.example_seconds, self.max_seconds = sample_rate, example_seconds, max_seconds
        self._proc = None

    def __getstate__(self):
        return {**self.__dict__, "_proc": None}

    def prepare(self, item: dict) -> np.ndarray:
        import torch

        if self._proc is None:
            self._proc = import_vggish()[0].get_input_processor()
        y = decode.load_audio(local_path(item), self.sample_rate, self.max_seconds or None)
        y = np.pad(y, (0, max(0, int(np.ceil(self.example_seconds * self.sample_rate)) - len(y))))
        return self._proc(torch.from_numpy(np.ascontiguousarray(y, np.float32))).numpy().astype(np.float32, copy=False)


class VGGishAudio(RowEncoder):
    """One 128-d VGGish embedding per 0.96 s example."""

    def __init__(self, info, options):
        super().__init__(info, options)
        import torch

        bundle, model_class, impl = import_vggish()
        given = options.get("weights")
        if given and given != info.weights:
            path = Path(str(given)).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"VGGish weights not found: {path} (give a state-dict file, or no --weights for the bundle's)")
            self.model = model_class()
            self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            self.model = bundle.get_model()
        self.model.eval()
        self.settings = processor_settings(impl)
        self.sample_rate = int(bundle.sample_rate)
        example = float(self.settings.get("example_window_seconds", 0.96))
        self.prep = VGGishPreparer(self.sample_rate, example, options["max_seconds"])
        self.dim = 128

    def token_rate(self) -> str:
        return f"1 per {self.settings.get('example_hop_seconds', 0.96):g} s example"

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "sample_rate": self.sample_rate, "input_processor": self.settings}

    def embed(self, x):
        return self.model(x)
