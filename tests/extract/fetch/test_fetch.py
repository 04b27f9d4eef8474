"""mmx fetch against a real HTTP server on 127.0.0.1: every failure kind, one run."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from click.testing import CliRunner
from fetch_server import (LoopbackServer, redirect, reset, send, sequence, serve, stall, status, truncated,
                          unbounded)

from mmx.extract.fetch import FetchConfig, fetch_manifest
from mmx.extract.fetch.files import safe_stem
from mmx.extract.fetch.status import read_status_table
from mmx.pipeline.cli import main
from mmx.extract.manifest import read_manifest, write_manifest

FAST = dict(workers=6, per_host=6, connect_timeout=1.0, read_timeout=0.4, item_timeout=5.0, retries=2,
            backoff_base=0.01, backoff_max=0.05, max_retry_after=1.0, max_bytes=700_000, max_pixels=1_000_000,
            progress=False)


def _bomb_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (2000, 2000)).save(buf, format="PNG")  # 4 Mpx in a few kB
    return buf.getvalue()


@pytest.fixture(scope="module")
def media(shared_media):
    lb = shared_media / "languagebind"
    return {
        "jpg": (lb / "image" / "0.jpg").read_bytes(),
        "wav": (lb / "audio" / "0.wav").read_bytes(),
        "mp4": (lb / "video" / "1.mp4").read_bytes(),
        "big_wav": (shared_media / "imagebind" / "bird_audio.wav").read_bytes(),
    }


@pytest.fixture(scope="module")
def fetched(media, tmp_path_factory, shared_media):
    """One fetch over every case; the tests below read its results."""
    tmp = tmp_path_factory.mktemp("fetch")
    html = b"<!DOCTYPE html><html><body>Sorry, this photo is no longer available</body></html>"
    routes = {
        "/img.jpg": serve(media["jpg"], "image/jpeg"),
        "/octet.jpg": serve(media["jpg"]),
        "/clip.wav": serve(media["wav"], "audio/wav"),
        "/clip.mp4": serve(media["mp4"], "video/mp4"),
        "/gone": status(410),
        "/flaky": sequence(status(500), serve(media["jpg"], "image/jpeg")),
        "/limited": sequence(status(429, {"Retry-After": "0"}), serve(media["jpg"], "image/jpeg")),
        "/always429": status(429, {"Retry-After": "0"}),
        "/stall": stall(1.5),
        "/short": truncated(media["jpg"]),
        "/html200": serve(html, "text/html; charset=utf-8"),
        "/html-as-jpeg": serve(html, "image/jpeg"),
        "/r1": redirect("/r2"), "/r2": redirect("/img.jpg", 301),
        "/loop1": redirect("/loop2"), "/loop2": redirect("/loop1"),
        "/to-ftp": redirect("ftp://127.0.0.1/x.jpg"),
        "/to-dotdot": redirect("/../../../etc/img.jpg"),
        "/../../../etc/img.jpg": serve(media["jpg"], "image/jpeg"),
        "/etc/img.jpg": serve(media["jpg"], "image/jpeg"),
        "/big": serve(media["big_wav"], "audio/wav"),
        "/endless": unbounded(b"\xff\xd8\xff" + b"\0" * 65533, 100),
        "/reset": reset(),
        "/cut.jpg": serve(media["jpg"][: len(media["jpg"]) // 2], "image/jpeg"),
        "/wav-as-image": serve(media["wav"], "image/jpeg"),
        "/video-for-audio": serve(media["mp4"], "audio/mp4"),
        "/bomb.png": serve(_bomb_png(), "image/png"),
        "/caption.txt": serve("A dog. Ein Hund.".encode(), "text/plain; charset=utf-8"),
    }
    local_dir = tmp / "data"
    local_dir.mkdir()
    (local_dir / "local.jpg").write_bytes(media["jpg"])
    with LoopbackServer(routes) as srv:
        with socket_closed_port() as dead_port:
            rows = [
                ("img_ok", "image", srv.url("/img.jpg"), "dog"),
                ("img_octet", "image", srv.url("/octet.jpg"), "dog"),
                ("aud_ok", "audio", srv.url("/clip.wav"), "dog"),
                ("vid_ok", "video", srv.url("/clip.mp4"), "dog"),
                ("missing", "image", srv.url("/nothing-here.jpg"), "cat"),
                ("gone", "image", srv.url("/gone"), "cat"),
                ("flaky", "image", srv.url("/flaky"), "cat"),
                ("limited", "image", srv.url("/limited"), "cat"),
                ("always429", "image", srv.url("/always429"), "cat"),
                ("slow", "image", srv.url("/stall"), "cat"),
                ("short", "image", srv.url("/short"), "cat"),
                ("html200", "image", srv.url("/html200"), "cat"),
                ("html_as_jpeg", "image", srv.url("/html-as-jpeg"), "cat"),
                ("chain", "image", srv.url("/r1"), "cat"),
                ("loop", "image", srv.url("/loop1"), "cat"),
                ("to_ftp", "image", srv.url("/to-ftp"), "cat"),
                ("dotdot", "image", srv.url("/to-dotdot"), "cat"),
                ("big", "audio", srv.url("/big"), "cat"),
                ("endless", "image", srv.url("/endless"), "cat"),
                ("reset", "image", srv.url("/reset"), "cat"),
                ("refused", "image", f"http://127.0.0.1:{dead_port}/x.jpg", "cat"),
                ("ftp", "image", "ftp://127.0.0.1/x.jpg", "cat"),
                ("cut", "image", srv.url("/cut.jpg"), "cat"),
                ("wav_as_image", "image", srv.url("/wav-as-image"), "cat"),
                ("video_for_audio", "audio", srv.url("/video-for-audio"), "cat"),
                ("bomb", "image", srv.url("/bomb.png"), "cat"),
                ("txt_url", "text", srv.url("/caption.txt"), "dog"),
                ("local_ok", "image", "local.jpg", "dog"),
                ("local_missing", "image", "nope.jpg", "dog"),
                ("local_escape", "image", str(shared_media / "languagebind" / "image" / "1.jpg"), "dog"),
                ("weird id: ü", "image", srv.url("/img.jpg"), "dog"),
            ]
            frame = pd.DataFrame(rows, columns=["id", "modality", "uri", "label"])
            frame = pd.concat([frame, pd.DataFrame([{"id": "txt_inline", "modality": "text",
                                                      "text": "A dog.", "label": "dog"}])], ignore_index=True)
            manifest = write_manifest(frame.fillna(""), local_dir / "manifest.csv")
            summary = fetch_manifest(manifest, tmp / "ds", FetchConfig(**FAST))
        hits = dict(srv.hits)
    table = read_status_table(summary.layout.status).set_index("id")
    return {"summary": summary, "table": table, "hits": hits, "root": tmp / "ds", "manifest": manifest}


class socket_closed_port:
    """A port on 127.0.0.1 with nothing listening (bound then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc) -> None:
        pass


EXPECTED = {
    "img_ok": "ok", "img_octet": "ok", "aud_ok": "ok", "vid_ok": "ok", "missing": "not_found", "gone": "gone",
    "flaky": "ok", "limited": "ok", "always429": "rate_limited", "slow": "timeout", "short": "truncated",
    "html200": "wrong_type", "html_as_jpeg": "wrong_type", "chain": "ok", "loop": "redirect_loop",
    "to_ftp": "bad_redirect", "dotdot": "ok", "big": "too_large", "endless": "too_large", "reset": "connection",
    "refused": "connection", "ftp": "bad_url", "cut": "undecodable", "wav_as_image": "wrong_type",
    "video_for_audio": "undecodable", "bomb": "decompression_bomb", "txt_url": "ok", "txt_inline": "ok",
    "local_ok": "ok", "local_missing": "not_found", "local_escape": "forbidden_path", "weird id: ü": "ok",
}


@pytest.mark.parametrize("item_id", sorted(EXPECTED))
def test_every_item_ends_with_its_expected_status(fetched, item_id):
    row = fetched["table"].loc[item_id]
    assert row["status"] == EXPECTED[item_id], row.to_dict()


def test_status_table_has_exactly_one_row_per_manifest_item(fetched):
    table = fetched["table"]
    assert sorted(table.index) == sorted(EXPECTED)
    assert not table.index.duplicated().any()
    failed = table[table["status"] != "ok"]
    assert (failed["error"] != "").all()  # every failure says why
    assert (failed["path"] == "").all()


def test_permanent_failures_are_not_retried_and_transient_ones_are(fetched):
    hits, table = fetched["hits"], fetched["table"]
    assert hits["/nothing-here.jpg"] == 1 and hits["/gone"] == 1
    assert table.loc["missing", "http_status"] == "404" and table.loc["gone", "http_status"] == "410"
    assert hits["/flaky"] == 2 and table.loc["flaky", "attempts"] == "2"
    assert hits["/limited"] == 2
    assert hits["/always429"] == 3 and table.loc["always429", "attempts"] == "3"  # 1 + retries=2
    assert hits["/reset"] == 3
    assert hits["/html200"] == 1  # wrong type is permanent


def test_ok_files_are_validated_media_named_by_id_and_real_type(fetched):
    root, table = fetched["root"], fetched["table"]
    assert table.loc["img_octet", "path"] == "media/image/img_octet.jpg"
    assert table.loc["aud_ok", "path"] == "media/audio/aud_ok.wav"
    assert table.loc["vid_ok", "path"] == "media/video/vid_ok.mp4"
    assert table.loc["txt_url", "path"] == "media/text/txt_url.txt"
    assert table.loc["chain", "final_url"].endswith("/img.jpg")
    assert table.loc["dotdot", "path"] == "media/image/dotdot.jpg"  # a redirect never names the file
    weird = table.loc["weird id: ü", "path"]
    assert weird.startswith("media/image/weird_id__") and weird.endswith(".jpg")
    import hashlib

    for item_id, row in table[table["status"] == "ok"].iterrows():
        if row["path"]:
            data = (root / row["path"]).read_bytes()
            assert len(data) == int(row["bytes"])
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
    files = sorted(p.relative_to(root).as_posix() for p in (root / "media").rglob("*") if p.is_file())
    assert files == sorted(p for p in table["path"] if p)  # nothing else: no .part, no error pages


def test_fetched_manifest_lists_available_items_with_local_paths(fetched):
    manifest = read_manifest(fetched["root"] / "manifest.fetched.csv")
    ok = {k for k, v in EXPECTED.items() if v == "ok"}
    assert set(manifest.frame["id"]) == ok
    for _, row in manifest.frame.iterrows():
        if row["modality"] != "text" or row["uri"]:
            assert (fetched["root"] / row["uri"]).is_file()
    assert manifest.frame.set_index("id").loc["txt_inline", "text"] == "A dog."


def test_link_rot_report_counts_per_modality_class_and_kind(fetched):
    report = json.loads((fetched["root"] / "fetch" / "report.json").read_text())
    table = fetched["table"]
    for modality, stats in report["modalities"].items():
        rows = table[table["modality"] == modality]
        assert stats["items"] == len(rows)
        assert stats["ok"] == int((rows["status"] == "ok").sum())
    assert report["failures"]["wrong_type"] == 3
    # "cat" lost both its audio items (too large, no audio stream); "dog" kept its audio.
    assert {"label": "cat", "modality": "audio", "items": 2} in report["lost_classes"]
    assert not any(c["label"] == "dog" for c in report["lost_classes"])
    md = (fetched["root"] / "fetch" / "report.md").read_text()
    assert "1 of 3 audio files (33.3%)" in md and "cat: all 2 audio item(s)" in md


def test_rerun_downloads_nothing_again(fetched, tmp_path):
    summary = fetched["summary"]
    with LoopbackServer(fallback=lambda h, hit: send(h, 500)) as srv:
        again = fetch_manifest(fetched["manifest"], fetched["root"], FetchConfig(**FAST))
        assert sum(srv.hits.values()) == 0
    assert again.fetched == 0 and again.skipped == len(EXPECTED)
    assert again.totals == summary.totals


def test_safe_stem_stays_in_folder_and_keeps_ids_apart():
    assert safe_stem("abc_1.x") == "abc_1.x"
    stems = {safe_stem(i) for i in ("a b", "a_b", "a:b", ".hidden", "..", "x" * 128)}
    assert len(stems) == 6
    for stem in stems:
        assert "/" not in stem and not stem.startswith(".") and len(stem) <= 140


def test_cli_fetch_prints_report_and_writes_files(media, tmp_path):
    with LoopbackServer({"/a.jpg": serve(media["jpg"], "image/jpeg")}) as srv:
        frame = pd.DataFrame({"id": ["a", "b"], "modality": ["image", "image"],
                              "uri": [srv.url("/a.jpg"), srv.url("/b.jpg")], "label": ["x", "y"]})
        manifest = write_manifest(frame, tmp_path / "m.csv")
        result = CliRunner().invoke(main, ["fetch", str(manifest), "--out", str(tmp_path / "ds"), "--no-progress",
                                           "--retries", "0", "--max-size", "10MB"])
    assert result.exit_code == 0, result.output
    assert "1 of 2 images (50.0%)" in result.output
    assert "y (image)" in result.output  # the class that lost everything is named
    assert (tmp_path / "ds" / "fetch" / "status.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["--max-size", "lots"], "is not a size"),
    (["--modality", "smell"], "unknown modality"),
    (["--all-failures"], "only makes sense with --retry-failed"),
])
def test_cli_fetch_rejects_bad_options(tmp_path, args, message):
    manifest = write_manifest(pd.DataFrame({"id": ["a"], "modality": ["text"], "text": ["hi"]}), tmp_path / "m.csv")
    result = CliRunner().invoke(main, ["fetch", str(manifest), "--out", str(tmp_path / "ds"), *args])
    assert result.exit_code != 0 and message in result.output


def test_cli_fetch_refuses_to_overwrite_its_input(tmp_path):
    manifest = write_manifest(pd.DataFrame({"id": ["a"], "modality": ["text"], "text": ["hi"]}),
                              tmp_path / "manifest.fetched.csv")
    result = CliRunner().invoke(main, ["fetch", str(manifest), "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code != 0 and "would be overwritten" in result.output


def _jpeg(side: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_small_files_are_checked_on_the_loop_and_large_ones_in_the_pool(tmp_path, monkeypatch):
    """A file up to INLINE_CHECK_BYTES is validated on the event loop's thread (cheaper than the
    hand-off), a larger one in the validating threads, so no large decode stalls the loop;
    both are checked in full (a cut one of either size fails)."""
    import threading

    from mmx.extract.fetch import run, validate

    small, large = _jpeg(16), _jpeg(256)
    assert len(small) <= run.INLINE_CHECK_BYTES < len(large) // 2
    where, real = {}, validate.check_file

    def spy(path, modality, **kw):
        where[path.rsplit("/", 1)[-1].split(".")[1]] = threading.current_thread().name
        return real(path, modality, **kw)

    monkeypatch.setattr(validate, "check_file", spy)
    bodies = {"small": small, "large": large, "smallcut": small[: len(small) // 2], "largecut": large[: len(large) // 2]}
    with LoopbackServer({f"/{k}.jpg": serve(v, "image/jpeg") for k, v in bodies.items()}) as srv:
        frame = pd.DataFrame({"id": list(bodies), "modality": "image", "uri": [srv.url(f"/{k}.jpg") for k in bodies]})
        summary = fetch_manifest(write_manifest(frame, tmp_path / "m.csv"), tmp_path / "ds", FetchConfig(**FAST))
    assert summary.this_run == {"ok": 2, "undecodable": 2}
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on the caller's thread
    assert where["small"] == where["smallcut"] == loop_thread
    assert where["large"].startswith("mmx-validate") and where["largecut"].startswith("mmx-validate")


def test_a_refetched_item_drops_its_older_copy_of_another_format(tmp_path):
    """An item fetched as PNG and, after its URL changed, as JPEG keeps only the JPEG (the folder
    was not empty when the second run began, so older copies are looked for); a first run into
    an empty folder places each file once."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    ds = tmp_path / "ds"
    with LoopbackServer({"/a.png": serve(buf.getvalue(), "image/png"), "/a.jpg": serve(_jpeg(16), "image/jpeg"),
                         "/b.jpg": serve(_jpeg(17), "image/jpeg")}) as srv:
        for uri in ("/a.png", "/a.jpg"):
            frame = pd.DataFrame({"id": ["a", "b"], "modality": "image", "uri": [srv.url(uri), srv.url("/b.jpg")]})
            summary = fetch_manifest(write_manifest(frame, tmp_path / "m.csv"), ds, FetchConfig(**FAST))
            assert summary.totals == {"ok": 2}
            names = sorted(p.name for p in (ds / "media" / "image").iterdir())
            assert names == (["a.png", "b.jpg"] if uri == "/a.png" else ["a.jpg", "b.jpg"])
