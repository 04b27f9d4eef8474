"""mmx fetch walks its manifest in chunks: same validation as read_manifest, same results as one chunk."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner
from fetch_server import LoopbackServer, serve, status

import mmx.extract.fetch.manifest as fetch_manifest_module
from mmx.extract.fetch import FetchConfig, fetch_manifest
from mmx.extract.fetch.manifest import scan_manifest
from mmx.extract.fetch.status import JournalIndex, read_status_table
from mmx.pipeline.cli import main
from mmx.extract.manifest import ManifestError, read_manifest, write_manifest


def _problems(call) -> list[str]:
    with pytest.raises(ManifestError) as err:
        call()
    return err.value.problems


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_chunked_validation_reports_what_read_manifest_reports(tmp_path, suffix):
    ids = [f"a{i % 7}" for i in range(20)] + ["b/../x", "ok"]
    frame = pd.DataFrame({"id": ids, "modality": ["image"] * 20 + ["smell", "text"],
                          "uri": ["u"] * 21 + [""], "text": [""] * 22})
    path = write_manifest(frame, tmp_path / f"m{suffix}")
    expected = _problems(lambda: read_manifest(path))
    assert _problems(lambda: scan_manifest(path, chunk_rows=4)) == expected
    assert any("duplicate id 'a0' (first at row 1)" in p for p in expected)  # across chunks of 4


@pytest.mark.parametrize("text, message", [
    ("id,modality,uri\n", "the manifest has no rows"),
    ("name,modality,uri\nx,image,u\n", "missing required column(s): id"),
    ("id,modality\nx,image\n", "needs 'uri' or 'text'"),
])
def test_chunked_validation_refuses_empty_or_incomplete_tables(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    assert message in _problems(lambda: scan_manifest(path, chunk_rows=2))[0]


def test_jsonl_columns_that_appear_late_are_kept(tmp_path):
    lines = [{"id": f"t{i}", "modality": "text", "text": "hi"} for i in range(5)]
    lines += [{"id": "u", "modality": "image", "uri": "x.jpg", "source": "flickr"}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stream = scan_manifest(path, chunk_rows=2)
    assert stream.rows == 6 and stream.columns[-1] == "source"
    frame = pd.concat([chunk for _, chunk in stream.chunks()])
    assert list(frame.index) == list(range(6))
    assert frame.loc[5, "uri"] == "x.jpg" and frame.loc[5, "source"] == "flickr" and frame.loc[0, "uri"] == ""


def test_journal_index_keeps_the_last_record_of_each_id_and_skips_torn_lines(tmp_path):
    journal = tmp_path / "journal.jsonl"
    records = [{"id": "a", "status": "timeout"}, {"id": "b", "status": "ok"}, {"id": "a", "status": "ok"}]
    journal.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"id":"c","stat')
    index = JournalIndex(journal)
    assert len(index) == 2
    assert [r and r["status"] for r in index.records(["c", "a", "b", "zzz"])] == [None, "ok", "ok", None]
    assert JournalIndex(tmp_path / "absent.jsonl").records(["a"]) == [None]


@pytest.fixture
def jpeg(shared_media) -> bytes:
    return (shared_media / "languagebind" / "image" / "0.jpg").read_bytes()


def test_fetch_across_many_chunks_matches_the_manifest_order(jpeg, tmp_path, monkeypatch):
    """Chunks of 3 rows: the plan, the producer and the summaries must line up across chunk edges."""
    monkeypatch.setattr(fetch_manifest_module, "CHUNK_ROWS", 3)
    n = 17
    ids = [f"i{k}" for k in range(n)]
    routes = {f"/{i}.jpg": (serve(jpeg, "image/jpeg") if k % 4 else status(404)) for k, i in enumerate(ids)}
    with LoopbackServer(routes) as srv:
        frame = pd.DataFrame({"id": ids, "modality": "image", "uri": [srv.url(f"/{i}.jpg") for i in ids],
                              "label": [f"c{k % 3}" for k in range(n)], "extra": [f"x{k}" for k in range(n)]})
        frame.loc[5, ["modality", "uri", "text"]] = ["text", "", "an inline text"]
        manifest = write_manifest(frame.fillna(""), tmp_path / "m.csv")
        cfg = dict(workers=3, per_host=3, retries=0, progress=False)
        first = fetch_manifest(manifest, tmp_path / "ds", FetchConfig(**cfg, modalities=("image",)))
        assert first.items == n - 1 and first.fetched == n - 1
        second = fetch_manifest(manifest, tmp_path / "ds", FetchConfig(**cfg))  # now the text item too
        hits = dict(srv.hits)
    assert second.items == n and second.fetched == 1 and second.skipped == n - 1
    assert all(v == 1 for v in hits.values()) and len(hits) == n - 1  # nothing downloaded twice
    table = read_status_table(tmp_path / "ds" / "fetch" / "status.csv")
    assert list(table["id"]) == ids
    expected = ["not_found" if k % 4 == 0 and k != 5 else "ok" for k in range(n)]
    assert list(table["status"]) == expected
    fetched = read_manifest(tmp_path / "ds" / "manifest.fetched.csv").frame
    assert list(fetched["id"]) == [i for i, s in zip(ids, expected) if s == "ok"]
    assert list(fetched["extra"]) == [f"x{k}" for k, s in enumerate(expected) if s == "ok"]
    assert fetched.set_index("id").loc["i1", "uri"] == "media/image/i1.jpg"
    assert fetched.set_index("id").loc["i5", "text"] == "an inline text"
    report = json.loads((tmp_path / "ds" / "fetch" / "report.json").read_text())
    assert report["items"] == n and report["ok"] == expected.count("ok")
    assert report["modalities"]["image"]["failures"] == {"not_found": expected.count("not_found")}
    assert second.totals == {"ok": expected.count("ok"), "not_found": expected.count("not_found")}


def test_cli_progress_bar_shows_items_per_second_and_success_rate(jpeg, tmp_path):
    with LoopbackServer({"/a.jpg": serve(jpeg, "image/jpeg")}) as srv:
        frame = pd.DataFrame({"id": ["a", "b"], "modality": "image", "uri": [srv.url("/a.jpg"), srv.url("/b.jpg")]})
        manifest = write_manifest(frame, tmp_path / "m.csv")
        result = CliRunner().invoke(main, ["fetch", str(manifest), "--out", str(tmp_path / "ds"), "--progress",
                                           "--retries", "0"])
    assert result.exit_code == 0, result.output
    bar = result.stderr
    assert "2/2" in bar and re.search(r"\d(item/s|s/item)", bar), bar  # tqdm's rate, either way round
    assert "ok 50.0%" in bar and "MiB/s" in bar, bar


def test_a_manifest_changed_between_walks_is_refused(tmp_path):
    path = write_manifest(pd.DataFrame({"id": ["a", "b"], "modality": "text", "text": ["x", "y"]}), tmp_path / "m.csv")
    stream = scan_manifest(path)
    write_manifest(pd.DataFrame({"id": ["b"], "modality": "text", "text": ["y"]}), path)
    assert "changed while" in _problems(lambda: list(stream.chunks()))[0]


def _case_manifest(tmp_path):
    """Two images whose ids differ only in case (files beside the manifest), and one other."""
    from PIL import Image

    rows = []
    for k, item_id in enumerate(["Clip1", "x", "clip1"]):
        path = tmp_path / f"src{k}.png"
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(path)
        rows.append({"id": item_id, "modality": "image", "uri": str(path)})
    return write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")


def test_ids_differing_only_in_case_are_listed_not_refused_by_the_scan(tmp_path):
    stream = scan_manifest(_case_manifest(tmp_path), chunk_rows=2)  # the two ids in different chunks
    assert stream.case_collisions == ["row 3: id 'clip1' and id 'Clip1' (row 1) would share one media file "
                                      "('clip1' and 'Clip1' differ only in case); rename one of them"]


def test_only_media_files_of_one_modality_collide_by_case(tmp_path):
    """Files go to ``media/<modality>/`` and inline text makes none: ``Clip1`` (image), ``clip1``
    (inline text) and ``CLIP1`` (audio) are three names apart even where case is ignored; a
    second image ``cLIP1`` is not."""
    rows = [{"id": "Clip1", "modality": "image", "uri": str(tmp_path / "a.png")},
            {"id": "clip1", "modality": "text", "text": "a clip"},
            {"id": "CLIP1", "modality": "audio", "uri": str(tmp_path / "b.wav")},
            {"id": "cLIP1", "modality": "image", "uri": str(tmp_path / "c.png")}]
    stream = scan_manifest(write_manifest(pd.DataFrame(rows), tmp_path / "m.csv"), chunk_rows=2)
    assert stream.case_collisions == ["row 4: id 'cLIP1' and id 'Clip1' (row 1) would share one media file "
                                      "('cLIP1' and 'Clip1' differ only in case); rename one of them"]


def test_the_case_probe_answers_for_this_file_system_and_leaves_nothing(tmp_path):
    assert fetch_manifest_module.ignores_case(tmp_path) is False  # Linux file systems keep case
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ignores", [True, False])
def test_fetch_refuses_case_collisions_only_where_the_file_system_ignores_case(tmp_path, monkeypatch, ignores):
    """On macOS or Windows ``Clip1.png`` and ``clip1.png`` are one file: the second download would
    silently replace the first. There the fetch is refused before anything is fetched; where case
    counts, both files are kept."""
    manifest = _case_manifest(tmp_path)
    monkeypatch.setattr(fetch_manifest_module, "ignores_case", lambda folder: ignores)
    cfg = FetchConfig(workers=1, retries=0, progress=False)
    if ignores:
        with pytest.raises(ManifestError, match=r"'clip1' and id 'Clip1' \(row 1\).*ignores case"):
            fetch_manifest(manifest, tmp_path / "ds", cfg)
        assert not (tmp_path / "ds" / "media").exists()
    else:
        summary = fetch_manifest(manifest, tmp_path / "ds", cfg)
        assert summary.fetched == 3
        assert sorted(p.name for p in (tmp_path / "ds" / "media" / "image").iterdir()) == ["Clip1.png", "clip1.png", "x.png"]
