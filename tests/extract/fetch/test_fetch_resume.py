"""mmx fetch is resumable: SIGKILL halfway, rerun, and --retry-failed after the server recovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner
from fetch_server import LoopbackServer, send, serve, status

from mmx.extract.fetch.status import read_journal, read_status_table
from mmx.pipeline.cli import main
from mmx.extract.manifest import write_manifest

N_SLOW = 40
ARGS = ["--no-progress", "--backoff-base", "0.01", "--read-timeout", "5", "--connect-timeout", "2"]


def slow_in_two_halves(body: bytes, pause: float):
    """Half the body, a pause, the rest: a kill lands while .part files are half written."""
    def behave(h, hit):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        time.sleep(pause)
        h.wfile.write(body[len(body) // 2:])
    return behave


@pytest.fixture
def jpeg(shared_media) -> bytes:
    return (shared_media / "languagebind" / "image" / "1.jpg").read_bytes()


def _journal_lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_then_rerun_counts_no_partial_file_and_downloads_nothing_twice(jpeg, tmp_path):
    routes = {f"/s{i}.jpg": slow_in_two_halves(jpeg, 0.08) for i in range(N_SLOW)}
    frame = pd.DataFrame({"id": [f"s{i}" for i in range(N_SLOW)], "modality": "image", "label": "c"})
    ds = tmp_path / "ds"
    journal = ds / "fetch" / "journal.jsonl"
    with LoopbackServer(routes) as srv:
        frame["uri"] = [srv.url(f"/s{i}.jpg") for i in range(N_SLOW)]
        manifest = write_manifest(frame, tmp_path / "m.csv")
        cmd = [sys.executable, "-m", "mmx.pipeline.cli", "fetch", str(manifest), "--out", str(ds),
               "--workers", "4", "--per-host", "4", *ARGS]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while _journal_lines(journal) < 8 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        done_before = read_journal(journal)
        assert 8 <= len(done_before) < N_SLOW, "the kill must land halfway for this test to mean anything"
        assert all(r["status"] == "ok" for r in done_before.values())
        hits_before = dict(srv.hits)

        result = CliRunner().invoke(main, ["fetch", str(manifest), "--out", str(ds), *ARGS])
        assert result.exit_code == 0, result.output
        hits = dict(srv.hits)

    # ok items were not downloaded twice: not one more request for them after the kill
    for item_id in done_before:
        assert hits[f"/{item_id}.jpg"] == hits_before[f"/{item_id}.jpg"] == 1
    # every item has exactly one status, in the journal and in the table, and all are ok
    lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    assert sorted(r["id"] for r in lines) == sorted(frame["id"])
    table = read_status_table(ds / "fetch" / "status.csv")
    assert len(table) == N_SLOW and set(table["status"]) == {"ok"}
    # no partial file survives, and no file is counted that is not complete
    media = sorted(p.name for p in (ds / "media" / "image").iterdir())
    assert media == sorted(f"s{i}.jpg" for i in range(N_SLOW))
    assert all((ds / "media" / "image" / name).read_bytes() == jpeg for name in media)


def test_retry_failed_turns_transient_failures_into_ok_and_leaves_the_rest(jpeg, tmp_path):
    state = {"down": True}
    good = serve(jpeg, "image/jpeg")

    def flaky(h, hit):
        (status(503, {"Retry-After": "0"}) if state["down"] else good)(h, hit)

    routes = {"/good.jpg": good, "/flaky1.jpg": flaky, "/flaky2.jpg": flaky,
              "/gone.jpg": lambda h, hit: send(h, 410) if state["down"] else good(h, hit)}
    ds = tmp_path / "ds"
    with LoopbackServer(routes) as srv:
        ids = ["good", "flaky1", "flaky2", "gone", "missing"]
        frame = pd.DataFrame({"id": ids, "modality": "image", "label": "c",
                              "uri": [srv.url(f"/{i}.jpg") for i in ids]})
        manifest = write_manifest(frame, tmp_path / "m.csv")
        fetch = ["fetch", str(manifest), "--out", str(ds), "--retries", "1", *ARGS]

        def statuses():
            return read_status_table(ds / "fetch" / "status.csv").set_index("id")["status"].to_dict()

        assert CliRunner().invoke(main, fetch).exit_code == 0
        assert statuses() == {"good": "ok", "flaky1": "server_error", "flaky2": "server_error",
                              "gone": "gone", "missing": "not_found"}
        assert srv.hits["/flaky1.jpg"] == 2  # retried once within the run

        state["down"] = False  # the server recovers
        assert CliRunner().invoke(main, fetch).exit_code == 0  # a plain rerun retries nothing
        assert srv.hits["/flaky1.jpg"] == 2
        result = CliRunner().invoke(main, [*fetch, "--retry-failed"])
        assert result.exit_code == 0, result.output
        assert statuses() == {"good": "ok", "flaky1": "ok", "flaky2": "ok", "gone": "gone", "missing": "not_found"}
        assert srv.hits["/good.jpg"] == 1 and srv.hits["/gone.jpg"] == 1 and srv.hits["/missing.jpg"] == 1

        result = CliRunner().invoke(main, [*fetch, "--retry-failed", "--all-failures"])
        assert result.exit_code == 0, result.output
        assert statuses()["gone"] == "ok" and srv.hits["/gone.jpg"] == 2
        assert srv.hits["/missing.jpg"] == 2 and srv.hits["/good.jpg"] == 1


def test_deleted_ok_file_is_fetched_again(jpeg, tmp_path):
    ds = tmp_path / "ds"
    with LoopbackServer({"/a.jpg": serve(jpeg, "image/jpeg")}) as srv:
        frame = pd.DataFrame({"id": ["a"], "modality": ["image"], "uri": [srv.url("/a.jpg")]})
        manifest = write_manifest(frame, tmp_path / "m.csv")
        fetch = ["fetch", str(manifest), "--out", str(ds), *ARGS]
        assert CliRunner().invoke(main, fetch).exit_code == 0
        (ds / "media" / "image" / "a.jpg").unlink()
        assert CliRunner().invoke(main, fetch).exit_code == 0
        assert srv.hits["/a.jpg"] == 2 and (ds / "media" / "image" / "a.jpg").read_bytes() == jpeg


def test_torn_journal_line_is_ignored_and_stale_part_files_are_swept(jpeg, tmp_path):
    ds = tmp_path / "ds"
    with LoopbackServer({"/a.jpg": serve(jpeg, "image/jpeg"), "/b.jpg": serve(jpeg, "image/jpeg")}) as srv:
        frame = pd.DataFrame({"id": ["a", "b"], "modality": ["image"] * 2,
                              "uri": [srv.url("/a.jpg"), srv.url("/b.jpg")]})
        manifest = write_manifest(frame, tmp_path / "m.csv")
        fetch = ["fetch", str(manifest), "--out", str(ds), *ARGS]
        assert CliRunner().invoke(main, fetch).exit_code == 0
        journal = ds / "fetch" / "journal.jsonl"
        kept = [line for line in journal.read_text().splitlines() if '"id":"a"' in line]
        journal.write_text(kept[0] + "\n" + '{"id":"b","status":"o')  # b's line torn by a kill
        (ds / "media" / "image" / ".b.1234abcd.part").write_bytes(jpeg[:100])
        result = CliRunner().invoke(main, fetch)
        assert result.exit_code == 0, result.output
        assert srv.hits["/a.jpg"] == 1 and srv.hits["/b.jpg"] == 2
    assert not list((ds / "media").rglob("*.part"))
    assert set(read_journal(journal)) == {"a", "b"}
