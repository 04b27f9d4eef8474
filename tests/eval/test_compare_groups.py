"""``mmx compare --group``: columns of seeds (mean ± sd), bootstrap intervals, chance and xR@K columns."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.eval.evaluate import evaluate_run
from mmx.eval.noise import bootstrap_difference, query_values
from mmx.pipeline.cli import main

from test_eval_cli import make_run  # tests/eval is on sys.path (rootdir-relative imports)


def _runs(root, name, noise, seeds, modalities=("text", "image", "audio")):
    # one set of class centres per group (as one setting over seeds), the seed moves the items
    return [make_run(root / name, f"seed-{s}", list(modalities), seed=s, noise=noise, splits=("test",)) for s in seeds]


def test_bootstrap_point_and_interval():
    rng = np.random.default_rng(0)
    ids = np.array([f"q{i}" for i in range(200)])

    def run(shift):
        return {("text", "image"): {"ids": ids, "mAP": np.clip(rng.normal(0.5 + shift, 0.2, 200), 0, 1)}}

    a, b = [run(0) for _ in range(3)], [run(0.1) for _ in range(3)]
    ci = bootstrap_difference(a, b, "mAP", seed=1)
    want = np.mean([r[("text", "image")]["mAP"].mean() for r in b]) - np.mean([r[("text", "image")]["mAP"].mean() for r in a])
    assert ci["diff"] == pytest.approx(want) and ci["low"] < ci["diff"] < ci["high"]
    assert ci["exceeds"] and ci["noise"] == "queries and seeds" and ci["queries"] == 200
    same = bootstrap_difference(a, [run(0) for _ in range(3)], "mAP", seed=1)
    assert not same["exceeds"] and same["low"] < 0 < same["high"]
    # queries are paired by id, whatever order a run saved them in
    order = rng.permutation(200)
    shuffled = [{k: {"ids": v["ids"][order], "mAP": v["mAP"][order]} for k, v in r.items()} for r in b]
    assert bootstrap_difference(a, shuffled, "mAP", seed=1) == ci
    other = [{("text", "image"): {"ids": np.array([f"x{i}" for i in range(200)]), "mAP": np.zeros(200)}}]
    with pytest.raises(ValueError, match="different queries"):
        bootstrap_difference(a, other, "mAP")


def test_seed_noise_widens_the_interval():
    """The same query-level difference, with runs that disagree: the two-level draw is wider."""
    rng = np.random.default_rng(2)
    ids = np.array([f"q{i}" for i in range(300)])
    base = rng.uniform(0, 1, 300)

    def group(shift, spread):
        return [{("a", "b"): {"ids": ids, "R@1": np.clip(base + shift + d, 0, 1)}} for d in spread]

    calm = bootstrap_difference(group(0, [0, 0, 0]), group(0.02, [0, 0, 0]), "R@1")
    noisy = bootstrap_difference(group(0, [-0.05, 0, 0.05]), group(0.02, [0.05, -0.05, 0]), "R@1")
    assert noisy["high"] - noisy["low"] > 2 * (calm["high"] - calm["low"])


def test_grouped_compare_cli(tmp_path):
    good = _runs(tmp_path, "good", 0.2, [1, 2, 3])
    poor = _runs(tmp_path, "poor", 1.5, [4, 5, 6])
    out = tmp_path / "cmp"
    res = CliRunner().invoke(main, ["compare", "--group", f"poor={tmp_path}/poor/*", "--group", f"good={tmp_path}/good/*",
                                    "--split", "test", "--metric", "R@1", "--metric", "mAP", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "- `A`: poor (3 runs:" in res.output and "±" in res.output and "95% interval: paired bootstrap" in res.output
    comp = json.loads((out / "compare.json").read_text())
    pairs = next(t for t in comp["tables"] if t["section"] == "pairs")
    row = next(r for r in pairs["rows"] if (r["query"], r["target"]) == ("text", "image"))
    evals = [evaluate_run(r, ["test"], "class")["splits"]["test"]["pairs"] for r in good]
    vals = [next(x for x in e if (x["query"], x["target"]) == ("text", "image"))["mAP"] for e in evals]
    assert row["values"][1]["mAP"] == pytest.approx(np.mean(vals))
    assert row["sd"][1]["mAP"] == pytest.approx(np.std(vals, ddof=1))
    assert row["noise"][1]["mAP"]["exceeds"] and row["noise"][1]["mAP"]["diff"] > 0
    assert pairs["matched_noise"][1]["mAP"]["exceeds"]
    assert row["chance"][0]["mAP"] == pytest.approx(row["chance"][1]["mAP"]) and 0 < row["chance"][0]["mAP"] < 0.5
    text_image = next(line for line in res.output.splitlines() if line.startswith("| Text → Image"))
    assert " * [" in text_image  # beyond the noise, with its interval
    # -> Any: xR@K beside R@K, with the one-line legend
    anys = next(t for t in comp["tables"] if t["section"] == "any")
    assert anys["metrics"][:2] == ["R@1", "xR@1"] and "xR@K: only items of another modality" in res.output


def test_equal_groups_are_rarely_called_different():
    """Calibration: two groups of 3 seeds from one process (seed effect plus query noise, queries
    shared): the difference is marked beyond the noise in few of 150 repetitions (nominal 5%; a
    percentile bootstrap over the seeds marked 13-15%), while a real shift of 5 seed-sds is found nearly always."""
    rng = np.random.default_rng(7)
    n = 120
    ids = np.array([f"q{i}" for i in range(n)])

    def group(base, shift):
        return [{("a", "b"): {"ids": ids, "mAP": base + shift + rng.normal(0, 0.02) + rng.normal(0, 0.05, n)}} for _ in range(3)]

    false, found = 0, 0
    for i in range(150):
        base = rng.uniform(0.2, 0.8, n)  # query difficulty, shared by both groups (paired)
        false += bootstrap_difference(group(base, 0), group(base, 0), "mAP", replicates=400, seed=i)["exceeds"]
        found += bootstrap_difference(group(base, 0), group(base, 0.1), "mAP", replicates=400, seed=i)["exceeds"]
    assert false / 150 <= 0.1 and found / 150 >= 0.8, (false, found)


def test_query_values_agree_with_the_summary(tmp_path):
    """Per-query values average to what ``mmx eval`` reports, so the intervals are about the same numbers."""
    run = _runs(tmp_path, "a", 1.0, [1])[0]
    res = evaluate_run(run, ["test"], "class")["splits"]["test"]
    pq = query_values(run, "test", "class", ["R@1", "xR@5", "mAP", "mAP@50"])
    for row in res["pairs"] + res["any"]:
        v = pq[(row["query"], row["target"])]
        for m in ("R@1", "xR@5", "mAP", "mAP@50"):
            assert np.nanmean(v[m]) == pytest.approx(row[m]), (row["query"], row["target"], m)


def test_group_input_errors(tmp_path):
    runs = _runs(tmp_path, "a", 1.0, [1])
    runner = CliRunner()
    res = runner.invoke(main, ["compare", "--group", "nothing-here"])
    assert res.exit_code != 0 and "expected NAME=RUN" in res.output
    res = runner.invoke(main, ["compare", "--group", f"a={tmp_path}/nope/*", str(runs[0])])
    assert res.exit_code != 0 and "matches no run folder" in res.output
    res = runner.invoke(main, ["compare", "--group", f"a={runs[0]}"])
    assert res.exit_code != 0 and "at least two" in res.output
    other = make_run(tmp_path, "other", ["text", "image", "audio"], splits=("test",))
    import numpy as _np

    from mmx.eval.runs import save_embeddings

    z = dict(_np.load(other / "embeddings" / "test" / "text.npz"))
    save_embeddings(other, "test", "text", z["emb"], z["label"], z["group"], [f"zz-{i}" for i in range(len(z["emb"]))])
    res = runner.invoke(main, ["compare", str(runs[0]), str(other), "--split", "test"])
    assert res.exit_code == 1 and "different queries" in res.output
    res = runner.invoke(main, ["compare", str(runs[0]), str(other), "--split", "test", "--no-noise"])
    assert res.exit_code == 0, res.output
