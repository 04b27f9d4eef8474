"""Peak memory of ``mmx eval`` / ``mmx train --resume`` on hostile run folders against an intact one.

    python benchmarks/bench_hostile_runs.py                       # 3.2 GiB npz bomb (about 1 minute)
    python benchmarks/bench_hostile_runs.py --bomb-gib 1          # a quicker look

Each command runs as the real CLI in a fresh child process, watched: its peak resident memory
is the child's ``ru_maxrss`` (``os.wait4``), and a child past ``--limit-gib`` of resident memory
or ``--timeout`` seconds is killed and reported as such (the unbounded cases). Inputs, made here
in a tiny synthetic run folder:

* ``intact``: the run as training left it (the baseline);
* ``npz bomb``: ``embeddings/test/text.npz`` replaced by a deflated zip whose ``emb`` inflates to
  ``--bomb-gib`` GiB of zeros (3.2 GiB is about 3 MB on disk);
* ``alias bomb``: a 549-byte ``config.yaml`` of nine levels of YAML aliases (10**9 leaves);
* ``/dev/zero``: ``config.yaml`` a symlink to ``/dev/zero``;
* ``FIFO``: ``config.yaml`` a named pipe nobody writes.

Run it with ``PYTHONPATH`` pointing at a folder holding another checkout as ``mmx`` to measure
that one (benchmarks/RESULTS.md compares this commit with the one before these bounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


def watched(args: list[str], limit_mib: float, timeout: float) -> tuple[str, float, float, str]:
    """``mmx ARGS`` in a child: (outcome, peak MiB, seconds, last output line)."""
    code = "import sys; from mmx.pipeline.cli import main; sys.argv[0] = 'mmx'; main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    outcome = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps the child itself, keeping its rusage
        if pid:
            break
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration):
            rss = 0
        if outcome is None and (rss > limit_mib or time.perf_counter() - started > timeout):
            outcome = f"killed (over {limit_mib:.0f} MiB)" if rss > limit_mib else f"killed (over {timeout:.0f} s)"
            proc.kill()
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    out = proc.stdout.read().strip().splitlines()
    if outcome is None:
        outcome = f"exit {os.waitstatus_to_exitcode(status)}"
    return outcome, usage.ru_maxrss / 1024, seconds, (out[-1] if out else "")[:140]


def make_run(root: Path) -> Path:
    from mmx.cache.synthesize import SyntheticConfig, synthesize
    from mmx.train.config import TrainConfig
    from mmx.train.loop import train

    synthesize(root / "cache", SyntheticConfig(classes=8, items={"text": 400, "image": 400},
                                               dims={"text": 64, "image": 64}, tokens=None, noise=0.5))
    cfg = TrainConfig(cache=str(root / "cache"), out=str(root / "runs"), modalities=["text", "image"], epochs=2,
                      batch_size=16, embed_dim=256, normalize="standardize", name="trained")
    return train(cfg)


def write_bomb_npz(path: Path, gib: float, dim: int = 256) -> None:
    from numpy.lib import format as npf

    rows = int(gib * (1 << 30) / (4 * dim)) // 4096 * 4096
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("emb.npy", "w", force_zip64=True) as f:
            npf.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            block = np.zeros((4096, dim), np.float32).tobytes()
            for _ in range(rows // 4096):
                f.write(block)
        for name in ("label", "group", "id"):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                npf.write_array(f, np.zeros(rows, dtype="<U1"))


def alias_bomb(levels: int = 9) -> str:
    lines = ["options:", '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bomb-gib", type=float, default=3.2)
    ap.add_argument("--limit-gib", type=float, default=6.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    import mmx

    print(f"mmx from {Path(mmx.__file__).parent}")
    root = Path(tempfile.mkdtemp(prefix="bench-hostile-runs-"))
    try:
        intact = make_run(root)
        cases = []

        def variant(name, tamper):
            run = root / "runs" / name.replace(" ", "-").replace("/", "")
            shutil.copytree(intact, run)
            size = tamper(run)
            cases.append((name, run, size))

        variant("intact", lambda run: 0)

        def npz(run):
            p = run / "embeddings" / "test" / "text.npz"
            write_bomb_npz(p, args.bomb_gib)
            return p.stat().st_size

        def config_text(text):
            def tamper(run):
                (run / "config.yaml").write_text(text)
                return len(text.encode())
            return tamper

        def special(kind):
            def tamper(run):
                (run / "config.yaml").unlink()
                os.mkfifo(run / "config.yaml") if kind == "fifo" else os.symlink("/dev/zero", run / "config.yaml")
                return 0
            return tamper

        variant("npz bomb", npz)
        variant("alias bomb", config_text(alias_bomb()))
        variant("/dev/zero", special("zero"))
        variant("FIFO", special("fifo"))
        limit = args.limit_gib * 1024
        print("| input | file bytes | command | outcome | peak RSS MiB | seconds | last line |")
        print("|---|---:|---|---|---:|---:|---|")
        for name, run, size in cases:
            commands = [["eval", str(run)]]
            if name in ("intact", "alias bomb", "FIFO"):
                commands.append(["train", "--resume", str(run), "--epochs", "3", "--quiet"])
            for cmd in commands:
                outcome, peak, secs, last = watched(cmd, limit, args.timeout)
                label = "eval" if cmd[0] == "eval" else "train --resume"
                print(f"| {name} | {size} | {label} | {outcome} | {peak:.0f} | {secs:.1f} | {last.replace('|', '/')} |",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
