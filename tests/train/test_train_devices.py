"""Every strategy trains, resumes and evaluates on each device.

The ``device`` fixture (tests/conftest.py) runs each body on the CPU in the default suite and
on CUDA under ``-m gpu``. On CUDA this covers what only shows there: batches and index
tensors on the model's device, RNG state restored from ``last.safetensors`` (saved and loaded on a
GPU), bf16 autocast (``cfg.amp``) not leaking into the saved float32 embeddings, and the
chunked metric path of ``mmx eval`` on the device.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.eval.evaluate import evaluate_run
from mmx.eval.runs import EMBEDDINGS, load_embeddings, read_jsonl
from mmx.train import checkpoint, loop
from mmx.train.config import TrainConfig

# strategy -> (modalities, extra config); tiny so the CPU cases stay fast
CASES = {
    "joint": (["text", "image", "audio"], {}),
    "roundrobin": (["text", "image", "audio"], {}),
    "cvs": (["text", "image", "audio"], {}),
    "mcvs": (["text", "image", "audio"], {}),
    "rvs": (["text", "image", "audio"], {}),
    "stagewise": (["text", "image"], {"options": {"classes_per_stage": 3}}),
    "eao": (["text", "image", "audio"], {"options": {"token_dim": 16, "depth": 1, "heads": 2}, "dropout": 0.0}),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("dev")
    synthesize(root, SyntheticConfig(classes=6, items={"text": 60, "image": 60, "audio": 36}, dims={"text": 12, "image": 16, "audio": 8},
                                     tokens=(2, 4), noise=0.5))
    return root


def _cfg(cache, out, strategy, device, epochs, deterministic=None):
    """On CUDA with deterministic kernels: without them EAO's and CVS's scatter-adds sum in a
    varying order there, and two whole runs already differ in the last bits."""
    mods, extra = CASES[strategy]
    base = dict(strategy=strategy, cache=str(cache), modalities=mods, epochs=epochs, patience=50, batch_size=6, lr=3e-3,
                embed_dim=16, dropout=0.2, out=str(out), device=device, threads=1,
                deterministic=device.startswith("cuda") if deterministic is None else deterministic)
    return TrainConfig(**{**base, **extra})


class Killed(Exception):
    pass


def _killed_after_first_epoch(monkeypatch, cfg):
    """Run ``cfg`` and kill it right after the last checkpoint of its first epoch; its run folder."""
    save_last, calls = checkpoint.save_last, []

    def dying(*args, **kwargs):
        save_last(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the first is written on entering stage 1, the second after its epoch 1
            raise Killed

    monkeypatch.setattr(checkpoint, "save_last", dying)
    with pytest.raises(Killed):
        loop.train(cfg)
    monkeypatch.setattr(checkpoint, "save_last", save_last)
    return next(Path(cfg.out).iterdir())


@pytest.mark.parametrize("strategy", sorted(CASES))
def test_strategy_trains_resumes_bit_identical_and_evaluates(cache, tmp_path, monkeypatch, strategy, device):
    full = loop.train(_cfg(cache, tmp_path / "a", strategy, device, epochs=2))
    part = _killed_after_first_epoch(monkeypatch, _cfg(cache, tmp_path / "b", strategy, device, epochs=2))
    resumed = loop.train(_cfg(cache, tmp_path / "b", strategy, device, epochs=2), resume=part)
    a, b = checkpoint.load(full / checkpoint.LAST), checkpoint.load(resumed / checkpoint.LAST)
    # same batches, same dropout masks, same steps: the resumed run ends where the whole one did
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(read_jsonl(resumed / "metrics.jsonl")) == len(read_jsonl(full / "metrics.jsonl"))
    # saved embeddings are float32 wherever the model ran (no bf16 from autocast), finite, one row per item
    for path in sorted((full / EMBEDDINGS / "test").glob("*.npz")):
        emb = np.load(path)["emb"]
        assert emb.dtype == np.float32 and np.isfinite(emb).all() and len(emb) > 0, path.name
    ea, eb = load_embeddings(full, "test"), load_embeddings(resumed, "test")
    for k in ea:
        np.testing.assert_array_equal(ea[k]["emb"], eb[k]["emb"])
    res = evaluate_run(full, ["test"], device=torch.device(device))
    pairs = res["splits"]["test"]["pairs"]
    assert pairs and all(np.isfinite(v) for row in pairs for k, v in row.items() if k.startswith(("R@", "mAP")))


@pytest.mark.parametrize("strategy", ["eao", "cvs"])
def test_deterministic_kernels_train_alike_and_the_setting_is_restored(cache, tmp_path, strategy):
    """``deterministic: true`` changes no result on the CPU (its kernels already are), warns of no
    operation without a deterministic kernel, and leaves torch's setting as it found it."""
    import warnings

    plain = loop.train(_cfg(cache, tmp_path / "a", strategy, "cpu", epochs=1, deterministic=False))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*deterministic.*")
        det = loop.train(_cfg(cache, tmp_path / "b", strategy, "cpu", epochs=1, deterministic=True))
    assert not torch.are_deterministic_algorithms_enabled()
    a, b = checkpoint.load(plain / checkpoint.LAST), checkpoint.load(det / checkpoint.LAST)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_deterministic_kernels_are_on_during_the_run_only(monkeypatch):
    seen = []

    def fake_prepare(cfg, *args):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()))
        raise RuntimeError("stop")

    monkeypatch.setattr(loop, "prepare", fake_prepare)  # the first thing a run does
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that the test's end restores the process's value
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    for on in (True, False):
        with pytest.raises(RuntimeError, match="stop"):
            loop.train(TrainConfig(deterministic=on))
    assert seen == [(True, True), (False, False)] and not torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS is deterministic only with a fixed workspace
    # the previous setting comes back, not merely "off": strict deterministic mode set by the caller
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="stop"):
            loop.train(TrainConfig(deterministic=True))
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_host_masks_give_the_same_loss_as_device_masks():
    from mmx.train.losses import pairwise_info_nce

    g = torch.Generator().manual_seed(0)
    e = {m: torch.randn(6, 5, generator=g) for m in ("text", "image", "audio")}
    host = {"audio": np.array([True, False, True, True, False, True]), "image": np.array([True, True, False, True, True, True])}
    dev = {m: torch.as_tensor(v) for m, v in host.items()}
    a, b = pairwise_info_nce(e, 0.1, host), pairwise_info_nce(e, 0.1, dev)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    none = pairwise_info_nce(e, 0.1, {"audio": np.zeros(6, bool)})
    assert "loss/text-audio" not in none and "loss/text-image" in none


@pytest.mark.gpu
def test_an_instance_aligned_step_never_waits_for_the_device(tmp_path):
    """No host synchronisation inside a training step of joint on batches with absent rows."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available here")
    from mmx.train.data import Holdout, load_train_data
    from mmx.train.strategies import get_strategy
    from mmx.cache.modality import Modality

    synthesize(tmp_path, SyntheticConfig(classes=6, alignment="instance", missing=0.3, items={m: 60 for m in ("text", "image", "audio")},
                                         dims={"text": 12, "image": 16, "audio": 8}, tokens=None))
    cfg = TrainConfig(strategy="joint", cache=str(tmp_path), modalities=["text", "image", "audio"], alignment="instance",
                      batch_size=8, embed_dim=16, device="cuda")
    dev = torch.device("cuda")
    data = load_train_data(str(tmp_path), cfg.dataset, [Modality.parse(m) for m in cfg.modalities], [], need_labels=False,
                           need_groups=True, device=dev, holdout=Holdout(cfg.holdout, cfg.val_fraction, cfg.test_fraction, cfg.seed))
    strategy = get_strategy("joint")(cfg, data, dev)
    model = strategy.build_model().to(dev)
    batches = list(strategy.batches(data.splits["train"], 1, train=True))
    assert any(b["present"] for b in batches)  # some batch has absent rows
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            strategy.step(model, batch)["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
