"""Every failure of a command ends in one line: an expected one names the file and the fix (exit
1); an unexpected one names the file that keeps its traceback (exit 3)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmx.pipeline.cli import main


@pytest.fixture
def failing_train(monkeypatch):
    import mmx.train.loop as loop

    def install(exc: BaseException):
        def training(*args, **kwargs):
            raise exc

        monkeypatch.setattr(loop, "train", training)

    return install


def _lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def test_an_unexpected_exception_is_one_line_and_its_traceback_is_kept(failing_train, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    failing_train(RuntimeError("boom\nwith a second line"))
    r = CliRunner().invoke(main, ["train", "--dataset", "tiny", "--cache", str(tmp_path)])
    assert r.exit_code == 3, r.output
    lines = _lines(r)
    assert len(lines) == 1 and "internal error (RuntimeError: boom)" in lines[0], r.output
    assert "Traceback" not in r.output
    saved = sorted(tmp_path.glob("mmx-error-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in lines[0]
    text = saved[0].read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text


def test_mmx_debug_lets_the_exception_through(failing_train, tmp_path, monkeypatch):
    monkeypatch.setenv("MMX_DEBUG", "1")
    failing_train(RuntimeError("boom"))
    r = CliRunner().invoke(main, ["train", "--dataset", "tiny", "--cache", str(tmp_path)])
    assert isinstance(r.exception, RuntimeError)


@pytest.mark.parametrize("code,advice", [(errno.EACCES, "permissions"), (errno.EROFS, "read-only"),
                                         (errno.ENAMETOOLONG, "shorter"), (errno.EISDIR, "give a file")])
def test_a_refused_file_operation_names_the_file_and_the_fix(failing_train, tmp_path, code, advice):
    failing_train(OSError(code, "refused", str(tmp_path / "runs" / "x")))
    r = CliRunner().invoke(main, ["train", "--dataset", "tiny", "--cache", str(tmp_path)])
    assert r.exit_code == 1, r.output
    lines = _lines(r)
    assert len(lines) == 1 and str(tmp_path / "runs" / "x") in lines[0] and advice in lines[0], r.output


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path):
    """100 emoji pass the 128-character rule but are 400 bytes, past a file name's 255."""
    cache = tmp_path / "cache"
    r = CliRunner().invoke(main, ["cache", "synthesize", "--cache", str(cache), "--dataset", "tiny", "--classes", "2",
                                  "--items", "text=12,image=12", "--tokens", "none", "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", "--dataset", "tiny", "--cache", str(cache), "--epochs", "1", "--quiet",
                                  "--out", str(tmp_path / "runs"), "--name", "\U0001F600" * 100])
    assert r.exit_code == 1, r.output + repr(r.exception)
    assert "Traceback" not in r.output and len(_lines(r)) == 1, r.output
    assert "too long" in r.output.lower() or "name" in r.output.lower()
    assert not Path(tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("entry", ["modality", "backbone"])
def test_a_missing_entry_names_itself_and_the_store(tmp_path, entry):
    """A store whose metadata lacks an entry: the entry and the store, not a bare ``Error: modality``."""
    import json

    from mmx.cache.store import list_stores
    from mmx.cache.synthesize import SyntheticConfig, synthesize

    synthesize(tmp_path / "cache", SyntheticConfig(classes=2, items={"text": 8}, dims={"text": 4}, tokens=None))
    (store,) = list_stores(tmp_path / "cache")
    meta = store.path / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["mmx"][entry]
    meta.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["cache", "ls", "--cache", str(tmp_path / "cache")])
    lines = _lines(r)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith(f"Error: {store.path}: no '{entry}' entry where mmx expected one"), lines[0]


def test_a_key_error_written_as_a_sentence_is_kept():
    from mmx.pipeline.errors import user_error

    assert user_error(KeyError("unknown backbone 'x'; known: a, b")).message == "unknown backbone 'x'; known: a, b"
    assert "no 'model' entry" in user_error(KeyError("model")).message


def test_a_read_only_cache_is_one_line_naming_it(tmp_path, monkeypatch):
    """Root ignores file modes, so the read-only file system is stood in for where the store is created."""
    import pandas as pd

    import mmx.cache.store.feature_store as feature_store
    from make_media import random_jpegs  # tests/make_media.py

    random_jpegs(tmp_path, 1)
    pd.DataFrame([dict(id="a", modality="image", uri="im000.jpg")]).to_csv(tmp_path / "m.csv", index=False)

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path.parent))

    monkeypatch.setattr(feature_store, "build_store", read_only)
    r = CliRunner().invoke(main, ["extract", str(tmp_path / "m.csv"), "--modality", "image", "--cache",
                                  str(tmp_path / "cache"), "--dataset", "d", "--workers", "0", "--no-progress"])
    lines = _lines(r)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert str(tmp_path / "cache") in lines[0] and "read-only" in lines[0] and "--cache" in lines[0], lines[0]
