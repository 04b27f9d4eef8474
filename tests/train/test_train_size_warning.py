"""A GPU-sized model on the CPU is announced with estimates before the first step; eao-cpu is the
CPU-sized setting."""

import pytest
import torch

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train import checks
from mmx.train.config import resolve
from mmx.train.loop import train
from mmx.train.strategies import get_strategy


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    synthesize(root, SyntheticConfig(classes=8, alignment="instance", items={m: 80 for m in ("text", "audio", "video")},
                                     dims={"text": 16, "audio": 8, "video": 12}, tokens=(2, 4)))
    return root


def _cfg(root, tmp_path, *presets, **kw):
    return resolve(list(presets), {"cache": str(root), "dataset": "synthetic", "out": str(tmp_path / "runs"),
                                   "device": "cpu", "epochs": 1, **kw})


def test_eao_cpu_preset_is_the_eao_loss_at_cpu_size(token_cache, tmp_path):
    cpu, gpu = resolve(["eao-cpu"]), resolve(["eao"])
    assert get_strategy("eao").check(cpu) == []
    for same in ("strategy", "modalities", "lr", "lr_decay", "tau", "epochs"):
        assert getattr(cpu, same) == getattr(gpu, same), same
    for same in ("terms", "weights", "default_weight", "fusion", "depth"):
        assert cpu.options[same] == gpu.options[same], same
    said = []
    run = train(_cfg(token_cache, tmp_path, "eao-cpu", batch_size=16), warn=said.append)
    assert not any("parameter model on the CPU" in w for w in said)
    weights = (run / "checkpoint.safetensors").stat().st_size
    assert weights < 20 * 2**20  # megabytes, not the eao preset's gigabytes


def test_a_large_model_on_cpu_is_announced_with_estimates(token_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "CPU_PARAMS_WARN", 10_000)  # the tiny model stands in for a GPU-sized one
    said = []
    train(_cfg(token_cache, tmp_path, "eao-cpu", batch_size=16), warn=said.append)
    big = [w for w in said if "parameter model on the CPU" in w]
    assert len(big) == 1
    assert "GiB of memory" in big[0] and "(best)" in big[0] and "(last)" in big[0] and "min per epoch" in big[0]
    assert "--preset eao-cpu" in big[0]


def test_estimates_scale_with_the_parameters(token_cache):
    from mmx.cache.modality import Modality
    from mmx.train.data import load_train_data

    data = load_train_data(str(token_cache), "synthetic", [Modality.TEXT, Modality.AUDIO], ["train", "test"], tokens=True)
    cfg = resolve([], {"strategy": "joint"})
    model = torch.nn.Linear(5000, 5000)  # 25M parameters: checkpoints of 0.09 GiB (best), 0.28 GiB (last)
    text = checks.cpu_size_warning(cfg, model, data, torch.device("cpu"))
    assert "25M-parameter" in text and "0.09 GiB (best)" in text and "0.28 GiB (last)" in text
    assert checks.cpu_size_warning(cfg, model, data, torch.device("cuda")) is None
    assert checks.cpu_size_warning(cfg, torch.nn.Linear(10, 10), data, torch.device("cpu")) is None
