"""``mmx demo`` end to end on a sliver of the embedded dataset: every stage runs for real.

The demo is the README's first command, run once per session by the ``readme_demo`` fixture
(tests/pipeline/conftest.py: ``mmx demo --quick --per-class 1``, 1 item of each modality, split
and digit) in the user's folder that test_readme_commands.py goes on in; these tests run there too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mmx.pipeline.demo.run import RUNS, run_demo
from mmx.pipeline.demo.serve import BROKEN

PER_CLASS = 1  # readme_steps.DEMO's --per-class


@pytest.fixture(scope="module")
def demo(readme_demo):
    root, outcome, result = readme_demo
    assert outcome.exit_code == 0 and not outcome.error, outcome.output + outcome.error
    return Path("mmx-demo"), result, outcome.output


@pytest.fixture(autouse=True)
def _in_the_users_folder(readme_demo, monkeypatch):
    """The demo ran with the default --out (mmx-demo, relative), as a user types it."""
    monkeypatch.chdir(readme_demo[0])


def test_fetch_reports_the_rotten_links(demo):
    out, result, text = demo
    with open(out / "data/fetch/status.csv", newline="") as f:
        status = {r["id"]: r["status"] for r in csv.DictReader(f)}
    assert {i: status[i] for i in BROKEN} == {"broken-missing": "not_found", "broken-truncated": "truncated",
                                              "broken-html": "wrong_type"}
    assert sum(s == "ok" for s in status.values()) == len(status) - len(BROKEN)
    report = json.loads((out / "data/fetch/report.json").read_text())
    assert report["failures"] == {"not_found": 1, "truncated": 1, "wrong_type": 1}
    assert "failures: " in text and "truncated 1" in text


def test_every_modality_is_extracted_and_every_run_trained_and_evaluated(demo):
    out, result, text = demo
    assert {m: s["ok"] for m, s in result["extract"].items()} == {m: 30 * PER_CLASS for m in ("text", "image", "audio", "video")}  # per digit and split
    assert list(result["runs"]) == [r.name for r in RUNS]
    for name, run in result["runs"].items():
        assert (run / "metrics.json").is_file() and (run / "eval/eval-class.json").is_file(), name
        assert list((run / "eval").glob("heatmap-test-*.png")) and (run / "eval/projection-test.png").is_file(), name


def test_the_table_has_real_rows_for_every_run(demo):
    out, result, text = demo
    pairs = next(t for t in result["compare"]["tables"] if t["section"] == "pairs")
    text_image = pairs["values"][("text", "image")]
    assert len(text_image) == len(RUNS) - 1 + 1  # every run has text->image (EAO: text, video, audio -> n/a)
    assert all(0.0 <= v["R@10"] <= 1.0 for v in text_image if v["R@10"] is not None)
    assert sum(v["R@10"] is not None for v in text_image) == len(RUNS) - 1  # EAO trains no image head
    assert "Text -> Image" in text and "Audio -> Any" in text and "Summary" in text
    assert (out / "compare/compare.md").is_file()


def test_a_rerun_reuses_everything(demo):
    out, result, _ = demo
    lines: list[str] = []
    again = run_demo(out, quick=True, per_class=PER_CLASS, progress=False, log=lines.append)
    text = "\n".join(lines)
    assert again["fetch"].fetched == 0 and "reused" in text
    assert all(s["written"] == 0 and s["skipped"] > 0 for s in again["extract"].values())
    assert again["runs"] == result["runs"]


def test_a_rerun_serves_on_the_port_of_its_previous_urls(tmp_path):
    """Port 8714 may be taken (another demo, another test) when the demo first runs; a rerun then
    serves on the port its URLs name, so the fetch journal still matches and nothing is fetched twice."""
    import socket

    from mmx.pipeline.demo.run import DATA, _previous_port
    from mmx.pipeline.demo.serve import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = tmp_path / "manifest.urls.csv"
    manifest.write_text(f"id,modality,uri,text\nt,text,,hello\ni,image,http://127.0.0.1:{port}/media/x.png,\n")
    assert _previous_port(manifest) == port and _previous_port(tmp_path / "absent.csv") is None
    with serve(DATA, port=port) as url:
        assert url == f"http://127.0.0.1:{port}"


# -- mmx embed / mmx search on the demo's runs --------------------------------------------
def _fetched(out) -> dict:
    with open(out / "data/manifest.fetched.csv", newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def _item(out, row: dict) -> dict:
    uri = row["uri"]
    return {"id": row["id"], "uri": str((out / "data" / uri).resolve()) if uri else "", "text": row["text"]}


@pytest.mark.parametrize("name", ["quad-modal", "eao", "cvs"])
def test_embed_of_a_file_equals_its_embedding_from_training(demo, name):
    import numpy as np

    from mmx.cache.modality import Modality
    from mmx.eval.runs import load_embeddings
    from mmx.pipeline.embed import embed_items, open_space

    out, result, _ = demo
    run = result["runs"][name]
    space = open_space(run)
    saved = load_embeddings(run, "test")
    fetched = _fetched(out)
    for modality in space.cfg.modalities:
        ids = list(saved[modality]["id"][:3])
        got = embed_items(space, Modality.parse(modality), [_item(out, fetched[i]) for i in ids])
        want = saved[modality]["emb"][:3]
        np.testing.assert_allclose(got, want, atol=2e-3, err_msg=f"{name} {modality}")


def test_search_finds_the_item_itself_first(demo):
    from click.testing import CliRunner

    from mmx.pipeline.cli import main

    out, result, _ = demo
    run = result["runs"]["quad-modal"]
    fetched = _fetched(out)
    for modality, ext in (("image", "png"), ("audio", "wav"), ("video", "mp4")):
        row = next(r for r in fetched.values() if r["modality"] == modality and r["split"] == "test")
        res = CliRunner().invoke(main, ["search", str(run), "--file", str(out / "data" / row["uri"]), "--target", modality,
                                        "--top", "3", "--json", "--manifest", str(out / "data/manifest.fetched.csv")])
        assert res.exit_code == 0, res.output
        hits = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
        assert len(hits) == 3 and hits[0]["id"] == row["id"] and hits[0]["score"] > 0.999, hits
        assert hits[0]["location"].endswith(row["uri"].split("/")[-1]) and hits[0]["label"] == row["label"]


def test_embed_runs_the_backbone_on_the_space_device(demo, monkeypatch):
    """``mmx embed --device D`` runs the backbone on D too, not only the run's model."""
    from mmx.cache.modality import Modality
    from mmx.pipeline import embed

    _, result, _ = demo
    space = embed.open_space(result["runs"]["quad-modal"])
    seen = []

    class Stop(Exception):
        pass

    def recording(store, device="cpu"):
        seen.append(device)
        raise Stop

    monkeypatch.setattr(embed, "encoder_for", recording)
    monkeypatch.setattr(space, "device", "cuda:3")  # never used: encoder_for stops first
    with pytest.raises(Stop):
        embed.embed_items(space, Modality.TEXT, [{"id": "q", "text": "seven"}])
    assert seen == ["cuda:3"]
