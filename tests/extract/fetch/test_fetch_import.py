"""mmx manifest-from-lists: XMediaNet-style URL lists with class labels into a manifest."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mmx.extract.fetch.lists import manifest_from_lists
from mmx.pipeline.cli import main
from mmx.extract.manifest import ManifestError, read_manifest


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_lists_and_texts_become_one_manifest(tmp_path):
    images = _write(tmp_path / "images.txt", "# id class url\n1 dog http://h/1.jpg\n\n2 cat http://h/2.jpg\n")
    videos = _write(tmp_path / "videos.txt", "1\tdog\thttp://h/1.mp4\n")
    texts = _write(tmp_path / "texts.txt", "1 dog A dog runs after a ball.\n2 cat The cat sleeps.\n")
    frame = manifest_from_lists({"image": images, "video": videos}, texts)
    assert list(frame["id"]) == ["image_1", "image_2", "video_1", "text_1", "text_2"]
    assert list(frame["label"]) == ["dog", "cat", "dog", "dog", "cat"]
    assert frame.set_index("id").loc["video_1", "uri"] == "http://h/1.mp4"
    assert frame.set_index("id").loc["text_1", "text"] == "A dog runs after a ball."  # the rest of the line


def test_column_order_and_separator_are_configurable(tmp_path):
    audio = _write(tmp_path / "audio.csv", "http://h/a.wav,bird,7,train\nhttp://h/b.wav,car,8,test\n")
    frame = manifest_from_lists({"audio": audio}, columns="uri,label,id,split", sep="comma", id_prefix=False)
    assert list(frame["id"]) == ["7", "8"] and list(frame["split"]) == ["train", "test"]
    no_ids = _write(tmp_path / "noid.txt", "dog http://h/1.jpg\n- http://h/2.jpg\n")
    frame = manifest_from_lists({"image": no_ids}, columns="label,uri")
    assert list(frame["id"]) == ["image_1", "image_2"]  # line numbers


def test_every_bad_line_is_reported_at_once(tmp_path):
    images = _write(tmp_path / "images.txt", "1 dog http://h/1.jpg\n2 cat\n1 dog http://h/3.jpg\n")
    with pytest.raises(ManifestError) as err:
        manifest_from_lists({"image": images, "audio": tmp_path / "absent.txt"})
    problems = "\n".join(err.value.problems)
    assert "images.txt:2: expected 3 fields" in problems
    assert "duplicate id 'image_1'" in problems
    assert "absent.txt: list file not found" in problems


@pytest.mark.parametrize("kwargs, message", [
    (dict(columns="id,label"), "name no 'uri' field"),
    (dict(columns="id,colour,uri"), "unknown column name"),
    (dict(sep="tabs"), "unknown separator"),
])
def test_bad_options_are_clear_errors(tmp_path, kwargs, message):
    images = _write(tmp_path / "images.txt", "1 dog http://h/1.jpg\n")
    with pytest.raises(ValueError, match=message):
        manifest_from_lists({"image": images}, **kwargs)


def test_cli_writes_a_manifest_that_reads_back(tmp_path):
    images = _write(tmp_path / "images.txt", "1 dog http://h/1.jpg\n")
    texts = _write(tmp_path / "texts.txt", "1 dog A dog.\n")
    out = tmp_path / "m.jsonl"
    result = CliRunner().invoke(main, ["manifest-from-lists", "--list", f"image={images}", "--texts", str(texts),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 items" in result.output
    assert sorted(read_manifest(out).frame["id"]) == ["image_1", "text_1"]


@pytest.mark.parametrize("spec, message", [("image", "use MODALITY=FILE"), ("smell=x.txt", "unknown modality")])
def test_cli_rejects_bad_list_specs(tmp_path, spec, message):
    _write(tmp_path / "x.txt", "1 dog http://h/1.jpg\n")
    result = CliRunner().invoke(main, ["manifest-from-lists", "--list", spec, "-o", str(tmp_path / "m.csv")],
                                catch_exceptions=False)
    assert result.exit_code != 0 and message in result.output
