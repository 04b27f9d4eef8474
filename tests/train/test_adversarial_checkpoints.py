"""Hostile and damaged checkpoints: loading never runs code, and every bad file is one clear line."""

import errno
import shutil

import pytest
import torch
from click.testing import CliRunner

from mmx.cache import atomic
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.pipeline.cli import main
from mmx.train import checkpoint
from mmx.train.config import TrainConfig
from mmx.train.loop import train


class Payload:
    """Unpickling this opens (creates) ``target``: what a planted ``last.pt`` could do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-epoch run folder (copied by each test before it is tampered with)."""
    root = tmp_path_factory.mktemp("ckpt")
    synthesize(root / "cache", SyntheticConfig(classes=4, items={"text": 32, "image": 32, "audio": 32},
                                               dims={"text": 8, "image": 8, "audio": 8},
                                               tokens=None, noise=0.5))
    cfg = TrainConfig(cache=str(root / "cache"), out=str(root / "runs"), modalities=["text", "image"], epochs=2,
                      patience=5, batch_size=8, embed_dim=8)
    return train(cfg)


@pytest.fixture
def run(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def one_line_error(result) -> str:
    """The message of a refused command: one line, or the config check's header and its one problem
    (a usage error's "Usage:"/"Try" preamble aside)."""
    assert result.exit_code in (1, 2), result.output
    lines = [x for x in result.output.strip().splitlines() if x.strip() and not x.startswith(("Usage:", "Try "))]
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  ")), result.output
    return lines[-1]


def resume(run, *extra):
    return CliRunner().invoke(main, ["train", "--resume", str(run), "--epochs", "3", "--quiet", *extra])


def extend(run, tmp_path):
    return CliRunner().invoke(main, ["train", "--from", str(run), "--add-modality", "audio",
                                     "--out", str(tmp_path / "ext"), "--quiet"])


def plant_pickles(run, target, names):
    for name in names:
        (run / name).unlink(missing_ok=True)
        torch.save({"model": Payload(target)}, run / name)  # the zip-pickle layout torch.save writes


@pytest.mark.parametrize("names", [["last.pt"], ["last.safetensors"], ["last.pt", "last.safetensors"]])
def test_resume_never_unpickles(run, tmp_path, names):
    target = tmp_path / "pwned"
    if "last.safetensors" not in names:
        (run / checkpoint.LAST).unlink()
    plant_pickles(run, target, names)
    line = one_line_error(resume(run))
    assert not target.exists()
    assert "last" in line and ("predates" in line or "cannot read checkpoint" in line)


@pytest.mark.parametrize("names", [["checkpoint.pt"], ["checkpoint.safetensors"]])
def test_extend_never_unpickles(run, tmp_path, names):
    target = tmp_path / "pwned"
    if "checkpoint.safetensors" not in names:
        (run / checkpoint.BEST).unlink()
    plant_pickles(run, target, names)
    line = one_line_error(extend(run, tmp_path))
    assert not target.exists()
    assert "checkpoint" in line and ("predates" in line or "cannot read checkpoint" in line)


def test_old_run_folders_get_a_message_not_a_traceback(run, tmp_path):
    """A benign pickled run from an older mmx: refused (never loaded), with what to do."""
    for new, old in ((checkpoint.LAST, "last.pt"), (checkpoint.BEST, "checkpoint.pt")):
        torch.save({"model": {}}, run / old)
        (run / new).unlink()
    for result in (resume(run), extend(run, tmp_path)):
        line = one_line_error(result)
        assert "predates mmx's safe checkpoint format" in line and "train it again" in line
    with pytest.raises(checkpoint.CheckpointError, match="predates"):
        checkpoint.load(run / checkpoint.BEST)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "bitflip_header"])
def test_damaged_last_is_one_clear_line_naming_it(run, damage):
    path = run / checkpoint.LAST
    data = path.read_bytes()
    damaged = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 8,
        "bitflip_header": data[:10] + b"\xff\xfe" + data[12:],
    }[damage]
    path.write_bytes(damaged)
    line = one_line_error(resume(run))
    assert str(path) in line and "damaged" in line


def test_foreign_safetensors_is_refused(run):
    """A valid safetensors file that mmx did not write (no state record) is not half-loaded."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(run / checkpoint.LAST))
    line = one_line_error(resume(run))
    assert "not an mmx-checkpoint/1 file" in line


def test_roundtrip_keeps_types_and_bits():
    state = {"t": torch.randn(3, dtype=torch.float64), "opt": {0: {"step": torch.tensor(3.0)}, 7: {}},
             "betas": (0.9, 0.999), "best": float("inf"), "list": [1, "a", None, True], "$odd": 1}
    tied = torch.randn(4)
    state["tied"] = {"a": tied, "b": tied[:2]}  # shared storage, as tied weights have
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(Path(d) / "x.safetensors", state)
        back = checkpoint.load(Path(d) / "x.safetensors")
    assert torch.equal(back["t"], state["t"]) and back["t"].dtype == torch.float64
    assert set(back["opt"]) == {0, 7} and back["betas"] == (0.9, 0.999) and back["best"] == float("inf")
    assert back["list"] == [1, "a", None, True] and back["$odd"] == 1
    assert torch.equal(back["tied"]["b"], tied[:2])


class FakeCuda:
    """Stands in for ``torch.cuda`` on a machine with ``count`` devices; records what it is given."""

    def __init__(self, count):
        self.count, self.given = count, {}

    def is_available(self):
        return self.count > 0

    def device_count(self):
        return self.count

    def set_rng_state(self, state, device):
        assert state.device.type == "cpu" and state.dtype == torch.uint8  # torch.cuda rejects anything else
        self.given[device] = state


def test_restore_rng_hands_cuda_cpu_byte_tensors_per_device():
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]}
    fake = FakeCuda(2)
    checkpoint.restore_rng(saved, cuda=fake)
    assert sorted(fake.given) == [0, 1]  # the third device is not here
    assert all(torch.equal(fake.given[i], saved["cuda"][i]) for i in (0, 1))
    none = FakeCuda(0)
    checkpoint.restore_rng(saved, cuda=none)
    assert none.given == {}
    cpu_run = FakeCuda(2)
    checkpoint.restore_rng({"torch": saved["torch"], "cuda": None}, cuda=cpu_run)
    assert cpu_run.given == {}


def test_a_run_that_never_used_cuda_records_no_cuda_state_and_does_not_start_cuda():
    class Uninitialised(FakeCuda):
        def is_initialized(self):
            return False

        def get_rng_state_all(self):
            raise AssertionError("reading the CUDA generators starts CUDA on every GPU")

    assert checkpoint.rng_state(cuda=Uninitialised(2))["cuda"] is None

    class Started(Uninitialised):
        def is_initialized(self):
            return True

        def get_rng_state_all(self):
            return [torch.full((16,), i, dtype=torch.uint8) for i in range(self.count)]

    states = checkpoint.rng_state(cuda=Started(2))["cuda"]
    assert [int(s[0]) for s in states] == [0, 1] and all(s.device.type == "cpu" for s in states)


def test_restore_rng_restores_the_cpu_generator():
    state = torch.get_rng_state()
    expected = torch.rand(5)
    torch.rand(100)
    checkpoint.restore_rng({"torch": state, "cuda": None})
    assert torch.equal(torch.rand(5), expected)


def test_full_disk_while_checkpointing_is_a_clear_line_and_keeps_the_last(run, monkeypatch):
    """ENOSPC while writing last.safetensors: one line, the previous checkpoint intact, no temporary left."""
    before = (run / checkpoint.LAST).read_bytes()
    real_open = open

    def full_disk_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and ".tmp" in str(path) and str(path).endswith(".safetensors"):  # atomic_path's temporary
            def write(_data):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    line = one_line_error(resume(run))
    assert "no space left" in line and str(run) in line and "--resume" in line
    assert (run / checkpoint.LAST).read_bytes() == before
    assert not list(run.glob(".*tmp*"))
    monkeypatch.undo()
    assert resume(run).exit_code == 0
