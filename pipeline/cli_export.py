"""``mmx export RUN OUT``: a trained space as a portable bundle that searches with no cache.

The bundle is a run folder cut down to what using the space needs, so everything that opens a
run opens it (``mmx embed``, ``mmx search``, ``mmx.load``)::

    OUT/
        checkpoint.safetensors   the kept weights (safetensors; the config as JSON in its header)
        config.yaml              the resolved training config
        space.json               the model's shape and each modality's store record: backbone
                                 identity and options, preprocessing, dtype (mmx.eval.runs.read_space)
        normalizer.json          the feature statistics applied before the model
        embeddings/<split>/*.npz the run's gallery embeddings, when it has them
        metrics.json, splits.json
        bundle.json              format, mmx version, strategy, backbones, sha256 of every file
        README.md                the model card: data, strategy, metrics, licences

Each file is read back through the run folder's checked readers before it is written, and the
bundle is written in a temporary folder beside OUT, then renamed into place (no half bundle).
A run from an older mmx (no ``space.json``) is rebuilt once from its training cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click

from mmx.cache.files import sha256_of
from mmx.pipeline.cli_output import console

BUNDLE_FORMAT = "mmx-bundle/1"
CARD_REPORT_LINES = 80  # lines of each eval report quoted in the card


def export_run(run: str | Path, out: str | Path, manifest: str | Path | None = None, log=lambda s: None) -> Path:
    """Write the bundle of ``run`` at ``out`` (which must not exist); returns ``out``."""
    from mmx import __version__
    from mmx.cache import files
    from mmx.eval import runs
    from mmx.train import checkpoint
    from mmx.train import config as config_mod
    from mmx.train.prepare import open_trained, space_record

    run, out = Path(run), Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"{out}: already exists; export to a new folder (or remove it first)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such folder to export into")
    prep = open_trained(run, "cpu", log)  # proves the run opens, and checks its weights against its model
    record = runs.read_space(run) or space_record(prep.cfg, prep.data)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        best = checkpoint.load(run / checkpoint.BEST)
        checkpoint.save(tmp / checkpoint.BEST, {"model": prep.model.state_dict(), "epoch": best.get("epoch", 0),
                                                "config": prep.cfg.to_dict()})
        config_mod.save(prep.cfg, tmp / "config.yaml")
        runs.write_space(tmp, {k: v for k, v in record.items() if k != "format"})
        prep.norm.save(tmp)
        metrics = runs.read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
        for name in ("metrics.json", "splits.json"):
            if (run / name).exists():
                runs.write_json(tmp / name, runs.read_json(run / name))
        galleries = {}
        for split in runs.splits_of(run):
            for name, g in runs.load_embeddings(run, split).items():
                runs.save_embeddings(tmp, split, name, g["emb"], g["label"], g["group"], g["id"])
                galleries[f"{split}/{name}"] = int(len(g["id"]))
        reports = {p.name: files.read_text(p, what="eval report") for p in sorted((run / "eval").glob("*.md"))
                   if p.is_file()} if (run / "eval").is_dir() else {}
        licences = _licences(manifest) if manifest else None
        (tmp / "README.md").write_text(model_card(run, prep.cfg, record, prep.norm.mode, metrics, galleries, reports, licences))
        sums = {str(p.relative_to(tmp)): sha256_of(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        runs.write_json(tmp / "bundle.json", {
            "format": BUNDLE_FORMAT, "mmx_version": __version__, "exported_from": run.name,
            "strategy": prep.cfg.strategy, "modalities": list(prep.cfg.modalities), "embed_dim": prep.cfg.embed_dim,
            "normalizer": prep.norm.mode, "backbones": {m: r["store"]["backbone"] if r["store"] else None
                                                        for m, r in record["modalities"].items()},
            "galleries": galleries, "files": sums})
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _licences(manifest: str | Path) -> dict:
    """What the data's licences are, as far as the manifest says: the licence notes beside it
    (LICENSES.md, LICENSE*) and, per value of a ``license`` column, how many items carry it."""
    from mmx.cache import files
    from mmx.extract.manifest import read_manifest

    manifest = Path(manifest)
    m = read_manifest(str(manifest))
    notes = {}
    for p in sorted(manifest.parent.iterdir()):
        if p.is_file() and p.name.upper().startswith(("LICENSE", "LICENCE")):
            notes[p.name] = files.read_text(p, what="licence notes")
    column = next((c for c in m.frame.columns if c.lower() in ("license", "licence")), None)
    counts = m.frame[column].astype(str).value_counts().to_dict() if column else {}
    return {"manifest": manifest.name, "notes": notes, "column": {str(k): int(v) for k, v in counts.items()}}


def model_card(run: Path, cfg, record: dict, norm_mode: str, metrics: dict, galleries: dict, reports: dict,
               licences: dict | None) -> str:
    """The bundle's README.md: what the space is, what it was trained on and how well it ranks."""
    mods = list(cfg.modalities)
    lines = [f"# {run.name}", "",
             f"A joint embedding space of {', '.join(mods)} ({cfg.embed_dim} dimensions) trained by mmx with the "
             f"`{cfg.strategy}` strategy, exported with `mmx export`. It needs no feature cache: `mmx search`, "
             "`mmx embed` and `mmx.load` open this folder.", "",
             "```python", "import mmx", "m = mmx.load(\"PATH/TO/THIS/FOLDER\")",
             "m.search(like=\"ITEM_ID\", k=5)  # or text=..., file=..., vector=...", "```", "",
             "## Data", "", f"Dataset `{record['dataset']}`, {len(record['class_names'])} classes"
             + (f" ({', '.join(record['class_names'][:20])}{' ...' if len(record['class_names']) > 20 else ''})."
                if record["class_names"] else "."), "",
             "| modality | backbone | weights | features | tokens per item (longest) |", "|---|---|---|---|---|"]
    for m, r in record["modalities"].items():
        b = (r["store"] or {}).get("backbone", {})
        lines.append(f"| {m} | {b.get('name', 'features given in memory')} | {b.get('weights') or '-'} | {r['dim']} | "
                     f"{r['max_tokens']} |")
    if galleries:
        lines += ["", "Gallery embeddings in `embeddings/`: " + ", ".join(f"{k} ({n})" for k, n in galleries.items()) + "."]
    lines += ["", "## Training", "",
              f"Strategy `{cfg.strategy}`, alignment `{cfg.alignment}`, feature normalisation `{norm_mode}`, "
              f"{cfg.epochs} epochs at most (kept: {cfg.keep}, monitor {cfg.monitor}), seed {cfg.seed}; "
              "the full config is `config.yaml`."]
    if metrics:
        kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k not in ("strategy",)}
        lines += ["", "## Metrics", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in kept.items()]
        final = metrics.get("final")
        if isinstance(final, dict) and final:
            lines += ["", f"Quick recall on the held-out split at the end: `{json.dumps(final, default=str)[:400]}`"]
    for name, text in reports.items():
        body = text.splitlines()
        lines += ["", f"### {name} (from `mmx eval`)", ""] + body[:CARD_REPORT_LINES]
        if len(body) > CARD_REPORT_LINES:
            lines.append(f"... ({len(body) - CARD_REPORT_LINES} more lines in the run's eval/{name})")
    lines += ["", "## Licences", ""]
    if licences is None:
        lines.append("Not recorded: the run does not say where its media came from. Export with "
                     "`--manifest MANIFEST` to include the licence notes kept beside the data's manifest.")
    else:
        if licences["column"]:
            lines += [f"Per item ({licences['manifest']}, license column):", ""]
            lines += [f"- {k}: {v} items" for k, v in licences["column"].items()]
        for name, text in licences["notes"].items():
            lines += ["", f"From {name} beside {licences['manifest']}:", "", *(f"> {t}" if t else ">" for t in text.splitlines())]
        if not licences["column"] and not licences["notes"]:
            lines.append(f"{licences['manifest']} has no license column and no LICENSE file beside it: unknown.")
    return "\n".join(lines) + "\n"


@click.command("export")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.argument("out", type=click.Path())
@click.option("--manifest", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The manifest the run's data came from: its licence notes go into the model card.")
@click.pass_context
def export_cmd(ctx, run, out, manifest):
    """Write RUN as a portable bundle OUT that searches on any machine with no cache.

    \b
    OUT holds the weights (safetensors), the config, the model's shape, the normaliser, the
    backbone identities, the gallery embeddings and a model card (README.md); open it with
    'mmx search OUT ...', 'mmx embed OUT ...' or mmx.load("OUT") in Python.
    Examples:
      mmx export runs/RUN my-space --manifest data/mine/manifest.fetched.csv
      mmx search my-space --like wav-7-lucas-0 --target image --top 3
    """
    con = console(ctx)
    path = export_run(run, out, manifest, con.warn)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    con.summary(f"exported {run} to {path} ({size / (1 << 20):.1f} MiB); try: mmx search {path} --like ID")


COMMANDS = [export_cmd]
