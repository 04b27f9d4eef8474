"""The default audio backbone, ``speech-embedding``: token layout, blocks, cache key, errors,
and that it tells spoken digits apart across speakers on the demo's real recordings."""

import csv
import importlib.util

import numpy as np
import pytest

from mmx.extract import decode, speech
from mmx.extract.backbones import BACKBONES, DEFAULT_BACKBONE, build_encoder, resolve_options
from mmx.cache.modality import Modality
from mmx.pipeline.demo.run import DATA


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("speech-embedding")


def tone_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped by a few moving formant-like tones: audio with structure, not silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * speech.SAMPLE_RATE)) / speech.SAMPLE_RATE
    y = sum(np.sin(2 * np.pi * (f + 200 * t) * t) for f in (300, 900, 2200)) * 0.1 + 0.02 * rng.standard_normal(len(t))
    return y.astype(np.float32)


def test_is_the_offline_audio_default():
    info = BACKBONES["speech-embedding"]
    assert DEFAULT_BACKBONE[Modality.AUDIO] == "speech-embedding"
    assert info.offline and info.weights.startswith("package:") and info.dim == 96


@pytest.mark.parametrize("seconds, tokens", [(0.1, 1), (0.5, 1), (1.0, 1), (1.01, 2), (2.5, 3), (7.2, 8)])
def test_one_token_per_second_of_audio(encoder, seconds, tokens):
    out = encoder.prep.tokens(tone_speech(seconds))
    assert out.shape == (tokens, 96) and out.dtype == np.float32 and np.isfinite(out).all()


def test_finer_tokens_follow_token_seconds():
    enc = build_encoder("speech-embedding", {"token_seconds": 0.25})
    assert enc.prep.tokens(tone_speech(2.0)).shape == (8, 96)
    assert enc.token_rate() == "4 per second"


def test_deterministic_and_blocks_agree_with_one_pass(encoder, monkeypatch):
    y = tone_speech(3.3, seed=1)
    whole = encoder.prep.tokens(y)
    np.testing.assert_array_equal(whole, encoder.prep.tokens(y))
    monkeypatch.setattr(speech, "MEL_BLOCK_FRAMES", 37)  # many blocks, uneven
    monkeypatch.setattr(speech, "EMBED_BATCH", 5)
    np.testing.assert_allclose(encoder.prep.tokens(y), whole, rtol=1e-4, atol=1e-4)


def test_the_content_matters_not_the_padding(encoder):
    a, b = encoder.prep.tokens(tone_speech(0.6, 0)), encoder.prep.tokens(tone_speech(0.6, 0)[::-1].copy())
    assert np.linalg.norm(a - b) > 1e-2 * np.linalg.norm(a)
    silence = encoder.prep.tokens(np.zeros(8000, np.float32))
    assert np.linalg.norm(a - silence) > 1e-2 * np.linalg.norm(a)


def test_preparer_pickles_without_its_sessions(encoder):
    import pickle

    encoder.prep.tokens(tone_speech(0.3))  # opens the sessions
    clone = pickle.loads(pickle.dumps(encoder.prep))
    assert clone._sessions is None
    np.testing.assert_array_equal(clone.tokens(tone_speech(0.3)), encoder.prep.tokens(tone_speech(0.3)))


def test_cache_key_holds_the_options_and_the_weights(encoder):
    pre = encoder.preprocessing()
    assert set(pre["weights_sha256"]) == set(speech.MODEL_FILES) and all(len(h) == 64 for h in pre["weights_sha256"].values())
    other = build_encoder("speech-embedding", {"min_seconds": 2.0}).preprocessing()
    assert other != pre and other["min_seconds"] == 2.0
    with pytest.raises(ValueError, match="unknown option"):
        resolve_options(BACKBONES["speech-embedding"], {"n_mels": 64})


def test_without_the_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"openwakeword>=0.5,<0.6"):
        speech.model_dir()


def test_a_package_without_the_model_files_is_named(monkeypatch, tmp_path):
    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: Spec())
    with pytest.raises(FileNotFoundError, match="melspectrogram.onnx, embedding_model.onnx missing"):
        speech.model_dir()


def _demo_audio(split: str, takes: int) -> tuple[list, np.ndarray]:
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["modality"] == "audio" and r["split"] == split]
    rows = [r for r in rows if int(r["id"].rsplit("-", 1)[1]) < takes]
    return [str(DATA / r["uri"]) for r in rows], np.array([int(r["label"]) for r in rows])


@pytest.mark.parametrize("backbone, floor, ceiling", [("speech-embedding", 0.8, 1.01), ("logmel", 0.0, 0.6)])
def test_digits_of_an_unheard_speaker_are_told_apart(backbone, floor, ceiling):
    """Nearest class centroid (cosine, standardised with the train statistics) from the demo's
    two training speakers to its unheard test speaker: the packaged speech model generalises
    to a new voice, the fixed log-mel mean does not (the gap the default changed for)."""
    enc = build_encoder(backbone)
    train_files, train_y = _demo_audio("train", 3)
    test_files, test_y = _demo_audio("test", 6)

    def feats(files):
        return np.stack([enc.prep.prepare({"uri": p}).mean(0) for p in files])

    xtr, xte = feats(train_files), feats(test_files)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    cent = np.stack([xtr[train_y == c].mean(0) for c in range(10)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    pred = np.argmax((xte / np.linalg.norm(xte, axis=1, keepdims=True)) @ cent.T, axis=1)
    acc = float((pred == test_y).mean())
    assert floor <= acc < ceiling, (backbone, acc)
