"""Peak memory of ``mmx extract`` and ``mmx fetch`` on hostile media and manifests, each beside a harmless input.

    python benchmarks/bench_hostile.py                  # 600 s bomb, 2 GiB gzip body (about 2 minutes)
    python benchmarks/bench_hostile.py --seconds 120 --gzip-mib 256   # a quicker look
    python benchmarks/bench_hostile.py --only video,text,manifest     # the video, text and manifest inputs

The video, text and manifest inputs: a 1920x1080 H.264 clip of ``--video-seconds`` flat frames
at 1 fps (small on disk, every frame sampled by the default video backbone); an H.264 clip of
three 10000x10000 frames; a text file of ``--text-mib`` MiB (default text backbone); a CSV
manifest whose one row is ``--manifest-mib`` MiB long (``mmx fetch``). Baselines: a 64x48 clip of
two frames, a 320x240 clip of as many frames as the 1080p one (what the backbone's batches of
frames cost whatever their source size), a one-line text file, a one-row manifest.

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


def peak_mib(args: list[str], ok_exit: bool = True) -> tuple[float, str]:
    """Run ``mmx ARGS`` in a child process; its peak resident memory in MiB and its output
    (a non-zero exit stops the benchmark unless ``ok_exit`` is False: a refusal is a result)."""
    code = "import sys; from mmx.pipeline.cli import main; sys.argv[0] = 'mmx'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and ok_exit:
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


def write_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    import av
    import numpy as np

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame(w, h, "yuv420p")
            for plane, value in zip(frame.planes, (16 * (i % 12), 128, 128)):
                np.frombuffer(plane, np.uint8)[:] = value
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def extract_one(tmp: Path, name: str, modality: str, row: dict, ok_exit: bool = True) -> tuple[float, str]:
    import pandas as pd

    pd.DataFrame([dict(id=name, modality=modality, **row)]).to_csv(tmp / f"{name}.csv", index=False)
    return peak_mib(["extract", str(tmp / f"{name}.csv"), "--modality", modality, "--cache", str(tmp / f"cache-{name}"),
                     "--dataset", "bench", "--workers", "0", "--no-progress"], ok_exit)


def media_figures(tmp: Path, video_seconds: int, text_mib: int, manifest_mib: int, only: set) -> dict:
    out = {}
    if "video" in only:
        # encoded in a child: a child's ru_maxrss starts from its parent's resident set at fork,
        # so this process must stay small for the figures of the mmx children to mean anything
        for name, frames, w, h in (("small", 2, 64, 48), ("long_small", video_seconds, 320, 240),
                                   ("long", video_seconds, 1920, 1080), ("huge", 3, 10000, 10000)):
            subprocess.run([sys.executable, __file__, "--write-video", str(tmp / f"{name}.mp4"), str(frames), str(w), str(h)],
                           check=True)
        out["video_long_kb"] = round((tmp / "long.mp4").stat().st_size / 1024, 1)
        out["video_huge_kb"] = round((tmp / "huge.mp4").stat().st_size / 1024, 1)
        for name, file in (("video_baseline", "small.mp4"), ("video_long_320x240", "long_small.mp4"),
                           ("video_long", "long.mp4"), ("video_huge", "huge.mp4")):
            out[f"{name}_mib"], text = extract_one(tmp, name, "video", {"uri": file}, ok_exit=False)
            out[f"{name}_result"] = text.strip().splitlines()[0][:200] if text.strip() else ""
    if "text" in only:
        (tmp / "small.txt").write_text("a short text\n")
        with open(tmp / "big.txt", "w") as f:
            for _ in range(text_mib * 64):
                f.write(("word " * 3276 + "\n")[: 2**14])
        for name, file in (("text_baseline", "small.txt"), ("text_big", "big.txt")):
            out[f"{name}_mib"], text = extract_one(tmp, name, "text", {"uri": file})
            out[f"{name}_result"] = [x for x in text.strip().splitlines() if "items/s" in x][:1]
    if "manifest" in only:
        (tmp / "ok.csv").write_text("id,modality,text\na,text,hello\n")
        with open(tmp / "long.csv", "wb") as f:
            f.write(b"id,modality,text\na,text,")
            for _ in range(manifest_mib):
                f.write(b"x" * 2**20)
        for name, file in (("manifest_baseline", "ok.csv"), ("manifest_long", "long.csv")):
            out[f"{name}_mib"], text = peak_mib(["fetch", str(tmp / file), "--out", str(tmp / f"ds-{name}"),
                                                 "--no-progress"], ok_exit=False)
            out[f"{name}_result"] = " / ".join(text.strip().splitlines()[-2:])[:300]
    return out


def main() -> None:
    if sys.argv[1:2] == ["--write-video"]:
        path, frames, w, h = sys.argv[2:6]
        return write_video(Path(path), int(frames), (int(w), int(h)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600, help="length of the audio bomb")
    ap.add_argument("--gzip-mib", type=int, default=2048, help="decoded size of the gzip bomb")
    ap.add_argument("--video-seconds", type=int, default=600, help="length of the 1080p clip (1 fps)")
    ap.add_argument("--text-mib", type=int, default=50, help="size of the text file")
    ap.add_argument("--manifest-mib", type=int, default=1024, help="length of the one-row manifest")
    ap.add_argument("--only", default="audio,gzip,video,text,manifest", help="which inputs to measure")
    args = ap.parse_args()
    only = set(args.only.split(","))
    result = {}
    with tempfile.TemporaryDirectory() as d:
        for sub in ("x", "f", "m"):
            (Path(d) / sub).mkdir()
        if "audio" in only:
            result["extract"] = extract_figures(Path(d) / "x", args.seconds)
        if "gzip" in only:
            result["fetch"] = fetch_figures(Path(d) / "f", args.gzip_mib)
        result["media"] = media_figures(Path(d) / "m", args.video_seconds, args.text_mib, args.manifest_mib, only)
    print(json.dumps(result, indent=1))
    if "extract" in result:
        extract = result["extract"]
        print(f"mmx extract, {args.seconds} s 192 kHz 8-ch FLAC ({extract['bomb_kb']} KB): peak {extract['bomb_mib']:.0f} MiB, "
              f"{extract['bomb_mib'] - extract['baseline_mib']:+.0f} MiB over 1 s of mono WAV ({extract['baseline_mib']:.0f} MiB)")
    if "fetch" in result:
        fetch = result["fetch"]
        print(f"mmx fetch, {fetch['body_bytes']} B of gzip,gzip -> {args.gzip_mib} MiB: peak {fetch['bomb_mib']:.0f} MiB, "
              f"{fetch['bomb_mib'] - fetch['baseline_mib']:+.0f} MiB over a small JPEG ({fetch['baseline_mib']:.0f} MiB)")
    for key, value in result["media"].items():
        if key.endswith("_mib"):
            print(f"{key[:-4]}: peak {value:.0f} MiB ({result['media'].get(key[:-4] + '_result', '')})")


if __name__ == "__main__":
    main()
