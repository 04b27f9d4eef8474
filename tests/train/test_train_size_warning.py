"""eao-cpu is the eao loss at CPU size: the same terms, weights and fusion, a small model that
trains without a size refusal and writes checkpoints of megabytes."""

import pytest

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train.config import resolve
from mmx.train.loop import train
from mmx.train.strategies import get_strategy


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    synthesize(root, SyntheticConfig(classes=8, alignment="instance", items={m: 80 for m in ("text", "audio", "video")},
                                     dims={"text": 16, "audio": 8, "video": 12}, tokens=(2, 4)))
    return root


def test_eao_cpu_preset_is_the_eao_loss_at_cpu_size(token_cache, tmp_path):
    cpu, gpu = resolve(["eao-cpu"]), resolve(["eao"])
    assert cpu.modalities == []  # every modality the dataset has
    assert get_strategy("eao").check(resolve(["eao-cpu"], {"modalities": ["text", "audio"]})) == []
    for same in ("strategy", "lr_decay"):
        assert getattr(cpu, same) == getattr(gpu, same), same
    assert (gpu.tau, cpu.tau) == (0.05, "auto")  # the paper's; at CPU size, by the data's alignment
    for same in ("terms", "weights", "default_weight", "fusion", "depth"):
        assert cpu.options[same] == gpu.options[same], same
    said = []
    run = train(resolve(["eao-cpu"], {"cache": str(token_cache), "dataset": "synthetic", "out": str(tmp_path / "runs"),
                                      "device": "cpu", "epochs": 1, "batch_size": 16}), warn=said.append)
    assert not any("--force" in w for w in said)
    weights = (run / "checkpoint.safetensors").stat().st_size
    assert weights < 20 * 2**20  # megabytes, not the eao preset's gigabytes
