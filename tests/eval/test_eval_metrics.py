"""Retrieval metrics: hand-computed cases, the brute-force reference, chunked == dense."""

import numpy as np
import pytest
import torch

from mmx.eval.metrics import (
    expected_hits,
    mean_average_precision,
    pairs_of,
    parse_ks,
    per_query_metrics,
    reference_metrics,
    retrieval_metrics,
)


def block(emb, labels, groups=None):
    emb = np.asarray(emb, dtype=np.float32)
    groups = groups if groups is not None else [str(i) for i in range(len(emb))]
    return {"emb": emb, "label": np.asarray(labels, dtype=str), "group": np.asarray(groups, dtype=str)}


def one(data, q, t, rel="class", map_r=50, **kw):
    return per_query_metrics(data, [rel], map_r=map_r, **kw)[rel][(q, t)]


# ---------------------------------------------------------------------------------- hand-computed


def test_rank_recall_and_ap_by_hand():
    # scores of the text query against the images: 1.0 (B), 0.6 (A), 0.0 (A)
    data = {
        "text": block([[1, 0]], ["A"]),
        "image": block([[1, 0], [0.6, 0.8], [0, 1]], ["B", "A", "A"]),
    }
    r = one(data, "text", "image", map_r=2)
    assert r["rank"][0] == 2
    # relevant at positions 2 and 3: full AP = (1/2 + 2/3) / 2
    assert r["ap"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # eq. 7 with R = 2: only position 2 is in the top R, N = 1 relevant retrieved -> 1/2
    # (dividing by all relevant items of the gallery would give 1/4)
    assert r["ap_r"][0] == pytest.approx(0.5)
    row = retrieval_metrics(data, ks=(1, 2, 5), map_r=2)["class"][("text", "image")]
    assert (row["R@1"], row["R@2"], row["R@5"]) == (0.0, 1.0, 1.0)
    assert row["MedR"] == 2 and row["MeanR"] == 2


def test_ap_at_r_is_zero_when_nothing_relevant_is_in_the_top_r():
    data = {"text": block([[1, 0]], ["A"]), "image": block([[1, 0], [0.9, 0.1], [0, 1]], ["B", "B", "A"])}
    r = one(data, "text", "image", map_r=2)
    assert r["ap_r"][0] == 0.0 and r["ap"][0] == pytest.approx(1 / 3)


def test_ties_are_averaged_for_ranks_and_pessimistic_for_ap():
    # three gallery items tie with the query
    data = {"text": block([[1, 0]], ["A"]), "image": block([[1, 0]] * 3, ["B", "A", "B"])}
    r = one(data, "text", "image")
    assert r["rank"][0] == pytest.approx(2.0)  # mean of positions 1, 2, 3 (reference code of paper 001)
    assert r["ap"][0] == pytest.approx(1 / 3)  # relevant item after the tied irrelevant ones
    row = retrieval_metrics(data, ks=(1, 2, 3))["class"][("text", "image")]
    # R@K: the chance that the relevant item lands in the top K in a random order of the tie
    assert row["R@1"] == pytest.approx(1 / 3) and row["R@2"] == pytest.approx(2 / 3) and row["R@3"] == 1.0
    # two relevant among three tied: expected first position (1 + 1 + 2) / 3
    data["image"] = block([[1, 0]] * 3, ["A", "A", "B"])
    r = one(data, "text", "image")
    assert r["rank"][0] == pytest.approx(4 / 3)
    assert r["ap"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ties_match_the_reference_code_rule_for_one_match():
    """Paper 001's code: the match's column averaged over the columns with an equal score."""
    rng = np.random.default_rng(3)
    n = 40
    text = rng.choice([-0.5, 0.5], size=(n, 4))  # few distinct vectors: many exact ties
    video = rng.choice([-0.5, 0.5], size=(n, 4))
    data = {"text": block(text, ["x"] * n, [str(i) for i in range(n)]),
            "video": block(video, ["x"] * n, [str(i) for i in range(n)])}
    ours = one(data, "text", "video", rel="instance")["rank"]
    sims = text @ video.T
    for i in range(n):
        ordered = np.sort(-sims[i])
        cols = np.flatnonzero(ordered == -sims[i, i])
        assert ours[i] == pytest.approx(cols.mean() + 1)


def test_class_with_one_item_has_no_relevant_item_in_any():
    data = {
        "text": block([[1, 0], [0, 1], [1, 1]], ["A", "A", "Z"]),  # Z has one item: the query itself
        "image": block([[1, 0.1]], ["A"]),
    }
    rows = retrieval_metrics(data, ks=(1,))["class"]
    anyrow = rows[("text", "any")]
    assert anyrow["queries"] == 3 and anyrow["no_relevant"] == 1 and anyrow["evaluated"] == 2
    miss = retrieval_metrics(data, ks=(1,), no_relevant="miss")["class"][("text", "any")]
    assert miss["evaluated"] == 3
    assert miss["R@1"] == pytest.approx(anyrow["R@1"] * 2 / 3)
    assert miss["MedR"] == anyrow["MedR"]  # ranks only over queries that have a relevant item


def test_query_whose_target_modality_lacks_its_class_is_excluded_and_counted():
    data = {"text": block([[1, 0], [0, 1]], ["A", "B"]), "audio": block([[1, 0]], ["A"])}
    row = retrieval_metrics(data, ks=(1,))["class"][("text", "audio")]
    assert row == {**row, "queries": 2, "evaluated": 1, "no_relevant": 1, "R@1": 1.0}
    row = retrieval_metrics(data, ks=(1,), no_relevant="miss")["class"][("text", "audio")]
    assert row["evaluated"] == 2 and row["R@1"] == 0.5 and row["mAP"] == 0.5


def test_any_excludes_the_query_itself():
    # t0 would be its own best (and relevant) neighbour; without it, i0 (class B) beats t1 (class A)
    data = {"text": block([[1, 0], [0, 1]], ["A", "A"]), "image": block([[1, 0.2]], ["B"])}
    r = one(data, "text", "any")
    assert r["rank"][0] == 2 and r["rank"][1] == 2  # t1: i0 (0.196) above t0 (0)
    ref = reference_metrics(data)[("text", "any")]
    np.testing.assert_allclose(r["rank"], ref["rank"])


def test_fused_gallery_for_text_to_audio_video():
    """Paper 001's t->va: text queries against the fused audio+video rows (one per group)."""
    groups = ["g0", "g1", "g2"]
    data = {
        "text": block([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ["a", "b", "c"], groups),
        "audio+video": block([[0.9, 0.1, 0], [0, 0, 1], [0, 1, 0]], ["a", "b", "c"], ["g0", "g2", "g1"]),
    }
    assert pairs_of(data) == [("text", "audio+video"), ("audio+video", "text")]
    per = per_query_metrics(data, ["instance"])["instance"]
    assert set(per) == {("text", "audio+video"), ("text", "any"), ("audio+video", "text")}
    np.testing.assert_allclose(per[("text", "audio+video")]["rank"], [1, 1, 1])
    # Any has only the single-modality items: text's other captions are never relevant by group
    assert np.isnan(per[("text", "any")]["rank"]).all()
    assert ("audio", "audio+video") not in pairs_of(["audio", "video", "audio+video"])


def test_empty_split_and_empty_modality():
    assert retrieval_metrics({}) == {"class": {}}
    data = {"text": block(np.zeros((0, 4)), []), "image": block(np.eye(4), list("abcd"))}
    rows = retrieval_metrics(data)["class"]
    assert rows[("text", "image")]["queries"] == 0 and rows[("text", "image")]["R@1"] is None
    assert rows[("image", "text")]["no_relevant"] == 4 and rows[("image", "text")]["mAP"] is None
    assert rows[("image", "text")]["MedR"] is None


def test_zero_embeddings_tie_with_everything():
    data = {"text": block(np.zeros((2, 3)), ["a", "b"]), "image": block(np.zeros((4, 3)), ["a", "b", "c", "d"])}
    r = one(data, "text", "image")
    np.testing.assert_allclose(r["rank"], [2.5, 2.5])  # one relevant among 4 tied
    np.testing.assert_allclose(r["ap"], [0.25, 0.25])  # base rate, never 1


def test_all_tied_recall_is_the_random_order_chance():
    """Testing the tie-averaged rank (50.5) against K would give R@10 = 0; a random order gives 0.67."""
    n, classes = 100, 10
    labels = np.arange(n) % classes
    data = {"text": block(np.ones((n, 4)), labels), "image": block(np.ones((n, 4)), labels)}
    row = retrieval_metrics(data, ks=(1, 10))["class"][("text", "image")]
    # 10 of 100 tied items relevant: 1 - C(90, 10) / C(100, 10)
    from math import comb

    assert row["R@10"] == pytest.approx(1 - comb(90, 10) / comb(100, 10))
    assert row["R@10"] == pytest.approx(0.6695, abs=1e-4) and row["R@1"] == pytest.approx(0.1)


def test_cross_modal_any_counts_only_hits_of_another_modality():
    """xR@K (paper 000 Tables II/IV/VI): the query's own modality competes but never hits.

    Each modality clusters apart from the other (a modality gap) with its classes inside the
    cluster: Any by hit-rate is perfect (a same-modality neighbour of the class is first),
    cross-modal Any is 0 at K smaller than the query's own modality, while every pair is perfect.
    """
    classes = np.repeat(np.arange(4), 5)  # 20 items per modality, 4 classes

    def mod(side):  # side * e0 + 0.5 * e_(1+class): cos 1 within a class and modality, 0.8 across classes,
        e = np.zeros((20, 5))  # -0.6 to the other modality's items of the class, -0.8 to the rest
        e[:, 0], e[np.arange(20), 1 + classes] = side, 0.5
        return block(e, classes.astype(str))

    data = {"text": mod(1.0), "image": mod(-1.0)}
    res = retrieval_metrics(data, ks=(1, 10, 19, 20))["class"]
    anyrow, pair = res[("text", "any")], res[("text", "image")]
    assert anyrow["R@1"] == 1.0 and anyrow["xR@1"] == 0.0 and anyrow["xR@10"] == 0.0
    assert anyrow["xR@19"] == 0.0 and anyrow["xR@20"] == 1.0  # the 19 other texts come first
    assert pair["R@1"] == 1.0 and pair["xR@1"] == pair["R@1"] and pair["xR@10"] == pair["R@10"]


# ------------------------------------------------------------------------------ reference, chunks


def random_split(rng, exact: bool, sizes=(30, 25, 8, 6), classes=5, d=16):
    names = ["text", "image", "audio", "video"]
    data = {}
    for name, n in zip(names, sizes):
        # +-0.25 in 16-d: unit norm and dot products exact in any order, so ties are exact ties
        emb = rng.choice([-0.25, 0.25], size=(n, d)) if exact else rng.normal(size=(n, d))
        data[name] = block(emb, rng.integers(0, classes, n).astype(str), rng.integers(0, 12, n).astype(str))
    fused = rng.choice([-0.25, 0.25], size=(7, d)) if exact else rng.normal(size=(7, d))
    data["audio+video"] = block(fused, rng.integers(0, classes, 7).astype(str), np.arange(7).astype(str))
    return data


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("relevance", ["class", "instance"])
def test_matches_brute_force_reference(exact, relevance):
    rng = np.random.default_rng(7 if exact else 8)
    data = random_split(rng, exact)
    fast = per_query_metrics(data, [relevance], map_r=5)[relevance]
    ref = reference_metrics(data, relevance, map_r=5, ks=(1, 2, 5))
    assert set(fast) == set(ref)
    for key in ref:
        for m in ("rank", "ap_r", "ap") + (("x_rank",) if key[1] == "any" else ()):
            np.testing.assert_allclose(fast[key][m], ref[key][m], rtol=1e-12, atol=1e-12, err_msg=f"{key} {m}")
        # R@K (and xR@K for Any): the expected hit under a random order of tied items, by enumeration
        for prefix in ("", "x_") if key[1] == "any" else ("",):
            ok = ~np.isnan(fast[key][prefix + "rank"])
            for k in (1, 2, 5):
                got = expected_hits(*(fast[key][prefix + n][ok] for n in ("above", "tied", "tied_rel")), k)
                np.testing.assert_allclose(got, ref[key][f"{prefix}hit@{k}"][ok], rtol=1e-9, atol=1e-12, err_msg=f"{key} {prefix}R@{k}")
    if exact:  # the exact data must really exercise ties, with hits strictly between 0 and 1
        assert any((ref[k]["rank"] % 1 != 0).any() for k in ref)
        assert any(((ref[k]["hit@2"] > 0) & (ref[k]["hit@2"] < 1)).any() for k in ref)


def test_chunked_equals_dense_and_both_relevances_in_one_pass():
    data = random_split(np.random.default_rng(11), exact=True, sizes=(24, 20, 10, 6))
    dense = per_query_metrics(data, ["class", "instance"], map_r=7)
    for chunk_bytes in (1, 12 * 67 * 5):  # one query per chunk; 5 per chunk (67 gallery rows)
        chunked = per_query_metrics(data, ["class", "instance"], map_r=7, chunk_bytes=chunk_bytes)
        for rel in dense:
            for key in dense[rel]:
                # ranks are integers: exact. APs are float64 sums whose order depends on the
                # chunk shape and on torch's intra-op thread count (5.5e-17 apart at 16 threads
                # on an H200 host), so they agree to rounding, not bit for bit.
                np.testing.assert_array_equal(chunked[rel][key]["rank"], dense[rel][key]["rank"])
                for m in ("ap_r", "ap"):
                    np.testing.assert_allclose(chunked[rel][key][m], dense[rel][key][m], rtol=0, atol=1e-12)
    alone = per_query_metrics(data, ["instance"], map_r=7)["instance"]
    for key in alone:
        np.testing.assert_allclose(alone[key]["ap"], dense["instance"][key]["ap"], rtol=0, atol=1e-12)  # as above


@pytest.mark.parametrize("exact", [True, False])
def test_mean_average_precision_of_a_similarity_matrix(exact):
    # one (queries x gallery) similarity, the numbers of the pair's summary row (ties included)
    data = random_split(np.random.default_rng(3 if exact else 4), exact)
    q, g = data["text"], data["image"]
    sims = (q["emb"] / np.linalg.norm(q["emb"], axis=1, keepdims=True)) @ (g["emb"] / np.linalg.norm(g["emb"], axis=1, keepdims=True)).T
    ref = reference_metrics({"text": q, "image": g}, map_r=5, any_gallery=False)[("text", "image")]
    has = ~np.isnan(ref["ap"])
    for k, col in ((5, "ap_r"), (None, "ap")):
        got = mean_average_precision(sims, q["label"], g["label"], k=k)
        assert got == pytest.approx(ref[col][has].mean(), abs=1e-9)
        miss = mean_average_precision(torch.as_tensor(sims), q["label"], g["label"], k=k, no_relevant="miss")
        assert miss == pytest.approx(ref[col][has].sum() / len(has), abs=1e-9)
        chunked = mean_average_precision(sims, q["label"], g["label"], k=k, chunk_bytes=1)
        assert chunked == pytest.approx(got, abs=1e-12)
    if exact:
        assert (sims[:, :, None] == sims[:, None, :]).sum() > sims.size  # ties really occur


def test_mean_average_precision_by_hand_and_ties():
    # gallery labels A B A; query A: scores 0.9 (B), 0.5 (A), 0.1 (A) -> relevant at 2 and 3
    sims = np.array([[0.5, 0.9, 0.1]])
    assert mean_average_precision(sims, ["A"], ["A", "B", "A"]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert mean_average_precision(sims, ["A"], ["A", "B", "A"], k=2) == pytest.approx(1 / 2)
    assert mean_average_precision(sims, ["A"], ["A", "B", "A"], k=1) == 0.0
    # all tied: pessimistic order (irrelevant first), the relevant item last of three
    assert mean_average_precision(np.zeros((1, 3)), [1], [0, 0, 1]) == pytest.approx(1 / 3)
    # a query whose label is absent: left out, or a miss; no query counted -> NaN
    assert mean_average_precision(np.eye(2), ["a", "z"], ["a", "b"]) == 1.0
    assert mean_average_precision(np.eye(2), ["a", "z"], ["a", "b"], no_relevant="miss") == 0.5
    assert np.isnan(mean_average_precision(np.eye(2), ["y", "z"], ["a", "b"]))
    assert np.isnan(mean_average_precision(np.zeros((0, 2)), [], ["a", "b"]))
    with pytest.raises(ValueError, match="labels"):
        mean_average_precision(np.eye(2), ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no_relevant"):
        mean_average_precision(np.eye(2), ["a", "b"], ["a", "b"], no_relevant="zero")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_gpu_equals_cpu():
    data = random_split(np.random.default_rng(5), exact=True)
    cpu = per_query_metrics(data, ["class"], device="cpu")["class"]
    gpu = per_query_metrics(data, ["class"], device="cuda")["class"]
    for key in cpu:
        np.testing.assert_array_equal(cpu[key]["rank"], gpu[key]["rank"])
        np.testing.assert_allclose(cpu[key]["ap"], gpu[key]["ap"], equal_nan=True)
    sims = torch.as_tensor(data["text"]["emb"]) @ torch.as_tensor(data["image"]["emb"]).T
    labels = [torch.as_tensor(data[n]["label"].astype(int)) for n in ("text", "image")]
    for k in (5, None):
        on_cpu = mean_average_precision(sims, *labels, k=k)
        assert mean_average_precision(sims.cuda(), *(x.cuda() for x in labels), k=k) == pytest.approx(on_cpu, abs=1e-12)


# --------------------------------------------------------------------------- quick recall, errors


def test_bad_input_is_a_clear_error():
    good = block(np.eye(3), list("abc"))
    with pytest.raises(ValueError, match="text: embeddings contain NaN"):
        retrieval_metrics({"text": block([[np.nan, 1.0, 0.0]], ["a"]), "image": good})
    with pytest.raises(ValueError, match="dimension"):
        retrieval_metrics({"text": block(np.eye(2), ["a", "b"]), "image": good})
    with pytest.raises(ValueError, match="relevance"):
        retrieval_metrics({"image": good}, relevances=("semantic",))
    with pytest.raises(ValueError, match="map_r"):
        retrieval_metrics({"image": good}, map_r=0)
    with pytest.raises(ValueError, match="labels for 3"):
        retrieval_metrics({"image": {**good, "label": np.array(["a"])}})
    with pytest.raises(ValueError, match="positive"):
        parse_ks("1,x")
    assert parse_ks("10,1,5,5") == (1, 5, 10)
