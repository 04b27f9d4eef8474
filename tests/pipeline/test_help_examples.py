"""Every example in every command's --help runs as written, in a folder laid out as the examples
assume: a synthetic cache, runs ``runs/joint`` and ``runs/quad``, the demo's run as ``runs/RUN``
with its media and manifest, and the list and feature files the import examples name."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from mmx.pipeline.cli import main


def _commands(group: click.Group = main, path: tuple = ()):
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def examples(help_text: str) -> list[str]:
    """The ``mmx ...`` lines of a help text, continuation lines (ending in a backslash) joined."""
    joined = re.sub(r"\s*\\\n\s*", " ", help_text)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("mmx ")]


def all_examples() -> list[tuple[str, str]]:
    """``(command, example)`` in the order the commands are registered (the pipeline's order)."""
    out = []
    for path in [(), *_commands()]:
        text = CliRunner().invoke(main, [*path, "--help"], terminal_width=200).output
        out += [(" ".join(path) or "mmx", line) for line in examples(text)]
    return out


def test_examples_are_found():
    found = {cmd for cmd, _ in all_examples()}
    assert {"train", "eval", "compare", "embed", "search", "cache import", "cache synthesize",
            "manifest-from-lists"} <= found
    assert examples("x\n  mmx a \\\n      --b c\n  mmx d") == ["mmx a --b c", "mmx d"]


def _world(root: Path, demo_root: Path) -> None:
    """What the examples name, under ``root`` (the current folder when they run)."""
    cli = CliRunner()

    def ok(argv):
        r = cli.invoke(main, argv)
        assert r.exit_code == 0, (argv, r.output)

    ok(["cache", "synthesize", "--quiet"])
    for name, preset in (("joint", []), ("quad", ["--preset", "fuerer-quad"])):
        ok(["train", *preset, "--dataset", "synthetic", "--epochs", "2", "--set", "embed_dim=16", "--name", name,
            "--device", "cpu", "--quiet"])
    # the demo's own folder (its runs read their cache as mmx-demo/cache) and its quad-modal run
    os.symlink(demo_root / "mmx-demo", "mmx-demo")
    quad = sorted((demo_root / "mmx-demo" / "runs" / "quad-modal").glob("*/config.yaml"))[-1].parent
    os.symlink(Path("../mmx-demo/runs/quad-modal") / quad.name, "runs/RUN")
    Path("data").mkdir()
    os.symlink(Path("../mmx-demo/data"), "data/mine")
    media = Path("mmx-demo/data/media")
    for name, pattern in (("photo.png", "image/*.png"), ("clip.mp4", "video/*.mp4"), ("seven.wav", "audio/*7*.wav")):
        os.symlink(sorted(media.glob(pattern))[0], name)
    # URL lists and texts (manifest-from-lists)
    for name in ("images", "videos"):
        Path(f"{name}.txt").write_text("".join(f"{i} {i % 2} http://example.org/{name}/{i}.x\n" for i in range(4)))
    Path("texts.txt").write_text("".join(f"{i} {i % 2} text number {i}\n" for i in range(4)))
    # pre-extracted features (cache import): MATLAB v5 and HDF5
    import h5py
    import scipy.io

    rng = np.random.default_rng(0)
    onehot = lambda n: np.eye(3)[rng.integers(0, 3, n)]  # noqa: E731
    scipy.io.savemat("XMedia.mat", {"I_tr_CNN": rng.normal(size=(12, 6)), "trImgCat": onehot(12),
                                    "I_te_CNN": rng.normal(size=(6, 6)), "teImgCat": onehot(6)})
    for split, n in (("train", 12), ("test", 6)):
        with h5py.File(f"{split}.h5", "w") as f:
            f["X"] = rng.normal(size=(n, 5)).astype(np.float32)
            f["y"] = rng.integers(0, 3, n)


def test_every_help_example_runs_as_written(readme_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMX_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _world(tmp_path, Path(readme_demo[0]).resolve())
    failed = []
    for command, line in all_examples():
        r = CliRunner().invoke(main, shlex.split(line)[1:])
        if r.exit_code != 0:
            failed.append(f"mmx {command}: {line}\n  exit {r.exit_code}: {r.output[-600:]}{r.exception!r}")
    assert not failed, "\n".join(failed)
