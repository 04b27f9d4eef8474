"""Decoding real and broken media: images, audio, video, text (mmx.extract.decode)."""

import unicodedata

import numpy as np
import pytest
from PIL import Image

from mmx.extract import decode
from mmx.extract.classic import SignalAudioPreparer, signal_tokens


def _save(im, path, **kw):
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    im = Image.new("RGB", (20, 10), (200, 30, 40)).convert(mode) if mode != "I;16" else Image.new("I;16", (20, 10), 300)
    ext = "tiff" if mode in ("CMYK", "I;16") else "png"
    out = decode.load_image(_save(im, tmp_path / f"x.{ext}"))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_transparent_pixels_are_composited_on_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = decode.load_image(_save(im, tmp_path / "t.png"))
    assert np.asarray(out).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (30, 10), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode.load_image(_save(im, tmp_path / "r.jpg", exif=exif))
    assert out.size == (10, 30)


def test_decompression_bomb_limit(tmp_path):
    path = _save(Image.new("RGB", (200, 200)), tmp_path / "big.png")
    with pytest.raises(decode.DecodeError, match="exceeds the limit"):
        decode.load_image(path, max_pixels=100 * 100)


def _broken_copies(src, tmp_path, cut=400):
    data = src.read_bytes()
    out = {"empty": tmp_path / f"empty{src.suffix}", "truncated": tmp_path / f"trunc{src.suffix}", "garbage": tmp_path / f"junk{src.suffix}"}
    out["empty"].write_bytes(b"")
    out["truncated"].write_bytes(data[: min(len(data) // 50, cut)])
    out["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return out


def test_broken_images_raise_decode_errors(tmp_path, shared_media):
    for kind, path in _broken_copies(shared_media / "imagebind/dog_image.jpg", tmp_path).items():
        with pytest.raises(decode.DecodeError):
            decode.load_image(path)
    with pytest.raises(decode.DecodeError, match="not found"):
        decode.load_image(tmp_path / "absent.jpg")


def test_broken_audio_and_video_raise_decode_errors(tmp_path, shared_media):
    for path in _broken_copies(shared_media / "imagebind/dog_audio.wav", tmp_path, cut=30).values():  # cut inside the header
        with pytest.raises(decode.DecodeError):
            decode.load_audio(path, 16000)
    for path in _broken_copies(shared_media / "languagebind/video/0.mp4", tmp_path).values():
        with pytest.raises(decode.DecodeError):
            decode.sample_video_frames(path, 1.0)


def test_audio_only_file_as_video_says_no_video_stream(shared_media):
    with pytest.raises(decode.DecodeError, match="no video stream"):
        decode.sample_video_frames(shared_media / "imagebind/dog_audio.wav", 1.0)


def test_real_audio_is_resampled_mono(shared_media):
    y = decode.load_audio(shared_media / "imagebind/bird_audio.wav", 16000)
    import soundfile as sf

    info = sf.info(str(shared_media / "imagebind/bird_audio.wav"))
    assert y.ndim == 1 and y.dtype == np.float32 and abs(len(y) - info.duration * 16000) <= 2


def test_short_and_silent_audio_give_tokens():
    p = SignalAudioPreparer("logmel", 16000, 400, 160, 32, 0, 1.0, 600)
    assert signal_tokens(np.zeros(100, np.float32), p).shape == (1, 32)  # shorter than a second: one token
    silent = signal_tokens(np.zeros(16000 * 2, np.float32), p)
    assert silent.shape == (2, 32) and np.isfinite(silent).all() and np.allclose(silent, -100.0)
    assert signal_tokens(np.ones(16001, np.float32) * 0.1, p).shape == (2, 32)


def test_empty_wav_is_an_error(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "e.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(decode.DecodeError, match="empty"):
        decode.load_audio(tmp_path / "e.wav", 16000)


def test_real_video_sampled_at_stream_timestamps(shared_media):
    frames = decode.sample_video_frames(shared_media / "languagebind/video/0.mp4", 1.0)
    assert len(frames) == 9 and frames[0].mode == "RGB"  # 8.2 s at 1 fps: t = 0..8
    assert len(decode.sample_video_frames(shared_media / "languagebind/video/0.mp4", 2.0, max_frames=5)) == 5


def test_variable_frame_rate_video(tmp_path):
    """Frames at 0, 0.1, ..., 0.5 s then a jump to 3.0 s: 1 fps targets 0,1,2,3 -> 4 frames."""
    import av
    from fractions import Fraction

    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate([0, 100, 200, 300, 400, 500, 3000]):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    frames = decode.sample_video_frames(path, 1.0)
    assert len(frames) == 4
    means = [np.asarray(f).mean() for f in frames]
    assert means[1] == means[2] == means[3] and means[3] > means[0] + 100


def test_text_is_nfc_and_empty_text_fails(tmp_path):
    decomposed = unicodedata.normalize("NFD", "café")
    assert decode.normalise_text(decomposed) == "café"
    (tmp_path / "t.txt").write_text(decomposed + "\n", encoding="utf-8")
    assert decode.read_text(tmp_path / "t.txt") == "café"
    with pytest.raises(decode.DecodeError, match="empty text"):
        decode.normalise_text("  \n")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(decode.DecodeError, match="not UTF-8"):
        decode.read_text(tmp_path / "b.txt")
