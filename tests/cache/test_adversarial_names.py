"""Names a user gives (dataset, backbone, run, split) never lead outside the folder they are meant for."""

import pandas as pd
import pytest
from click.testing import CliRunner

from mmx.cache.names import check_name, name_problem
from mmx.cache.store import StoreSpec, ids_digest, store_path
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.pipeline.cli import main

ESCAPES = ["..", "../x", "a/../../b", ".", "x\\y", "a\x00b", ""]


def test_the_rule_refuses_every_escape_and_keeps_plain_names():
    for bad in ESCAPES:
        assert name_problem(bad), bad
        with pytest.raises(ValueError, match="plain name"):
            check_name(bad, "--dataset")
    for good in ("xmedianet", "my-data_v2", "a.b", "éclair"):
        assert check_name(good, "--dataset") == good


@pytest.mark.parametrize("bad", ["..", "../escape"])
def test_store_path_stays_below_the_root(tmp_path, bad):
    spec = StoreSpec(bad, "text", {"name": "bow", "dim": 2}, {}, ids_digest(["a"]))
    with pytest.raises(ValueError, match="dataset name"):
        store_path(tmp_path, spec)
    spec = StoreSpec("d", "text", {"name": bad, "dim": 2}, {}, ids_digest(["a"]))
    with pytest.raises(ValueError, match="backbone name"):
        store_path(tmp_path, spec)


def _refused(result, *words):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and all(w in result.output for w in words), result.output


def test_extract_refuses_dataset_dotdot(tmp_path):
    """mmx extract --dataset .. must not write to CACHE/../text/..."""
    man = tmp_path / "work" / "m.csv"
    man.parent.mkdir()
    pd.DataFrame([dict(id=f"t{i}", modality="text", text=f"word{i} common", label="a", split="train")
                  for i in range(4)]).to_csv(man, index=False)
    cache = tmp_path / "work" / "cache"
    for bad in ("..", "../../elsewhere"):
        r = CliRunner().invoke(main, ["extract", str(man), "--modality", "text", "--backbone", "bow", "--cache", str(cache),
                                      "--dataset", bad, "--workers", "0", "--no-progress"])
        _refused(r, "--dataset", repr(bad), "plain name")
    assert not (tmp_path / "work" / "text").exists() and not (tmp_path / "elsewhere").exists()
    assert not cache.exists() or not any(cache.rglob("*.zarr"))


def test_cache_commands_refuse_dataset_dotdot(tmp_path):
    cache = tmp_path / "c"
    r = CliRunner().invoke(main, ["cache", "synthesize", "--cache", str(cache), "--dataset", "..", "--items", "text=8,image=8"])
    _refused(r, "dataset name", "plain name")
    assert not (tmp_path / "text").exists()
    r = CliRunner().invoke(main, ["cache", "ls", "--cache", str(cache), "--dataset", "../.."])
    _refused(r, "dataset name")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    synthesize(root, SyntheticConfig(classes=4, items={"text": 24, "image": 24}, dims={"text": 8, "image": 8}, tokens=None))
    return root


@pytest.mark.parametrize("args, word", [
    (["--dataset", ".."], "dataset"),
    (["--name", "../outside"], "name"),
    (["--set", "holdout=../outside"], "holdout"),
])
def test_train_refuses_names_that_escape(cache, tmp_path, args, word):
    out = tmp_path / "runs"
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--cache", str(cache), "--modalities", "text,image", "--epochs", "1",
                                  "--batch-size", "8", "--out", str(out), "--quiet", *args])
    _refused(r, word, "plain name")
    assert not (tmp_path / "outside").exists()
