"""CPU start-up and threads: AdamW without torch's compiler; ``--threads``."""

import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.cache.threads import default_threads, set_threads
from mmx.pipeline.cli import main
from mmx.train.optim import AdamW


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))


def _train(opt_cls, steps: int = 5, **kw):
    model = _model()
    opt = opt_cls(model.parameters(), lr=1e-2, weight_decay=0.01, **kw)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(8, 6, generator=g)).square().mean().backward()
        opt.step()
        sched.step()
    return model, opt


@pytest.mark.parametrize("kw", [{}, {"fused": True}, {"foreach": True}])
def test_adamw_is_torchs_update_bit_for_bit(kw):
    ours, ours_opt = _train(AdamW, **kw)
    ref, ref_opt = _train(torch.optim.AdamW, **kw)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # the state dict is torch's format both ways
    fresh = torch.optim.AdamW(_model().parameters(), lr=1e-2, **kw)
    fresh.load_state_dict(ours_opt.state_dict())
    mine = AdamW(_model().parameters(), lr=1e-2, **kw)
    mine.load_state_dict(ref_opt.state_dict())
    assert mine.state_dict()["param_groups"][0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    assert torch.equal(mine.state_dict()["state"][0]["exp_avg"], ref_opt.state_dict()["state"][0]["exp_avg"])


def test_step_does_not_build_a_graph():
    model = _model()
    opt = AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    assert all(p.grad_fn is None for p in model.parameters())


def test_a_training_run_never_imports_torchs_compiler(tmp_path):
    """The ~1.4 s import of torch._dynamo was half of mmx train's CPU start-up."""
    synthesize(tmp_path / "c", SyntheticConfig(classes=4, items={"text": 16, "image": 16}, dims={"text": 4, "image": 4}, tokens=None))
    code = (
        "import sys\n"
        "from mmx.pipeline.cli import main\n"
        f"args = ['train', '--dataset', 'synthetic', '--modalities', 'text,image', '--cache', {str(tmp_path / 'c')!r}, '--epochs', '2',\n"
        f"        '--batch-size', '4', '--out', {str(tmp_path / 'runs')!r}, '--quiet']\n"
        "try:\n"
        "    main(args)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('DYNAMO' if 'torch._dynamo' in sys.modules else 'CLEAN')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "CLEAN"


def test_the_compiler_check_would_see_an_import():
    code = "import sys, torch\ntorch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])\nprint('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (16, 4), (128, 4)])
def test_default_threads_half_the_cores_between_1_and_4(cores, expected):
    assert default_threads(cores) == expected


def test_set_threads_sets_torch_and_rejects_negatives():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(0) == default_threads() == torch.get_num_threads()
        with pytest.raises(ValueError, match="--threads"):
            set_threads(-2)
    finally:
        torch.set_num_threads(before)


def test_train_records_the_threads_it_used(tmp_path):
    synthesize(tmp_path / "c", SyntheticConfig(classes=4, items={"text": 16, "image": 16}, dims={"text": 4, "image": 4}, tokens=None))
    before = torch.get_num_threads()
    try:
        for given, expected in (("1", 1), (None, default_threads())):
            args = ["train", "--dataset", "synthetic", "--modalities", "text,image", "--cache", str(tmp_path / "c"), "--epochs", "1",
                    "--batch-size", "4", "--out", str(tmp_path / "runs"), "--quiet"] + (["--threads", given] if given else [])
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 0, res.output
            run = res.output.strip().splitlines()[-1]
            assert yaml.safe_load(open(f"{run}/config.yaml"))["threads"] == expected
    finally:
        torch.set_num_threads(before)


def test_set_threads_keeps_freed_memory_so_batches_reuse_their_pages():
    """After set_threads, batch after batch of 64 MiB blocks reuses freed pages once the heap has
    settled: the last eight of sixteen batches touch fewer new pages than one fresh block has (a
    fresh mmap per block, glibc's way for blocks over 32 MiB, faults on all 16384 pages of each:
    eight blocks' worth). The first few batches may land on new pages (a small allocation just past
    a freed block leaves it a few bytes short of the next aligned request)."""
    import ctypes
    import resource

    import torch

    from mmx.cache import threads

    threads.set_threads(1)
    if not threads.keep_freed_memory():
        pytest.skip("malloc is not glibc's")
    assert ctypes.CDLL(None).mallopt  # glibc

    def batch() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(16 << 20)  # 64 MiB, every page written
        assert float(block[-1]) == 1.0
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults = [batch() for _ in range(16)]
    assert sum(faults[8:]) < 16384, f"{faults} page faults in sixteen batches (16384 per block if mapped anew)"
