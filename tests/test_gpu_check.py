"""benchmarks/gpu_check.sh, the one device command (issue 12 item 2), checked without a GPU: it
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
