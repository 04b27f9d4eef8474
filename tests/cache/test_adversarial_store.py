"""A corrupt store never passes: deleted, zeroed, truncated or bit-flipped files, edited shapes
and markers, and stores written without checksums.

Every damage is made to the files on disk, as bit rot or a careless ``rm`` would; each test
checks that :meth:`FeatureStore.load` (what training uses) raises one error naming the store,
the array and the shard, that ``mmx cache verify`` reports it with exit status 1, and that
``--repair`` + rewriting brings the store back.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import mmx.cache.store as store_mod
import mmx.cache.store.write as store_write  # where new stores get their codecs and integrity attribute
from mmx.cache import CorruptStoreError, StoreSpec, create_store, open_store
from mmx.cache.modality import Modality
from mmx.cache.store import STATUS_FAILED, ids_digest
from mmx.pipeline.cli import main

D, N, SHARD = 6, 12, 4


def _make(root, tokens=True):
    ids = [f"a{i:03d}" for i in range(N)]
    spec = StoreSpec("ds", Modality.AUDIO, {"name": "bb", "dim": D}, {}, ids_digest(ids))
    store = create_store(root, spec, ids, labels=[f"c{i % 2}" for i in range(N)], splits=["train"] * N,
                         shard_size=SHARD, chunk_rows=2, tokens=tokens)
    rng = np.random.default_rng(0)
    for k in range(store.n_shards):
        toks = [rng.standard_normal((3, D)).astype(np.float32) for _ in range(SHARD)] if tokens else None
        store.write_shard(k, rng.standard_normal((SHARD, D)).astype(np.float32), tokens=toks)
    return open_store(store.path)


# array -> (file of shard 1 relative to the store, the words the error must contain)
TARGETS = {
    "pooled": ("pooled/c/1/0", "array 'pooled'"),
    "status": ("status/c/1", "array 'status'"),
    "token_length": ("token_length/c/1", "array 'token_length'"),
    "tokens": ("tokens/000001/c/0/0", "token array"),
}


def _damage(path, how):
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "zeroed":
        path.write_bytes(bytes(len(data)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped-data":  # first chunk's bytes (the shard index sits at the end)
        path.write_bytes(bytes([data[0] ^ 0x5A]) + data[1:])
    elif how == "flipped-index":
        path.write_bytes(data[:-6] + bytes([data[-6] ^ 0x01]) + data[-5:])


def _verify(path, *args):
    return CliRunner().invoke(main, ["cache", "verify", str(path), *args])


@pytest.mark.parametrize("how", ["deleted", "emptied", "zeroed", "truncated", "flipped-data", "flipped-index"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_adversarial_damaged_shard_file_fails_load_and_verify(tmp_path, target, how):
    store = _make(tmp_path)
    rel, words = TARGETS[target]
    _damage(store.path / rel, how)
    fresh = open_store(store.path)
    with pytest.raises(CorruptStoreError) as err:
        fresh.load(tokens=True)
    msg = str(err.value)
    assert str(store.path) in msg and "shard 1" in msg and words in msg, msg
    assert "mmx cache verify --repair" in msg
    r = _verify(store.path)
    assert r.exit_code == 1, r.output
    assert "problem: shard 1:" in r.output and words in r.output and "damaged: 1 problem(s)" in r.output
    # repair: unmark, rewrite the shard, and the store is whole again
    r = _verify(store.path, "--repair")  # then the store is sound, and incomplete
    assert r.exit_code == 2 and "repaired: unmarked shard(s) 1" in r.output
    assert "incomplete: 1/3 shard(s) not complete (4 item(s)): 1;" in r.output
    assert _verify(store.path).exit_code == 2
    rng = np.random.default_rng(1)
    fresh.write_shard(1, rng.standard_normal((SHARD, D)), tokens=[rng.standard_normal((2, D))] * SHARD)
    assert _verify(store.path).exit_code == 0
    assert len(open_store(store.path).load(tokens=True)) == N


@pytest.mark.parametrize("column", ["id", "label", "split"])
def test_adversarial_damaged_metadata_column(tmp_path, column):
    store = _make(tmp_path, tokens=False)
    (store.path / column / "c" / "0").unlink()
    with pytest.raises(CorruptStoreError, match=f"array '{column}': file .*{column}/c/0 is missing; delete the store"):
        open_store(store.path).load()
    r = _verify(store.path)
    assert r.exit_code == 1 and f"array '{column}'" in r.output


def test_adversarial_missing_status_shard_is_an_error_not_fewer_items(tmp_path):
    """A deleted status shard must not drop its items from training without a word."""
    from mmx.train.data import load_train_data

    store = _make(tmp_path, tokens=False)
    (store.path / "status" / "c" / "2").unlink()
    with pytest.raises(CorruptStoreError, match=r"shard 2 is marked complete but its array 'status': file .*status/c/2 is missing"):
        load_train_data(str(tmp_path), "ds", [Modality.AUDIO], ["train"])


def test_adversarial_edited_shapes(tmp_path):
    store = _make(tmp_path)
    meta = store.path / "pooled" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = [N - SHARD, D]
    meta.write_text(json.dumps(doc))
    r = _verify(store.path)  # an IndexError before
    assert r.exit_code == 1 and f"array 'pooled' has shape ({N - SHARD}, {D}), expected ({N}, {D})" in r.output
    assert str(meta) in r.output
    with pytest.raises(CorruptStoreError, match="array 'pooled' has shape"):
        open_store(store.path).load()


def test_adversarial_edited_tokens_shape(tmp_path):
    store = _make(tmp_path)
    meta = store.path / "tokens" / "000002" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] -= 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match=r"shard 2: token array has shape \(11, 6\), the token lengths say \(12, 6\)"):
        open_store(store.path).load(tokens=True)
    r = _verify(store.path)
    assert r.exit_code == 1 and "problem: shard 2: token array has shape" in r.output


@pytest.mark.parametrize("text", ["{not json", "[]", '{"items": 4}'])
def test_adversarial_bad_marker_names_the_file(tmp_path, text):
    store = _make(tmp_path, tokens=False)
    marker = store.path / "_complete" / "000001.json"
    marker.write_text(text)
    with pytest.raises(CorruptStoreError) as err:
        open_store(store.path).load()
    assert f"shard marker {marker}" in str(err.value)
    r = _verify(store.path)
    assert r.exit_code == 1 and f"shard marker {marker}" in r.output


def test_adversarial_marker_counts_disagree_with_status(tmp_path):
    store = _make(tmp_path, tokens=False)
    status = np.full(SHARD, STATUS_FAILED, np.uint8)
    store._group["status"][0:SHARD] = status  # the data changes, the marker still says 4 ok
    with pytest.raises(CorruptStoreError, match="000000.json says 4 items, 4 ok; the status array says 4 items, 0 ok"):
        open_store(store.path).load()


def test_adversarial_garbage_group_metadata(tmp_path):
    store = _make(tmp_path, tokens=False)
    (store.path / "zarr.json").write_text("{garbage")
    with pytest.raises(CorruptStoreError, match="zarr.json: unreadable store metadata"):
        open_store(store.path)
    r = _verify(store.path)
    assert r.exit_code == 1 and "unreadable store metadata" in r.output and "Traceback" not in r.output


def test_adversarial_all_zero_features_are_still_written_and_checked(tmp_path):
    """zarr skips chunks equal to the fill value unless told otherwise: a shard of failed items
    (zeros) must still have its files, so that their absence means damage."""
    store = _make(tmp_path, tokens=False)
    store.write_shard(0, np.zeros((SHARD, D)), status=np.full(SHARD, STATUS_FAILED))
    assert (store.path / "pooled" / "c" / "0" / "0").stat().st_size > 0
    (store.path / "pooled" / "c" / "0" / "0").unlink()
    with pytest.raises(CorruptStoreError, match="shard 0 is marked complete but its array 'pooled'"):
        open_store(store.path).load()


def test_adversarial_store_without_checksums(tmp_path, monkeypatch):
    """A store written without checksums (no crc32c codecs, no integrity attribute): verify says so, and
    presence is still checked."""
    with monkeypatch.context() as m:
        m.setattr(store_write, "_checked", lambda *codecs: list(codecs))
        m.setattr(store_write, "INTEGRITY", None)
        store = _make(tmp_path, tokens=False)
    old = open_store(store.path)
    inner = json.loads((store.path / "pooled" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    assert not old.checksummed and "crc32c" not in json.dumps(inner)
    r = _verify(store.path)
    assert r.exit_code == 0 and "without chunk checksums" in r.output
    (store.path / "pooled" / "c" / "1" / "0").unlink()
    with pytest.raises(CorruptStoreError, match="array 'pooled': file .*pooled/c/1/0 is missing"):
        open_store(store.path).load()
    assert _verify(store.path).exit_code == 1


def test_adversarial_new_stores_carry_checksums(tmp_path):
    store = _make(tmp_path)
    assert store.checksummed
    for name in ("pooled", "status", "token_length", "id", "tokens/000000"):
        codecs = json.loads((store.path / name / "zarr.json").read_text())["codecs"][0]["configuration"]
        assert codecs["codecs"][-1]["name"] == "crc32c", name
        assert codecs["index_codecs"][-1]["name"] == "crc32c", name


def test_adversarial_full_disk_leaves_the_shard_unmarked(tmp_path, monkeypatch):
    """ENOSPC while writing a shard's files or its marker: one error naming the file and the fix,
    the shard stays unmarked and no temporary file is left."""
    import errno

    import zarr.storage._local as local

    store = _make(tmp_path, tokens=False)

    def full(path, value, exclusive=False):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(local, "_put", full)
    with pytest.raises(store_mod.StoreWriteError) as err:
        store.write_shard(1, np.ones((SHARD, D)))
    msg = str(err.value)
    assert f"{store.path}: shard 1: cannot write ({store.path}/" in msg and "No space left on device" in msg
    assert "free space" in msg and not store.is_complete(1)
    monkeypatch.undo()

    real_open = open

    class FullFile:  # a file whose writes fail, as on a full disk
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    import mmx.cache.atomic as atomic_mod  # where the marker is written

    monkeypatch.setattr(atomic_mod, "open", lambda p, *a, **k: FullFile(real_open(p, *a, **k)), raising=False)
    with pytest.raises(store_mod.StoreWriteError, match=r"_complete/000002.json\): No space left"):
        store.write_shard(2, np.ones((SHARD, D)))
    monkeypatch.undo()
    assert not store.is_complete(2)
    assert not [p for p in (store.path / "_complete").iterdir() if p.name.startswith(".")]  # no temporary left
    assert _verify(store.path).exit_code == 2  # sound, two shards to redo


def test_adversarial_train_on_a_damaged_cache_is_one_line(tmp_path):
    """``mmx train`` on a cache with a bit-flipped feature chunk: no training on garbage, and one
    line naming the store, the array, the shard and its file."""
    cache = tmp_path / "cache"
    assert CliRunner().invoke(main, ["cache", "synthesize", "--cache", str(cache)]).exit_code == 0
    (text,) = [s for s in store_mod.list_stores(cache) if s.modality == Modality.TEXT]
    _damage(text.path / "pooled" / "c" / "0" / "0", "flipped-data")
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--preset", "fuerer-tri", "--cache", str(cache), "--out", str(tmp_path / "runs"),
                                  "--epochs", "1", "--quiet"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.output.strip().splitlines()
    assert f"{text.path}: shard 0: array 'pooled' is damaged: {text.path}/pooled/c/0/0: ValueError: Stored and computed checksum" in line


def test_adversarial_rewritten_labels_keep_their_checksums(tmp_path):
    """Labels rewritten after a manifest edit keep the crc32c codec: the store verifies, and a
    flipped bit in the new label file is still caught."""
    store = _make(tmp_path, tokens=False)
    assert store.rewrite_metadata({"label": [""] * N}) == {"label": N}  # all empty: still written
    assert _verify(store.path).exit_code == 0
    assert list(open_store(store.path).load().labels) == [""] * N
    _damage(store.path / "label" / "c" / "0", "flipped-data")
    with pytest.raises(CorruptStoreError, match="array 'label' is damaged"):
        open_store(store.path).load()
