"""Keeping the GPU busy during extraction, checked where it can be: on the CPU.

Two things change what the model process does on CUDA, and each must not change what is
stored beyond the tolerance a device change already has:

* resizing on the device: workers hand over pixels at the image's own size (up to twice the
  model's input per side) and the model side resizes them with torch's antialiased bilinear
  filter instead of Pillow's; ``ImagePreparer.on_device`` is what ``Encoder.to("cuda")`` sets,
  set here by hand so that the CPU runs the same code;
* one batch in flight: the runner launches batch i+1 before it waits for batch i's features.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cuda_launch import launch_behind_another

from mmx.extract import decode
from mmx.extract.backbones import build_encoder
from mmx.extract.config import ExtractConfig

BOW = ExtractConfig(backbone="bow", workers=0, batch_size=8, shard_size=16)


# (width, height): smaller than the input (32), equal, a squash, up to twice, and past twice
SIZES = [(20, 16), (32, 32), (48, 40), (64, 60), (64, 64), (90, 50)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    items = []
    for i, (w, h) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w]
        im = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1) + rng.integers(0, 40, (h, w, 3))
        Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(root / f"im{i}.png")
        items.append({"id": f"im{i}", "uri": str(root / f"im{i}.png"), "text": ""})
    return items


def _encoder(tiny_resnet, on_device: bool):
    enc = build_encoder("resnet-50", weights=str(tiny_resnet)).to("cpu")
    enc.prep.on_device = on_device
    return enc


def _features(enc, items):
    with torch.inference_mode():
        return enc.forward(enc.prep.collate([enc.prep.prepare(it) for it in items]), 4)


def test_workers_leave_resizing_to_the_device_up_to_twice_the_input_size(tiny_resnet, images):
    enc = _encoder(tiny_resnet, on_device=True)
    shapes = [enc.prep.prepare(it).shape for it in images]
    assert shapes == [(1, 3, h, w) if max(w, h) <= 64 else (1, 3, 32, 32) for w, h in SIZES]
    assert all(enc.prep.prepare(it).dtype == np.uint8 for it in images)
    assert [s.shape for s in _encoder(tiny_resnet, on_device=False).prep.prepare(images[2])] == [(3, 32, 32)]


def test_pixels_resized_on_the_device_are_pillows_within_a_grey_level(tiny_resnet, images):
    """torch's antialiased bilinear against Pillow's bilinear, the worker path's filter, at the
    model's own size and at EfficientNet's 224 (from 320x240 JPEGs)."""
    enc = _encoder(tiny_resnet, on_device=True)
    for size, pictures in ((32, [decode.load_image(it["uri"]) for it in images]),
                           (224, [Image.fromarray(np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8))])):
        enc.prep.size = size
        for im in pictures:
            native = torch.from_numpy(np.array(im, dtype=np.uint8).transpose(2, 0, 1)[None])
            got = enc.resize_pixels([native]).numpy()[0]
            want = decode.image_to_uint8(im, size).astype(np.float32)
            diff = np.abs(got - want)
            assert diff.max() <= 1.5 and diff.mean() <= 0.5, (im.size, size, diff.max(), diff.mean())


def test_features_with_resizing_on_the_device_match_the_workers(tiny_resnet, images):
    ref = _features(_encoder(tiny_resnet, on_device=False), images)
    got = _features(_encoder(tiny_resnet, on_device=True), images)
    for (t_ref, p_ref), (t_got, p_got) in zip(ref, got):
        assert t_got.shape == t_ref.shape and t_got.dtype == np.float32
        assert np.linalg.norm(p_got - p_ref) / np.linalg.norm(p_ref) < 0.02


def test_mixed_sizes_in_one_batch_come_back_in_item_order(tiny_resnet, images):
    enc = _encoder(tiny_resnet, on_device=True)
    together = _features(enc, images[::-1])
    alone = [_features(enc, [it])[0] for it in images[::-1]]
    for (_, a), (_, b) in zip(together, alone):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_videos_frames_travel_at_their_own_size(tmp_path):
    from mmx.extract.preparers import FramesPreparer

    frames = [Image.new("RGB", (60, 40), (10 * k, 0, 0)) for k in range(3)]
    prep = FramesPreparer(fps=1.0, max_seconds=3.0, size=32, mean=decode.IMAGENET_MEAN, std=decode.IMAGENET_STD,
                          max_pixels=decode.DEFAULT_MAX_PIXELS, draft=False)
    assert prep.pixels(frames).shape == (3, 3, 32, 32)
    prep.on_device = True
    assert prep.pixels(frames).shape == (3, 3, 40, 60)


# -- one batch in flight --------------------------------------------------------------------------
def _text_manifest(tmp_path, n=40):
    rows = [dict(id=f"t{i:03d}", modality="text", uri="", text=f"item number {i} says {'abc'[i % 3]}") for i in range(n)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_the_next_batch_is_launched_before_the_previous_one_is_awaited(tmp_path, monkeypatch):
    """The order of launches and waits, and a store identical to one written batch by batch."""
    from mmx.cache.store import open_store
    from mmx.extract import encoder_base, runner

    events = []
    real_launch = encoder_base.RowEncoder.launch

    class Recorded(encoder_base.Pending):
        def __init__(self, inner, i):
            self.inner, self.i = inner, i

        def result(self):
            events.append(("wait", self.i))
            return self.inner.result()

    def launch(self, batch, batch_size):
        i = sum(1 for e in events if e[0] == "launch")
        events.append(("launch", i))
        return Recorded(real_launch(self, batch, batch_size), i)

    man = _text_manifest(tmp_path)
    sync = runner.extract(str(man), "text", str(tmp_path / "sync"), "d", BOW)
    assert events == []  # not patched yet
    monkeypatch.setattr(encoder_base.RowEncoder, "launch", launch)
    piped = runner.extract(str(man), "text", str(tmp_path / "piped"), "d", BOW)
    n = 5  # 40 items in batches of 8
    assert events == [("launch", 0)] + [e for i in range(1, n) for e in (("launch", i), ("wait", i - 1))] + [("wait", n - 1)]
    a, b = (open_store(r["store"]).load() for r in (sync, piped))
    assert list(a.ids) == list(b.ids) and len(a.ids) == 40 and torch.equal(a.pooled, b.pooled)


def test_a_batch_that_fails_when_awaited_fails_only_its_items(tmp_path, monkeypatch):
    """A CUDA error surfaces when the copy is awaited, not when the batch is launched."""
    from mmx.cache.store import STATUS_FAILED, STATUS_OK, open_store
    from mmx.extract import encoder_base, runner

    real_launch = encoder_base.RowEncoder.launch
    calls = []

    class Broken(encoder_base.Pending):
        def result(self):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def launch(self, batch, batch_size):
        calls.append(1)
        return Broken(None, None) if len(calls) == 2 else real_launch(self, batch, batch_size)

    monkeypatch.setattr(encoder_base.RowEncoder, "launch", launch)
    s = runner.extract(str(_text_manifest(tmp_path)), "text", str(tmp_path / "c"), "d", BOW)
    status = np.asarray(open_store(s["store"])._group["status"][:])
    assert s["failed"] == 8 and list(status[8:16]) == [STATUS_FAILED] * 8
    assert (np.delete(status, range(8, 16)) == STATUS_OK).all()
    assert all(msg.startswith("model: RuntimeError: CUDA error") for msg in s["errors"].values())


def test_a_whole_extraction_on_the_device_equals_the_cpu_within_tolerance(tmp_path, tiny_resnet, images, device):
    """The path a user takes (``extract`` with workers): on CUDA, pixels resized on the GPU,
    batches launched ahead and copied back through pinned memory; items of mixed sizes and a
    corrupt file among them. The tolerance is test_extract_devices.py's for bf16."""
    from mmx.cache.store import open_store
    from mmx.extract.runner import extract

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    rows = [dict(id=it["id"], modality="image", uri=it["uri"]) for it in images]
    rows.insert(3, dict(id="broken", modality="image", uri=str(tmp_path / "broken.png")))
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    roots = (str(tmp_path), str(Path(images[0]["uri"]).parent))
    out = {}
    for n, dev in enumerate(("cpu", device)):
        cfg = ExtractConfig(backbone="resnet-50", weights=str(tiny_resnet), device=dev, workers=1, batch_size=3,
                            shard_size=4, allowed_roots=roots)
        s = extract(str(tmp_path / "m.csv"), "image", str(tmp_path / f"cache-{n}"), "d", cfg)
        assert s["failed"] == 1 and list(s["errors"]) == ["broken"] and s["ok"] == len(images)
        out[n] = open_store(s["store"]).load()
    assert list(out[0].ids) == list(out[1].ids)
    ref, got = out[0].pooled.numpy(), out[1].pooled.numpy()
    err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() <= (1e-5 if device == "cpu" else 0.06), err


# -- the copy back: checked with stand-ins for CUDA's event and streams ----------------------------
class _OnSecondGpu(torch.Tensor):
    """A CPU tensor that reports cuda:1, where ``--device cuda:1`` puts the features."""

    @property
    def device(self):
        return torch.device("cuda", 1)


def test_the_host_waits_for_the_copy_back_on_the_features_device(monkeypatch):
    """``--device cuda:1``: the copy into pinned memory runs on cuda:1's stream, so the event the
    host waits on must be recorded there; one recorded on the current device's stream (cuda:0)
    passes at once and the host reads the buffer before the copy has filled it."""
    from mmx.extract import encoder_base

    class Stream:
        def __init__(self, device):
            self.device = device

    done = {}

    class Event:
        def record(self, stream=None):  # torch.cuda.Event's rule: no stream is the current device's
            done["on"] = (stream or torch.cuda.current_stream()).device

        def synchronize(self):
            done["waited"] = True

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(torch.device(device or "cuda:0")))
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))  # no pinned memory here
    values = torch.arange(6.0).view(2, 3)
    pending = encoder_base.Pending.to_host(values.clone().as_subclass(_OnSecondGpu), lambda a: a.copy())
    assert done.get("on") == torch.device("cuda", 1) and "waited" not in done
    np.testing.assert_array_equal(pending.result(), values.numpy())
    assert done["waited"]


@pytest.mark.gpu
def test_a_launch_on_cuda_never_waits_for_the_batch_in_flight(tiny_resnet, images):
    """Launching batch i+1 must not wait for batch i, or the GPU idles while the host queues the
    next batch: no blocking copy to the device (mean/std or an index built from host values) and
    no read back inside ``launch``, on the path the runner takes (pinned samples, resized on the
    device, bf16 autocast, channels_last)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available here")
    enc = build_encoder("resnet-50", weights=str(tiny_resnet)).to("cuda")
    rows, counts = enc.prep.collate([enc.prep.prepare(it) for it in images])
    batch = ([r.pin_memory() for r in rows], counts)  # as the loader pins them
    with torch.inference_mode():
        enc.launch(batch, 4).result()  # the first batch may wait (the mean and std are made once)
        a, b = launch_behind_another(enc, batch, 4)
    assert len(a) == len(b) == len(images)
    for (_, pa), (_, pb) in zip(a, b):  # the same batch twice
        np.testing.assert_allclose(pa, pb, rtol=1e-3, atol=1e-3)
