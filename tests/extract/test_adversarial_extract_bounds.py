"""Bounded cost in extract and fetch: long or huge-framed videos, huge texts and queries, huge manifest rows.

Memory is measured as the growth of the peak resident set (tests/peakmem.py) around the one call
that decodes or reads, in a fresh child process for the videos (the decoder's threads and
buffers), in this process for the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mmx.extract import decode
from mmx.extract.fetch.manifest import scan_manifest
from mmx.extract.manifest import ManifestError, read_manifest
from mmx.pipeline.cli import main

TESTS = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, TESTS)
import peakmem  # noqa: E402

MAX_ROW_BYTES = 1 << 20  # the row cap the messages state (mmx.extract.manifest.MAX_ROW_BYTES)


def write_video(path, frames: int, size: tuple[int, int], fps: int = 1):
    """``frames`` flat grey frames of ``size`` at ``fps``: small on disk whatever the size (H.264)."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 16 * (i % 12), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


VIDEO_PEAK = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
import numpy as np
import peakmem
from mmx.extract.preparers import FramesPreparer
from mmx.extract import decode
prep = FramesPreparer(1.0, 600.0, size=224, mean=decode.IMAGENET_MEAN, std=decode.IMAGENET_STD,
                      max_pixels=decode.DEFAULT_MAX_PIXELS, draft=False)
prep.prepare({"uri": sys.argv[3], "id": "warm"})  # every import and code path warmed on a small clip
baseline = peakmem.start()
x = prep.prepare({"uri": sys.argv[1], "id": "long"})
print(json.dumps({"shape": list(x.shape), "peak_growth_mib": peakmem.growth_mib(baseline)}))
"""


def test_a_long_full_hd_video_holds_only_small_frames(tmp_path):
    """90 frames of 1920x1080 sampled at 1 fps: 534 MiB of RGB frames if kept whole; each is resized
    to 224x224 as it is decoded, so what is held is 90 x 147 KiB plus the decoder's own frames."""
    long = write_video(tmp_path / "long.mp4", 90, (1920, 1080))
    small = write_video(tmp_path / "small.mp4", 2, (64, 48))
    assert long.stat().st_size < 1_000_000
    out = subprocess.run([sys.executable, "-c", VIDEO_PEAK, str(long), TESTS, str(small)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [90, 3, 224, 224]
    assert result["peak_growth_mib"] < 160, result


def test_frames_resized_as_decoded_equal_frames_resized_after(tmp_path):
    """The early resize is the image path's resize (bilinear to S x S): the same pixels as before."""
    clip = write_video(tmp_path / "c.mp4", 3, (320, 240), fps=2)
    whole = decode.sample_video_frames(clip, 2.0)
    small = decode.sample_video_frames(clip, 2.0, size=32)
    assert [im.size for im in small] == [(32, 32)] * 3
    for a, b in zip(whole, small):
        np.testing.assert_array_equal(decode.image_to_uint8(a, 32), decode.image_to_uint8(b, 32))
    # max_side: frames within it keep their size (the device resizes them)
    assert [im.size for im in decode.sample_video_frames(clip, 2.0, size=200, max_side=400)] == [(320, 240)] * 3


def test_video_frames_past_the_pixel_cap_are_refused_from_the_header(tmp_path, monkeypatch):
    """The cap of images holds for video frames, read from the stream's header before any frame decodes."""
    import av

    clip = write_video(tmp_path / "c.mp4", 3, (320, 240))
    decoded = []
    real_decode = av.container.InputContainer.decode
    monkeypatch.setattr(av.container.InputContainer, "decode",
                        lambda self, *a, **k: (decoded.append(1), real_decode(self, *a, **k))[1])
    with pytest.raises(decode.DecodeError, match=r"320x240 pixels exceed the limit of 76799") as info:
        decode.sample_video_frames(clip, 1.0, max_pixels=320 * 240 - 1)
    assert info.value.kind == "decompression_bomb" and not decoded
    assert len(decode.sample_video_frames(clip, 1.0, max_pixels=320 * 240)) == 3


def test_extract_refuses_a_video_bomb_as_it_refuses_the_same_image(tmp_path, monkeypatch):
    """The same cap, the same failure kind, for a JPEG and an MP4 of the same frame size."""
    from PIL import Image

    from mmx.cache.store import STATUS_FAILED, list_stores

    monkeypatch.setattr(decode, "DEFAULT_MAX_PIXELS", 160 * 120 - 1)
    write_video(tmp_path / "v.mp4", 3, (160, 120))
    Image.new("RGB", (160, 120), "grey").save(tmp_path / "i.jpg")
    pd.DataFrame([dict(id="v", modality="video", uri="v.mp4"), dict(id="i", modality="image", uri="i.jpg")]
                 ).to_csv(tmp_path / "m.csv", index=False)
    for modality in ("video", "image"):
        cap = ["--set", f"max_pixels={160 * 120 - 1}"] if modality == "image" else []  # video: the default cap
        r = CliRunner().invoke(main, ["extract", str(tmp_path / "m.csv"), "--modality", modality, "--cache",
                                      str(tmp_path / "c"), "--dataset", "d", "--workers", "0", "--no-progress", *cap])
        assert r.exit_code == 1, r.output  # every item failed
    errors = {}
    for store in list_stores(tmp_path / "c"):
        assert list(store._group["status"][:]) == [STATUS_FAILED]
        errors.update(store.shard_marker(0).get("errors", {}))
    assert errors["v"].startswith("decompression_bomb: ") and errors["i"].startswith("decompression_bomb: "), errors


# -- text -----------------------------------------------------------------------------------------
def test_a_huge_text_file_is_read_only_up_to_the_cap(tmp_path):
    """A 24 MB text file: at most 4 bytes a character of the cap are read, and the cap is what comes back."""
    big = tmp_path / "big.txt"
    piece = "café au lait " * 1000
    with open(big, "w", encoding="utf-8") as f:
        for _ in range(1800):
            f.write(piece)
    assert big.stat().st_size > 20e6
    decode.read_text(tmp_path / "big.txt")  # warm
    baseline = peakmem.start()
    text = decode.read_text(big)
    grown = peakmem.growth_mib(baseline)
    assert len(text) <= 65_536 and text.startswith("café au lait")
    assert grown < 8, grown


def test_a_text_cut_inside_a_character_still_decodes(tmp_path):
    """A cut past the cap may land inside a multi-byte character: it is kept back, not called invalid UTF-8."""
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbf" + "€".encode() * (2 * decode.TEXT_MAX_CHARS))  # 3 bytes each: cut mid-way
    text = decode.read_text(p)
    assert len(text) == decode.TEXT_MAX_CHARS and set(text) == {"€"}
    p.write_bytes(b"ok \xff")  # whole file read: a bad byte is still refused
    with pytest.raises(decode.DecodeError, match="not UTF-8"):
        decode.read_text(p)


def test_inline_text_is_cut_before_it_is_normalised():
    huge = "e\u0301" * 10_000_000  # 20 M code points (40 MB): NFC would copy them all
    baseline = peakmem.start()
    text = decode.normalise_text(huge)
    assert len(text) == decode.TEXT_MAX_CHARS // 2 and set(text) == {"é"}
    assert peakmem.growth_mib(baseline) < 8


def test_a_search_query_past_the_cap_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["search", str(tmp_path), "--text", "x" * (decode.TEXT_MAX_CHARS + 1)])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "--text query 1 has 65,537 characters; at most 65,536" in lines[0]


# -- manifest rows --------------------------------------------------------------------------------
def one_line_manifest(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        f.write(b"id,modality,text\n")
        f.write(b"a,text,")
        for _ in range(mib):
            f.write(b"x" * 2**20)
    return path


def test_a_one_line_manifest_is_refused_after_reading_a_row_cap(tmp_path):
    """64 MiB in one row: refused at its first MiB over the cap, by fetch's scan and extract's read alike."""
    m = one_line_manifest(tmp_path / "m.csv", 64)
    import pandas  # noqa: F401  (imported before the measure)

    baseline = peakmem.start()
    with pytest.raises(ManifestError, match=r"row 1 is longer than 1 MiB"):
        scan_manifest(m)
    assert peakmem.growth_mib(baseline) < 16
    with pytest.raises(ManifestError, match=r"row 1 is longer than 1 MiB"):
        read_manifest(m)


@pytest.mark.parametrize("kind", ["quoted", "jsonl", "header"])
def test_long_rows_are_refused_whatever_their_shape(tmp_path, kind):
    big = "y" * (MAX_ROW_BYTES + 10)
    if kind == "quoted":  # a quoted field of short lines is still one row
        p = tmp_path / "m.csv"
        p.write_text("id,modality,text\nok,text,fine\nb,text,\"" + "line\n" * (MAX_ROW_BYTES // 4) + "\"\n")
        says = "row 2 is longer"
    elif kind == "jsonl":
        p = tmp_path / "m.jsonl"
        p.write_text(json.dumps({"id": "a", "modality": "text", "text": "ok"}) + "\n"
                     + json.dumps({"id": "b", "modality": "text", "text": big}) + "\n")
        says = "row 2 is longer"
    else:
        p = tmp_path / "m.csv"
        p.write_text(f"id,modality,{big}\na,text,x\n")
        says = "the header is longer"
    for reader in (scan_manifest, read_manifest):
        with pytest.raises(ManifestError, match=says):
            reader(p)


def test_quotes_and_long_but_allowed_rows_pass(tmp_path):
    """Doubled quotes and quoted line breaks, and a row just under the cap, read as written."""
    from mmx.extract.fetch.manifest import chunk_rows_for

    text = 'a "quoted" word,\nand a line break ' + "z" * (MAX_ROW_BYTES - 100)
    pd.DataFrame([dict(id="a", modality="text", text=text), dict(id="b", modality="text", text="two")]
                 ).to_csv(tmp_path / "m.csv", index=False)
    assert read_manifest(tmp_path / "m.csv").frame["text"].tolist() == [text, "two"]
    stream = scan_manifest(tmp_path / "m.csv")
    assert stream.rows == 2 and stream.chunk_rows == chunk_rows_for(len(text) + 10, 2048)


def test_chunks_shrink_for_long_rows():
    from mmx.extract import manifest
    from mmx.extract.fetch.manifest import CHUNK_BYTES, chunk_rows_for

    assert manifest.MAX_ROW_BYTES == MAX_ROW_BYTES
    assert chunk_rows_for(100, 2048) == 2048
    assert chunk_rows_for(MAX_ROW_BYTES, 2048) == CHUNK_BYTES // MAX_ROW_BYTES
    assert chunk_rows_for(10**12, 2048) == 1


def test_a_parquet_cell_that_inflates_past_the_cap_is_refused_from_the_metadata(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "modality": ["text"], "text": ["x" * (4 * MAX_ROW_BYTES)]}),
                   tmp_path / "m.parquet", compression="zstd")
    assert (tmp_path / "m.parquet").stat().st_size < 10_000
    for reader in (scan_manifest, read_manifest):
        with pytest.raises(ManifestError, match="row group 0 inflates to 4 MiB for 1 row"):
            reader(tmp_path / "m.parquet")


def test_a_one_line_manifest_is_one_line_from_fetch(tmp_path):
    m = one_line_manifest(tmp_path / "m.csv", 3)
    r = CliRunner().invoke(main, ["fetch", str(m), "--out", str(tmp_path / "ds"), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "row 1 is longer than 1 MiB" in r.output


def test_fetch_refuses_a_video_bomb_as_it_refuses_the_same_image(tmp_path):
    from PIL import Image

    from mmx.extract.fetch import FetchConfig, fetch_manifest

    write_video(tmp_path / "v.mp4", 3, (160, 120))
    Image.new("RGB", (160, 120), "grey").save(tmp_path / "i.jpg")
    pd.DataFrame([dict(id="v", modality="video", uri="v.mp4"), dict(id="i", modality="image", uri="i.jpg")]
                 ).to_csv(tmp_path / "m.csv", index=False)
    fetched = fetch_manifest(tmp_path / "m.csv", tmp_path / "ds", FetchConfig(max_pixels=160 * 120 - 1, progress=False))
    journal = [json.loads(x) for x in fetched.layout.journal.read_text().splitlines()]
    assert {r["id"]: r["status"] for r in journal} == {"v": "decompression_bomb", "i": "decompression_bomb"}, journal
