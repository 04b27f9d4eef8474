"""Everything at Once (paper 001): fusion model, combinatorial loss, strategy, ablations."""

import json

import numpy as np
import pytest
import torch

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.cache.modality import Modality
from mmx.eval.runs import load_embeddings
from mmx.train.config import TrainConfig, preset_names, resolve
from mmx.train.data import load_train_data
from mmx.train.fusion import EverythingAtOnce, masked_mean
from mmx.train.losses import combinatorial_loss, info_nce
from mmx.train.loop import train
from mmx.train.strategies import get_strategy
from mmx.train.strategies.eao import build_terms

MODS = ["text", "audio", "video"]
DIMS = {"text": 16, "audio": 12, "video": 20}
TINY = {"token_dim": 32, "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def instance_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("inst")
    synthesize(root, SyntheticConfig(classes=20, alignment="instance", missing=0.2, items={m: 300 for m in MODS},
                                     dims=DIMS, tokens=(2, 5), noise=0.5))
    return root


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    synthesize(root, SyntheticConfig(classes=20, items={"text": 200, "audio": 100, "video": 100}, dims=DIMS, tokens=(2, 5), noise=0.5))
    return root


def eao_cfg(cache, tmp_path, **kw):
    base = dict(strategy="eao", cache=str(cache), modalities=MODS, alignment="auto", out=str(tmp_path / "runs") if tmp_path else "unused", epochs=4,
                patience=3, batch_size=32, lr=3e-3, embed_dim=32, dropout=0.0, options=dict(TINY))
    return TrainConfig(**{**base, **kw})


def nce(x, y, tau):
    """Hand-written eq. 4, one direction, as a per-row loop."""
    x = x / x.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    s = (x @ y.T / tau).double()
    return float(np.mean([-(s[i, i] - torch.logsumexp(s[i], 0)).item() for i in range(len(x))]))


def test_combinatorial_loss_hand_computed_with_missing_rows():
    g = torch.Generator().manual_seed(1)
    t, v, a, va = (torch.randn(4, 5, generator=g) for _ in range(4))
    embs = {("t",): t, ("v",): v, ("a",): a, ("v", "a"): va}
    audio = torch.tensor([True, True, False, True])
    ones = torch.ones(4, dtype=torch.bool)
    present = {("t",): ones, ("v",): ones, ("a",): audio, ("v", "a"): audio}
    terms = [(("t",), ("v",), 1.0), (("t",), ("a",), 0.1), (("t",), ("v", "a"), 0.1)]
    out = combinatorial_loss(embs, present, terms, tau=0.05)
    k = audio
    tv = nce(t, v, 0.05) + nce(v, t, 0.05)  # both directions, every row
    ta = nce(t[k], a[k], 0.05) + nce(a[k], t[k], 0.05)  # the row without audio is neither positive nor negative
    tva = nce(t[k], va[k], 0.05) + nce(va[k], t[k], 0.05)
    assert float(out["loss/t-v"]) == pytest.approx(tv, rel=1e-4)
    assert float(out["loss/t-a"]) == pytest.approx(ta, rel=1e-4)
    assert float(out["loss/t-v+a"]) == pytest.approx(tva, rel=1e-4)
    assert float(out["loss"]) == pytest.approx((tv + 0.1 * ta + 0.1 * tva) / 1.2, rel=1e-4)  # the reference's weight sum
    # a term with no complete row is skipped, not NaN
    present[("a",)] = present[("v", "a")] = torch.zeros(4, dtype=torch.bool)
    out = combinatorial_loss(embs, present, terms, tau=0.05)
    assert set(out) == {"loss", "loss/t-v"} and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="disjoint"):
        combinatorial_loss(embs, {k_: ones for k_ in embs}, [(("v",), ("v", "a"), 1.0)])


def test_term_sets_and_weights():
    three = build_terms(MODS, "eao", {"video-text": 1.0}, 0.1)
    assert len(three) == 6 and {frozenset(map(str, x + y)) for x, y, _ in three} >= {frozenset(["text", "audio", "video"])}
    assert len(build_terms(MODS, "all", {}, 0.1)) == 6  # for three modalities EAO's set is every disjoint pair
    weights = {tuple(map(str, x)) + ("|",) + tuple(map(str, y)): w for x, y, w in three}
    assert weights[("text", "|", "video")] == 1.0 and sum(w == 0.1 for w in weights.values()) == 5
    four = ["text", "image", "audio", "video"]
    assert len(build_terms(four, "pairwise", {}, 0.1)) == 6
    assert len(build_terms(four, "single-pair", {}, 0.1)) == 6 + 4 * 3  # single-single and single-vs-pair
    assert len(build_terms(four, "all", {}, 0.1)) == 25  # + pair-pair (3) and single-vs-triple (4)
    custom = build_terms(four, ["text-audio+video", "image-text"], {}, 0.5)
    assert [(tuple(map(str, x)), tuple(map(str, y))) for x, y, _ in custom] == [(("text",), ("audio", "video")), (("image",), ("text",))]


def _names(terms):
    return sorted("-".join("+".join(map(str, side)) for side in (x, y)) for x, y, _ in terms)


def test_eao_terms_go_up_to_triplets_as_hand_written():
    """Sec. 3.2.3: combinations "up to a triplet" for four modalities, each pair of disjoint ones a
    term of eq. 3; for two and three modalities the paper's own lists (eq. 2)."""
    assert _names(build_terms(["audio", "text"], "eao", {}, 0.1)) == ["text-audio"]
    assert _names(build_terms(MODS, "eao", {}, 0.1)) == sorted([
        "text-audio", "text-video", "audio-video", "text-audio+video", "audio-text+video", "video-text+audio"])
    four = ["video", "audio", "image", "text"]  # any order in, the shared order out
    hand = [
        "text-image", "text-audio", "text-video", "image-audio", "image-video", "audio-video",  # single-single
        "text-image+audio", "text-image+video", "text-audio+video", "image-text+audio", "image-text+video",
        "image-audio+video", "audio-text+image", "audio-text+video", "audio-image+video", "video-text+image",
        "video-text+audio", "video-image+audio",  # single-pair
        "text-image+audio+video", "image-text+audio+video", "audio-text+image+video", "video-text+image+audio",  # single-triple
        "text+image-audio+video", "text+audio-image+video", "text+video-image+audio",  # pair-pair
    ]
    assert _names(build_terms(four, "eao", {}, 0.1)) == sorted(hand)
    assert _names(build_terms(four, "single-pair", {}, 0.1)) == sorted(hand[:18])


def test_four_modality_loss_hand_computed_on_a_tiny_batch():
    """The eao loss over four modalities (25 terms, triples and pair-pairs included), term by term."""
    from mmx.train.strategies.eao import canonical

    four = ["text", "image", "audio", "video"]
    terms = build_terms(four, "eao", {"text-video": 1.0, "audio-text+image+video": 0.5}, 0.1)
    subsets = {s for x, y, _ in terms for s in (x, y)}
    assert len(subsets) == 4 + 6 + 4
    g = torch.Generator().manual_seed(3)
    embs = {s: torch.randn(3, 4, generator=g) for s in subsets}
    present = {s: np.ones(3, bool) for s in subsets}
    out = combinatorial_loss(embs, present, terms, tau=0.1)
    t, i, a, v = (canonical([m]) for m in four)
    tiv, ai = canonical(["text", "image", "video"]), canonical(["audio", "image"])
    tv = canonical(["text", "video"])
    assert float(out["loss/audio-text+image+video"]) == pytest.approx(
        nce(embs[a], embs[tiv], 0.1) + nce(embs[tiv], embs[a], 0.1), rel=1e-4)
    assert float(out["loss/text+video-image+audio"]) == pytest.approx(
        nce(embs[tv], embs[ai], 0.1) + nce(embs[ai], embs[tv], 0.1), rel=1e-4)
    total = sum(w * (nce(embs[x], embs[y], 0.1) + nce(embs[y], embs[x], 0.1)) for x, y, w in terms)
    weight = 1.0 + 0.5 + 0.1 * 23
    assert sorted(w for _, _, w in terms)[-2:] == [0.5, 1.0]
    assert float(out["loss"]) == pytest.approx(total / weight, rel=1e-4)
    assert len([k for k in out if k.startswith("loss/")]) == 25


def _model(**kw):
    torch.manual_seed(0)
    return EverythingAtOnce(DIMS, token_dim=32, embed_dim=16, depth=1, heads=2, **kw).eval()


def test_padding_tokens_do_not_change_outputs():
    model = _model()
    g = torch.Generator().manual_seed(0)
    x = {m: torch.randn(3, 4, d, generator=g) for m, d in DIMS.items()}
    valid = {m: torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool) for m in DIMS}
    present = torch.ones(3, dtype=torch.bool)
    inputs = {m: (x[m], valid[m], present) for m in DIMS}
    # the same items with garbage in the padding and two extra padded steps
    padded = {}
    for m in DIMS:
        junk = 100 * torch.randn(3, 6, DIMS[m], generator=g)
        junk[:, :4][valid[m]] = x[m][valid[m]]
        padded[m] = (junk, torch.cat([valid[m], torch.zeros(3, 2, dtype=torch.bool)], 1), present)
    with torch.no_grad():
        for subset in (("text",), ("audio", "video"), ("text", "audio", "video")):
            assert torch.allclose(model(inputs, subset), model(padded, subset), atol=1e-5)
    assert torch.allclose(masked_mean(torch.tensor([[[1.0], [3.0], [99.0]]]), torch.tensor([[True, True, False]])), torch.tensor([[2.0]]))


def test_absent_modality_becomes_the_empty_token_and_is_masked_from_its_terms(instance_cache):
    cfg = eao_cfg(instance_cache, None)
    data = load_train_data(str(instance_cache), "synthetic", Modality.parse_list(MODS), ["train", "test"], tokens=True)
    cfg.alignment = "instance"
    strategy = get_strategy("eao")(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    model = strategy.build_model().eval()
    batch = next(iter(strategy.batches(data.splits["train"], 1, train=True)))
    audio_absent = ~batch["audio"][2]
    assert audio_absent.any() and batch["text"][2].all()  # the cache leaves audio out of some groups
    # what the absent audio rows hold does not matter: they become the learned empty token
    x, valid, present, host = batch["audio"]  # host: the masks on the host, which the model reads
    noisy = dict(batch, audio=(torch.where(present[:, None, None], x, torch.randn_like(x)), valid, present, host))
    with torch.no_grad():
        assert torch.allclose(model(batch, ("text", "audio")), model(noisy, ("text", "audio")), atol=1e-6)
        out = strategy.step(model, batch)
        # a term with audio equals its loss over the groups that have audio; one without, over all groups
        t, a = model(batch, ("text",)), model(batch, ("audio",))
        exp = info_nce(t[present], a[present], cfg.tau) + info_nce(a[present], t[present], cfg.tau)
        assert float(out["loss/text-audio"]) == pytest.approx(float(exp), rel=1e-4)
        tv_rows = batch["video"][2]
        t, v = model(batch, ("text",)), model(batch, ("video",))
        exp = info_nce(t[tv_rows], v[tv_rows], cfg.tau) + info_nce(v[tv_rows], t[tv_rows], cfg.tau)
        assert float(out["loss/text-video"]) == pytest.approx(float(exp), rel=1e-4)


def test_eao_learns_on_instance_aligned_with_fused_embeddings(instance_cache, tmp_path):
    run = train(eao_cfg(instance_cache, tmp_path, val_fraction=0.25))
    s = json.loads((run / "metrics.json").read_text())
    # ~60 val groups (a quarter of train): chance R@10 is about 1/6
    assert s["final"]["recall/mean@10"] > 0.8
    assert s["final"]["recall/mean@10"] > s["untrained"]["recall/mean@10"] + 0.4
    assert s["final"]["recall/text->audio+video@10"] > 0.8  # paper 001's t->va
    emb = load_embeddings(run, "test")
    pairs = {"audio+video", "text+video", "text+audio"}
    assert {"text", "audio", "video"} | pairs | {p + ".late" for p in pairs} == set(emb)
    va = emb["audio+video"]
    assert (va["id"] == va["group"]).all() and len(set(va["group"])) == len(va["group"])  # rows are groups
    both = set(emb["audio"]["group"]) & set(emb["video"]["group"])
    assert set(va["group"]) == both  # exactly the groups that have both modalities
    # late fusion (Table 4's "v+a"): the normalised sum of the separately embedded audio and video of the group
    late = emb["audio+video.late"]
    assert list(late["group"]) == list(va["group"])
    row = {m: {g: i for i, g in enumerate(emb[m]["group"])} for m in ("audio", "video")}
    g0 = late["group"][0]
    expected = emb["audio"]["emb"][row["audio"][g0]] + emb["video"]["emb"][row["video"][g0]]
    assert np.allclose(late["emb"][0], expected / np.linalg.norm(expected), atol=1e-5)
    assert s["final"]["recall/text->audio+video.late@10"] > 0.5  # Table 4 row 3/5's t->v+a


def test_eao_runs_and_learns_on_class_aligned(class_cache, tmp_path):
    run = train(eao_cfg(class_cache, tmp_path))
    s = json.loads((run / "metrics.json").read_text())
    assert resolve([str(run / "config.yaml")]).alignment == "class"
    # 20 classes: chance R@1 is about 1/20
    assert s["final"]["recall/mean@1"] > 0.4 and s["final"]["recall/mean@1"] > s["untrained"]["recall/mean@1"] + 0.25
    assert set(load_embeddings(run, "test")) == set(MODS)  # no fixed groups to fuse


@pytest.mark.parametrize("options", [
    {"fusion": "none", "terms": "pairwise"},
    {"fusion": "separate", "terms": "pairwise"},
    {"terms": "pairwise"},
    {"shared_projection": True},
    {"cls_token": True},
    {"positional": True},
    {"depth": 2, "mlp_dim": 48, "terms": "all"},
])
def test_ablations_build_and_step(instance_cache, options):
    data = load_train_data(str(instance_cache), "synthetic", Modality.parse_list(MODS), ["train", "test"], tokens=True)
    cfg = eao_cfg(instance_cache, None, alignment="instance", options={**TINY, **options})
    assert get_strategy("eao").check(cfg) == []
    strategy = get_strategy("eao")(cfg, data, torch.device("cpu"))
    model = strategy.build_model()
    out = strategy.step(model, next(iter(strategy.batches(data.splits["train"], 1, train=True))))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if options.get("fusion") == "none":
        assert not hasattr(model, "transformer")
    embs = strategy.embed(model.eval(), data.splits["test"])
    assert embs["audio+video"].shape[1] == 32


def test_check_reports_every_problem_at_once(tmp_path):
    cfg = TrainConfig(strategy="eao", modalities=["text"], options={"token_dim": 30, "heads": 4, "fusion": "late", "colour": 1})
    problems = get_strategy("eao").check(cfg)
    text = "\n".join(problems)
    assert len(problems) >= 4 and "colour" in text and "divisible" in text and "fusion" in text and "at least 2" in text


def test_eao_runs_on_pooled_only_stores_as_one_token_sequences(tmp_path):
    """A pooled vector serves as a one-token sequence."""
    synthesize(tmp_path / "c", SyntheticConfig(classes=10, items={"text": 200, "audio": 200}, dims={"text": 8, "audio": 8},
                                               tokens=None, noise=0.3))
    data = load_train_data(str(tmp_path / "c"), "synthetic", Modality.parse_list(["text", "audio"]), ["train", "test"], tokens=True)
    assert data.pooled_as_tokens == [Modality.TEXT, Modality.AUDIO]
    split = data.splits["test"]
    f = split.features[Modality.TEXT]
    assert (f.offsets[1:] - f.offsets[:-1] == 1).all() and torch.equal(f.tokens, f.pooled)
    # the model's one-token embedding of an item is its pooled vector through the fusion model
    cfg = eao_cfg(tmp_path / "c", tmp_path, modalities=["text", "audio"], epochs=3)
    strategy = get_strategy("eao")(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    model = strategy.build_model().eval()
    x = f.pooled[:5]
    one = {"text": (x[:, None], torch.ones(5, 1, dtype=torch.bool), torch.ones(5, dtype=torch.bool))}
    with torch.no_grad():
        assert torch.allclose(strategy.embed(model, split)["text"][:5], model(one, ("text",)), atol=1e-6)
    run = train(cfg)
    s = json.loads((run / "metrics.json").read_text())
    assert s["final"]["recall/mean@1"] > s["untrained"]["recall/mean@1"] + 0.2  # it learns (10 classes)


def test_eao_presets_resolve_and_pass_checks():
    names = [n for n in preset_names() if n.startswith("eao")]
    assert {"eao", "eao-no-transformer", "eao-separate-transformers", "eao-pairwise-loss", "eao-shared-projection",
            "eao-cls-token", "eao-positional"} <= set(names)
    for name in names:
        cfg = resolve([name])
        cfg.modalities = cfg.modalities or ["text", "video", "audio"]  # eao-cpu: every modality the dataset has
        assert get_strategy(cfg.strategy).check(cfg) == [], name
    base = resolve(["eao"])
    assert (base.lr, base.lr_decay, base.tau, base.epochs, base.options["weights"]) == (5e-5, 0.9, 0.05, 15, {"text-video": 1.0})
    # the reference's settings: no dropout, 224 x 10 in-batch negatives, no final norm, ViT init
    for name in names:
        cfg = resolve([name])
        assert (cfg.dropout, cfg.batch_size, cfg.options["final_norm"], cfg.options["init"]) == (0.0, 2240, False, "vit"), name
