"""``speech-embedding``: Google's speech_embedding model, from the ``openwakeword`` 0.5 package.

A 96-d embedding of each 0.775 s window (76 frames of the model's own 32-band log-mel, 10 ms
hop), one window every 80 ms, trained on a large speech corpus for keyword spotting: the words,
not the voice. mmx runs the two ONNX files the package ships (``melspectrogram.onnx``,
``embedding_model.onnx``) with onnxruntime, in the decoding workers; nothing downloads. A token
is the mean of the windows that start in its ``token_seconds``; a clip shorter than
``min_seconds`` is centred in silence first, so a spoken word (often under 0.5 s) fills whole
windows. Why this model and what else was checked: docs/notes/audio.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import Preparer, RowEncoder, local_path

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame
MEL_WINDOW = 512  # samples the mel model reads per frame (no centring: frames = (n - 512) // 160 + 1)
WINDOW_FRAMES, STEP_FRAMES = 76, 8  # one embedding per 76 mel frames, every 8 frames
PCM_SCALE = 32767.0  # the models take 16-bit PCM values as floats
MEL_BLOCK_FRAMES = 6000  # mel frames computed at once (60 s): a 600 s clip never holds all temporaries
EMBED_BATCH = 256  # windows per embedding call (some 2.5 MiB of input)
TOP_DB = 80.0  # the mel model clamps its dB to (its input's maximum - 80)
MODEL_FILES = ("melspectrogram.onnx", "embedding_model.onnx")


def model_dir() -> Path:
    """The folder of the ONNX files inside the installed ``openwakeword`` (found without importing it)."""
    spec = importlib.util.find_spec("openwakeword")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the speech-embedding backbone needs the package openwakeword 0.5 "
                                  "(pip install 'openwakeword>=0.5,<0.6', Python 3.11 or older): its wheel carries the model files; "
                                  "other audio backbones: mmx extract --list")
    folder = Path(list(spec.submodule_search_locations)[0]) / "resources" / "models"
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing in {folder}: openwakeword 0.6 and later download them "
                                "at run time; install 'openwakeword>=0.5,<0.6', whose wheel carries them")
    return folder


class SpeechEmbeddingPreparer(Preparer):
    """Decodes a clip and computes its ``(T, 96)`` tokens; the ONNX sessions open once per process."""

    def __init__(self, folder: str, token_seconds: float, max_seconds: float, min_seconds: float):
        self.folder, self.token_seconds = folder, token_seconds
        self.max_seconds, self.min_seconds = max_seconds, min_seconds
        self._sessions = None

    def __getstate__(self):
        return {**self.__dict__, "_sessions": None}  # sessions do not pickle; each worker opens its own

    def sessions(self):
        if self._sessions is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # one thread: the decoding workers are the parallelism, and one thread is deterministic
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self._sessions = tuple(ort.InferenceSession(str(Path(self.folder) / f), opts, providers=["CPUExecutionProvider"])
                                   for f in MODEL_FILES)
        return self._sessions

    def prepare(self, item: dict) -> np.ndarray:
        y = decode.load_audio(local_path(item), SAMPLE_RATE, self.max_seconds or None)
        return self.tokens(y)

    def tokens(self, y: np.ndarray) -> np.ndarray:
        """``(T, 96)`` float32 for mono 16 kHz samples ``y`` in [-1, 1]; T = ceil(seconds / token_seconds).

        The clip is padded with half a window of silence at each end (as a centred STFT pads),
        and to ``min_seconds`` in all, so every instant of it is the centre of some window; a
        window belongs to the token its centre falls in (those centred in the padding, to the
        first or last token); a token that holds no centre takes the window centred nearest its middle."""
        n = len(y)
        half = (MEL_WINDOW + HOP * (WINDOW_FRAMES - 1)) // 2
        total = max(n + 2 * half, int(round(self.min_seconds * SAMPLE_RATE)))
        offset = (total - n) // 2
        x = np.zeros(total, np.float32)
        x[offset : offset + n] = np.clip(y, -1.0, 1.0) * PCM_SCALE
        emb = self.embed_windows(self.melspectrogram(x))  # (W, 96), window w starts at frame w * STEP_FRAMES
        centres = (np.arange(len(emb)) * STEP_FRAMES * HOP + half - offset) / SAMPLE_RATE  # seconds into the clip
        n_tokens = max(1, int(np.ceil(n / (self.token_seconds * SAMPLE_RATE) - 1e-9)))
        which = np.clip(np.floor(centres / self.token_seconds).astype(int), 0, n_tokens - 1)
        sums = np.zeros((n_tokens, emb.shape[1]), np.float64)
        np.add.at(sums, which, emb)
        counts = np.bincount(which, minlength=n_tokens)
        out = sums / np.maximum(counts, 1)[:, None]
        for k in np.flatnonzero(counts == 0):  # no centre inside (a short tail, or tokens under the 80 ms step)
            out[k] = emb[np.argmin(np.abs(centres - (k + 0.5) * self.token_seconds))]
        return out.astype(np.float32)

    def melspectrogram(self, x: np.ndarray) -> np.ndarray:
        """``(frames, 32)``: the mel model's output with openwakeword's ``x / 10 + 2``, a block of
        frames at a time. A block reads the samples of its own frames only; the model floors its
        dB at the input's maximum less :data:`TOP_DB`, so the floor is applied again with the
        maximum over all blocks, which makes the blocks agree with one pass over the whole clip."""
        mel_session = self.sessions()[0]
        n_frames = (len(x) - MEL_WINDOW) // HOP + 1
        parts = []
        for a in range(0, n_frames, MEL_BLOCK_FRAMES):
            b = min(a + MEL_BLOCK_FRAMES, n_frames)
            chunk = x[a * HOP : (b - 1) * HOP + MEL_WINDOW]
            parts.append(mel_session.run(None, {"input": chunk[None]})[0].reshape(b - a, 32))
        db = np.concatenate(parts)
        return np.maximum(db, db.max() - TOP_DB) / 10.0 + 2.0

    def embed_windows(self, mel: np.ndarray) -> np.ndarray:
        embed_session = self.sessions()[1]
        starts = range(0, len(mel) - WINDOW_FRAMES + 1, STEP_FRAMES)
        out = []
        for i in range(0, len(starts), EMBED_BATCH):
            batch = np.stack([mel[s : s + WINDOW_FRAMES] for s in starts[i : i + EMBED_BATCH]])[..., None].astype(np.float32)
            out.append(embed_session.run(None, {"input_1": batch})[0].reshape(len(batch), -1))
        return np.concatenate(out)


class SpeechEmbedding(RowEncoder):
    """96-d speech_embedding tokens, one per ``token_seconds`` (the mean of its windows)."""

    def __init__(self, info, options):
        super().__init__(info, options)
        folder = model_dir()
        self.weights_sha256 = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in MODEL_FILES}
        self.prep = SpeechEmbeddingPreparer(str(folder), float(options["token_seconds"]), float(options["max_seconds"]),
                                            float(options["min_seconds"]))
        self.dim = 96

    def token_rate(self) -> str:
        return f"{1 / self.options['token_seconds']:g} per second"

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "sample_rate": SAMPLE_RATE, "mono": "mean", "resampler": "soxr",
                "mel": "model's own (32 bands, 512-sample window, 10 ms hop), x / 10 + 2",
                "windows": f"{WINDOW_FRAMES} frames every {STEP_FRAMES}", "pad": "half a window of silence at each end, centred in silence to min_seconds",
                "tokens": "mean of the windows centred in each token_seconds",
                "weights_sha256": self.weights_sha256}

    def scale(self) -> dict:
        return {"unit": "speech_embedding output", "arbitrary": True, "note": "standardise before training (normalize: standardize)"}

    def embed(self, x):
        return x
