"""Peak memory of ``mmx extract`` on an audio bomb and ``mmx fetch`` on a stacked-gzip body.

    python benchmarks/bench_hostile.py                  # 600 s bomb, 2 GiB gzip body (about 2 minutes)
    python benchmarks/bench_hostile.py --seconds 120 --gzip-mib 256   # a quicker look

Each command runs as the real CLI in a fresh child process; its peak resident memory is the
child's ``ru_maxrss`` (``os.wait4``). Baselines in the same run: the same command on a
harmless input (1 s of mono WAV; a small JPEG), so the difference is what the hostile input
costs. The inputs are made here:

* audio bomb: FLAC, 192 kHz, 8 channels, ``--seconds`` of silence (600 s is under 1 MB on
  disk and 3.4 GiB as float32), extracted with the default audio backbone (log-mel) and
  ``--workers 0``, so decoding and the model share the one process measured;
* gzip bomb: ``--gzip-mib`` MiB of zeros, gzipped twice and served by a loopback server with
  ``Content-Encoding: gzip, gzip``; fetched with ``--max-size 1MB``.

Run it with ``PYTHONPATH`` pointing at another checkout to measure that one (the figures in
benchmarks/RESULTS.md compare this commit with the one before the bounds on decoded audio and stacked encodings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "extract" / "fetch"))
sys.path.insert(0, str(HERE.parent / "tests" / "extract"))


def peak_mib(args: list[str]) -> tuple[float, str]:
    """Run ``mmx ARGS`` in a child process; its peak resident memory in MiB and its output."""
    code = "import sys; from mmx.pipeline.cli import main; sys.argv[0] = 'mmx'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"mmx {' '.join(args)} failed:\n{out[-2000:]}")
    return usage.ru_maxrss / 1024, out


def gzip_twice(mib: int) -> bytes:
    """``mib`` MiB of zeros gzipped twice, built a MiB at a time."""
    def gz(chunks):
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return b"".join(z.compress(c) for c in chunks) + z.flush()

    return gz([gz(b"\0" * 2**20 for _ in range(mib))])


def extract_figures(tmp: Path, seconds: int) -> dict:
    import numpy as np
    import pandas as pd
    import soundfile as sf
    from test_adversarial_extract_inputs import write_audio_bomb

    write_audio_bomb(tmp / "bomb.flac", seconds)
    sf.write(tmp / "small.wav", np.zeros(16000, np.float32), 16000)
    out = {"bomb_kb": round((tmp / "bomb.flac").stat().st_size / 1024, 1), "seconds": seconds}
    for name, file in (("baseline", "small.wav"), ("bomb", "bomb.flac")):
        pd.DataFrame([dict(id=name, modality="audio", uri=file)]).to_csv(tmp / f"{name}.csv", index=False)
        out[f"{name}_mib"], text = peak_mib(["extract", str(tmp / f"{name}.csv"), "--modality", "audio", "--cache",
                                             str(tmp / f"cache-{name}"), "--dataset", "bench", "--workers", "0",
                                             "--no-progress"])
        out[f"{name}_result"] = text.strip().splitlines()[0].split(": ", 1)[-1]
    return out


def fetch_figures(tmp: Path, gzip_mib: int) -> dict:
    import pandas as pd
    from fetch_server import LoopbackServer, send, serve
    from test_adversarial_fetch import _jpeg

    body = gzip_twice(gzip_mib)
    routes = {"/bomb": lambda h, hit: send(h, 200, body, "application/octet-stream", {"Content-Encoding": "gzip, gzip"}),
              "/small.jpg": serve(_jpeg(0), "image/jpeg")}
    out = {"body_bytes": len(body), "decoded_mib": gzip_mib}
    with LoopbackServer(routes) as srv:
        for name, path in (("baseline", "/small.jpg"), ("bomb", "/bomb")):
            pd.DataFrame([dict(id=name, modality="image", uri=srv.url(path))]).to_csv(tmp / f"{name}.csv", index=False)
            out[f"{name}_mib"], text = peak_mib(["fetch", str(tmp / f"{name}.csv"), "--out", str(tmp / f"ds-{name}"),
                                                 "--max-size", "1MB", "--retries", "0", "--no-progress"])
            out[f"{name}_result"] = text.strip().splitlines()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600, help="length of the audio bomb")
    ap.add_argument("--gzip-mib", type=int, default=2048, help="decoded size of the gzip bomb")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "x").mkdir()
        (Path(d) / "f").mkdir()
        extract = extract_figures(Path(d) / "x", args.seconds)
        fetch = fetch_figures(Path(d) / "f", args.gzip_mib)
    print(json.dumps({"extract": extract, "fetch": fetch}, indent=1))
    print(f"mmx extract, {args.seconds} s 192 kHz 8-ch FLAC ({extract['bomb_kb']} KB): peak {extract['bomb_mib']:.0f} MiB, "
          f"{extract['bomb_mib'] - extract['baseline_mib']:+.0f} MiB over 1 s of mono WAV ({extract['baseline_mib']:.0f} MiB)")
    print(f"mmx fetch, {fetch['body_bytes']} B of gzip,gzip -> {args.gzip_mib} MiB: peak {fetch['bomb_mib']:.0f} MiB, "
          f"{fetch['bomb_mib'] - fetch['baseline_mib']:+.0f} MiB over a small JPEG ({fetch['baseline_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
