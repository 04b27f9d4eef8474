"""``mmx.cache.importers``: every accepted format, label kinds, splits, and bad input."""

import hashlib

import h5py
import numpy as np
import pytest
import scipy.io

from mmx.cache.importers import FeatureImportError, Source, import_features, parse_source

RNG = np.random.default_rng(0)
TR = RNG.standard_normal((7, 5)).astype(np.float32)
TE = RNG.standard_normal((3, 5)).astype(np.float32)
TR_LAB = np.array([1, 2, 3, 1, 2, 3, 1])  # MATLAB-style 1-based class numbers
TE_LAB = np.array([3, 2, 1])


def _f16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _xmedia_v5(path):
    # as XMedia ships it: N x D features, N x 1 double labels, one file for train and test
    scipy.io.savemat(path, {"I_tr_CNN": TR.astype(np.float64), "I_te_CNN": TE.astype(np.float64),
                            "trImgCat": TR_LAB[:, None].astype(float), "teImgCat": TE_LAB[:, None].astype(float)})
    return path


def _mat73(path, variables):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte header, column-major arrays,
    a MATLAB_class attribute on every variable, char as uint16, cells as object references."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        for name, value in variables.items():
            value = np.asarray(value)
            if value.dtype.kind in "UO":  # a cell array of strings (N x 1)
                ref_list = []
                for i, s in enumerate(value.ravel()):
                    chars = np.array([[ord(c) for c in str(s)]], np.uint16).T  # 1 x L char, stored L x 1
                    ds = refs.create_dataset(f"{name}_{i}", data=chars)
                    ds.attrs["MATLAB_class"] = np.bytes_("char")
                    ref_list.append(ds.ref)
                ds = f.create_dataset(name, data=np.array([ref_list], dtype=h5py.ref_dtype))  # stored 1 x N
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                ds = f.create_dataset(name, data=np.atleast_2d(value).T if value.ndim == 1 else value.T)
                ds.attrs["MATLAB_class"] = np.bytes_("double" if value.dtype.kind == "f" else "int32")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    return path


def test_mat_v5_two_sources_one_store(tmp_path):
    mat = _xmedia_v5(tmp_path / "XMedia.mat")
    res = import_features(tmp_path / "cache", "xmedia", "image", [
        "XMedia.mat:split=train,features=I_tr_CNN,labels=trImgCat".replace("XMedia.mat", str(mat)),
        f"{mat}:split=test,features=I_te_CNN,labels=teImgCat",
    ])
    assert res.created and res.items == 10 and res.dim == 5 and res.splits == {"train": 7, "test": 3}
    s = res.store
    assert s.backbone == {"name": "imported:XMedia", "dim": 5, "token_rate": None, "weights": _sha(mat)}
    assert not s.has_tokens and s.verify() == []
    got = s.load()
    np.testing.assert_array_equal(got.pooled.numpy(), _f16(np.concatenate([TR, TE])))
    assert list(got.labels) == [str(x) for x in np.concatenate([TR_LAB, TE_LAB])]  # 1-based kept as given
    assert list(got.ids) == [f"image-{i:06d}" for i in range(10)]
    test = s.load(split="test")
    np.testing.assert_array_equal(test.pooled.numpy(), _f16(TE))
    # the same import again reuses the store
    again = import_features(tmp_path / "cache", "xmedia", "image", [
        Source(mat, split="train", features="I_tr_CNN", labels="trImgCat"),
        Source(mat, split="test", features="I_te_CNN", labels="teImgCat")])
    assert not again.created and again.store.path == s.path


def test_mat_v73_is_transposed_back_and_strings_decoded(tmp_path):
    labels = np.array(["cat", "dog", "cat", "bird", "dog", "cat", "bird"], dtype=object)
    ids = np.array([f"img{i}" for i in range(7)], dtype=object)
    mat = _mat73(tmp_path / "feat73.mat", {"I_tr_CNN": TR.astype(np.float64), "trCat": labels, "trIds": ids})
    assert h5py.File(mat, "r")["I_tr_CNN"].shape == (5, 7)  # what h5py sees: D x N
    res = import_features(tmp_path / "c", "xm", "image", [f"{mat}:train"],
                          defaults=Source(mat, features="I_tr_CNN", labels="trCat", ids="trIds"), dtype="float32")
    got = res.store.load()
    np.testing.assert_array_equal(got.pooled.numpy(), TR)
    assert list(got.labels) == list(labels) and list(got.ids) == list(ids)
    assert res.store.meta["preprocessing"]["sources"][0]["format"] == "MATLAB v7.3"


def test_mat_v73_numeric_labels_and_char_matrix(tmp_path):
    mat = _mat73(tmp_path / "f.mat", {"X": TR.astype(np.float64), "y": TR_LAB.astype(np.float64)})
    with h5py.File(mat, "r+") as f:  # a char matrix 7 x 2 (stored 2 x 7)
        ds = f.create_dataset("s", data=np.array([[ord(c) for c in w] for w in ["tr"] * 5 + ["te"] * 2], np.uint16).T)
        ds.attrs["MATLAB_class"] = np.bytes_("char")
    with pytest.raises(FeatureImportError, match="unknown split"):
        import_features(tmp_path / "c", "d", "text", [Source(mat, features="X", labels="y", splits="s")])
    got = import_features(tmp_path / "c", "d", "text", [Source(mat, features="X", labels="y")]).store.load()
    assert list(got.labels) == [str(x) for x in TR_LAB] and list(got.splits) == [""] * 7


def test_plain_h5_nested_paths_bytes_labels_and_split_variable(tmp_path):
    path = tmp_path / "audio_feats.h5"
    splits = np.array([b"train"] * 5 + [b"test"] * 2)
    with h5py.File(path, "w") as f:
        f.create_dataset("feats/vggish", data=TR)
        f.create_dataset("meta/label", data=np.array([b"a", b"b", b"a", b"b", b"a", b"b", b"a"]))
        f.create_dataset("meta/split", data=splits)
    res = import_features(tmp_path / "c", "d", "audio", [str(path)],
                          defaults=Source(path, features="feats/vggish", labels="meta/label", splits="meta/split"),
                          name="vggish")
    got = res.store.load()
    np.testing.assert_array_equal(got.pooled.numpy(), _f16(TR))  # plain HDF5 is not transposed
    assert list(got.labels) == ["a", "b", "a", "b", "a", "b", "a"]
    assert list(got.splits) == ["train"] * 5 + ["test"] * 2
    assert res.store.backbone["name"] == "imported:vggish"


def test_npz_one_hot_labels_and_transpose(tmp_path):
    onehot = np.eye(3)[TR_LAB - 1]
    path = tmp_path / "t.npz"
    np.savez(path, X=TR.T, Y=onehot)  # features stored D x N
    with pytest.raises(FeatureImportError, match="5 rows"):  # without --transpose, 5 "items" vs 7 labels
        import_features(tmp_path / "c", "d", "video", [path], defaults=Source(path, features="X", labels="Y"))
    res = import_features(tmp_path / "c", "d", "video", [path], defaults=Source(path, features="X", labels="Y"),
                          transpose=True, onehot_base=1)
    got = res.store.load()
    assert list(got.labels) == [str(x) for x in TR_LAB]  # argmax + 1
    np.testing.assert_array_equal(got.pooled.numpy(), _f16(TR))
    assert res.store.meta["preprocessing"]["transpose"] is True


def test_npy_with_text_and_npy_labels_files(tmp_path):
    tr, te = tmp_path / "train.npy", tmp_path / "test.npy"
    np.save(tr, TR)
    np.save(te, TE)
    (tmp_path / "tr.txt").write_text("\n".join(f"k{x}" for x in TR_LAB) + "\n")
    np.save(tmp_path / "te_lab.npy", TE_LAB)
    res = import_features(tmp_path / "c", "d", "text", [
        Source(tr, split="train", labels_file=tmp_path / "tr.txt"),
        f"{te}:split=test,labels_file={tmp_path / 'te_lab.npy'}"])
    got = res.store.load()
    assert list(got.labels) == [f"k{x}" for x in TR_LAB] + [str(x) for x in TE_LAB]
    assert res.store.backbone["name"] == "imported:train"
    # several files: weights is a digest of both files' digests, in order
    assert res.store.backbone["weights"] == hashlib.sha256((_sha(tr) + _sha(te)).encode()).hexdigest()


def test_changed_source_file_gives_another_store(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, TR)
    a = import_features(tmp_path / "c", "d", "text", [str(path)]).store
    np.save(path, TR + 1)
    b = import_features(tmp_path / "c", "d", "text", [str(path)]).store
    assert a.path != b.path and a.key != b.key
    np.testing.assert_array_equal(b.load().pooled.numpy(), _f16(TR + 1))
    # a different variable of the same file is another configuration too
    np.savez(tmp_path / "two.npz", A=TR, B=TR * 2)
    x = import_features(tmp_path / "c", "d", "image", [Source(tmp_path / "two.npz", features="A")]).store
    y = import_features(tmp_path / "c", "d", "image", [Source(tmp_path / "two.npz", features="B")]).store
    assert x.key != y.key


def test_parse_source():
    assert parse_source("a/b.mat") == Source(__import__("pathlib").Path("a/b.mat"))
    s = parse_source("/x/y:z/b.mat:TEST")
    assert str(s.path) == "/x/y:z/b.mat" and s.split == "test"
    s = parse_source("b.mat:split=train,features=I_tr_CNN,labels=trImgCat")
    assert (s.split, s.features, s.labels) == ("train", "I_tr_CNN", "trImgCat")
    assert parse_source("dir:with:colons.npy").path.name == "dir:with:colons.npy"
    with pytest.raises(FeatureImportError, match="known keys"):
        parse_source("b.mat:feature=X")


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        ("mat", {"features": "I_te_CNNN"}, r"no variable 'I_te_CNNN'; variables present: I_te_CNN, I_tr_CNN, teImgCat, trImgCat"),
        ("mat", {"features": "I_te_CNN", "labels": "trImgCat"}, "has 7 values but the features have 3 rows"),
        ("mat", {}, "name the features variable"),
        ("npz", {"features": "vec"}, r"2-D matrix \[items, dim\], got shape \(7,\)"),
        ("npz", {"features": "nan"}, r"1 row\(s\) contain NaN or inf \(first: row 2\)"),
        ("npz", {"features": "big"}, "float16 range.*--dtype float32"),
        ("npz", {"features": "X", "labels": "frac"}, "whole numbers"),
        ("npz", {"features": "X", "labels": "zero_hot"}, "one-hot row 0 has no class"),
        ("npz", {"features": "X", "ids": "dup"}, "duplicate ids"),
        ("npz", {"features": "X", "ids": "slash"}, "path separator"),
        ("npz", {"features": "X", "split": "dev"}, "unknown split 'dev'"),
        ("npz", {"features": "txt"}, "real numbers"),
        ("npy", {"labels": "y"}, "no named variables"),
        ("missing", {}, "no such file"),
        ("txt", {}, "unknown feature file type"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_store(tmp_path, make, kwargs, message):
    files = {"mat": tmp_path / "XMedia.mat", "npz": tmp_path / "b.npz", "npy": tmp_path / "c.npy",
             "missing": tmp_path / "nope.npz", "txt": tmp_path / "feat.txt"}
    _xmedia_v5(files["mat"])
    nan = TR.copy()
    nan[2, 1] = np.nan
    np.savez(files["npz"], X=TR, vec=TR[:, 0], nan=nan, big=TR * 1e6, frac=TR[:, 0], zero_hot=np.zeros((7, 3)),
             dup=np.array(["a"] * 7), slash=np.array([f"a/{i}" for i in range(7)]), txt=np.array([["a"] * 5] * 7))
    np.save(files["npy"], TR)
    files["txt"].write_text("1 2 3\n")
    root = tmp_path / "cache"
    with pytest.raises(FeatureImportError, match=message):
        import_features(root, "d", "image", [Source(files[make], **kwargs)])
    assert not root.exists()  # everything is checked before the store is created


def test_sources_must_agree_on_dimension(tmp_path):
    np.save(tmp_path / "a.npy", TR)
    np.save(tmp_path / "b.npy", TR[:, :3])
    with pytest.raises(FeatureImportError, match="disagree on the feature dimension"):
        import_features(tmp_path / "c", "d", "text", [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    assert not (tmp_path / "c").exists()


def test_mat_v5_cell_and_char_labels(tmp_path):
    path = tmp_path / "s.mat"
    words = ["cat", "dog", "cat", "bird", "dog", "cat", "bird"]
    scipy.io.savemat(path, {"X": TR, "cell": np.array(words, dtype=object),
                            "chars": np.array(["tr"] * 5 + ["te"] * 2), "ids": np.array([f"x{i}" for i in range(7)], dtype=object)})
    got = import_features(tmp_path / "c", "d", "text", [Source(path, features="X", labels="cell", ids="ids")]).store.load()
    assert list(got.labels) == words and list(got.ids) == [f"x{i}" for i in range(7)]
    got = import_features(tmp_path / "c", "d", "image", [Source(path, features="X", labels="chars")]).store.load()
    assert list(got.labels) == ["tr"] * 5 + ["te"] * 2
