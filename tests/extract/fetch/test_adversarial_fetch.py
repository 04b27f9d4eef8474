"""Hostile manifests and servers against mmx fetch: id collisions, stacked encodings, full disks."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from mmx.extract.fetch import FetchConfig, fetch_manifest, files
from mmx.extract.fetch.files import safe_stem
from mmx.extract.fetch.manifest import scan_manifest
from mmx.extract.manifest import ManifestError, write_manifest

QUIET = dict(workers=2, per_host=2, retries=0, progress=False)


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _journal(root):
    """The last record of each id; a torn line (a kill or a full disk mid-write) is skipped, as mmx does."""
    out = {}
    for line in (root / "fetch" / "journal.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[record["id"]] = record
    return out


def test_ids_that_cleaned_to_one_stem_keep_their_own_files(tmp_path):
    """'a b' must not be stored as a_b-7dbde93504.jpg, the very name of the id 'a_b-7dbde93504'."""
    unsafe, lookalike = "a b", "a_b-" + hashlib.sha1(b"a b").hexdigest()[:10]
    assert lookalike == "a_b-7dbde93504"
    assert safe_stem(unsafe) != safe_stem(lookalike)
    src = tmp_path / "src"
    src.mkdir()
    images = {unsafe: _jpeg(1), lookalike: _jpeg(2)}
    for n, data in enumerate(images.values()):
        (src / f"{n}.jpg").write_bytes(data)
    frame = pd.DataFrame({"id": list(images), "modality": ["image"] * 2, "uri": ["src/0.jpg", "src/1.jpg"],
                          "label": ["x", "y"]})
    manifest = write_manifest(frame, tmp_path / "m.csv")
    summary = fetch_manifest(manifest, tmp_path / "ds", FetchConfig(**QUIET))
    assert summary.totals == {"ok": 2}
    records = _journal(tmp_path / "ds")
    assert records[unsafe]["path"] != records[lookalike]["path"]
    for item_id, data in images.items():  # each id's file holds its own image, with its recorded digest
        on_disk = (tmp_path / "ds" / records[item_id]["path"]).read_bytes()
        assert on_disk == data and hashlib.sha256(on_disk).hexdigest() == records[item_id]["sha256"]


def test_stems_stay_apart_for_lookalikes_of_every_kind():
    ids = ["a b", "a_b", "a:b", "a_b-7dbde93504", "a_b-7dbde93504-" + hashlib.sha1(b"a_b-7dbde93504").hexdigest()[:10],
           ".x", "x", "_"]
    assert len({safe_stem(i) for i in ids}) == len(ids)


def test_a_stem_collision_is_refused_naming_both_ids(tmp_path, monkeypatch):
    """Should two ids ever map to one stem (a sha1-prefix collision), the manifest is refused, not half-fetched."""
    frame = pd.DataFrame({"id": ["first", "second", "third"], "modality": ["image"] * 3,
                          "uri": ["a.jpg", "b.jpg", "c.jpg"]})
    manifest = write_manifest(frame, tmp_path / "m.csv")
    monkeypatch.setattr(files, "safe_stem", lambda i: "same" if i in ("first", "third") else i)
    with pytest.raises(ManifestError) as info:
        scan_manifest(manifest)
    text = str(info.value)
    assert "'third'" in text and "'first'" in text and "share the media file name 'same'" in text


# -- stacked Content-Encoding: the cap holds on decoded bytes, memory stays bounded ------------
BOMB_SCRIPT = r"""
import json, sys, zlib
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[4])
import peakmem
from pathlib import Path
import pandas as pd
from fetch_server import LoopbackServer, send
from mmx.extract.fetch import FetchConfig, fetch_manifest
from mmx.extract.manifest import write_manifest

def gzip_stream(chunks):
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(z.compress(c) for c in chunks) + z.flush()

decoded_mib = int(sys.argv[3])
inner = gzip_stream(b"\0" * 2**20 for _ in range(decoded_mib))  # ~1000:1, built a MiB at a time
body = gzip_stream([inner])
root = Path(sys.argv[2])
routes = {"/bomb": lambda h, hit: send(h, 200, body, "application/octet-stream", {"Content-Encoding": "gzip, gzip"})}
with LoopbackServer(routes) as srv:
    frame = pd.DataFrame({"id": ["bomb"], "modality": ["image"], "uri": [srv.url("/bomb")]})
    manifest = write_manifest(frame, root / "m.csv")
    # everything but the body's decoding, first: the baseline of the peak
    fetch_manifest(write_manifest(frame.assign(uri=srv.url("/missing")), root / "warm.csv"), root / "warm",
                   FetchConfig(workers=1, retries=0, progress=False))
    baseline = peakmem.start()
    summary = fetch_manifest(manifest, root / "ds", FetchConfig(workers=1, retries=0, max_bytes=2**20, progress=False))
    growth = peakmem.growth_mib(baseline)
print(json.dumps({"totals": summary.totals, "body_bytes": len(body), "peak_growth_mib": growth}))
"""


def run_gzip_bomb(tmp_path, decoded_mib: int) -> dict:
    """Fetch a ``gzip, gzip`` body that decodes to ``decoded_mib`` MiB of zeros, with a 1 MiB cap, in a
    fresh process (ru_maxrss is per process); returns its totals and peak memory growth."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(here), str(tmp_path), str(decoded_mib), str(here.parents[1])],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_stacked_gzip_is_capped_on_decoded_bytes_with_bounded_memory(tmp_path):
    """Before: httpx inflated each network chunk whole, so this 200 MiB grew the process by ~200 MiB."""
    result = run_gzip_bomb(tmp_path, 200)
    assert result["totals"] == {"too_large": 1}
    assert result["body_bytes"] < 64 * 1024
    assert result["peak_growth_mib"] < 40, result


def test_the_decoder_streams_every_supported_chain():
    import asyncio
    import gzip

    from mmx.extract.fetch.http import DECODED_PIECE, _inflater, content_encodings, decode_chain

    payload = bytes(range(256)) * 5000
    deflate_raw = zlib_raw(payload)
    cases = [("gzip", gzip.compress(payload)), ("gzip, gzip", gzip.compress(gzip.compress(payload))),
             ("deflate", __import__("zlib").compress(payload)), ("deflate", zlib_raw(payload)),
             ("x-gzip", gzip.compress(payload)), ("identity, gzip", gzip.compress(payload)), ("", payload),
             ("gzip", gzip.compress(payload[:1000]) + gzip.compress(payload[1000:]))]  # two gzip members

    async def decode(header, body):
        async def raw():
            for i in range(0, len(body), 777):
                yield body[i:i + 777]
        stages = [_inflater(e) for e in reversed(content_encodings(header))]
        pieces = [p async for p in decode_chain(raw(), stages)]
        assert all(len(p) <= DECODED_PIECE for p in pieces)
        return b"".join(pieces)

    for header, body in cases:
        assert asyncio.run(decode(header, body)) == payload, header
    with pytest.raises(ValueError, match="'br' is not supported"):
        _inflater("br")


def zlib_raw(data: bytes) -> bytes:
    import zlib

    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


# -- a full disk: consistent journal, items retried by --retry-failed, one clear line ------------
def _disk_fills_for(monkeypatch, module, stems):
    """Writes to the temporary files of ``stems`` in ``module`` fail with ENOSPC, as on a full disk."""
    import errno
    import os

    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if "w" in mode and any(os.path.basename(str(path)).startswith(f".{s}.") for s in stems):
            def write(_data):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            fh.write = write
        return fh

    monkeypatch.setattr(module, "open", full_open, raising=False)


@pytest.fixture
def four_images(tmp_path):
    from fetch_server import LoopbackServer, serve

    images = {k: _jpeg(n) for n, k in enumerate("abcd")}
    with LoopbackServer({f"/{k}.jpg": serve(v, "image/jpeg") for k, v in images.items()}) as srv:
        frame = pd.DataFrame({"id": list(images), "modality": ["image"] * 4,
                              "uri": [srv.url(f"/{k}.jpg") for k in images]})
        yield write_manifest(frame, tmp_path / "m.csv"), images, srv


def test_full_disk_items_are_no_space_and_retried_by_retry_failed(four_images, tmp_path, monkeypatch):
    from mmx.extract.fetch import http
    from mmx.extract.fetch.status import read_status_table

    manifest, images, srv = four_images
    _disk_fills_for(monkeypatch, http, ["b", "c"])
    first = fetch_manifest(manifest, tmp_path / "ds", FetchConfig(**{**QUIET, "retries": 3}))
    assert first.totals == {"ok": 2, "no_space": 2}
    assert srv.hits["/b.jpg"] == 1  # not retried within the run: the disk stays full
    table = read_status_table(tmp_path / "ds" / "fetch" / "status.csv")
    assert dict(zip(table["id"], table["status"])) == {"a": "ok", "b": "no_space", "c": "no_space", "d": "ok"}
    assert not list((tmp_path / "ds" / "media").rglob("*.part"))
    monkeypatch.undo()
    plain = fetch_manifest(manifest, tmp_path / "ds", FetchConfig(**QUIET))
    assert plain.fetched == 0  # a failure is final until asked
    again = fetch_manifest(manifest, tmp_path / "ds", FetchConfig(**{**QUIET, "retry_failed": True}))
    assert again.fetched == 2 and again.totals == {"ok": 4}
    records = _journal(tmp_path / "ds")
    for k, data in images.items():
        assert (tmp_path / "ds" / records[k]["path"]).read_bytes() == data
    assert srv.hits["/a.jpg"] == 1


def test_full_disk_on_the_journal_is_one_line_and_the_rerun_resumes(four_images, tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from mmx.extract.fetch.status import Journal
    from mmx.pipeline.cli import main

    manifest, images, srv = four_images
    real_append, written = Journal.append, []

    def append_until_full(self, record):
        if len(written) == 2:  # the third record is torn half way, as a full disk leaves it
            self._fh.write(json.dumps(record)[:20])
            self._fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        written.append(record["id"])
        real_append(self, record)

    monkeypatch.setattr(Journal, "append", append_until_full)
    args = ["fetch", str(manifest), "--out", str(tmp_path / "ds"), "--workers", "1", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: no space left on the device while writing") and "journal.jsonl" in line
    assert "run the same command again" in line
    monkeypatch.undo()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = _journal(tmp_path / "ds")
    assert {k: r["status"] for k, r in records.items()} == {k: "ok" for k in images}
    assert all(srv.hits[f"/{k}.jpg"] == 1 for k in written)  # what was journalled is not fetched again
