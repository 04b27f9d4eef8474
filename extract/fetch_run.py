"""The asyncio engine behind :func:`mmx.extract.fetch.fetch_manifest`.

A fixed pool of ``workers`` coroutines pulls items from a queue of at most ``2 * workers``
entries, fed by one producer that walks the manifest; so the work in flight, and the memory
it needs, does not depend on the manifest's size. Each worker streams into a ``.part`` file
beside its destination, validates it in a small thread pool (decoders hold the GIL only
partly and must not stall the event loop), renames it into place and only then appends the
item's final status to the journal (see :mod:`mmx.extract.fetch_status`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from mmx.extract.fetch import (FetchConfig, FetchLayout, is_url, link_or_copy, local_source, needs_fetch,
                               place_file, safe_stem, sweep_partial_files)
from mmx.extract.fetch_status import OK, Journal, index_journal, status_rows, write_status_table


@dataclasses.dataclass
class FetchSummary:
    layout: FetchLayout
    items: int                 # in the manifest (after the modality filter)
    fetched: int               # processed in this run
    skipped: int               # already final from an earlier run
    this_run: dict             # status -> count, this run
    totals: dict               # status -> count, whole dataset
    report: dict
    swept_partial: int = 0


class _Progress:
    """tqdm bar with items/s (tqdm's rate), bytes/s and the running success rate."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="item", disable=not enabled, dynamic_ncols=True, desc="fetch")
        self.start = time.monotonic()
        self.ok = self.done = self.nbytes = 0
        self._shown = 0.0

    def update(self, status: str, nbytes: int) -> None:
        self.done += 1
        self.ok += status == OK
        self.nbytes += nbytes
        self.bar.update(1)
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            rate = self.nbytes / max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate / 2**20:.2f} MiB/s, ok {100 * self.ok / self.done:.1f}%")

    def close(self) -> None:
        self.bar.close()


def _lock(layout: FetchLayout):
    import fcntl

    layout.meta.mkdir(parents=True, exist_ok=True)
    fh = open(layout.meta / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ValueError(f"another 'mmx fetch' is writing into {layout.root}; wait for it or use another --out")
    return fh


def run_fetch(manifest_path, out_dir, cfg: FetchConfig) -> FetchSummary:
    from mmx.extract.fetch_report import build_report, write_report
    from mmx.pipeline.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    layout = FetchLayout(Path(out_dir).resolve())
    if layout.manifest.resolve() == Path(manifest_path).resolve():
        raise ValueError(f"{manifest_path} would be overwritten by the fetched manifest; use another --out")
    frame = manifest.frame
    if cfg.modalities:
        frame = frame[frame["modality"].isin(cfg.modalities)].reset_index(drop=True)
    roots = [Path(os.path.realpath(r)) for r in (cfg.allowed_roots or (str(manifest.path.parent),))]
    layout.root.mkdir(parents=True, exist_ok=True)
    lock = _lock(layout)
    try:
        swept = sweep_partial_files(layout.media)
        journal = index_journal(layout.journal)
        ids, uris = frame["id"].tolist(), frame["uri"].tolist()
        todo = [i for i, (item_id, uri) in enumerate(zip(ids, uris))
                if needs_fetch(journal.get(item_id), uri, layout.root, cfg)]
        del journal  # the engine needs none of it; it is read back for the table below
        this_run = asyncio.run(_engine(manifest, frame, todo, layout, roots, cfg))
        journal = index_journal(layout.journal)
        write_status_table(status_rows(ids, layout.journal, journal), layout.status)
        _write_fetched_manifest(frame, journal, layout)
        report = build_report(frame, journal)
        write_report(report, layout.meta)
    finally:
        lock.close()
    totals: dict[str, int] = {}
    for item_id in ids:
        status = journal[item_id].status if item_id in journal else "pending"
        totals[status] = totals.get(status, 0) + 1
    return FetchSummary(layout, len(frame), len(todo), len(frame) - len(todo), this_run, totals, report, swept)


def _write_fetched_manifest(frame, journal: dict, layout: FetchLayout) -> None:
    from mmx.pipeline.manifest import write_manifest

    keep, uris = [], []
    for i, item_id in enumerate(frame["id"].tolist()):
        brief = journal.get(item_id)
        if brief is not None and brief.status == OK:
            keep.append(i)
            uris.append(brief.path or frame.at[i, "uri"])
    out = frame.iloc[keep].copy()
    out["uri"] = uris
    write_manifest(out.reset_index(drop=True), layout.manifest)


def _skip_missing_sniffio() -> None:
    """httpcore 1.0 tries ``import sniffio`` for every lock it creates; when sniffio is not
    installed (anyio 4 no longer needs it) each failed import searches all of sys.path, about
    0.5 ms, a dozen times per item: a third of the engine's time. A ``None`` entry makes that
    import fail at once, which is exactly what it did before, only fast."""
    import importlib.util
    import sys

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


async def _engine(manifest, frame, todo: list[int], layout: FetchLayout, roots, cfg: FetchConfig) -> dict:
    import httpx

    _skip_missing_sniffio()

    columns = {c: frame[c].tolist() for c in ("id", "modality", "uri", "text", "label")}
    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * cfg.workers)
    counts: dict[str, int] = {}
    host_limits: dict[str, asyncio.Semaphore] = {}
    progress = _Progress(len(todo), cfg.progress)
    pool = ThreadPoolExecutor(max_workers=cfg.validate_threads, thread_name_prefix="mmx-validate")
    timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout, pool=None)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    for modality in set(columns["modality"][i] for i in todo):
        (layout.media / modality).mkdir(parents=True, exist_ok=True)

    async def producer() -> None:
        for i in todo:
            await queue.put(i)
        for _ in range(cfg.workers):
            await queue.put(None)

    async def worker(client, journal: Journal) -> None:
        while (i := await queue.get()) is not None:
            item = {c: columns[c][i] for c in columns}
            started = time.monotonic()
            rec = await _fetch_item(item, client, manifest, layout, roots, cfg, host_limits, pool)
            rec.update(id=item["id"], modality=item["modality"], label=item["label"], uri=item["uri"],
                       time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       elapsed_s=round(time.monotonic() - started, 3))
            journal.append(rec)
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            progress.update(rec["status"], int(rec.get("bytes") or 0) if rec["status"] == OK else 0)

    async def worker_with_client(journal: Journal) -> None:
        # One small pool per worker: httpcore scans every connection of a pool on each request,
        # so a shared pool of ``workers`` connections costs O(workers) per item.
        async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False,
                                     headers={"user-agent": cfg.user_agent}) as client:
            await worker(client, journal)

    try:
        with Journal(layout.journal) as journal:
            await asyncio.gather(producer(), *(worker_with_client(journal) for _ in range(cfg.workers)))
    finally:
        progress.close()
        pool.shutdown(wait=True)
    return counts


async def _fetch_item(item, client, manifest, layout, roots, cfg, host_limits, pool) -> dict:
    """Fetch one item; always returns a record with a ``status``."""
    from mmx.extract.fetch_http import get_with_retries, remove_quietly
    from mmx.extract.fetch_validate import check_file

    uri, modality = item["uri"], item["modality"]
    if not uri:
        return {"status": OK, "bytes": len(item["text"].encode()), "attempts": 0, "path": ""}
    folder = layout.media / modality
    stem = safe_stem(item["id"])
    tmp = str(folder / f".{stem}.{uuid.uuid4().hex[:8]}.part")
    loop = asyncio.get_running_loop()
    try:
        scheme = uri.split("://", 1)[0].lower() if is_url(uri) else "file"
        if scheme in ("http", "https"):
            from urllib.parse import urlsplit

            host = urlsplit(uri).netloc.lower()
            limit = host_limits.setdefault(host, asyncio.Semaphore(cfg.per_host))
            got, attempts = await get_with_retries(client, uri, modality, tmp, cfg, limit)
            rec = {"http_status": got.http_status or "", "final_url": got.final_url, "content_type": got.content_type,
                   "bytes": got.nbytes, "attempts": attempts, "sha256": got.sha256}
            if got.kind is not None:
                return {**rec, "status": got.kind, "error": got.error}
        elif scheme == "file":
            src, kind, why = local_source(uri, manifest.resolve(uri), roots)
            if src is None:
                return {"status": kind, "error": why, "attempts": 1}
            if src.stat().st_size > cfg.max_bytes:
                return {"status": "too_large", "error": f"{src.stat().st_size} bytes exceeds the cap of "
                        f"{cfg.max_bytes}", "attempts": 1, "bytes": src.stat().st_size}
            sha = await loop.run_in_executor(pool, link_or_copy, src, tmp)
            rec = {"final_url": src.as_uri(), "bytes": os.path.getsize(tmp), "attempts": 1, "sha256": sha}
        else:
            return {"status": "bad_url", "error": f"unsupported URL scheme {scheme!r}", "attempts": 0}
        verdict = await loop.run_in_executor(pool, lambda: check_file(tmp, modality, max_pixels=cfg.max_pixels))
        if verdict.kind is not None:
            return {**rec, "status": verdict.kind, "error": verdict.message}
        final = place_file(tmp, folder, stem, verdict.extension)
        return {**rec, "status": OK, "path": final.relative_to(layout.root).as_posix(), "error": ""}
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the run
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "attempts": 1}
    finally:
        remove_quietly(tmp)
