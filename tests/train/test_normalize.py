"""Normalisation between the cache and the heads (train/normalize.py)."""

import json
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch
import yaml

from mmx.cache.modality import Modality
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.eval.runs import load_embeddings
from mmx.train import loop, normalize
from mmx.train.config import TrainConfig
from mmx.train.data import Holdout, load_train_data

CLASSES = 8
MODS = [Modality.IMAGE, Modality.AUDIO]
pytestmark = pytest.mark.filterwarnings("ignore::mmx.train.normalize.FeatureScaleWarning")


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(loop, "quick_recall", lambda *a, **k: {})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    synthesize(root, SyntheticConfig(classes=CLASSES, items={"image": 160, "audio": 160}, dims={"image": 32, "audio": 32},
                                     tokens=None, noise=0.5))
    return root


def decibel_like(cache, class_signal=0.7, seed=0):
    """The cache's data with audio replaced by features shaped like pooled raw-dB log-mel.

    A common offset of -54 dB and a spread of 12 dB per dimension (RMS row norm ~320 against
    ~4 for the image features), with a class signal weaker than the within-class variation:
    a third of the variance lies between classes (13% was measured on real recordings).
    """
    data = load_train_data(str(cache), "synthetic", MODS, [], holdout=Holdout())  # train, a val slice, test
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((CLASSES, 32))
    for split in data.splits.values():
        f = split.features[Modality.AUDIO]
        c = split.classes[Modality.AUDIO].numpy()
        x = class_signal * prototypes[c] + rng.standard_normal((len(c), 32))
        f.pooled = torch.tensor(-54.0 + 12.0 * x, dtype=torch.float32)
    return data


def map_at_50(q, ql, g, gl):
    aps = []
    for v, lab in zip(q, ql):
        rel = (gl[np.argsort(-(g @ v), kind="stable")[:50]] == lab).astype(float)
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append((prec * rel).sum() / rel.sum() if rel.sum() else 0.0)
    return float(np.mean(aps))


def _cfg(cache, tmp_path, strategy, **kw):
    options = {"order": ["audio"]} if strategy == "rvs" else {}
    return TrainConfig(**{**dict(strategy=strategy, cache=str(cache), modalities=["image", "audio"], epochs=4, patience=4,
                                 batch_size=32, lr=3e-3, embed_dim=32, out=str(tmp_path / "runs"), options=options), **kw})


def _audio_scores(run):
    e = load_embeddings(run, "test")
    a, i = e["audio"], e["image"]
    cosine = float((a["emb"] @ a["emb"].T).mean())  # mean pairwise cosine (rows are unit length)
    return map_at_50(a["emb"], a["label"], i["emb"], i["label"]), cosine


@pytest.mark.parametrize("strategy", ["cvs", "rvs", "mcvs"])
def test_cvs_family_collapses_on_raw_decibels_and_learns_by_default(cache, tmp_path, strategy):
    """Without normalisation audio->image stays near chance; the default learns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", normalize.FeatureScaleWarning)
        raw = loop.train(_cfg(cache, tmp_path, strategy, normalize="none"), data=decibel_like(cache))
        default = loop.train(_cfg(cache, tmp_path, strategy), data=decibel_like(cache))
    raw_map, raw_cos = _audio_scores(raw)
    map_, cos = _audio_scores(default)
    # collapsed: near chance (about 0.21 for a random ranking here), audio rows far more alike
    assert raw_map < 0.45 and map_ > 0.7, (raw_map, map_)
    assert raw_cos > 0.15 and cos < 0.1 and raw_cos > 3 * cos, (raw_cos, cos)
    assert yaml.safe_load((default / "config.yaml").read_text())["normalize"] == "standardize"


def test_standardize_uses_train_statistics_for_every_split(cache, tmp_path):
    data = decibel_like(cache)
    norm = normalize.fit("standardize", data.splits["train"])
    out = norm.apply_data(data)
    for m in MODS:
        train = data.splits["train"].features[m].pooled.double()
        mean, std = train.mean(0), train.std(0, unbiased=False)
        for name in ("train", "val", "test"):
            want = ((data.splits[name].features[m].pooled.double() - mean) / std).float()
            torch.testing.assert_close(out.splits[name].features[m].pooled, want, rtol=1e-4, atol=1e-4)
    # the input is left as it was (a caller may reuse it)
    assert float(data.splits["train"].features[Modality.AUDIO].pooled.mean()) < -40
    test = out.splits["test"].features[Modality.AUDIO].pooled
    assert abs(float(test.mean())) < 0.3 and not torch.allclose(test.mean(0), torch.zeros(32), atol=1e-3)


def test_normaliser_is_saved_in_the_run_and_applies_to_later_embeddings(cache, tmp_path):
    data = decibel_like(cache)
    run = loop.train(_cfg(cache, tmp_path, "joint", epochs=1, normalize="standardize"), data=data)
    saved = json.loads((run / "normalizer.json").read_text())
    assert saved["mode"] == "standardize" and set(saved["stats"]) == {"image", "audio"}
    norm = normalize.load(run)
    fitted = normalize.fit("standardize", data.splits["train"])
    for m in ("image", "audio"):  # JSON round trip is exact
        for k in ("mean", "std"):
            np.testing.assert_array_equal(norm.stats[m]["pooled"][k], fitted.stats[m]["pooled"][k])
    x = data.splits["test"].features[Modality.AUDIO].pooled
    np.testing.assert_allclose(norm.apply("audio", x.numpy()), norm.apply("audio", x).numpy(), rtol=1e-6)
    with pytest.raises(KeyError, match="no pooled statistics for modality 'text'"):
        norm.apply("text", x)


def test_l2_and_none_modes(cache, tmp_path):
    data = decibel_like(cache)
    x = data.splits["test"].features[Modality.AUDIO].pooled
    l2 = normalize.fit("l2", data.splits["train"])
    torch.testing.assert_close(l2.apply("audio", x).norm(dim=1), torch.ones(len(x)))
    assert normalize.fit("none", data.splits["train"]).apply_data(data) is data
    run = loop.train(_cfg(cache, tmp_path, "joint", epochs=1, normalize="l2"), data=data)
    assert normalize.load(run).mode == "l2" and yaml.safe_load((run / "config.yaml").read_text())["normalize"] == "l2"


def test_unknown_mode_is_a_config_error(cache, tmp_path):
    with pytest.raises(ValueError, match="normalize must be one of auto, standardize, l2, none"):
        loop.train(_cfg(cache, tmp_path, "joint", normalize="zscore"), data=decibel_like(cache))


def test_constant_dimensions_are_only_centred(cache):
    data = decibel_like(cache)
    for split in data.splits.values():
        f = split.features[Modality.AUDIO]
        f.pooled[:, 3] = 7.0
    norm = normalize.fit("standardize", data.splits["train"])
    assert norm.stats["audio"]["pooled"]["std"][3] == 1.0
    out = norm.apply_data(data).splits["test"].features[Modality.AUDIO].pooled
    assert torch.all(out[:, 3] == 0) and torch.isfinite(out).all()


def test_warning_names_the_modality_out_of_scale(cache):
    data = decibel_like(cache)
    lines = normalize.scale_warnings(data.splits["train"], "none", data.meta)
    assert len(lines) == 1
    msg = lines[0]
    assert msg.startswith("feature scale: audio features are") and "x the scale of image's" in msg
    assert "RMS row norm" in msg and "mean-row norm" in msg and "between classes" in msg and "normalize: standardize" in msg


def test_a_run_says_the_scale_warning_once_through_its_warn_channel(cache, tmp_path):
    """Given a ``warn`` callback, the caution reaches it once and nothing else (no log line, no
    Python warning); without one, it is one FeatureScaleWarning."""
    said, lines = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.train(_cfg(cache, tmp_path / "a", "joint", epochs=1, normalize="none"), data=decibel_like(cache),
                   log=lines.append, warn=said.append)
    assert [w for w in said if w.startswith("feature scale:")] == [w for w in said if "audio features are" in w]
    assert len([w for w in said if w.startswith("feature scale:")]) == 1, said
    assert not any("feature scale" in line for line in lines), lines
    assert not [w for w in caught if issubclass(w.category, normalize.FeatureScaleWarning)]
    with pytest.warns(normalize.FeatureScaleWarning) as caught:
        loop.train(_cfg(cache, tmp_path / "b", "joint", epochs=1, normalize="none"), data=decibel_like(cache))
    scale = [w for w in caught if issubclass(w.category, normalize.FeatureScaleWarning)]
    assert len(scale) == 1 and Path(scale[0].filename).name == Path(__file__).name  # the caller's line, not the loop's


def test_warning_names_a_nearly_constant_modality(cache):
    data = load_train_data(str(cache), "synthetic", MODS, ["train"])
    f = data.splits["train"].features[Modality.IMAGE]
    f.pooled = 1.0 + 1e-5 * f.pooled
    lines = normalize.scale_problems(normalize.scale_stats(data.splits["train"]))
    assert len(lines) == 1 and lines[0].startswith("image features are nearly constant")


def test_no_warning_on_features_of_one_scale(cache):
    data = load_train_data(str(cache), "synthetic", MODS, ["train"])
    assert normalize.scale_warnings(data.splits["train"], "standardize") == []


def test_three_modalities_name_only_the_outlier():
    stats = {m: {"norm": n, "spread": 1.0, "offset": 0.0, "between": 0.5} for m, n in (("text", 3.0), ("image", 4.0), ("audio", 600.0))}
    lines = normalize.scale_problems(stats, {"audio": {"scale": {"unit": "dB", "arbitrary": True}}})
    assert len(lines) == 1 and lines[0].startswith("audio features are 150x the scale of the median modality's")
    assert "the store records its scale as dB (arbitrary)" in lines[0]


def test_a_later_embedding_through_the_saved_normaliser_equals_the_runs_own(cache, tmp_path):
    """What `mmx embed` does: raw features -> normalize.load(RUN) -> the trained model."""
    from mmx.train import checkpoint
    from mmx.train import config as config_mod
    from mmx.train.data import SplitData
    from mmx.train.strategies import get_strategy

    data = decibel_like(cache)
    run = loop.train(_cfg(cache, tmp_path, "joint", epochs=1, normalize="standardize"), data=data)
    cfg = config_mod.load(run / "config.yaml")
    norm = normalize.load(run)
    raw = data.splits["test"]
    split = SplitData({m: norm.apply_features(f) for m, f in raw.features.items()}, raw.classes)
    strategy = get_strategy(cfg.strategy)(cfg, data, torch.device("cpu"))
    model = strategy.build_model()
    model.load_state_dict(checkpoint.load(run / checkpoint.BEST)["model"])
    model.eval()
    again = strategy.embed(model, split)
    saved = load_embeddings(run, "test")
    for m in ("image", "audio"):
        np.testing.assert_allclose(again[m].numpy(), saved[m]["emb"], rtol=1e-5, atol=1e-6)
    # without the normaliser the same model gives other embeddings
    assert not np.allclose(strategy.embed(model, raw)["audio"].numpy(), saved["audio"]["emb"], atol=1e-3)
