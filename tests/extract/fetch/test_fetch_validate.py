"""Magic bytes, content types and decode probes of mmx fetch (no network)."""

from __future__ import annotations


import pytest

from mmx.extract.fetch.http import backoff_delay, classify_status, parse_retry_after
from mmx.extract.fetch.validate import check_file, content_type_problem, sniff


@pytest.mark.parametrize("head, fmt", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"), (b"\x89PNG\r\n\x1a\n....", "png"), (b"GIF89a..", "gif"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"), (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"),
    (b"\x00\x00\x00\x20ftypisom", "mp4"), (b"\x00\x00\x00\x20ftypM4A ", "m4a"), (b"\x1a\x45\xdf\xa3\x01", "webm"),
    (b"OggS\x00\x02", "ogg"), (b"fLaC\x00", "flac"), (b"ID3\x03\x00", "mp3"),
    (b"  <!DOCTYPE html><html>", "html"), (b"\xef\xbb\xbf<html lang=en>", "html"), (b"hello", None),
])
def test_sniff_names_formats_by_magic_bytes(head, fmt):
    assert sniff(head) == fmt


@pytest.mark.parametrize("ctype, modality, ok", [
    ("image/jpeg", "image", True), ("application/octet-stream", "image", True), ("", "video", True),
    ("text/html; charset=utf-8", "image", False), ("text/html", "text", False), ("text/plain", "text", True),
    ("video/mp4", "audio", True), ("audio/wav", "image", False), ("application/json", "video", False),
])
def test_content_type_against_modality(ctype, modality, ok):
    assert (content_type_problem(ctype, modality) is None) is ok


def test_real_media_pass_and_damaged_copies_fail(shared_media, tmp_path):
    lb = shared_media / "languagebind"
    for path, modality in ((lb / "image" / "0.jpg", "image"), (lb / "audio" / "0.wav", "audio"),
                           (lb / "video" / "0.mp4", "video")):
        verdict = check_file(str(path), modality, max_pixels=10**8)
        assert verdict.kind is None, verdict
        cut = tmp_path / f"cut_{path.name}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        assert check_file(str(cut), modality, max_pixels=10**8).kind == "undecodable"
    assert check_file(str(lb / "video" / "0.mp4"), "audio", max_pixels=10**8).message == "container has no audio stream"
    assert check_file(str(lb / "audio" / "0.wav"), "video", max_pixels=10**8).kind == "wrong_type"


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("1", (3000, 3000)).save(path)
    assert path.stat().st_size < 50_000
    verdict = check_file(str(path), "image", max_pixels=1_000_000)
    assert verdict.kind == "decompression_bomb" and "3000x3000" in verdict.message
    assert check_file(str(path), "image", max_pixels=10_000_000).kind is None


def test_text_must_be_utf8_and_not_html(tmp_path):
    good, bad, html = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    good.write_text("Ein Hund läuft.", encoding="utf-8")
    bad.write_bytes("Ein Hund läuft.".encode("latin-1"))
    html.write_text("<html><body>404</body></html>")
    assert check_file(str(good), "text", max_pixels=1).kind is None
    assert check_file(str(bad), "text", max_pixels=1).kind == "undecodable"
    assert check_file(str(html), "text", max_pixels=1).kind == "wrong_type"


def test_retry_after_parsing_and_backoff_bounds():
    assert parse_retry_after("3", cap=10) == 3.0
    assert parse_retry_after("3600", cap=10) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap=10) == 0.0  # a date in the past
    assert parse_retry_after("soon", cap=10) is None and parse_retry_after(None, cap=10) is None
    for attempt in range(1, 8):
        delay = backoff_delay(attempt, base=0.5, cap=4.0)
        full = min(4.0, 0.5 * 2 ** (attempt - 1))
        assert full / 2 <= delay <= full
    assert [classify_status(c) for c in (404, 410, 429, 503, 403)] == \
        ["not_found", "gone", "rate_limited", "server_error", "http_error"]
