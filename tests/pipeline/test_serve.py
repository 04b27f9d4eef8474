"""``mmx serve``'s JSON API on the demo's quad-modal run (real media, real model), over a real socket.

The run is the one the README's ``mmx demo`` wrote (the ``readme_demo`` fixture); the app
listens on a free 127.0.0.1 port in a thread. The browser test is test_serve_browser.py.
"""

from __future__ import annotations

import csv
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="mmx serve needs the 'serve' extra: pip install 'mmx[serve]'")
pytest.importorskip("uvicorn", reason="mmx serve needs the 'serve' extra: pip install 'mmx[serve]'")

import httpx  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_paths(readme_demo):
    """The demo's quad-modal run and fetched manifest; the user's folder is the working directory
    (the run names its cache relative to it, as the demo wrote it)."""
    root, outcome, result = readme_demo
    assert outcome.exit_code == 0 and not outcome.error, outcome.output + outcome.error
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        yield (root / result["runs"]["quad-modal"]).resolve(), (root / result["fetch"].layout.manifest).resolve()


@pytest.fixture(scope="module")
def backend(demo_paths):
    from mmx.pipeline.serve.backend import Backend

    return Backend(*demo_paths)


def serving(app):
    """Run ``app`` on a free port in a thread; returns (base url, stop)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="module")
def api(backend):
    from mmx.pipeline.serve.app import create_app

    base, stop = serving(create_app(backend, max_upload=2 * 1024 * 1024))
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client
    stop()


def _json_lines(output: str) -> list[dict]:
    """The hits of ``mmx search --json``; a library's progress bar (no newline) may precede the first."""
    return [json.loads(line[line.index('{"query"'):]) for line in output.splitlines() if '{"query"' in line]


def _fetched(manifest: Path, modality: str) -> dict:
    with open(manifest, newline="") as f:
        return next(r for r in csv.DictReader(f) if r["modality"] == modality and r["split"] == "test" and r["uri"])


def _one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "\n" not in response.text.strip()
    return response.json()["error"]


def test_info_and_the_openapi_description(api, backend):
    info = api.get("/api/info").json()
    assert info["items"] == len(backend.gallery["id"]) and set(info["targets"]) == {"text", "image", "audio", "video"}
    assert info["with_media"] >= sum(n for m, n in info["targets"].items() if m != "text")
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/upload", "/api/info", "/api/items", "/media/{row}"} <= set(paths)
    assert api.get("/docs").status_code == 200
    page = api.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text


def test_text_search_matches_mmx_search_and_filters_targets(api, demo_paths):
    from click.testing import CliRunner

    from mmx.pipeline.cli import main

    run, manifest = demo_paths
    hits = api.post("/api/search", json={"text": "a spoken seven", "targets": ["image", "video"], "k": 5}).json()["hits"]
    assert len(hits) == 5 and {h["modality"] for h in hits} <= {"image", "video"}
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert all(h["media"] == f"/media/{h['row']}" for h in hits)
    res = CliRunner().invoke(main, ["search", str(run), "--text", "a spoken seven", "--target", "image,video",
                                    "--top", "5", "--json", "--index", "exact"])
    assert res.exit_code == 0, res.output
    cli = _json_lines(res.output)
    assert [(h["id"], h["modality"]) for h in hits] == [(h["id"], h["modality"]) for h in cli]


def test_a_gallery_item_finds_itself_first(api):
    items = api.get("/api/items", params={"modality": "audio"}).json()["items"]
    assert items and all(it["modality"] == "audio" for it in items)
    hits = api.post("/api/search", json={"like": items[0]["row"], "targets": ["audio"], "k": 3}).json()["hits"]
    assert hits[0]["row"] == items[0]["row"] and hits[0]["score"] > 0.999
    assert _one_line_error(api.post("/api/search", json={"like": 10**6}), 404).startswith("no gallery item")
    assert "either" in _one_line_error(api.post("/api/search", json={}), 400)
    assert "no gallery modality smell" in _one_line_error(api.post("/api/search", json={"text": "x", "targets": ["smell"]}), 400)
    assert _one_line_error(api.post("/api/search", json={"text": "x", "k": 0}), 422).startswith("k:")


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_an_uploaded_file_finds_its_gallery_copy_first(api, demo_paths, modality):
    _, manifest = demo_paths
    row = _fetched(manifest, modality)
    path = manifest.parent / row["uri"]
    response = api.post("/api/search/upload", files={"file": (path.name, path.read_bytes())},
                        data={"targets": modality, "k": "3"})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert response.json()["modality"] == modality and hits[0]["id"] == row["id"] and hits[0]["score"] > 0.999


def test_uploads_are_bounded_and_type_checked(api, backend, demo_paths):
    from mmx.pipeline.serve.app import create_app

    _, manifest = demo_paths
    png = (manifest.parent / _fetched(manifest, "image")["uri"]).read_bytes()
    big = b"\x89PNG" + b"\0" * (3 * 1024 * 1024)
    assert "too large" in _one_line_error(api.post("/api/search/upload", files={"file": ("big.png", big)}), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 100_000

    streamed = api.post("/api/search/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert "too large" in _one_line_error(streamed, 413)
    assert "extension" in _one_line_error(api.post("/api/search/upload", files={"file": ("notes.exe", png)}), 415)
    assert "first bytes" in _one_line_error(api.post("/api/search/upload", files={"file": ("fake.png", b"GIF? no, text")}), 415)
    assert "first bytes" in _one_line_error(api.post("/api/search/upload", files={"file": ("fake.wav", png)}), 415)
    broken = _one_line_error(api.post("/api/search/upload", files={"file": ("broken.png", png[:40])}), 400)
    assert "cannot read it as image" in broken
    assert _one_line_error(api.post("/api/search/upload", data={"k": "3"}), 422).startswith("file:")
    # the page's own limit: what mmx serve --max-upload-mb sets
    small, stop = serving(create_app(backend, max_upload=100))
    try:
        refused = httpx.post(small + "/api/search/upload", files={"file": ("x.png", png)}, timeout=30)
        assert "the limit is 100 bytes" in _one_line_error(refused, 413)
    finally:
        stop()


def test_media_come_only_from_the_gallery_sources(api, backend, demo_paths, tmp_path):
    from mmx.pipeline.serve.backend import _sources

    _, manifest = demo_paths
    image = next(it for it in backend.items("image") if it["media"])
    response = api.get(image["media"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == backend.media_path(image["row"]).read_bytes()
    assert _one_line_error(api.get("/media/999999"), 404)
    assert api.get("/media/-1").status_code == 404
    assert api.get("/media/x").status_code == 422
    text = next(it for it in backend.items("text"))
    assert text["media"] == "" and text["text"] and api.get(f"/media/{text['row']}").status_code == 404
    # traversal: raw request paths, as a hostile client sends them (no client-side normalisation)
    host, port = api.base_url.host, api.base_url.port
    secret = tmp_path.parent / "secret.txt"
    secret.write_text("do not serve")
    for path in ("/media/../../../../etc/passwd", "/media/..%2f..%2f..%2fetc%2fpasswd", "/static/../../../../etc/passwd",
                 "/static/%2e%2e/%2e%2e/%2e%2e/cli.py", "/static/..%2fbackend.py", f"/media/{secret}",
                 "/static//etc/passwd", "/media/%00"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        assert reply.status in (400, 404, 422), (path, reply.status)
        assert b"root:" not in body and b"do not serve" not in body and b"import" not in body, path
    # a manifest listing a file outside its own folder: that item has no media
    rows = list(csv.DictReader(open(manifest, newline="")))
    victim = next(r for r in rows if r["modality"] == "image" and r["split"] == "test")
    (tmp_path / "data").mkdir()
    copy = tmp_path / "data" / "manifest.csv"
    with open(copy, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "uri": "../../secret.txt" if r is victim else (str(manifest.parent / r["uri"]) if r["uri"] else "")})
    files, _ = _sources(copy, backend.gallery["id"], backend.gallery["modality"])
    at = list(zip(backend.gallery["id"], backend.gallery["modality"])).index((victim["id"], "image"))
    assert files[at] is None and all(f is None for f in files)  # the others are absolute paths outside tmp_path/data too
    files, _ = _sources(manifest, backend.gallery["id"], backend.gallery["modality"])
    assert files[at] is not None


def test_mmx_serve_refuses_a_taken_port_in_one_line(demo_paths):
    from click.testing import CliRunner

    from mmx.pipeline.cli import main

    run, manifest = demo_paths
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        res = CliRunner().invoke(main, ["serve", str(run), "--manifest", str(manifest), "--port", str(taken.getsockname()[1])])
    assert res.exit_code == 1 and "choose another --port" in res.output and len(res.output.strip().splitlines()) == 1


# -- mmx index / mmx search --index: the ranking serve shares --------------------------------------
def test_index_build_and_search_through_it(demo_paths, tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'mmx[ann]')")
    import numpy as np
    from click.testing import CliRunner

    from mmx.pipeline.cli import main

    import shutil

    run = tmp_path / "run"  # a copy without the index that the README's `mmx index build RUN` step made
    shutil.copytree(demo_paths[0], run, ignore=shutil.ignore_patterns("index"))
    runner = CliRunner()

    def search(*extra):
        res = runner.invoke(main, ["search", str(run), "--text", "seven", "--top", "5", "--json", *extra])
        assert res.exit_code == 0, res.output
        return [(h["id"], h["modality"]) for h in _json_lines(res.output)]

    built = runner.invoke(main, ["index", "build", str(run), "--target", "image"])
    assert built.exit_code == 0 and "nprobe" in built.output, built.output
    assert len(list((run / "index").glob("*.faiss"))) == 1
    # a small gallery has one cell: the index visits every row and agrees with exact search
    assert search("--target", "image", "--index", "ann") == search("--target", "image", "--index", "exact")
    assert len(list((run / "index").glob("*.faiss"))) == 1  # found by the gallery's digest, not rebuilt
    # another gallery (all modalities) gets its own index on first use, saying so
    res = runner.invoke(main, ["search", str(run), "--text", "seven", "--index", "ann"])
    assert res.exit_code == 0 and "no index for this gallery" in res.output, res.output
    assert len(list((run / "index").glob("*.faiss"))) == 2
    # a changed gallery file: a new index, never the old one
    gallery = tmp_path / "g.npz"
    from mmx.eval.runs import load_embeddings

    img = load_embeddings(run, "test")["image"]
    arrays = {"emb": img["emb"], "id": img["id"], "modality": np.array(["image"] * len(img["id"])),
              "label": img["label"], "uri": np.array([""] * len(img["id"]))}
    np.savez(gallery, **arrays)
    first = search("--gallery", str(gallery), "--index", "ann")
    np.savez(gallery, **{**arrays, "emb": arrays["emb"][::-1].copy(), "id": arrays["id"][::-1].copy()})
    assert search("--gallery", str(gallery), "--index", "ann") == first  # same rows, other order: same hits
    assert len(list((run / "index").glob("*.faiss"))) == 3
    # a corrupt index: one line naming it
    for f in (run / "index").glob("*.faiss"):
        f.write_bytes(b"garbage")
    res = runner.invoke(main, ["search", str(run), "--text", "seven", "--target", "image", "--index", "ann"])
    mine = [line for line in res.output.strip().splitlines() if "Loading weights" not in line]  # the text model's own bar
    assert res.exit_code == 1 and len(mine) == 1 and "not a readable FAISS index" in mine[0], res.output
