"""The commands of the README and of the docs/ pages as a user runs them, in order, in one folder.

The shell blocks are read as a user copies them (comments dropped, ``\\``
continuations joined, ``&&`` chains split). Each line is in exactly one table below:

* ``STEPS``: run for real through the CLI (click's CliRunner, in-process), in the order a
  user would, in one temporary folder that is the user's working directory. A placeholder of
  the pages (``STORE``, ``$RUN``, ``msrvtt``, ...) is replaced by what the workspace holds
  at that point (``{w...}``, a :class:`Workspace` attribute), and a few long commands get
  smaller settings (``added``, appended to the pages' words); nothing else changes.
* ``OWN_MEDIA``: the README's "your own media" walkthrough (its six commands, then the
  docs page's next steps), run exactly as written in a folder of small generated media
  (:func:`write_own_media`); test_own_data_walkthrough.py runs them.
* ``SKIPPED``: cannot run offline, each with its reason (kept small and exact).
* ``NOT_MMX``: shell lines that are not mmx commands (installing, variables).

The workspace's own data ("mydataset") is a sliver of the demo's embedded media (3 items
per class and modality), served on 127.0.0.1 (any free port) as XMediaNet-style URL lists,
with one URL answering 503 until the ``--retry-failed`` step (``heals``). The dask line
runs on a local in-process cluster; the ``--weights`` line on a tiny random ResNet saved
like a hub snapshot. A second image backbone makes mydataset's image store ambiguous, so
that line runs after the lines that train on mydataset and before ``--store``, the line
that resolves it. Tests: test_readme_commands.py; test_demo.py checks the demo step's output.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import glob
import http.server
import re
import shlex
import threading
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmx.pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The site's own pages; docs/notes/ holds research notes, which have no commands to run.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


@dataclasses.dataclass(frozen=True)
class Step:
    """One README line as it runs here."""

    line: str
    subs: dict = dataclasses.field(default_factory=dict)  # README word -> value ({w...} formatted)
    added: str = ""  # smaller settings, appended
    name: str = ""  # the run folder this step creates is w.runs[name]
    expect: tuple = ()  # text the output must contain (what the README says happens)
    creates: tuple = ()  # files (globs, {w...} formatted) the README says the command writes
    heals: bool = False  # the server's transient failure is over before this step


DEMO_RUN = {"$RUN": "{w.demo[quad-modal]}"}
DEMO_RUN_M = {**DEMO_RUN, "$M": "{w.demo_manifest}"}
MANIFEST = {"MANIFEST": "data/mydataset/manifest.fetched.csv"}
STORE = {"STORE": "{w.store[image]}"}
QUAD = {"RUN": "{w.runs[quad]}"}
RUN_FOLDER = tuple("{w.runs[quad]}" + f for f in ("config.yaml", "normalizer.json", "metrics.jsonl", "metrics.json",
                                                  "checkpoint.safetensors", "last.safetensors", "embeddings/test/*.npz"))

# README line (as copied)                                         README word -> here      added / expected output
STEPS = [
    Step("mmx demo",                                              added="--quick --per-class 1 --no-progress",
         expect=("not_found", "Summary")),
    Step('mmx search $RUN --text "a spoken seven" --target image,video --top 5 --manifest $M', DEMO_RUN_M,
         expect=("image",)),
    Step("mmx search $RUN --file mmx-demo/data/media/audio/wav-7-lucas-0.wav --target image --manifest $M", DEMO_RUN_M),
    Step('mmx embed $RUN mmx-demo/data/media/image/*.png --text "die Ziffer sieben" -o new.npz', DEMO_RUN,
         creates=("new.npz",)),
    Step("mmx embed $RUN --manifest $M -o gallery.npz",           DEMO_RUN_M, expect=("120 embeddings of 256",),
         creates=("gallery.npz",)),
    Step("mmx search $RUN --text sieben --gallery gallery.npz",   DEMO_RUN, expect=("(text: sieben)\n    1  ",)),
    # your own data
    Step("mmx manifest-from-lists --list image=images.txt --list audio=audio.txt --list video=videos.txt "
         "--texts texts.txt --columns id,label,uri -o manifest.csv", creates=("manifest.csv",)),
    Step("mmx fetch manifest.csv --out data/mydataset",           expect=("1 transient (server_error 1): rerun with --retry-failed",),
         creates=tuple("data/mydataset/" + f for f in ("fetch/status.csv", "fetch/report.md", "fetch/report.json",
                                                       "manifest.fetched.csv", "media/image/*.png"))),
    Step("mmx fetch manifest.csv --out data/mydataset --retry-failed", heals=True, expect=("fetched 1 item(s) this run (ok 1)",)),
    Step("mmx extract --list",                                    expect=("resnet-50",)),
    Step("mmx extract data/mydataset/manifest.fetched.csv --modality image --dataset mydataset", expect=("0 failed",)),
    Step("mmx extract data/mydataset/manifest.fetched.csv --modality text --dataset mydataset", expect=("0 failed",)),
    Step("mmx extract MANIFEST --modality video --dataset mydataset --set fps=2", MANIFEST, expect=("0 failed",)),
    Step("mmx extract MANIFEST --modality audio --dataset mydataset --dask-scheduler tcp://10.0.0.1:8786",
         {**MANIFEST, "tcp://10.0.0.1:8786": "{w.scheduler}"}, expect=("0 failed",)),
    Step("mmx extract MANIFEST --modality image --dataset mydataset --retry-failed", MANIFEST,
         expect=("0 shard(s) written",)),
    Step("mmx cache synthesize --preset small --cache .mmx-cache", creates=(".mmx-cache/synthetic/*/*.zarr",)),
    Step("mmx cache ls --cache .mmx-cache",                       expect=("mydataset", "synthetic")),
    Step("mmx cache ls --failed --cache .mmx-cache"),
    Step("mmx cache info STORE",                                  STORE),
    Step("mmx cache verify STORE",                                STORE, expect=("checksums verified",)),
    Step("mmx cache verify --repair STORE",                       STORE, expect=("checksums verified",)),
    Step("mmx cache import --help"),
    Step("mmx train --strategy joint --modalities text,image,audio,video --cache .mmx-cache --dataset synthetic",
         added="--epochs 1", name="joint"),
    Step("mmx train --preset fuerer-quad --dataset mydataset",    added="--epochs 1", name="quad", creates=RUN_FOLDER),
    Step("mmx train --preset eao-cpu --dataset msrvtt --set options.heads=8", {"msrvtt": "mydataset"},
         added="--epochs 1 --set batch_size=10", name="eao"),
    Step("mmx train --strategy rvs --dataset mydataset --set options.reference=text", added="--epochs 1", name="rvs"),
    Step("mmx train --resume runs/20261122-101500-joint-t-i-a-v", {"runs/20261122-101500-joint-t-i-a-v": "{w.runs[joint]}"},
         expect=("resuming",)),
    Step("mmx train --from runs/RUN --add-modality video",       {"runs/RUN": "{w.demo[tri-modal]}"}, added="--epochs 1"),
    Step("mmx extract MANIFEST --modality image --dataset mydataset --backbone resnet-50 --weights /models/resnet-50",
         {**MANIFEST, "/models/resnet-50": "{w.tiny_resnet}"}, expect=("0 failed",)),
    Step("mmx train --dataset mydataset --store image=KEY_OR_PATH", {"KEY_OR_PATH": "{w.store[resnet-50]}"},
         added="--epochs 1"),
    Step("mmx eval RUN",                                          QUAD, expect=("Mean",),
         creates=tuple("{w.runs[quad]}eval/eval-class." + ext for ext in ("md", "csv", "json"))),
    Step("mmx eval RUN --relevance instance",                     QUAD, expect=("n/a",)),
    Step("mmx eval RUN --plots",                                  QUAD, creates=tuple(
        "{w.runs[quad]}eval/" + f for f in ("heatmap-test-*.png", "training-curves.png", "projection-test.png"))),
    Step("mmx compare RUN_A RUN_B RUN_C --out runs/compare",
         {"RUN_A": "{w.runs[quad]}", "RUN_B": "{w.runs[eao]}", "RUN_C": "{w.runs[rvs]}"}, creates=("runs/compare/compare.md",)),
    Step("mmx compare --group 'quad=runs/quad/*' --group 'tri=runs/tri/*'",
         {"runs/quad/*": "{w.runs[quad]}", "runs/tri/*": "{w.runs[rvs]}"}, expect=("xR@1", "chance")),
    Step("mmx sweep --dataset mydataset --strategy joint --strategy cvs --trials 20 --seeds 3 --out sweeps/mine",
         added="--trials 1 --seeds 1 --set epochs=1", expect=("Sweep report",), creates=("sweeps/mine/report.md",)),
]
DEMO = STEPS[0]

MINE = "runs/mine/"
OWN_PER_CLASS = 8  # write_own_media's items per label and modality
OWN_OK = f"{3 * OWN_PER_CLASS} ok, 0 failed"
# The README's six commands, then docs/own-media.md's next steps, exactly as written.
OWN_MEDIA = [
    Step("mmx fetch my-media/manifest.csv --out data/mine", expect=(f"ok {9 * OWN_PER_CLASS})",),
         creates=tuple("data/mine/" + f for f in ("manifest.fetched.csv", "fetch/status.csv", "fetch/report.md"))),
    Step("mmx extract data/mine/manifest.fetched.csv --modality image --dataset mine", expect=(OWN_OK,)),
    Step("mmx extract data/mine/manifest.fetched.csv --modality audio --dataset mine", expect=(OWN_OK,)),
    Step("mmx extract data/mine/manifest.fetched.csv --modality text --dataset mine", expect=(OWN_OK,)),
    Step("mmx train --strategy joint --dataset mine --name mine",
         expect=("dataset mine in cache", "strategy joint", "items: train ", "per-epoch R@10"),
         creates=tuple(MINE + f for f in ("config.yaml", "splits.json", "checkpoint.safetensors", "embeddings/test/*.npz"))),
    Step("mmx eval runs/mine", expect=("Text → Image", "Audio → Image", "Mean"),
         creates=tuple(MINE + "eval/eval-class." + ext for ext in ("md", "csv", "json"))),
    Step('mmx search runs/mine --text "a red thing" --target image --manifest data/mine/manifest.fetched.csv',
         expect=("(text: a red thing)\n    1  ", "photo-")),
    Step("mmx export runs/mine my-space --manifest data/mine/manifest.fetched.csv",
         creates=tuple("my-space/" + f for f in ("bundle.json", "README.md", "checkpoint.safetensors", "space.json"))),
    Step('mmx search my-space --text "a red thing" --target image', expect=("(text: a red thing)\n    1  ", "photo-")),
    Step("mmx train --strategy cvs --dataset mine --name mine-cvs", creates=("runs/mine-cvs/checkpoint.safetensors",)),
    Step("mmx compare runs/mine runs/mine-cvs --out runs/compare-mine", creates=("runs/compare-mine/compare.md",)),
]

SKIPPED = {  # README line -> why it cannot run here
    "mmx extract MANIFEST --modality image --dataset mydataset --backbone resnet-50":
        "downloads microsoft/resnet-50 from the hub (tests are offline; its --weights twin runs)",
}

NOT_MMX = {  # README line -> what it is
    "python3 -m venv .venv": "installation",
    ". .venv/bin/activate": "installation",
    "pip install torch==2.13.0": "installation",
    "pip install -e .": "installation",
    "pip install -e '.[test]'": "installation",
    "python -m pytest": "the test command (.ci/run runs it)",
    "RUN=$(ls -d mmx-demo/runs/quad-modal/*/ | tail -1)": "shell variable: $RUN in STEPS is w.demo[quad-modal]",
    "M=mmx-demo/data/manifest.fetched.csv": "shell variable: $M in STEPS is w.demo_manifest",
}


def shell_lines(text: str) -> list[str]:
    """The shell lines of the ``bash`` blocks of a Markdown text, as a user copies them."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            lines += [part for part in re.split(r"\s*&&\s*", line) if part]
    return lines


def readme_lines() -> list[str]:
    """The shell lines of the README and the docs pages, page after page (a line may repeat)."""
    return [line for page in PAGES for line in shell_lines(page.read_text(encoding="utf-8"))]


def own_media_lines() -> list[str]:
    """The shell lines of the README's "Your own media" section."""
    section = re.search(r"^## Your own media\n(.*?)(?=^## |\Z)", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    return shell_lines(section.group(1)) if section else []


# -- the workspace -----------------------------------------------------------------------
class Workspace:
    """What the steps' placeholders refer to, looked up when the step runs (cwd: the user's folder)."""

    demo_manifest = "mmx-demo/data/manifest.fetched.csv"

    def __init__(self, root: Path, stack: contextlib.ExitStack | None = None):
        self.root, self._stack = root, stack
        self.runs: dict[str, str] = {}  # Step.name -> the run folder that step created

    @property
    def demo(self) -> dict[str, str]:
        """The demo's newest run of each setting (the README's ``ls -d ... | tail -1``)."""
        return {Path(p).name: sorted(glob.glob(f"{p}/*/"))[-1] for p in glob.glob("mmx-demo/runs/*")}

    @property
    def store(self) -> dict[str, str]:
        """mydataset's image stores: ``image`` (the default backbone) and ``resnet-50``."""
        from mmx.cache.store import list_stores

        stores = [s for s in list_stores(".mmx-cache") if s.dataset == "mydataset" and s.modality.value == "image"]
        return {("resnet-50" if s.backbone["name"] == "resnet-50" else "image"): str(s.path) for s in stores}

    @functools.cached_property
    def scheduler(self) -> str:
        """A dask scheduler on 127.0.0.1 with one in-process worker, closed with the workspace."""
        from distributed import LocalCluster

        cluster = self._stack.enter_context(LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                                         protocol="tcp://", host="127.0.0.1", dashboard_address=None))
        return cluster.scheduler_address

    @functools.cached_property
    def tiny_resnet(self) -> str:
        """A tiny random ResNet and its image processor, saved like a hub snapshot."""
        import torch
        import transformers as T

        folder = self.root / "models" / "resnet-50"
        torch.manual_seed(0)
        T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(folder)
        T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
        return str(folder)


@contextlib.contextmanager
def users_folder(root: Path):
    """cwd ``root``, no ``$MMX_CACHE``, no hub: what a user's shell would be, offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MMX_CACHE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield mp


def command_of(step: Step, w: Workspace | None = None) -> list[str]:
    """The argv that runs: the README line's words with ``subs`` applied, globs expanded (with a
    workspace, as the shell would), ``added`` appended."""
    words = []
    for word in shlex.split(step.line)[1:]:
        for old, new in step.subs.items():
            word = word.replace(old, new.format(w=w) if w is not None else new)
        words += sorted(glob.glob(word)) if w is not None and "*" in word else [word]
    return words + shlex.split(step.added)


@dataclasses.dataclass
class Outcome:
    argv: list[str]
    exit_code: int
    output: str
    error: str  # a traceback, or ""
    missing: list = dataclasses.field(default_factory=list)  # Step.creates not written


def run_step(step: Step, w: Workspace) -> Outcome:
    """Run one step through the CLI in the current folder; never raises."""
    try:
        argv = command_of(step, w)
    except Exception:  # a placeholder an earlier, failed step should have provided
        return Outcome([], -1, "", traceback.format_exc())
    before = set(glob.glob("runs/*/"))
    result = CliRunner().invoke(main, argv)
    error = ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        error = "".join(traceback.format_exception(*result.exc_info))
    created = sorted(set(glob.glob("runs/*/")) - before)
    if step.name and created:
        w.runs[step.name] = created[-1]
    try:
        missing = [path for path in (p.format(w=w) for p in step.creates) if not glob.glob(path)]
    except Exception:
        missing = list(step.creates)
    return Outcome(argv, result.exit_code, result.output, error, missing)


# -- the user's own media, on 127.0.0.1 ----------------------------------------------------
class _Media(http.server.SimpleHTTPRequestHandler):
    """The demo's data folder; ``/flaky/NAME`` answers 503 until the server heals, then serves
    ``media/image/NAME``."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith("/flaky/"):
            if not self.server.healed:
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.path = self.path.replace("/flaky/", "/media/image/", 1)
        super().do_GET()

    def log_message(self, format, *args) -> None:
        pass


@contextlib.contextmanager
def serve_media():
    """The demo's embedded media on 127.0.0.1, any free port; yields the server (``.url``, ``.healed``)."""
    from mmx.pipeline.demo.run import DATA

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Media, directory=str(DATA)))
    server.healed, server.daemon_threads = False, True
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def write_lists(base_url: str, per_class: int = 3) -> None:
    """images.txt, audio.txt, videos.txt ('id label url') and texts.txt ('id label text'): the
    first ``per_class`` items of each class of the demo's set, plus one flaky image URL."""
    from mmx.pipeline.demo.run import DATA

    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    seen: dict = {}
    lines: dict[str, list[str]] = {"image": [], "audio": [], "video": [], "text": []}
    for r in rows:
        key = (r["modality"], r["label"])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= per_class:
            lines[r["modality"]].append(f"{r['id']} {r['label']} " + (r["text"] or f"{base_url}/{r['uri']}"))
    flaky = next(r for r in rows if r["modality"] == "image")
    lines["image"].append(f"flaky-{flaky['id']} {flaky['label']} {base_url}/flaky/{Path(flaky['uri']).name}")
    for modality, name in (("image", "images.txt"), ("audio", "audio.txt"), ("video", "videos.txt"), ("text", "texts.txt")):
        Path(name).write_text("\n".join(lines[modality]) + "\n", encoding="utf-8")


# -- the user's own media, in a folder ----------------------------------------------------
OWN_LABELS = ("red", "green", "blue")


def write_own_media(folder: Path, absolute: bool = False) -> Path:
    """A user's folder: photos and recordings of three labels and sentences about them, listed
    in ``folder/manifest.csv`` (no split column) with paths relative to it, or absolute ones.
    Returns the manifest."""
    import numpy as np
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(OWN_LABELS):
        for i in range(OWN_PER_CLASS):
            img = np.zeros((48, 64, 3), np.uint8)
            img[..., c] = 200
            photo = folder / "photos" / f"{name}-{i}.jpg"
            photo.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img + rng.integers(0, 40, img.shape)).astype(np.uint8)).save(photo)
            t = np.arange(16000) / 16000
            sound = folder / "sounds" / f"{name}-{i}.wav"
            sound.parent.mkdir(parents=True, exist_ok=True)
            sf.write(sound, (0.3 * np.sin(2 * np.pi * (300 + 400 * c + 10 * i) * t)).astype(np.float32), 16000)
            uri = (lambda p: str(p.resolve())) if absolute else (lambda p: p.relative_to(folder).as_posix())
            rows += [{"id": f"photo-{name}-{i}", "modality": "image", "uri": uri(photo), "text": "", "label": name},
                     {"id": f"sound-{name}-{i}", "modality": "audio", "uri": uri(sound), "text": "", "label": name},
                     {"id": f"text-{name}-{i}", "modality": "text", "uri": "", "text": f"a {name} thing, number {i}",
                      "label": name}]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "modality", "uri", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
