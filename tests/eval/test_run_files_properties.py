"""Generated hostile run-folder files: whatever bytes, JSON or YAML sit in config.yaml,
normalizer.json, metrics.jsonl, a checkpoint or an embeddings file, loading it ends in a clean
load or in one ``ValueError`` line naming the file; never another exception, never a hang."""

import json
import math
import os

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmx.cache import files
from mmx.eval import runs
from mmx.eval.evaluate import read_config
from mmx.train import checkpoint, config, normalize

# small by default so the suite stays fast; MMX_HYPOTHESIS_EXAMPLES=2000 for a longer hunt
FAST = settings(max_examples=int(os.environ.get("MMX_HYPOTHESIS_EXAMPLES", "40")), deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.text(max_size=20),
                    st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(st.text(max_size=10), inner, max_size=5)),
                           max_leaves=30)
# YAML-looking text: the characters that steer a YAML parser, so anchors, aliases, tags, flow
# collections and block structure all turn up
yaml_text = st.lists(st.sampled_from(list("&*!:-[]{},|>#'\"%@` \n\tab01.e") + ["!!python/object:os.system", "<<: ",
                                                                                "&x ", "*x", "---\n", "!!binary "]),
                     max_size=80).map("".join)


def one_line_naming(exc: BaseException, path) -> None:
    message = str(exc)
    assert isinstance(exc, ValueError), f"{type(exc).__name__}: {message}"
    assert "\n" not in message and str(path) in message, message


def load_or_refuse(load, path):
    try:
        return load(path)
    except ValueError as exc:
        one_line_naming(exc, path)
        return None


@pytest.fixture
def folder(tmp_path):
    return tmp_path


@FAST
@given(data=st.one_of(st.binary(max_size=300), yaml_text.map(str.encode),
                      json_values.map(lambda v: yaml.safe_dump(v).encode()),
                      st.dictionaries(st.sampled_from(list(config.FIELDS) + ["bogus"]), json_values, max_size=6)
                      .map(lambda d: yaml.safe_dump(d).encode())))
def test_config_yaml(folder, data):
    path = folder / "config.yaml"
    path.write_bytes(data)
    cfg = load_or_refuse(config.load, path)
    if cfg is not None:  # a clean load is a config of the right types
        for name, field in config.FIELDS.items():
            default = getattr(config.TrainConfig(), name)
            assert isinstance(getattr(cfg, name), type(default) if not isinstance(default, float) else (int, float))
    got = load_or_refuse(read_config, folder)
    assert got is None or isinstance(got, dict)


def normaliser_objects():
    vec = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=4)
    stats = st.dictionaries(st.sampled_from(["text", "image"]),
                            st.dictionaries(st.sampled_from(["pooled", "tokens", "other"]),
                                            st.fixed_dictionaries({"mean": vec, "std": vec}), max_size=2), max_size=2)
    return st.one_of(json_values, st.fixed_dictionaries({"format": st.sampled_from([1, 2]),
                                                         "mode": st.sampled_from(["standardize", "l2", "none", "x"]),
                                                         "stats": stats}))


@FAST
@given(data=st.one_of(st.binary(max_size=300),
                      normaliser_objects().map(lambda o: json.dumps(o).encode())))
def test_normalizer_json(folder, data):
    (folder / "config.yaml").write_text("strategy: joint\n")
    (folder / normalize.FILE).write_bytes(data)
    try:
        norm = normalize.load(folder)
    except ValueError as exc:
        one_line_naming(exc, folder / normalize.FILE)
        return
    for kinds in norm.stats.values():  # a clean load has only finite statistics and positive stds
        for s in kinds.values():
            assert np.isfinite(s["mean"]).all() and np.isfinite(s["std"]).all() and (s["std"] > 0).all()
            assert len(s["mean"]) == len(s["std"]) > 0


@FAST
@given(records=st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=6),
       junk=st.one_of(st.binary(max_size=60), st.just(b"")), cut=st.integers(0, 200))
def test_metrics_jsonl_torn_tail(folder, records, junk, cut):
    """Whole records then a torn tail (a cut-off record, or any bytes without a newline): the whole
    records come back; anything else wrong is a line naming the file and line."""
    path = folder / "metrics.jsonl"
    whole = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    torn = (json.dumps({"epoch": 9, "x": "y" * 50}).encode()[:cut] if cut else junk).replace(b"\n", b"")
    path.write_bytes(whole + torn)
    try:
        got = runs.read_jsonl(path)
    except ValueError as exc:
        one_line_naming(exc, path)
        return
    assert got[: len(records)] == [json.loads(json.dumps(r)) for r in records]
    assert len(got) <= len(records) + 1


@FAST
@given(data=st.binary(max_size=400))
def test_metrics_jsonl_bytes(folder, data):
    load_or_refuse(runs.read_jsonl, folder / "metrics.jsonl") if (folder / "metrics.jsonl").write_bytes(data) else None


@FAST
@given(data=st.one_of(st.binary(max_size=400), st.builds(lambda h, tail: len(h).to_bytes(8, "little") + h + tail,
                                                          json_values.map(lambda v: json.dumps(v).encode()),
                                                          st.binary(max_size=40))))
def test_checkpoint_bytes(folder, data):
    path = folder / checkpoint.LAST
    path.write_bytes(data)
    load_or_refuse(checkpoint.load, path)


arrays = st.one_of(
    st.integers(0, 5).flatmap(lambda n: st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True),
                                                  min_size=n * 3, max_size=n * 3)
                              .map(lambda v: np.asarray(v, np.float32).reshape(n, 3) if n else np.zeros((0, 3), np.float32))),
    st.lists(st.text(max_size=4), max_size=5).map(lambda v: np.asarray(v, dtype=str)),
    st.lists(st.integers(-5, 5), max_size=5).map(np.asarray),
)


@FAST
@given(contents=st.dictionaries(st.sampled_from(["emb", "label", "group", "id", "extra"]), arrays, max_size=5),
       flip=st.one_of(st.none(), st.integers(0, 10**6)))
def test_embeddings_npz(folder, contents, flip):
    """Random arrays (and random damage to the file): refused in one line, or every emb finite with one label per row."""
    d = folder / "embeddings" / "test"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "text.npz"
    np.savez(path, **contents)
    if flip is not None:
        raw = bytearray(path.read_bytes())
        raw[flip % len(raw)] ^= 0xFF
        path.write_bytes(bytes(raw))
    try:
        got = runs.load_embeddings(folder, "test")["text"]
    except ValueError as exc:
        one_line_naming(exc, path)
        return
    assert got["emb"].ndim == 2 and np.isfinite(got["emb"]).all()
    assert all(len(got[k]) == len(got["emb"]) for k in ("label", "group", "id"))


@settings(max_examples=15, deadline=5000)
@given(special=st.sampled_from(["fifo", "/dev/zero", "/dev/null", "folder", "dangling"]),
       name=st.sampled_from(["config.yaml", normalize.FILE, "metrics.jsonl", checkpoint.LAST]))
def test_non_regular_files(tmp_path_factory, special, name):
    folder = tmp_path_factory.mktemp("special")
    (folder / "config.yaml").write_text("strategy: joint\n")
    path = folder / name
    path.unlink(missing_ok=True)
    if special == "fifo":
        os.mkfifo(path)
    elif special == "folder":
        path.mkdir()
    elif special == "dangling":
        path.symlink_to(folder / "nowhere")
    else:
        path.symlink_to(special)
    load = {"config.yaml": config.load, normalize.FILE: lambda p: normalize.load(p.parent),
            "metrics.jsonl": runs.read_jsonl, checkpoint.LAST: checkpoint.load}[name]
    try:
        load(path)
    except FileNotFoundError as exc:  # the CLI says it in one line, naming the file
        assert special == "dangling" and str(path) in str(exc)
    except ValueError as exc:
        one_line_naming(exc, path)
    else:
        assert special == "dangling" and name == "metrics.jsonl"  # absent: no records yet


def test_strategies_cover_non_finite_floats():
    """The generators above reach NaN and inf (else the finite checks would go untested)."""
    assert math.isnan(float(np.float32("nan")))
