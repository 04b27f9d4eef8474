"""Chance levels: exact formulas against a brute-force Monte Carlo of random rankings."""

import math

import numpy as np
import pytest

from mmx.eval.chance import chance_levels, chance_of_counts


def _random_ranking_means(n, m, ks, map_r, draws, rng):
    """Mean R@K, AP, AP@R and first-relevant rank over ``draws`` uniformly random orders."""
    rel = np.zeros(n, bool)
    rel[:m] = True
    hits = {k: 0.0 for k in ks}
    ap = ap_r = first = 0.0
    for _ in range(draws):
        r = rel[rng.permutation(n)]
        pos = np.flatnonzero(r) + 1
        for k in ks:
            hits[k] += pos[0] <= k
        prec = np.arange(1, m + 1) / pos
        ap += prec.mean()
        top = prec[pos <= map_r]
        ap_r += top.mean() if len(top) else 0.0
        first += pos[0]
    return {**{f"R@{k}": hits[k] / draws for k in ks}, "mAP": ap / draws, f"mAP@{map_r}": ap_r / draws,
            "MeanR": first / draws}


@pytest.mark.parametrize("n,m,map_r", [(20, 1, 5), (20, 4, 5), (30, 10, 8), (12, 12, 4), (50, 3, 50), (7, 2, 50)])
def test_each_chance_formula_matches_a_monte_carlo_of_random_rankings(n, m, map_r):
    ks = (1, 5, 10)
    exact = {k: float(v[0]) for k, v in chance_of_counts([n], [m], ks, map_r).items()}
    mc = _random_ranking_means(n, m, ks, map_r, 20000, np.random.default_rng(n * 100 + m))
    for key, value in mc.items():
        # 20000 draws: the standard error of a mean of values in [0, 1] is at most 0.0036
        tol = 0.02 * value if key == "MeanR" else 0.012
        assert exact[key] == pytest.approx(value, abs=tol), (key, exact[key], value)


def test_hand_computed_cases():
    c = chance_of_counts([10, 10, 10], [1, 0, 10], ks=(1, 3), map_r=50)
    # one relevant item of ten: R@K = K/N (instance relevance), AP = H_10 / 10, first rank 5.5
    assert c["R@1"][0] == pytest.approx(0.1) and c["R@3"][0] == pytest.approx(0.3)
    assert c["mAP"][0] == pytest.approx(sum(1 / i for i in range(1, 11)) / 10)
    assert c["MeanR"][0] == pytest.approx(5.5)
    # nothing relevant: 0 (and no rank); everything relevant: 1
    assert c["R@1"][1] == 0 and math.isnan(c["MeanR"][1])
    assert c["R@1"][2] == 1 and c["mAP"][2] == pytest.approx(1) and c["mAP@50"][2] == pytest.approx(1)
    # hypergeometric: 3 of 10 relevant, miss the top 3 with C(7,3)/C(10,3) = 35/120
    assert chance_of_counts([10], [3], (3,))["R@3"][0] == pytest.approx(1 - 35 / 120)


def _block(labels, groups=None, dim=16, rng=None):
    labels = np.asarray(labels, dtype=str)
    groups = np.asarray(groups if groups is not None else [str(i) for i in range(len(labels))], dtype=str)
    emb = (rng or np.random.default_rng(0)).standard_normal((len(labels), dim)).astype(np.float32)
    return {"emb": emb, "label": labels, "group": groups}


@pytest.mark.parametrize("relevance", ["class", "instance"])
def test_chance_levels_equal_the_mean_metrics_of_random_embeddings(relevance):
    """The whole path: ``retrieval_metrics`` of random embeddings, averaged over draws, is the chance row."""
    from mmx.eval.metrics import retrieval_metrics

    rng = np.random.default_rng(3)
    labels = {"text": list("aabbbcc") + [""], "image": list("abbcccdd"), "audio": list("aabcc")}
    groups = {"text": list("01234567"), "image": list("01234567"), "audio": list("01234")}
    ks, map_r, draws = (1, 3), 4, 300
    data0 = {n: _block(labels[n], groups[n], rng=rng) for n in labels}
    chance = chance_levels(data0, relevance, ks, map_r)
    sums: dict = {}
    for _ in range(draws):
        data = {n: _block(labels[n], groups[n], rng=rng) for n in labels}
        res = retrieval_metrics(data, (relevance,), ks=ks, map_r=map_r, device="cpu")[relevance]
        for key, row in res.items():
            for metric in chance[key]:
                if row[metric] is not None:
                    sums.setdefault((key, metric), []).append(row[metric])
    assert set(chance) == set(res)
    for (key, metric), values in sums.items():
        want = chance[key][metric]
        tol = 0.06 * want if metric == "MeanR" else 0.035
        assert np.mean(values) == pytest.approx(want, abs=tol), (key, metric)
    # the cross-modal Any differs from the hit-rate: the own modality's items are never hits
    if relevance == "class":
        assert chance[("text", "any")]["xR@1"] != chance[("text", "any")]["R@1"]


def test_class_chance_is_far_above_k_over_n_for_few_classes():
    """The small-val trap: 10 classes, 20 items each side: chance R@10 is near 0.7, not 10/20 or 10/200."""
    labels = [str(i % 10) for i in range(20)]
    data = {"text": _block(labels), "image": _block(labels)}
    c = chance_levels(data, "class", ks=(10,))
    assert 0.68 < c[("text", "image")]["R@10"] < 0.8
    inst = chance_levels(data, "instance", ks=(10,))
    assert inst[("text", "image")]["R@10"] == pytest.approx(10 / 20)


def test_queries_without_a_relevant_item_follow_the_policy():
    data = {"text": _block(["a", "z"]), "image": _block(["a", "b", "c", "d"])}
    ex = chance_levels(data, "class", ks=(1,), no_relevant="exclude")[("text", "image")]
    miss = chance_levels(data, "class", ks=(1,), no_relevant="miss")[("text", "image")]
    assert ex["R@1"] == pytest.approx(0.25) and miss["R@1"] == pytest.approx(0.125)


def test_bad_relevance_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown relevance"):
        chance_levels({"text": _block(["a"])}, "colour")
