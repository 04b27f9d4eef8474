"""``mmx cache ...`` through click's CliRunner, and the default cache root."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cache import list_stores
from mmx.pipeline.cli import main
from mmx.cache.paths import default_cache_root

SMALL = ["--items", "text=40,image=30", "--dims", "text=8,image=6", "--classes", "5"]


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "cache"
    r = run("cache", "synthesize", "--cache", str(root), *SMALL, "--tokens", "1-3", "--seed", "3")
    assert r.exit_code == 0, r.output
    return root


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MMX_CACHE", raising=False)
    assert default_cache_root() == Path(".mmx-cache")
    monkeypatch.setenv("MMX_CACHE", str(tmp_path / "env"))
    assert default_cache_root() == tmp_path / "env"
    assert default_cache_root(str(tmp_path / "opt")) == tmp_path / "opt"
    monkeypatch.setenv("MMX_CACHE", "  ")
    assert default_cache_root(None) == Path(".mmx-cache")


def test_synthesize_and_ls(cache):
    stores = list_stores(cache)
    assert sorted((s.modality.value, s.n_items, s.dim) for s in stores) == [("image", 30, 6), ("text", 40, 8)]
    assert all(s.has_tokens for s in stores)
    r = run("cache", "ls", "--cache", str(cache))
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["dataset", "modality", "backbone"]
    text_row = next(ln for ln in lines if " text " in ln)
    assert text_row.split()[:5] == ["synthetic", "text", "synthetic", "40/0/0", "1/1"]
    key = next(s for s in stores if s.modality.value == "text").key[:10]
    assert text_row.split()[-1] == key
    assert "no feature stores" in run("cache", "ls", "--cache", str(cache), "--dataset", "other").output


def test_synthesize_options_reach_the_config(tmp_path):
    root = tmp_path / "c"
    r = run("cache", "synthesize", "--cache", str(root), *SMALL, "--tokens", "none", "--alignment", "instance",
            "--missing", "0.5", "--noise", "0.2", "--dataset", "inst")
    assert r.exit_code == 0, r.output
    stores = {s.modality.value: s for s in list_stores(root, "inst")}
    pre = stores["text"].meta["preprocessing"]
    assert (pre["alignment"], pre["missing"], pre["noise"], pre["tokens"], pre["classes"]) == ("instance", 0.5, 0.2, None, 5)
    assert not stores["text"].has_tokens and stores["image"].n_items < 30


def test_default_root_from_environment(tmp_path):
    r = run("cache", "synthesize", *SMALL, "--tokens", "none", env={"MMX_CACHE": str(tmp_path / "env")})
    assert r.exit_code == 0, r.output
    assert len(list_stores(tmp_path / "env")) == 2


@pytest.mark.parametrize("args, message", [
    (["--items", "text:40"], "expected MODALITY=NUMBER"),
    (["--items", "text=many"], "not a whole number"),
    (["--tokens", "a-b"], "expected MIN-MAX"),
    (["--items", "smell=4", "--dims", "smell=3"], "unknown modality 'smell'"),
    (["--missing", "2"], "missing must be in"),
])
def test_synthesize_bad_options(tmp_path, args, message):
    r = CliRunner().invoke(main, ["cache", "synthesize", "--cache", str(tmp_path), *args])
    assert r.exit_code != 0 and message in r.output
    assert "Traceback" not in r.output


def test_info_by_path_and_by_name(cache):
    store = next(s for s in list_stores(cache) if s.modality.value == "image")
    r = run("cache", "info", str(store.path), "--json")
    assert r.exit_code == 0
    info = json.loads(r.output)
    assert (info["items"], info["ok"], info["backbone"]["dim"], info["incomplete_shards"]) == (30, 30, 6, [])
    assert info["splits"] == {"test": 5, "train": 25}
    r = run("cache", "info", "synthetic/image", "--cache", str(cache), "--json")
    assert json.loads(r.output)["key"] == store.key
    r = CliRunner().invoke(main, ["cache", "info", "synthetic/video", "--cache", str(cache)])
    assert r.exit_code == 1 and "no video features" in r.output


def test_verify_reports_incomplete_and_corrupt(cache):
    store = next(s for s in list_stores(cache) if s.modality.value == "text")
    r = run("cache", "verify", str(store.path))
    assert r.exit_code == 0 and r.output.startswith("ok:")
    (store.path / "_complete" / "000000.json").unlink()
    r = CliRunner().invoke(main, ["cache", "verify", str(store.path)])
    assert r.exit_code == 2 and "incomplete: 1/1 shard(s) not complete (40 item(s)): 0;" in r.output
    assert "ok:" not in r.output
    assert json.loads(run("cache", "info", str(store.path), "--json").output)["incomplete_shards"] == [0]
    r = CliRunner().invoke(main, ["cache", "verify", str(store.path), "--allow-incomplete"])
    assert r.exit_code == 0 and "incomplete: 1/1" in r.output and "ok:" in r.output
    # tampering: a complete shard whose token array is gone
    store.write_shard(0, np.zeros((40, 8)), tokens=[np.zeros((1, 8))] * 40)
    import shutil

    shutil.rmtree(store.path / "tokens" / "000000")
    r = CliRunner().invoke(main, ["cache", "verify", str(store.path)])
    assert r.exit_code == 1 and f"problem: shard 0: token array {store.path}/tokens/000000 is missing" in r.output


def test_import_through_the_cli(tmp_path):
    feats = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", tr=feats[:4], te=feats[4:], ytr=np.array([1, 2, 1, 2]), yte=np.array([2, 1]))
    root = tmp_path / "cache"
    r = run("cache", "import", "--cache", str(root), "--dataset", "mine", "--modality", "audio",
            "--source", f"{tmp_path / 'f.npz'}:split=train,features=tr,labels=ytr",
            "--source", f"{tmp_path / 'f.npz'}:split=test,features=te,labels=yte", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    assert "imported: 6 audio items x 4-d (test 2, train 4)" in r.output
    (store,) = list_stores(root)
    got = store.load(split="test")
    np.testing.assert_array_equal(got.pooled.numpy(), feats[4:])
    assert list(got.labels) == ["2", "1"] and store.backbone["name"] == "imported:f"
    r = run("cache", "import", "--cache", str(root), "--dataset", "mine", "--modality", "audio",
            "--source", f"{tmp_path / 'f.npz'}:split=train,features=tr,labels=ytr",
            "--source", f"{tmp_path / 'f.npz'}:split=test,features=te,labels=yte", "--dtype", "float32")
    assert "already present" in r.output and len(list_stores(root)) == 1


def test_import_errors_are_one_clear_line(tmp_path):
    np.savez(tmp_path / "f.npz", X=np.zeros((3, 2)), Y=np.zeros(3))
    r = CliRunner().invoke(main, ["cache", "import", "--cache", str(tmp_path / "c"), "--dataset", "d", "--modality",
                                  "text", "--source", str(tmp_path / "f.npz"), "--features-var", "feats"])
    assert r.exit_code == 1 and "no variable 'feats'; variables present: X, Y" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "c").exists()
    r = CliRunner().invoke(main, ["cache", "import", "--dataset", "d", "--modality", "smell", "--source", "x.npy"])
    assert r.exit_code == 1 and "unknown modality 'smell'" in r.output
    r = CliRunner().invoke(main, ["cache", "import", "--dataset", "d", "--modality", "text"])
    assert r.exit_code == 2 and "--source" in r.output
