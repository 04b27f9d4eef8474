"""``mmx eval`` and ``mmx compare`` on run folders written with the run-folder contract."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.eval.evaluate import evaluate_run
from mmx.eval.tables import NA, map_matrix, recall_table
from mmx.pipeline.cli import main
from mmx.eval.runs import append_jsonl, save_embeddings

CLASSES = 6


def make_run(root: Path, name: str, modalities, config: str | None = "alignment: class\n", seed=0,
             splits=("test", "train"), fused=False, noise=0.6):
    """A run folder with class-structured embeddings (what ``mmx train`` leaves behind)."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    if config is not None:
        (run / "config.yaml").write_text(config)
    for e in range(1, 4):
        append_jsonl(run / "metrics.jsonl", {"epoch": e, "loss_train": 2 / e, "loss_test": 2.2 / e, "recall/mean@1": 0.2 * e})
    centres = rng.normal(size=(CLASSES, 8))
    for split in splits:
        n = 24
        labels = np.arange(n) % CLASSES
        for m in modalities:
            emb = centres[labels] + noise * rng.normal(size=(n, 8))
            save_embeddings(run, split, m, emb, labels, [f"g{i}" for i in range(n)], [f"{m}-{i}" for i in range(n)])
        if fused:
            emb = centres[labels] + noise * rng.normal(size=(n, 8))
            save_embeddings(run, split, "audio+video", emb, labels, [f"g{i}" for i in range(n)], [f"g{i}" for i in range(n)])
    return run


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_eval_writes_paper_tables_and_plots(tmp_path):
    run = make_run(tmp_path, "quad", ["text", "image", "audio", "video"])
    res = invoke("eval", run, "--plots")
    assert res.exit_code == 0, res.output
    assert "Text → Image" in res.output and "Video → Any" in res.output and "| Mean |" in res.output
    # mAP@R and full mAP are printed beside Recall@K, for the pairs and for -> Any
    assert "\nmAP@50 and mAP\n" in res.output and "\nmAP@50 and mAP, query -> Any\n" in res.output
    assert "test mAP@50 | test mAP | train mAP@50 | train mAP" in res.output
    out = run / "eval"
    for f in ("eval-class.md", "eval-class.csv", "eval-class.json", "training-curves.png",
              "projection-test.png", "heatmap-test-mAP50-class.png", "heatmap-train-R10-class.png"):
        assert (out / f).stat().st_size > 0, f
    results = json.loads((out / "eval-class.json").read_text())
    assert list(results["splits"]) == ["test", "train"]
    test = results["splits"]["test"]
    assert len(test["pairs"]) == 12 and len(test["any"]) == 4
    assert test["pairs"][0]["query"] == "text" and test["pairs"][0]["target"] == "image"
    # the table's Mean row is the mean of the 12 rows (paper 000)
    assert test["pairs_mean"]["R@10"] == pytest.approx(np.mean([r["R@10"] for r in test["pairs"]]))
    # class-structured embeddings retrieve far above chance (1/6 per item)
    assert test["pairs_mean"]["R@1"] > 0.5
    md = (out / "eval-class.md").read_text()
    assert "mAP@50, test split" in md and "| Avg |" in md and "MedR" in md
    # both -> Any readings: the hit-rate and the cross-modal recall that reproduces paper 000
    assert "test xR@10" in res.output and "reproduces paper 000" in md
    assert all(r["xR@10"] <= r["R@10"] + 1e-12 for r in test["any"])
    assert all(r["xR@10"] == r["R@10"] for r in test["pairs"])
    rows = list(csv.DictReader(open(out / "eval-class.csv")))
    assert {r["section"] for r in rows} == {"pairs", "any"} and len(rows) == 2 * (12 + 1 + 4 + 1)


def test_relevance_follows_the_run_alignment(tmp_path):
    run = make_run(tmp_path, "eao", ["text", "video", "audio"], config="strategy: eao\nalignment: instance\n", fused=True)
    res = invoke("eval", run, "--split", "test")
    assert res.exit_code == 0, res.output
    assert "instance (config alignment)" in res.output
    assert "Text → Audio+Video" in res.output  # paper 001's t->va on the fused gallery
    results = json.loads((run / "eval" / "eval-instance.json").read_text())
    assert list(results["splits"]) == ["test"]
    res = invoke("eval", run, "--relevance", "class", "--k", "1,3", "--map-r", "5")
    assert res.exit_code == 0, res.output
    results = json.loads((run / "eval" / "eval-class.json").read_text())
    assert results["relevance_source"] == "option" and "R@3" in results["splits"]["test"]["pairs"][0]
    assert "mAP@5" in results["splits"]["test"]["pairs"][0]


def test_run_without_config_defaults_to_class(tmp_path):
    run = make_run(tmp_path, "bare", ["text", "image"], config=None, splits=("test",))
    results = evaluate_run(run)
    assert results["relevance"] == "class" and results["relevance_source"].startswith("default")
    assert results["strategy"] is None


def test_missing_as_miss_changes_only_queries_without_a_match(tmp_path):
    run = make_run(tmp_path, "r", ["text", "image"], splits=("test",))
    # one image class disappears: text queries of that class have nothing relevant
    path = run / "embeddings" / "test" / "image.npz"
    z = dict(np.load(path))
    keep = z["label"] != "0"
    save_embeddings(run, "test", "image", z["emb"][keep], z["label"][keep], z["group"][keep], z["id"][keep])
    ex = evaluate_run(run)["splits"]["test"]["pairs"][0]
    miss = evaluate_run(run, no_relevant="miss")["splits"]["test"]["pairs"][0]
    assert ex["no_relevant"] == 4 and ex["evaluated"] == 20 and miss["evaluated"] == 24
    assert miss["R@1"] == pytest.approx(ex["R@1"] * 20 / 24)


def test_empty_split_is_marked_not_filled(tmp_path):
    run = make_run(tmp_path, "r", ["text", "image"], splits=("train",))
    save_embeddings(run, "test", "text", np.zeros((0, 8)), [], [], [])
    save_embeddings(run, "test", "image", np.zeros((0, 8)), [], [], [])
    res = invoke("eval", run)
    assert res.exit_code == 0, res.output
    results = json.loads((run / "eval" / "eval-class.json").read_text())
    assert results["splits"]["test"]["pairs"][0]["R@1"] is None
    header, rows = recall_table(results)
    assert rows[0][1] == NA and rows[0][4] != NA  # test empty, train filled
    header, rows = map_matrix(results, "test", "mAP")
    assert rows[0][1] == "—" and rows[0][2] == NA


def test_bad_input_gives_one_clear_line(tmp_path):
    run = make_run(tmp_path, "r", ["text", "image"], splits=("test",))
    runner = CliRunner()
    res = runner.invoke(main, ["eval", str(run), "--split", "val"])
    assert res.exit_code != 0 and "no split 'val'" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["eval", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "run folder not found" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(main, ["eval", str(empty)])
    assert res.exit_code != 0 and "no embeddings" in res.output
    res = runner.invoke(main, ["eval", str(run), "--k", "0,5"])
    assert res.exit_code != 0 and "--k" in res.output
    (run / "config.yaml").write_text("alignment: [unclosed\n")
    res = runner.invoke(main, ["eval", str(run)])
    assert res.exit_code != 0 and "not valid YAML" in res.output
    res = runner.invoke(main, ["compare", str(run)])
    assert res.exit_code != 0 and "at least two runs" in res.output


def test_compare_matches_rows_like_paper_000(tmp_path):
    quad = make_run(tmp_path, "quad-modal", ["text", "image", "audio", "video"], seed=1)
    tri = make_run(tmp_path, "tri-modal", ["text", "image", "audio"], seed=2, noise=0.3)
    out = tmp_path / "cmp"
    res = invoke("compare", tri, quad, "--out", out, "--split", "test")
    assert res.exit_code == 0, res.output
    assert "Mean, matched rows (6)" in res.output
    video_row = next(line for line in res.output.splitlines() if line.startswith("| Text → Video"))
    assert video_row.count(NA) == 3 + 3  # tri-modal values and the deltas: marked, not filled
    comp = json.loads((out / "compare.json").read_text())
    assert comp["labels"] == ["tri-modal", "quad-modal"]
    pairs = next(t for t in comp["tables"] if t["section"] == "pairs")
    assert len(pairs["matched"]) == 6 and len(pairs["rows"]) == 12
    row = next(r for r in pairs["rows"] if (r["query"], r["target"]) == ("text", "image"))
    lines = list(csv.DictReader(open(out / "compare.csv")))
    line = next(x for x in lines if (x["query"], x["target"], x["metric"], x["section"]) == ("text", "image", "R@1", "pairs"))
    assert float(line["delta quad-modal"]) == pytest.approx(row["values"][1]["R@1"] - row["values"][0]["R@1"])
    assert (out / "compare.md").exists()
    res = invoke("compare", tri, quad, "--metric", "mAP@50", "--metric", "MedR")
    assert res.exit_code == 0 and "| B MedR |" in res.output and "- `B`: quad-modal (" in res.output
    header = next(line for line in res.output.splitlines() if line.startswith("| Query"))
    assert "quad-modal" not in header and len(header) < 120  # short labels, explained once in the legend
    res = CliRunner().invoke(main, ["compare", str(tri), str(quad), "--metric", "R@99"])
    assert res.exit_code != 0 and "unknown metric" in res.output
