"""``mmx demo``: every stage of the main job on the embedded real dataset, offline, in minutes.

serve (127.0.0.1) -> fetch (with rotten links) -> extract (four offline backbones) ->
train (paper 000's round-robin, tri- and quad-modal settings, EAO and CVS) -> eval ->
compare -> summary. Each stage calls the library functions the commands call, so what the
demo shows is what ``mmx fetch/extract/train/eval/compare`` do on one's own manifest.

The sizes and protocol the demo chose where the papers are silent: docs/notes/pipeline.md.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from mmx.cache.atomic import atomic_path

DATA = Path(__file__).parent / "data"
DATASET = "digits"
MODALITIES = ("text", "image", "audio", "video")
# The demo trains every strategy with its defaults (train/strategies, chosen on this data and a
# second real set: benchmarks/RESULTS.md "Defaults chosen on real data") except where a setting
# below says why; each changed setting is printed with its reason before the run trains.
_COMMON = {"holdout": "val"}
_COMMON_WHY: dict = {}


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """One training run of the demo: a shipped preset plus the demo's changes, each with its reason."""

    name: str
    preset: str
    overrides: dict
    epochs: int | None  # None: the strategy's own epoch cap
    quick_epochs: int
    why: dict = dataclasses.field(default_factory=dict)  # setting -> why the demo changes it

    def config(self, cache: Path, runs: Path, quick: bool, seed: int):
        from mmx.train.config import resolve

        values = {**_COMMON, **self.overrides, "dataset": DATASET, "cache": str(cache), "out": str(runs / self.name),
                  "seed": seed, "device": "cpu"}
        epochs = self.quick_epochs if quick else self.epochs
        if epochs is not None:
            values["epochs"] = epochs
        return resolve([self.preset], overrides=values)

    def changes(self, cfg, quick: bool) -> list[tuple[str, object, object, str]]:
        """``(setting, default, demo's value, why)`` of every setting the demo's config changes
        from the preset's defaults (where the data goes and the seed aside)."""
        from mmx.train.config import resolve

        base = resolve([self.preset]).to_dict()
        why = {**_COMMON_WHY, **self.why}
        if quick:
            why["epochs"] = "--quick: a few epochs, to see every stage run"
        out = []
        for key, value in cfg.to_dict().items():
            if key in ("dataset", "cache", "out", "seed", "device", "name"):
                continue
            if key == "options":
                for k, v in value.items():
                    if base["options"].get(k) != v:
                        out.append((f"options.{k}", base["options"].get(k), v, why.get(f"options.{k}", why.get("options", ""))))
            elif base[key] != value:
                out.append((key, base[key], value, why.get(key, "")))
        return out


RUNS = (
    DemoRun("round-robin", "fuerer-roundrobin", {}, None, 2),
    DemoRun("tri-modal", "fuerer-tri", {}, None, 2),
    DemoRun("quad-modal", "fuerer-quad", {}, None, 2),
    DemoRun("eao", "eao", {"alignment": "class", "options": {"token_dim": 128, "heads": 4, "mlp_dim": 256},
                           "batch_size": 10, "embed_dim": 256, "lr": 1e-3}, 15, 2,
            why={"alignment": "the digits set has classes, not groups: class-aligned pseudo-groups",
                 "options": "the paper's 4096-d tokens and 64 heads do not fit a CPU in minutes; a CPU-sized fusion",
                 "embed_dim": "the paper's 6144-d space is GPU-sized",
                 "lr": "the paper's 5e-5 stays at chance in 15 short epochs on a CPU (benchmarks/RESULTS.md, eao-cpu)",
                 "batch_size": "one item of each of the 10 digits per batch: no same-class negatives"}),
    DemoRun("cvs", "cvs", {"batch_size": 20}, 10, 2,
            why={"batch_size": "10 digits x 2 items: every batch holds each class, as the intra-modal triplets need",
                 "epochs": "the demo's minutes: 10 of the paper's 50 epochs"}),
)


@dataclasses.dataclass
class Layout:
    """Everything the demo writes, under one folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.urls.csv"

    @property
    def dataset(self) -> Path:
        return self.root / "data"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def compare(self) -> Path:
        return self.root / "compare"


def write_url_manifest(base_url: str, path: Path, per_class: int | None = None) -> int:
    """The embedded manifest with media as URLs on the demo server, plus the rotten links.

    ``per_class``: keep only the first that many items of each (modality, split, digit), to
    run every stage on a sliver of the set (the tests do).
    """
    from mmx.pipeline.demo.serve import BROKEN

    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if per_class is not None:
        seen: dict[tuple, int] = {}
        for r in rows:
            key = (r["modality"], r["split"], r["label"])
            seen[key] = seen.get(key, 0) + 1
            r["keep"] = seen[key] <= per_class
        rows = [{k: v for k, v in r.items() if k != "keep"} for r in rows if r["keep"]]
    for r in rows:
        if r["uri"]:
            r["uri"] = f"{base_url}/{r['uri']}"
    rows += [{"id": i, "modality": m, "uri": base_url + p, "text": "", "label": label, "split": "train"}
             for i, (p, m, label, _) in BROKEN.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _previous_port(manifest: Path) -> int | None:
    """The port of an earlier run's URLs (its first row), so a rerun serves the same URLs."""
    from urllib.parse import urlsplit

    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            return next(urlsplit(r["uri"]).port for r in csv.DictReader(f) if r["uri"])
    except (OSError, StopIteration, ValueError, KeyError):
        return None


def fetch_stage(layout: Layout, log: Callable[[str], None], progress: bool, per_class: int | None = None):
    """Serve the media, fetch them by URL, stop the server; returns the fetch summary."""
    from mmx.extract.fetch import FetchConfig, fetch_manifest
    from mmx.pipeline.cli_fetch import print_summary
    from mmx.pipeline.demo.serve import BROKEN, serve

    with serve(DATA, port=_previous_port(layout.manifest)) as base_url:
        n = write_url_manifest(base_url, layout.manifest, per_class)
        log(f"serving {DATA} at {base_url}; {n} items, {len(BROKEN)} of them rotten on purpose:")
        for item, (_, modality, _, what) in BROKEN.items():
            log(f"  {item:17s} {modality:5s} {what}")
        cfg = FetchConfig(workers=8, per_host=8, retries=1, backoff_base=0.05, connect_timeout=5, read_timeout=10,
                          item_timeout=30, progress=progress)
        summary = fetch_manifest(layout.manifest, layout.dataset, cfg)
    if summary.skipped and not summary.fetched:
        log(f"(reused: all {summary.skipped} items were fetched by an earlier run; see {summary.layout.status})")
    print_summary(summary, log)
    return summary


def extract_stage(layout: Layout, manifest: Path, log: Callable[[str], None], progress: bool) -> dict:
    """Every modality through its offline default backbone; complete shards of earlier runs are reused."""
    from mmx.extract.config import ExtractConfig
    from mmx.extract.runner import extract

    out = {}
    for m in MODALITIES:
        s = extract(str(manifest), m, str(layout.cache), DATASET, ExtractConfig(shard_size=64, workers=0, device="cpu", progress=progress))
        reused = f" (reused: {s['skipped']} shard(s) already complete)" if s["skipped"] else ""
        log(f"  {m:5s} {s['backbone']:26s} {s['ok']} ok, {s['failed']} failed in {s['seconds']:.1f}s{reused}")
        out[m] = s
    return out


_ASKED = "demo-config.json"  # the config the demo asked for, next to the run's resolved config.yaml


def _finished_run(folder: Path, cfg) -> Path | None:
    """A finished run under ``folder`` that the demo started with exactly ``cfg`` (a rerun reuses it)."""
    wanted = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    for asked in sorted(folder.glob(f"*/{_ASKED}"), reverse=True):
        if (asked.parent / "metrics.json").is_file() and asked.read_text() == wanted:
            return asked.parent
    return None


def train_stage(layout: Layout, quick: bool, seed: int, log: Callable[[str], None]) -> dict[str, Path]:
    from mmx.train.loop import train

    runs = {}
    for spec in RUNS:
        cfg = spec.config(layout.cache, layout.runs, quick, seed)
        done = _finished_run(layout.runs / spec.name, cfg)
        if done is not None:
            log(f"  {spec.name:11s} reused {done} (same config, finished earlier)")
            runs[spec.name] = done
            continue
        for key, default, value, why in spec.changes(cfg, quick):
            log(f"  {spec.name:11s} {key} {value} (default {default}): {why or 'the demo setting'}")
        t0 = time.perf_counter()
        run = train(cfg, log=lambda s: None)
        (run / _ASKED).write_text(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
        best = json.loads((run / "metrics.json").read_text())
        log(f"  {spec.name:11s} {cfg.strategy:10s} {'+'.join(cfg.modalities):24s} best epoch {best['best_epoch']:2d} "
            f"of {cfg.epochs} ({time.perf_counter() - t0:.0f}s) -> {run}")
        runs[spec.name] = run
    return runs


def eval_stage(runs: dict[str, Path], layout: Layout, log: Callable[[str], None]) -> dict:
    """Evaluate each run (reports + heatmaps + projections) and compare them on test."""
    from mmx.eval.compare import compare_results, write_comparison
    from mmx.eval.evaluate import evaluate_run
    from mmx.eval.tables import write_reports
    from mmx.pipeline.cli_eval import write_plots

    results = []
    for name, run in runs.items():
        res = evaluate_run(run, ["test"], "class")
        write_reports(res, run / "eval", stem="eval-class")
        plots = write_plots(res, run, run / "eval")
        log(f"  {name:11s} {run / 'eval'} ({len(plots)} PNGs)")
        results.append(res)
    comp = compare_results(results, ["R@1", "R@5", "R@10", "mAP"], ["test"])
    write_comparison(comp, layout.compare)
    return comp


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, log: Callable[[str], None] = print,
             progress: bool = True, per_class: int | None = None) -> dict:
    """Run every stage; returns where things are (for the summary and for tests).

    ``per_class``: a sliver of the dataset (see :func:`write_url_manifest`), for tests.
    """
    layout = Layout(Path(out))
    started = time.perf_counter()
    log(f"mmx demo on the embedded real dataset ({DATA}):\n  MNIST digits, spoken digits (FSDD), sentences "
        "in four languages and moving-digit clips, classes 0-9; splits train/val/test (test audio: an unheard speaker)\n")
    log("1/5 fetch: the media over HTTP from a local server, link rot included")
    fetched = fetch_stage(layout, log, progress, per_class)
    log("\n2/5 extract: offline default backbones, features into zarr caches")
    extracted = extract_stage(layout, fetched.layout.manifest, log, progress)
    log(f"\n3/5 train: {', '.join(r.name for r in RUNS)} (early stopping on val{'; --quick: few epochs' if quick else ''})")
    runs = train_stage(layout, quick, seed, log)
    log("\n4/5 eval: test split, class relevance; reports, heatmaps and projections in each RUN/eval/")
    comp = eval_stage(runs, layout, log)
    log("\n5/5 compare (test split; paper 000's layout: R@1/5/10 per pair and -> Any, plus mAP)\n")
    log(compact_table(comp, list(runs)))
    seconds = time.perf_counter() - started
    log(summary_text(layout, fetched, runs, seconds))
    return {"layout": layout, "fetch": fetched, "extract": extracted, "runs": runs, "compare": comp, "seconds": seconds}


def compact_table(comp: dict, names: list[str]) -> str:
    """One column per run, each cell ``R@1 R@5 R@10 / mAP`` (``-> Any`` rows: ``xR@1 xR@5 xR@10`` after
    the hit-rates), a chance column; rows as in paper 000 (pairs, then -> Any), each section closed by
    every run's mean over its own rows (``compare.md`` has the matched means and differences)."""
    from mmx.eval.compare import LEGEND_ANY
    from mmx.eval.tables import NA, display, fmt, markdown

    metrics = comp["metrics"]

    def cell(v: dict, ms: list[str]) -> str:
        if v[ms[0]] is None:
            return NA
        recall = [m for m in ms[:-1] if not m.startswith("xR@")] + [m for m in ms[:-1] if m.startswith("xR@")]
        return " ".join(fmt(v[m], m) for m in recall) + " / " + fmt(v[ms[-1]], ms[-1])

    def chance(chances: list[dict], ms: list[str]) -> str:
        first = next((c for c in chances if c.get(ms[0]) is not None), None)
        return cell(first, ms) if first else NA

    header = ["Query -> Target"] + [f"{n}: {' '.join(metrics[:-1])} / {metrics[-1]}" for n in names] + ["chance"]
    rows = []
    for t in comp["tables"]:
        ms = t["metrics"]
        if t["section"] == "any":
            rows.append([f"-> Any: {' '.join(m for m in ms[:-1] if not m.startswith('x'))} "
                         f"{' '.join(m for m in ms[:-1] if m.startswith('x'))} / {ms[-1]}"] + [""] * (len(names) + 1))
        rows += [[f"{display(q)} -> {display(g)}"] + [cell(v, ms) for v in t["values"][(q, g)]]
                 + [chance(t["chance"][(q, g)], ms)] for q, g in t["keys"]]
        rows.append(["Mean" + (" (-> Any)" if t["section"] == "any" else "")] + [cell(v, ms) for v in t["own_mean"]]
                    + [chance(t["own_chance"], ms)])
    return markdown(header, rows) + "\n" + LEGEND_ANY + "; chance: what a random ranking scores (class relevance)"


def summary_text(layout: Layout, fetched, runs: dict[str, Path], seconds: float) -> str:
    one = next(iter(runs.values()))
    return f"""
Summary ({seconds:.0f}s)
  ran:      fetch ({fetched.items} items over HTTP, link-rot report included), extract (4 modalities),
            train ({', '.join(runs)}), eval and compare on the test split
  fetched:  {fetched.layout.root}  (status: {fetched.layout.status}, report: {fetched.layout.meta / 'report.md'})
  cache:    {layout.cache}   (mmx cache ls --cache {layout.cache})
  runs:     {layout.runs}/<name>/<run>  (config.yaml, metrics, checkpoint.safetensors, embeddings/, eval/*.png)
  compare:  {layout.compare}/compare.md  (every run side by side, differences to round-robin, matched-row means)
Rerun one stage, e.g.:
  mmx extract {fetched.layout.manifest} --modality audio --cache {layout.cache} --dataset {DATASET}
  mmx train --preset fuerer-quad --cache {layout.cache} --dataset {DATASET}
  mmx eval {one} --plots
  mmx search {one} --text "a spoken seven" --target image
Your own data: write a manifest (id, modality, uri or text, label, split; see README), then
  mmx fetch manifest.csv --out data/mine && mmx extract data/mine/manifest.fetched.csv --modality image --dataset mine ...
Rerunning 'mmx demo' reuses the fetched media, the caches and finished runs.
Search it in a browser: mmx serve {runs.get('quad-modal', one)} --manifest {fetched.layout.manifest}"""
