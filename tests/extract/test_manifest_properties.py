"""Generated hostile manifests (CSV, JSON Lines, Parquet): each either loads into valid items or is
refused with a :class:`ManifestError` whose problems are one line each, never another exception;
``read_manifest`` (mmx extract) and ``scan_manifest`` (mmx fetch) agree on which."""

import json
import os

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mmx.cache.modality import NAMES
from mmx.cache.names import id_problem
from mmx.extract.fetch.manifest import scan_manifest
from mmx.extract.manifest import COLUMNS, SPLITS, ManifestError, read_manifest

# small by default so the suite stays fast; MMX_HYPOTHESIS_EXAMPLES=2000 for a longer hunt
FAST = settings(max_examples=int(os.environ.get("MMX_HYPOTHESIS_EXAMPLES", "30")), deadline=5000,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NAMES_OF_COLUMNS = list(COLUMNS) + ["ID", " Modality ", "extra", ""]
words = st.sampled_from(["a", "b", "x1", "../up", "a/b", "é", "e\u0301", "", " ", "nan", "NULL", "1.0", "0",
                         "text", "image", "audio", "video", "smell", "train", "test", "dev", "http://h/x.jpg",
                         "m.jpg", "\x01", "\u202e", "a,b", 'say "hi"', "two\nlines", "\ufeff", "z" * 130])
cells = st.one_of(words, st.text(max_size=12), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                  st.none(), st.booleans(), st.lists(words, max_size=3))
tables = st.tuples(st.lists(st.sampled_from(NAMES_OF_COLUMNS), min_size=1, max_size=6, unique=True),
                   st.integers(0, 6)).flatmap(
    lambda spec: st.tuples(st.just(spec[0]), st.lists(st.lists(cells, min_size=len(spec[0]), max_size=len(spec[0])),
                                                      min_size=spec[1], max_size=spec[1])))
# CSV-looking text: the characters that steer a CSV parser
csv_text = st.lists(st.sampled_from(list(',"\n\r\t ab1é') + ["id,modality,text\n", "id,modality,uri\n", "\ufeff",
                                                            "text", "image", "\x00", '""', "\\"]),
                    max_size=60).map("".join)


def check(path) -> None:
    """Either both readers refuse with one-line problems, or both load the same valid items."""
    outcomes = []
    for reader in (read_manifest, scan_manifest):
        try:
            outcomes.append(reader(path))
        except ManifestError as exc:
            assert str(path) in str(exc)
            assert exc.problems and all("\n" not in p for p in exc.problems), exc.problems
            outcomes.append(None)
    whole, stream = outcomes
    assert (whole is None) == (stream is None), (whole, stream)
    if whole is None:
        return
    frame = whole.frame
    assert stream.rows == len(frame) > 0
    streamed = pd.concat([chunk for _, chunk in stream.chunks()])
    assert streamed[list(COLUMNS)].values.tolist() == frame[list(COLUMNS)].values.tolist()
    for rec in frame.itertuples(index=False):
        assert all(isinstance(getattr(rec, c), str) for c in COLUMNS)
        assert id_problem(rec.id) is None and rec.modality in NAMES
        assert rec.uri or rec.text
        assert rec.split in SPLITS + ("",)
    assert frame["id"].is_unique


@FAST
@given(text=csv_text)
def test_csv_text(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    check(path)


@FAST
@given(table=tables)
def test_csv_tables(tmp_path, table):
    columns, rows = table
    path = tmp_path / "m.csv"
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    check(path)


@FAST
@given(table=tables, bom=st.booleans(), garbage=st.one_of(st.none(), st.binary(max_size=20)))
def test_jsonl(tmp_path, table, bom, garbage):
    columns, rows = table
    lines = [json.dumps(dict(zip(columns, r)), allow_nan=True) for r in rows]
    data = ("\n".join(lines) + "\n").encode()
    if garbage is not None:
        data += garbage
    path = tmp_path / "m.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    check(path)


@FAST
@given(table=tables)
def test_parquet(tmp_path, table):
    columns, rows = table
    path = tmp_path / "m.parquet"
    try:
        pd.DataFrame(rows, columns=columns).to_parquet(path)
    except Exception:  # a column pyarrow cannot type (mixed kinds): no such file exists
        assume(False)
    check(path)


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet"])
def test_an_empty_or_garbage_file(tmp_path, name):
    for data in (b"", b"\x00\x01\x02garbage", b"\xff\xfe"):
        (tmp_path / name).write_bytes(data)
        check(tmp_path / name)
