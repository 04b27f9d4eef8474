"""benchmarks/gpu_check.sh, the one device command, checked without a GPU: it
parses, its steps fit the 8 minutes, and every default step writes a log its summary reads."""

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
INSTALL_S = 20  # installing the carried wheels, measured
BUDGET_S = 8 * 60


def steps() -> dict:
    """{name: limit in seconds} of the script's `step NAME SECONDS ...` lines; of two lines for one
    step (an if/else), the larger limit."""
    out: dict = {}
    for name, limit in re.findall(r"^\s*step (\w+) (\d+) ", SCRIPT.read_text(), re.M):
        out[name] = max(out.get(name, 0), int(limit))
    return out


def test_the_script_parses():
    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_steps_fit_in_eight_minutes():
    limits = steps()
    assert sum(limits.values()) + INSTALL_S <= BUDGET_S, limits


def test_every_default_step_has_a_line_and_a_summary():
    text = SCRIPT.read_text()
    default = re.search(r"STEPS=\$\{GPU_CHECK_STEPS:-([^}]*)\}", text).group(1).split()
    assert set(default) == set(steps()), (default, steps())
    summary = text[text.index("-- the figures"):]
    for name in default:
        reads = f"$OUT_DIR/{name}.log" in summary or re.search(rf"for t in [\w ]*\b{name}\b", summary)
        assert reads, f"figures.txt does not read {name}.log"


def test_every_benchmark_waits_for_the_device_it_times():
    """A bare ``torch.cuda.synchronize`` waits for the current device only: with ``--device cuda:1``
    a timing would stop before the timed work ended. Every synchronise names the device."""
    for path in sorted(SCRIPT.parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call) and (n.args or n.keywords)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "synchronize" and ast.unparse(node.value) == "torch.cuda":
                assert id(node) in calls, f"{path.name}:{node.lineno}: torch.cuda.synchronize without the device"


def test_the_cvs_bench_times_steps_under_the_training_loops_autocast(tmp_path, monkeypatch):
    """bench_train_cvs.py's figure on CUDA is of the step ``mmx train`` runs there: inside the
    loop's autocast (bf16 on CUDA), not in float32."""
    import torch

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import bench_train_cvs
    from mmx.cache.modality import Modality
    from mmx.cache.synthesize import SyntheticConfig, synthesize
    from mmx.train.config import TrainConfig
    from mmx.train.data import load_train_data
    from mmx.train.strategies import get_strategy

    synthesize(tmp_path, SyntheticConfig(classes=4, items={"text": 24, "image": 24}, dims={"text": 6, "image": 8}, tokens=None))
    cpu = torch.device("cpu")
    data = load_train_data(str(tmp_path), "synthetic", [Modality.TEXT, Modality.IMAGE], ["train", "test"], device=cpu)
    cfg = TrainConfig(strategy="cvs", modalities=["text", "image"], embed_dim=8, batch_size=8)
    s = get_strategy("cvs")(cfg, data, cpu)
    model = s.build_model()
    entered = []

    class Recorded:
        def __enter__(self):
            entered.append(torch.is_grad_enabled())

        def __exit__(self, *exc):
            return False

    from mmx.train import loop

    monkeypatch.setattr(loop, "autocast_for", lambda c, d: (lambda cache=True: Recorded()) if (c, d) == (cfg, cpu) else None)
    bench_train_cvs.time_stage(s, model, s.stages()[0], 1, False, cpu)
    assert entered == [True] * 3  # two warm-up steps and the timed one, each forward inside it
