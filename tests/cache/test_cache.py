"""The feature store (mmx.cache.store) and the synthetic generator (mmx.cache.synthesize)."""

import json
import warnings

import numpy as np
import pytest

from mmx.cache import (
    CacheKeyMismatch,
    IncompleteStoreWarning,
    StoreSpec,
    create_store,
    find_store,
    list_stores,
    open_store,
    store_path,
)
from mmx.cache.store import STATUS_FAILED, STATUS_OK, ids_digest
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.cache.modality import Modality

D = 6


def _spec(ids, name="bb", dataset="ds", modality="audio", pre=None):
    return StoreSpec(dataset, Modality.parse(modality), {"name": name, "dim": D, "token_rate": 0.5, "weights": "w1"},
                     pre or {"sr": 16000}, ids_digest(ids))


def _make(root, n=10, shard_size=4, tokens=True, dtype="float16", name="bb"):
    ids = [f"a{i:03d}" for i in range(n)]
    splits = ["train" if i % 3 else "test" for i in range(n)]
    labels = [f"c{i % 2}" for i in range(n)]
    store = create_store(root, _spec(ids, name=name), ids, labels=labels, groups=[f"g{i}" for i in range(n)],
                         splits=splits, shard_size=shard_size, chunk_rows=2, dtype=dtype, tokens=tokens)
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((n, D)).astype(np.float32)
    toks = [rng.standard_normal((int(t), D)).astype(np.float32) for t in rng.integers(0, 5, n)]  # T_i may be 0
    return store, ids, splits, labels, pooled, toks


def _write_all(store, pooled, toks, status=None):
    for k in range(store.n_shards):
        s, e = store.shard_range(k)
        store.write_shard(k, pooled[s:e], status=None if status is None else status[s:e],
                          tokens=toks[s:e] if store.has_tokens else None)


def test_round_trip_pooled_and_ragged_tokens(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path)
    _write_all(store, pooled, toks)
    got = store.load(tokens=True)
    assert list(got.ids) == ids and list(got.labels) == labels and list(got.splits) == splits
    assert list(got.groups) == [f"g{i}" for i in range(10)]
    assert got.missing == 0 and got.failed == 0
    # float16 storage: equal to the float16 rounding of what was written
    np.testing.assert_array_equal(got.pooled.numpy(), pooled.astype(np.float16).astype(np.float32))
    off = got.offsets.numpy()
    assert off[0] == 0 and off[-1] == sum(len(t) for t in toks) == got.tokens.shape[0]
    for i, t in enumerate(toks):
        np.testing.assert_array_equal(got.tokens.numpy()[off[i]:off[i + 1]], t.astype(np.float16).astype(np.float32))
    assert store.verify() == []
    assert store.meta["dtype"] == "float16" and store._group["pooled"].dtype == np.float16


def test_float32_storage_is_exact_and_split_filter(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path, dtype="float32", tokens=False)
    _write_all(store, pooled, toks)
    test = store.load(split="test")
    want = [i for i, s in enumerate(splits) if s == "test"]
    assert list(test.ids) == [ids[i] for i in want]
    np.testing.assert_array_equal(test.pooled.numpy(), pooled[want])
    both = store.load(split=["test", "train"])
    assert len(both) == 10
    assert len(store.load(split="val")) == 0
    with pytest.raises(ValueError, match="no token sequences"):
        store.load(tokens=True)


def test_split_filter_with_tokens_keeps_offsets_consistent(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path)
    _write_all(store, pooled, toks)
    got = store.load(split="train", tokens=True)
    want = [i for i, s in enumerate(splits) if s == "train"]
    off = got.offsets.numpy()
    assert len(off) == len(want) + 1
    for j, i in enumerate(want):
        np.testing.assert_array_equal(got.tokens.numpy()[off[j]:off[j + 1]], toks[i].astype(np.float16).astype(np.float32))


def test_selecting_a_split_of_a_load_equals_loading_that_split(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path)
    _write_all(store, pooled, toks)
    whole = store.load(split=["train", "test"], tokens=True)
    for name in ("train", "test"):
        got, want = whole.select(np.flatnonzero(whole.splits == name)), store.load(split=name, tokens=True)
        assert list(got.ids) == list(want.ids)
        for field in ("pooled", "tokens", "offsets"):
            assert np.array_equal(getattr(got, field).numpy(), getattr(want, field).numpy()), field


def test_failed_items_are_skipped_and_counted(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path, tokens=False)
    status = np.full(10, STATUS_OK, np.uint8)
    status[[1, 5]] = STATUS_FAILED
    _write_all(store, pooled, toks, status)
    got = store.load()
    assert got.failed == 2 and len(got) == 8 and "a001" not in got.ids
    info = store.info()
    assert (info["ok"], info["failed"], info["pending"]) == (8, 2, 0)


def test_incomplete_shard_is_ignored_and_reported(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path)  # shards: [0,4) [4,8) [8,10)
    _write_all(store, pooled, toks)
    (store.path / "_complete" / "000001.json").unlink()  # data on disk, no marker: as after a kill
    with pytest.warns(IncompleteStoreWarning, match="4 item"):
        got = store.load(tokens=True)
    assert got.missing == 4 and len(got) == 6
    assert not set(got.ids) & {"a004", "a005", "a006", "a007"}
    assert got.offsets[-1] == got.tokens.shape[0] == sum(len(toks[i]) for i in (0, 1, 2, 3, 8, 9))
    info = store.info()
    assert info["shards"]["complete"] == 2 and info["pending"] == 4
    assert store.verify() == []  # incomplete is not corrupt; the CLI reports it separately
    # the split filter counts only the missing items of that split
    with pytest.warns(IncompleteStoreWarning):
        assert store.load(split="test").missing == sum(1 for i in range(4, 8) if splits[i] == "test")


def test_data_written_without_marker_is_not_loaded(tmp_path):
    store, ids, *_ = _make(tmp_path, tokens=False)
    store._group["pooled"][0:4] = np.ones((4, D), np.float16)  # a writer killed before its marker
    store._group["status"][0:4] = np.ones(4, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteStoreWarning)
        got = store.load()
    assert len(got) == 0 and got.missing == 10


def test_rewrite_removes_marker_before_writing(tmp_path, monkeypatch):
    store, ids, splits, labels, pooled, toks = _make(tmp_path, tokens=False)
    _write_all(store, pooled, toks)
    assert store.is_complete(1)

    def killed(k):
        raise RuntimeError("killed")

    monkeypatch.setattr(store, "_fsync_shard", killed)
    with pytest.raises(RuntimeError):
        store.write_shard(1, pooled[4:8] * 2)
    assert not store.is_complete(1) and store.is_complete(0)  # a half rewrite is never trusted


def test_write_shard_rejects_bad_shapes(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path)
    with pytest.raises(ValueError, match="expected"):
        store.write_shard(0, pooled[:3], tokens=toks[:4])
    with pytest.raises(ValueError, match="keeps tokens"):
        store.write_shard(0, pooled[:4])
    with pytest.raises(ValueError, match=r"\(T, 6\)"):
        store.write_shard(0, pooled[:4], tokens=[np.zeros((2, 3))] * 4)
    with pytest.raises(IndexError):
        store.write_shard(7, pooled[:4], tokens=toks[:4])
    assert store.complete_shards() == []


def test_key_mismatch_names_both_configurations(tmp_path):
    store, ids, *_ = _make(tmp_path, name="resnet")
    other = _spec(ids, name="vgg")
    with pytest.raises(CacheKeyMismatch) as err:
        open_store(store.path, expected=other)
    msg = str(err.value)
    assert "'resnet' (store)" in msg and "'vgg' (asked)" in msg and store.key[:12] in msg and other.key()[:12] in msg
    with pytest.raises(CacheKeyMismatch):
        create_store(store.path, other, ids, exact_path=True, tokens=False)
    with pytest.raises(CacheKeyMismatch, match="asked"):
        open_store(store.path, expected="0" * 64)


def test_create_existing_store_with_same_spec_opens_it(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path)
    _write_all(store, pooled, toks)
    again = create_store(tmp_path, _spec(ids), ids, tokens=True)
    assert again.path == store.path and again.complete_shards() == [0, 1, 2]
    assert store_path(tmp_path, _spec(ids)) == store.path
    with pytest.raises(ValueError, match="ids_digest"):
        create_store(tmp_path, _spec(ids), ids[:-1])


def test_verify_finds_tampering(tmp_path):
    store, ids, splits, labels, pooled, toks = _make(tmp_path)
    _write_all(store, pooled, toks)
    marker = store.path / "_complete" / "000000.json"
    rec = json.loads(marker.read_text())
    rec["ok"] = 1
    marker.write_text(json.dumps(rec))
    import shutil

    shutil.rmtree(store.path / "tokens" / "000002")
    problems = store.verify()
    assert any("shard 0" in p and "000000.json says 4 items, 1 ok" in p for p in problems)
    assert any("shard 2" in p and "token array" in p for p in problems)


def test_list_and_find_stores(tmp_path):
    a, ids, *_ = _make(tmp_path, name="one", tokens=False)
    b, *_ = _make(tmp_path, name="two", tokens=False)
    assert {s.path for s in list_stores(tmp_path)} == {a.path, b.path}
    assert list_stores(tmp_path, "nope") == []
    assert find_store(tmp_path, "ds", "audio", "two").path == b.path
    with pytest.raises(ValueError, match="several audio stores"):
        find_store(tmp_path, "ds", "audio")
    with pytest.raises(FileNotFoundError, match="stores present"):
        find_store(tmp_path, "ds", "video")


# -- synthetic generator ------------------------------------------------------------------


def _small(tmp_path, **kw):
    cfg = SyntheticConfig.preset("small", **{"items": {"text": 100, "image": 60}, "dims": {"text": 8, "image": 12}, **kw})
    return cfg, synthesize(tmp_path, cfg)


def test_synthetic_shapes_tokens_and_class_split(tmp_path):
    cfg, stores = _small(tmp_path)
    assert set(stores) == {Modality.TEXT, Modality.IMAGE}
    for mod, n, d in ((Modality.TEXT, 100, 8), (Modality.IMAGE, 60, 12)):
        got = stores[mod].load(tokens=True)
        assert got.pooled.shape == (n, d) and got.tokens.shape[1] == d
        lengths = np.diff(got.offsets.numpy())
        assert lengths.min() >= 2 and lengths.max() <= 6
        # pooled is the mean of the item's tokens, as an extractor pools them
        off = got.offsets.numpy()
        np.testing.assert_allclose(got.pooled[3].numpy(), got.tokens[off[3]:off[4]].numpy().mean(0), atol=3e-3)
        assert stores[mod].backbone["dim"] == d and stores[mod].verify() == []
        # exactly 20% of every class is test (10 classes)
        for c in set(got.labels):
            sp = got.splits[got.labels == c]
            assert (sp == "test").sum() == round(0.2 * len(sp)) and (sp == "train").sum() == len(sp) - round(0.2 * len(sp))


def test_synthetic_is_class_structured_and_deterministic(tmp_path):
    cfg, stores = _small(tmp_path / "a", tokens=None)
    got = stores[Modality.TEXT].load()
    x, y = got.pooled.numpy(), got.labels
    train, test = got.splits == "train", got.splits == "test"
    classes = sorted(set(y))
    cent = np.stack([x[train & (y == c)].mean(0) for c in classes])
    pred = np.array(classes)[((x[test][:, None] - cent[None]) ** 2).sum(-1).argmin(1)]
    assert (pred == y[test]).mean() >= 0.6  # chance is 0.1
    _, again = _small(tmp_path / "b", tokens=None)
    np.testing.assert_array_equal(again[Modality.TEXT].load().pooled.numpy(), x)
    assert not stores[Modality.TEXT].has_tokens
    # rerunning on the same root reuses the stores
    _, same = _small(tmp_path / "a", tokens=None)
    assert same[Modality.TEXT].path == stores[Modality.TEXT].path


def test_synthetic_instance_groups_and_missing(tmp_path):
    cfg, stores = _small(tmp_path, items={"text": 200, "image": 200, "audio": 80},
                         dims={"text": 8, "image": 8, "audio": 8}, alignment="instance", missing=0.25, tokens=None)
    loaded = {m: s.load() for m, s in stores.items()}
    text = loaded[Modality.TEXT]
    assert len(text) == 200  # text is never missing
    by_group = {g: (l, s) for g, l, s in zip(text.groups, text.labels, text.splits)}
    for mod in (Modality.IMAGE, Modality.AUDIO):
        got = loaded[mod]
        assert len(set(got.groups)) == len(got)
        # a group's class and split are the same in every modality
        assert all(by_group[g] == (l, s) for g, l, s in zip(got.groups, got.labels, got.splits))
        assert (got.splits == "test").sum() > 0
    assert 0.6 < len(loaded[Modality.IMAGE]) / 200 < 0.9  # about 1 - missing
    assert len(loaded[Modality.AUDIO]) == 80


def test_synthetic_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        SyntheticConfig.preset("huge")
    with pytest.raises(ValueError, match="alignment") as err:
        synthesize(tmp_path, SyntheticConfig(alignment="pairs", items={"smell": 3}, missing=1.5))
    assert "unknown modality" in str(err.value) and "missing" in str(err.value)


def test_xmedianet_preset_matches_paper_scale():
    cfg = SyntheticConfig.preset("xmedianet")
    assert cfg.classes == 200 and cfg.tokens is None and cfg.test_fraction == 0.2
    assert cfg.items == {"text": 40000, "image": 35268, "audio": 8280, "video": 7876}
    assert cfg.dims == {"text": 512, "image": 2048, "audio": 128, "video": 600}


def test_scale_is_recorded_outside_the_key_also_into_an_existing_store(tmp_path):
    store, ids, *_ = _make(tmp_path, n=4, tokens=False)
    key = store.key
    assert "scale" not in store.meta and store.info()["scale"] is None
    scale = {"unit": "dB (power, reference 1.0)", "arbitrary": True}
    again = create_store(tmp_path, _spec(ids), ids, shard_size=4, chunk_rows=2, tokens=False, scale=scale)
    assert again.key == key and again.path == store.path
    reopened = open_store(store.path, expected=_spec(ids))
    assert reopened.meta["scale"] == scale and reopened.info()["scale"] == scale and not reopened.verify()
