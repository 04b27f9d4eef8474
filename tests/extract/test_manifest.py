"""The manifest contract: formats, normalisation, and every validation error at once."""

import json

import pandas as pd
import pytest

from mmx.cache.names import id_problem
from mmx.extract.manifest import ManifestError, read_manifest, write_manifest
from mmx.cache.modality import Modality

ROWS = [
    {"id": "t1", "modality": "text", "text": "A dog.", "label": "dog", "split": "train"},
    {"id": "i1", "modality": "image", "uri": "media/dog.jpg", "label": "dog", "split": "test"},
    {"id": "a1", "modality": "Audio", "uri": "https://example.org/a.wav", "label": "dog", "group": "g1"},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_format_reads_the_same(tmp_path, suffix):
    path = write_manifest(pd.DataFrame(ROWS), tmp_path / f"m{suffix}")
    m = read_manifest(path)
    assert list(m.frame["id"]) == ["t1", "i1", "a1"]
    assert list(m.frame["modality"]) == ["text", "image", "audio"]  # lower-cased
    assert m.frame.loc[0, "uri"] == "" and m.frame.loc[2, "split"] == ""  # absent cells are ''
    assert m.modalities == [Modality.TEXT, Modality.IMAGE, Modality.AUDIO]
    assert list(m.of("image")["id"]) == ["i1"]
    assert m.resolve("media/dog.jpg") == str(tmp_path / "media/dog.jpg")
    assert m.resolve("https://example.org/a.wav") == "https://example.org/a.wav"


def test_all_problems_reported_at_once_with_rows(tmp_path):
    rows = [
        {"id": "ok", "modality": "text", "text": "fine"},
        {"id": "ok", "modality": "text", "text": "again"},          # 2: duplicate
        {"id": "x", "modality": "smell", "uri": "a.bin"},           # 3: unknown modality
        {"id": "y", "modality": "image", "uri": "", "text": ""},    # 4: neither uri nor text
        {"id": "../etc", "modality": "image", "uri": "a.jpg"},       # 5: traversal
        {"id": "a\x01b", "modality": "image", "uri": "a.jpg"},      # 6: control character
        {"id": "z" * 300, "modality": "image", "uri": "a.jpg"},     # 7: too long
        {"id": "w", "modality": "image", "uri": "a.jpg", "split": "dev"},  # 8: unknown split
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    problems = err.value.problems
    text = "\n".join(problems)
    assert len(problems) == 7
    for row, word in [(2, "duplicate"), (3, "unknown modality"), (4, "neither uri nor text"), (5, ".."),
                      (6, "control"), (7, "longer"), (8, "unknown split")]:
        assert any(p.startswith(f"row {row}:") and word in p for p in problems), (row, word, text)


def test_missing_columns_and_empty_and_unknown_format(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("id,uri\na,b.jpg\n")
    with pytest.raises(ManifestError, match="modality"):
        read_manifest(p)
    p.write_text("id,modality\n")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(p)
    q = tmp_path / "m.xlsx"
    q.write_text("x")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(q)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "absent.csv")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "a..b", "x\n", "x" * 129])
def test_unsafe_ids(bad):
    assert id_problem(bad)


@pytest.mark.parametrize("good", ["a", "a.b", "img_0001", "猫", "x" * 128])
def test_safe_ids(good):
    assert id_problem(good) is None


def test_modality_parsing():
    assert Modality.parse(" Video ") is Modality.VIDEO
    assert Modality.parse_list("text,image") == [Modality.TEXT, Modality.IMAGE]
    with pytest.raises(ValueError, match="known: text, image, audio, video"):
        Modality.parse("smell")
    with pytest.raises(ValueError, match="twice"):
        Modality.parse_list("text,text")


# -- what a manifest means when its cells are not plain strings ---------------------------------
def test_whole_float_labels_read_as_integers(tmp_path):
    """A Parquet or JSON integer column with a gap arrives as floats: label 1.0 is class "1", as in a CSV."""
    frame = pd.DataFrame({"id": ["a", "b", "c"], "modality": "text", "text": ["x", "y", "z"],
                          "label": [1.0, float("nan"), 2.5]})
    frame.to_parquet(tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet").frame["label"].tolist() == ["1", "", "2.5"]
    (tmp_path / "m.jsonl").write_text('{"id":"a","modality":"text","text":"x","label":0.0}\n'
                                      '{"id":"b","modality":"text","text":"y","label":null}\n')
    assert read_manifest(tmp_path / "m.jsonl").frame["label"].tolist() == ["0", ""]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_list_valued_cell_is_refused_naming_row_and_column(tmp_path, suffix):
    rows = [{"id": "a", "modality": "text", "text": "fine"}, {"id": "b", "modality": "text", "text": ["nested", "list"]}]
    path = tmp_path / f"m{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pd.DataFrame({"id": ["a", "b"], "modality": "text", "text": [["fine"], ["nested", "list"]]}).to_parquet(path)
    from mmx.extract.fetch.manifest import scan_manifest

    for reader in (read_manifest, scan_manifest):
        with pytest.raises(ManifestError) as err:
            reader(path)
        assert any(p.startswith("row 2: column 'text' holds a ") and "not a string: ['nested', 'list']" in p
                   for p in err.value.problems), err.value.problems


def test_labels_in_another_unicode_normal_form_are_one_class(tmp_path):
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    pd.DataFrame({"id": ["a", "b"], "modality": "text", "text": ["x", "y"], "label": [nfd, nfc],
                  "group": [nfd, nfc]}).to_csv(tmp_path / "m.csv", index=False)
    frame = read_manifest(tmp_path / "m.csv").frame
    assert frame["label"].tolist() == [nfc, nfc] and frame["group"].tolist() == [nfc, nfc]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_byte_order_mark_is_accepted_in_csv_and_jsonl_alike(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    body = ("id,modality,text\na,text,hello\n" if suffix == ".csv"
            else '{"id": "a", "modality": "text", "text": "hello"}\n')
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    from mmx.extract.fetch.manifest import scan_manifest

    assert read_manifest(path).frame[["id", "text"]].values.tolist() == [["a", "hello"]]
    assert scan_manifest(path).rows == 1
