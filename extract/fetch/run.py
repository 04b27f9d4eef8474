"""The asyncio engine behind :func:`mmx.extract.fetch.fetch_manifest`.

A fixed pool of ``workers`` coroutines pulls items from a queue of at most ``2 * workers``
entries, fed by one producer that walks the manifest a chunk at a time
(:mod:`mmx.extract.fetch.manifest`); so the work in flight, and the memory it needs, does not
depend on the manifest's size. Each worker streams into a ``.part`` file
beside its destination, validates it (a small file on the event loop, a larger one in a small
thread pool: decoders hold the GIL only partly and must not stall the loop), renames it into
place and only then appends the item's final status to the journal (see
:mod:`mmx.extract.fetch.status`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import itertools
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from mmx.extract.fetch.config import FetchConfig, FetchLayout, allowed_roots_key
from mmx.extract.fetch.files import (check_dataset_folder, is_url, link_or_copy, place_file, safe_stem,
                                    sweep_partial_files)
from mmx.extract.fetch.status import NO_SPACE, OK, Journal, needs_fetch

# Files up to this size are validated on the event loop. Their check (magic bytes, reduced
# decode) costs less than handing them to the pool, whose hop cost the loop about 0.5 ms of
# CPU an item beside the validating threads (GIL hand-offs): a 24 kB JPEG's check takes 0.3
# ms, a 108 kB one 1.1 ms (benchmarks/RESULTS.md, Fetch).
INLINE_CHECK_BYTES = 32 * 1024


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
            self._show(now)

    def _show(self, now: float) -> None:
        rate = self.nbytes / max(now - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate / 2**20:.2f} MiB/s, ok {100 * self.ok / max(self.done, 1):.1f}%",
                                 refresh=False)

    def close(self) -> None:
        if self.done:
            self._show(time.monotonic())  # the final figures, not those of the last half second
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
    """Four walks over the manifest, a chunk at a time: validate, plan, fetch, summarise.

    Between chunks only the plan (one bit per item) and the journal index (16 bytes per id)
    are kept, so memory does not grow with the manifest beyond those few bytes per item.
    """
    from mmx.extract.fetch.manifest import ignores_case, scan_manifest
    from mmx.extract.manifest import ManifestError
    from mmx.extract.fetch.status import JournalIndex

    stream = scan_manifest(manifest_path)  # every problem of the manifest, before anything is written
    layout = FetchLayout(Path(out_dir).resolve())
    if layout.manifest.resolve() == Path(manifest_path).resolve():
        raise ValueError(f"{manifest_path} would be overwritten by the fetched manifest; use another --out")
    roots = [Path(os.path.realpath(r)) for r in (cfg.allowed_roots or (str(stream.path.parent),))]
    layout.root.mkdir(parents=True, exist_ok=True)
    if stream.case_collisions and ignores_case(layout.root):
        raise ManifestError(stream.path, [f"{m} (the file system of {layout.root} ignores case)" for m in stream.case_collisions])
    check_dataset_folder(layout.root)  # no planted link takes a write out of the dataset folder
    lock = _lock(layout)
    try:
        swept = sweep_partial_files(layout.media)
        plan, items, todo = _plan(stream, JournalIndex(layout.journal), layout, cfg)
        this_run = asyncio.run(_engine(stream, plan, todo, layout, roots, cfg))
        report, totals = _finalise(stream, JournalIndex(layout.journal), layout, cfg)
    finally:
        lock.close()
    return FetchSummary(layout, items, todo, items - todo, this_run, totals, report, swept)


def _selected(frame, cfg: FetchConfig):
    """The rows of a chunk this run is about (the modality filter)."""
    return frame[frame["modality"].isin(cfg.modalities)] if cfg.modalities else frame


def _plan(stream, index, layout: FetchLayout, cfg: FetchConfig):
    """Which items to fetch: one bit per manifest row (``np.packbits`` per chunk), and the counts."""
    import numpy as np

    plan, items, todo = [], 0, 0
    for _, chunk in stream.chunks():
        wanted = np.zeros(len(chunk), dtype=bool)
        frame = _selected(chunk, cfg)
        ids, uris = frame["id"].tolist(), frame["uri"].tolist()
        for pos, rec, uri in zip(frame.index - chunk.index[0], index.records(ids), uris):
            wanted[pos] = needs_fetch(rec, uri, layout.root, cfg)
        plan.append(np.packbits(wanted))
        items += len(frame)
        todo += int(wanted.sum())
    return plan, items, todo


def _finalise(stream, index, layout: FetchLayout, cfg: FetchConfig) -> tuple[dict, dict]:
    """Status table, fetched manifest and link-rot report, streamed chunk by chunk from the journal."""
    import pandas as pd

    from mmx.extract.fetch.report import ReportCounter, write_report
    from mmx.extract.fetch.status import StatusTableWriter, status_row

    counter, totals = ReportCounter(), {}
    table = StatusTableWriter(layout.status)
    fetched_tmp = layout.manifest.with_name(f".{layout.manifest.name}.tmp")
    try:
        with open(fetched_tmp, "w", newline="", encoding="utf-8") as fetched:
            pd.DataFrame(columns=stream.columns).to_csv(fetched, index=False)  # header, as write_manifest
            for _, chunk in stream.chunks():
                frame = _selected(chunk, cfg)
                ids = frame["id"].tolist()
                records = index.records(ids)
                keep, local = [], []
                for item_id, modality, label, uri, rec in zip(ids, frame["modality"], frame["label"], frame["uri"],
                                                              records):
                    table.write(status_row(item_id, rec))
                    status = rec["status"] if rec is not None else "pending"
                    counter.add(modality, label, status)
                    totals[status] = totals.get(status, 0) + 1
                    keep.append(status == OK)
                    if status == OK:
                        local.append(rec.get("path") or uri)
                out = frame[keep].copy()
                out["uri"] = local
                out.to_csv(fetched, index=False, header=False)
        os.replace(fetched_tmp, layout.manifest)
    except BaseException:
        table.abort()
        fetched_tmp.unlink(missing_ok=True)
        raise
    table.commit()
    report = counter.report()
    write_report(report, layout.meta)
    return report, totals


def _skip_missing_sniffio() -> None:
    """httpcore 1.0 tries ``import sniffio`` for every lock it creates; when sniffio is not
    installed (anyio 4 does not need it) each failed import searches all of sys.path, about
    0.5 ms, a dozen times per item: a third of the engine's time. A ``None`` entry makes that
    import fail at once, with the same outcome, only fast."""
    import importlib.util
    import sys

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


async def _engine(stream, plan: list, todo: int, layout: FetchLayout, roots, cfg: FetchConfig) -> dict:
    import httpx
    import numpy as np

    from mmx.extract.fetch.http import ACCEPT_ENCODING

    _skip_missing_sniffio()

    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * cfg.workers)
    counts: dict[str, int] = {}
    host_limits: dict[str, asyncio.Semaphore] = {}
    folders: set[str] = set()
    fresh: set[str] = set()  # modality folders empty when the run began: no older copies to drop
    progress = _Progress(todo, cfg.progress)
    pool = ThreadPoolExecutor(max_workers=cfg.validate_threads, thread_name_prefix="mmx-validate")
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmx-manifest")  # one thread, one malloc arena
    loop = asyncio.get_running_loop()
    timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout, pool=None)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    # one TLS context for every worker's client: building one loads the CA bundle (tens of ms
    # each, 8% of a 3000-item run's CPU when each of 16 clients built its own)
    tls = httpx.create_ssl_context()

    def planned_items():
        """The items to fetch, walking the manifest again one chunk at a time."""
        for (_, chunk), bits in zip(stream.chunks(), plan):
            wanted = np.unpackbits(bits, count=len(chunk)).astype(bool)
            if not wanted.any():
                continue
            rows = chunk[wanted]
            yield from zip(rows["id"], rows["modality"], rows["uri"], rows["text"], rows["label"])

    async def producer() -> None:
        # Parsing a chunk takes tens of milliseconds: done in a thread so the downloads go on.
        items = planned_items()
        batch: list = []
        while batch is not None:
            batch = await loop.run_in_executor(reader, lambda: list(itertools.islice(items, 512)) or None)
            for item_id, modality, uri, text, label in batch or ():
                if modality not in folders:
                    folder = layout.media / modality
                    folder.mkdir(parents=True, exist_ok=True)
                    with os.scandir(folder) as entries:
                        if next(entries, None) is None:
                            fresh.add(modality)
                    folders.add(modality)
                await queue.put({"id": item_id, "modality": modality, "uri": uri, "text": text, "label": label})
        for _ in range(cfg.workers):
            await queue.put(None)

    async def worker(client, journal: Journal) -> None:
        while (item := await queue.get()) is not None:
            started = time.monotonic()
            rec = await _fetch_item(item, client, stream, layout, roots, cfg, host_limits, pool,
                                    item["modality"] not in fresh)
            rec.update(id=item["id"], modality=item["modality"], label=item["label"], uri=item["uri"],
                       time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       elapsed_s=round(time.monotonic() - started, 3))
            journal.append(rec)
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            progress.update(rec["status"], int(rec.get("bytes") or 0) if rec["status"] == OK else 0)

    async def worker_with_client(journal: Journal) -> None:
        # One small pool per worker: httpcore scans every connection of a pool on each request,
        # so a shared pool of ``workers`` connections costs O(workers) per item.
        async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, verify=tls,
                                     headers={"user-agent": cfg.user_agent, "accept-encoding": ACCEPT_ENCODING}) as client:
            await worker(client, journal)

    try:
        with Journal(layout.journal) as journal:
            await asyncio.gather(producer(), *(worker_with_client(journal) for _ in range(cfg.workers)))
    finally:
        progress.close()
        pool.shutdown(wait=True)
        reader.shutdown(wait=True)
    return counts


async def _fetch_item(item, client, stream, layout, roots, cfg, host_limits, pool, older_copies: bool = True) -> dict:
    """Fetch one item; always returns a record with a ``status``. ``older_copies``: whether its
    folder may hold an earlier run's copy of it under another extension."""
    from mmx.extract.fetch.http import get_with_retries, remove_quietly
    from mmx.extract.fetch.validate import admit_local, check_file

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
            check = functools.partial(check_file, tmp, modality, max_pixels=cfg.max_pixels)
            verdict = check() if got.nbytes <= INLINE_CHECK_BYTES else await loop.run_in_executor(pool, check)
        elif scheme == "file":
            src, verdict = await loop.run_in_executor(
                pool, lambda: admit_local(uri, stream.resolve(uri), modality, roots, max_pixels=cfg.max_pixels))
            if src is None:
                return {"status": verdict.kind, "error": verdict.message, "attempts": 1,
                        "allowed_roots": allowed_roots_key(cfg)}
            if src.stat().st_size > cfg.max_bytes:
                return {"status": "too_large", "error": f"{src.stat().st_size} bytes exceeds the cap of "
                        f"{cfg.max_bytes}", "attempts": 1, "bytes": src.stat().st_size}
            sha = await loop.run_in_executor(pool, link_or_copy, src, tmp)
            rec = {"final_url": src.as_uri(), "bytes": os.path.getsize(tmp), "attempts": 1, "sha256": sha}
        else:
            return {"status": "bad_url", "error": f"unsupported URL scheme {scheme!r}", "attempts": 0}
        if verdict.kind is not None:
            return {**rec, "status": verdict.kind, "error": verdict.message}
        final = place_file(tmp, folder, stem, verdict.extension, older_copies)
        return {**rec, "status": OK, "path": final.relative_to(layout.root).as_posix(), "error": ""}
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the run
        kind = NO_SPACE if isinstance(exc, OSError) and exc.errno == errno.ENOSPC else "error"
        return {"status": kind, "error": f"{type(exc).__name__}: {exc}", "attempts": 1}
    finally:
        remove_quietly(tmp)
