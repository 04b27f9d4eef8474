"""Hostile local files against mmx extract: it refuses what mmx fetch refuses, and audio bombs stay small."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from click.testing import CliRunner

from mmx.cache.store import STATUS_FAILED, STATUS_OK, list_stores
from mmx.extract.fetch import FetchConfig, fetch_manifest
from mmx.pipeline.cli import main


def write_wav(path, seconds=3.0, rate=16000, channels=1, seed=0):
    import soundfile as sf

    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, (int(seconds * rate), channels)).astype(np.float32)
    sf.write(path, noise, rate, subtype="PCM_16")
    return path


def write_mp4(path, seconds=3, fps=10, faststart=True):
    """A small H.264 clip; with ``faststart`` the index comes first, so a cut copy still opens."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(1)
        for _ in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def cut(path, fraction, out):
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def extract_statuses(manifest, modality, cache, *extra):
    r = CliRunner().invoke(main, ["extract", str(manifest), "--modality", modality, "--cache", str(cache), "--dataset", "d",
                                  "--workers", "0", "--no-progress", "--set", "image_size=32", *extra]
                           if modality == "video" else
                           ["extract", str(manifest), "--modality", modality, "--cache", str(cache), "--dataset", "d",
                            "--workers", "0", "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    (store,) = [s for s in list_stores(cache) if s.modality.value == modality]
    status = dict(zip(store._group["id"][:], store._group["status"][:]))
    return status, store.shard_marker(0).get("errors", {})


@pytest.fixture
def dataset(tmp_path):
    """A dataset folder with good, truncated and escaping files (all generated here), and a secret outside it."""
    ds, outside = tmp_path / "ds", tmp_path / "outside"
    ds.mkdir()
    outside.mkdir()
    good_wav = write_wav(ds / "good.wav")
    cut(good_wav, 1 / 3, ds / "third.wav")  # the header still says 3 s
    write_wav(outside / "secret.wav", seed=5)
    os.symlink(outside / "secret.wav", ds / "link.wav")
    good_mp4 = write_mp4(ds / "good.mp4")
    cut(good_mp4, 0.6, ds / "cut.mp4")
    write_jpeg(ds / "good.jpg")
    cut(ds / "good.jpg", 0.6, ds / "cut.jpg")
    Image.new("1", (10_000, 9_000)).save(ds / "bomb.png")  # 90 Mpixels > Pillow's 89.5 M, a few kB on disk
    rows = [dict(id=i, modality=m, uri=u, label="x") for i, m, u in [
        ("good_wav", "audio", "good.wav"), ("third_wav", "audio", "third.wav"), ("link_wav", "audio", "link.wav"),
        ("abs_secret", "audio", str(outside / "secret.wav")),
        ("good_mp4", "video", "good.mp4"), ("cut_mp4", "video", "cut.mp4"),
        ("good_jpg", "image", "good.jpg"), ("cut_jpg", "image", "cut.jpg"), ("bomb_png", "image", "bomb.png")]]
    pd.DataFrame(rows).to_csv(ds / "manifest.csv", index=False)
    return ds


EXPECTED = {"good_wav": None, "third_wav": "undecodable", "link_wav": "forbidden_path", "abs_secret": "forbidden_path",
            "good_mp4": None, "cut_mp4": "undecodable", "good_jpg": None, "cut_jpg": "undecodable",
            "bomb_png": "decompression_bomb"}


def test_extract_refuses_what_fetch_refuses(dataset, tmp_path):
    """Truncated WAV/MP4 and a symlink out of the dataset were 'ok' in extract (with partial or foreign features).

    Images are not probed before their decode in extract (the decode is the probe): a cut JPEG
    and a pixel bomb still fail under fetch's kinds."""
    statuses, errors = {}, {}
    for modality in ("audio", "video", "image"):
        s, e = extract_statuses(dataset / "manifest.csv", modality, tmp_path / "cache")
        statuses.update(s)
        errors.update(e)
    for item_id, kind in EXPECTED.items():
        if kind is None:
            assert statuses[item_id] == STATUS_OK, (item_id, errors.get(item_id))
        else:
            assert statuses[item_id] == STATUS_FAILED and errors[item_id].startswith(f"{kind}: "), (item_id, errors)
    # the one validation: fetch gives every item the same verdict
    fetched = fetch_manifest(dataset / "manifest.csv", tmp_path / "fetched", FetchConfig(workers=2, progress=False))
    journal = [json.loads(line) for line in (fetched.layout.journal).read_text().splitlines()]
    assert {r["id"]: (None if r["status"] == "ok" else r["status"]) for r in journal} == EXPECTED


def test_allow_root_admits_a_folder_outside_the_manifest(dataset, tmp_path):
    status, _ = extract_statuses(dataset / "manifest.csv", "audio", tmp_path / "cache",
                                 "--allow-root", str(dataset), "--allow-root", str(tmp_path / "outside"))
    assert status["link_wav"] == STATUS_OK and status["abs_secret"] == STATUS_OK and status["third_wav"] == STATUS_FAILED


def test_a_rerun_with_wider_allow_root_extracts_what_it_now_admits(dataset, tmp_path):
    """fetch's rule for extract: a plain rerun redoes nothing, a rerun whose
    --allow-root now admits the refused items extracts them; other failures stay as they were."""
    cache = tmp_path / "cache"
    status, errors = extract_statuses(dataset / "manifest.csv", "audio", cache)
    assert status["abs_secret"] == STATUS_FAILED and errors["abs_secret"].startswith("forbidden_path: ")
    r = CliRunner().invoke(main, ["extract", str(dataset / "manifest.csv"), "--modality", "audio", "--cache", str(cache),
                                  "--dataset", "d", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0 and "0 shard(s) written" in r.output and "--allow-root now admits" not in r.output
    status, errors = extract_statuses(dataset / "manifest.csv", "audio", cache,
                                      "--allow-root", str(dataset), "--allow-root", str(tmp_path / "outside"))
    assert status["abs_secret"] == STATUS_OK and status["link_wav"] == STATUS_OK
    assert status["third_wav"] == STATUS_FAILED  # not a permission problem: still refused


def test_real_media_cut_short_is_refused(tmp_path, shared_media):
    """The same with copies of ../shared/media: a WAV cut to a third and a cut MP4."""
    rows = []
    for name, src in (("wav", shared_media / "imagebind/bird_audio.wav"), ("mp4", shared_media / "languagebind/video/1.mp4")):
        shutil.copy(src, tmp_path / f"whole.{name}")
        cut(src, 1 / 3, tmp_path / f"third.{name}")
        modality = "audio" if name == "wav" else "video"
        rows += [dict(id=f"whole_{name}", modality=modality, uri=f"whole.{name}"),
                 dict(id=f"third_{name}", modality=modality, uri=f"third.{name}")]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    for name, modality in (("wav", "audio"), ("mp4", "video")):
        status, errors = extract_statuses(tmp_path / "m.csv", modality, tmp_path / "cache")
        assert status[f"whole_{name}"] == STATUS_OK, errors
        assert status[f"third_{name}"] == STATUS_FAILED and errors[f"third_{name}"].startswith("undecodable: ")


# -- audio bomb: small file, huge decode ------------------------------------------------------------
def write_audio_bomb(path, seconds: int, rate: int = 192_000, layout: str = "7.1"):
    """Silence at 192 kHz, 8 channels, as FLAC: a few tens of KB that decode to ``seconds * 6 MiB``."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("flac", rate=rate, layout=layout)
        step = rate // 10
        silence = np.zeros((1, step * 8), np.int16)
        for _ in range(seconds * 10):
            frame = av.AudioFrame.from_ndarray(silence, format="s16", layout=layout)
            frame.sample_rate = rate
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


PEAK_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[4])
import numpy as np, soundfile as sf
import peakmem
from mmx.extract import decode
sf.write(sys.argv[2], np.zeros((16000, 8), np.float32), 16000)
decode.load_audio(sys.argv[2], 16000)  # import and warm every code path on a small file first
baseline = peakmem.start()
y = decode.load_audio(sys.argv[1], 16000, float(sys.argv[3]))
print(json.dumps({"samples": len(y), "peak_growth_mib": peakmem.growth_mib(baseline)}))
"""

# the stated budget: load_audio holds its output (max_seconds x 16 kHz float32) plus one
# decoded block (decode.BLOCK_SAMPLES, 1 MiB); the rest is allocator slack
AUDIO_GROWTH_BUDGET_MIB = 48


def test_audio_bomb_decodes_in_bounded_memory(tmp_path):
    """60 s of 192 kHz 8-channel FLAC is mixed down as it streams, not read whole as float32 (369 MiB) first."""
    bomb = write_audio_bomb(tmp_path / "bomb.flac", seconds=60)
    assert bomb.stat().st_size < 200_000
    tests = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(bomb), str(tmp_path / "warm.wav"), "600", tests],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["samples"] == 60 * 16000
    assert result["peak_growth_mib"] < AUDIO_GROWTH_BUDGET_MIB, result


def test_audio_longer_than_max_seconds_is_cut_to_it(tmp_path):
    """The documented bound: the first max_seconds only (one logmel token per second shows the cut)."""
    write_audio_bomb(tmp_path / "bomb.flac", seconds=12)
    pd.DataFrame([dict(id="bomb", modality="audio", uri="bomb.flac")]).to_csv(tmp_path / "m.csv", index=False)
    r = CliRunner().invoke(main, ["extract", str(tmp_path / "m.csv"), "--modality", "audio", "--cache", str(tmp_path / "c"),
                                  "--dataset", "d", "--workers", "0", "--no-progress", "--set", "max_seconds=5"])
    assert r.exit_code == 0, r.output
    (store,) = list_stores(tmp_path / "c")
    assert list(store._group["status"][:]) == [STATUS_OK] and list(store._group["token_length"][:]) == [5]


def test_streamed_decoding_equals_whole_file_decoding(tmp_path):
    """The block-wise mix-down and soxr stream give soxr's one-shot result on the whole file, via both readers."""
    import av
    import soxr

    from mmx.extract import decode

    wav = write_wav(tmp_path / "st.wav", seconds=4.0, rate=44100, channels=2)
    import soundfile as sf

    x, sr = sf.read(wav, dtype="float32", always_2d=True)
    reference = soxr.resample(x.mean(axis=1), sr, 16000).astype(np.float32)
    np.testing.assert_array_equal(decode.load_audio(wav, 16000), reference)
    # PyAV path (a container libsndfile cannot read): AAC in MP4, compared with PyAV's own whole decode
    m4a = tmp_path / "st.m4a"
    with av.open(str(m4a), "w") as c:
        s = c.add_stream("aac", rate=44100, layout="stereo")
        for i in range(0, len(x), 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[i:i + 1024].T), format="fltp", layout="stereo")
            frame.sample_rate = 44100
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with av.open(str(m4a)) as c:
        whole = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)  # (2, n) planar float
    expected = soxr.resample(whole.T.mean(axis=1), 44100, 16000).astype(np.float32)
    np.testing.assert_allclose(decode.load_audio(m4a, 16000), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_blockwise_frame_features_equal_the_whole_clip(monkeypatch, kind):
    """The STFT runs a block of frames at a time (bounded memory for long clips), with the same numbers
    up to float32 rounding (BLAS may sum the mel product in another order for another row count)."""
    from mmx.extract import classic

    p = classic.SignalAudioPreparer(kind, 16000, 400, 160, 32, 13, 1.0, 600)
    y = np.random.default_rng(0).standard_normal(16000 * 7 + 123).astype(np.float32)
    monkeypatch.setattr(classic, "FRAME_BLOCK", 100)
    blocks = classic.signal_tokens(y, p)
    monkeypatch.setattr(classic, "FRAME_BLOCK", 10**9)
    np.testing.assert_allclose(blocks, classic.signal_tokens(y, p), rtol=1e-5, atol=1e-4)


def test_an_image_is_decoded_once_in_extract_not_probed_first(dataset, tmp_path, monkeypatch):
    """The probe's reduced decode before the real one cost a worker a third of its time per JPEG;
    other modalities keep it (their decoders accept cut files that the probe refuses)."""
    from mmx.extract.fetch import validate

    probed = []
    real_probe = validate.probe
    monkeypatch.setattr(validate, "probe", lambda path, modality, *a, **k: probed.append(modality) or real_probe(path, modality, *a, **k))
    extract_statuses(dataset / "manifest.csv", "image", tmp_path / "cache")
    assert probed == []
    extract_statuses(dataset / "manifest.csv", "audio", tmp_path / "cache")
    assert probed and set(probed) == {"audio"}
