"""``mmx demo`` end to end on a sliver of the embedded dataset: every stage runs for real."""

from __future__ import annotations

import csv
import json

import pytest

from mmx.pipeline.demo.run import RUNS, run_demo
from mmx.pipeline.demo.serve import BROKEN


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    result = run_demo(out, quick=True, per_class=2, progress=False, log=lines.append)
    return out, result, "\n".join(lines)


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
    assert {m: s["ok"] for m, s in result["extract"].items()} == {m: 60 for m in ("text", "image", "audio", "video")}  # 2 per digit and split
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
    again = run_demo(out, quick=True, per_class=2, progress=False, log=lines.append)
    text = "\n".join(lines)
    assert again["fetch"].fetched == 0 and "reused" in text
    assert all(s["written"] == 0 and s["skipped"] > 0 for s in again["extract"].values())
    assert again["runs"] == result["runs"]
