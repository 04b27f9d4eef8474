"""The status of every fetched item: an append-only journal and the table built from it.

The journal (``fetch/journal.jsonl``, :class:`Journal`) is the source of truth: one flushed line
per item that reaches its final status (an ``ok`` one once its file is in place); the last line
of an id wins, and a torn last line is ignored. The table (``fetch/status.csv``) is rewritten
from it at the end of every run, through a :class:`JournalIndex`. :func:`needs_fetch` decides
what a rerun fetches again. Why: docs/notes/extract.md.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable

from mmx.extract.fetch.config import FetchConfig, allowed_roots_key

STATUS_COLUMNS = (
    "id", "modality", "label", "uri", "status", "http_status", "final_url", "path", "bytes",
    "sha256", "content_type", "attempts", "error", "time", "elapsed_s",
)

OK = "ok"
# Failure kinds, each with the one line the report shows for it.
FAILURE_KINDS = {
    "not_found": "404 Not Found (or a local file that does not exist)",
    "gone": "410 Gone",
    "http_error": "another 4xx answer",
    "rate_limited": "429 Too Many Requests after every retry",
    "server_error": "5xx answer after every retry",
    "timeout": "connect, read or total time limit reached",
    "dns": "host name does not resolve",
    "connection": "connection refused or reset",
    "truncated": "body shorter than announced",
    "too_large": "body larger than the size cap",
    "wrong_type": "content of another kind (e.g. an HTML page served with status 200)",
    "undecodable": "right kind, but the decode probe fails",
    "decompression_bomb": "image with more pixels than the cap",
    "redirect_loop": "redirect loop or too many redirects",
    "bad_redirect": "redirect to a non-http(s) scheme",
    "bad_url": "URL scheme that is not http(s) or file",
    "forbidden_path": "local path outside the allowed roots",
    "no_space": "the disk filled up while writing the file (retried by --retry-failed)",
    "error": "unexpected error (see the message)",
}
# Kinds worth retrying later without being asked to retry everything (``--retry-failed``).
TRANSIENT_KINDS = frozenset({"rate_limited", "server_error", "timeout", "connection", "truncated", "no_space"})
NO_SPACE = "no_space"  # transient for --retry-failed, but never retried within a run: the disk stays full
# Kinds decided by a run's own options, not by the source: checked again by a run with other
# options, so a rerun with wider permissions (``--allow-root``) takes what they now allow.
RECHECKED_KINDS = frozenset({"forbidden_path"})


def read_journal(path: str | os.PathLike) -> dict[str, dict]:
    """The last record of every id in the journal; a torn last line (SIGKILL) is ignored.

    Holds every record (about a kilobyte each): for tests and small journals. ``mmx fetch``
    itself goes through :class:`JournalIndex`.
    """
    records: dict[str, dict] = {}
    path = Path(path)
    if not path.exists():
        return records
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # only the line being written when the process died can be torn
            if isinstance(rec, dict) and "id" in rec:
                records[rec["id"]] = rec
    return records


class Journal:
    """Append-only JSON Lines writer; each record is flushed before the next item starts."""

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")
        if torn:  # start on a fresh line, so a torn record never swallows a good one
            self._fh.write("\n")
        self._fsync = fsync

    def append(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._fh.flush()  # in the OS page cache: survives SIGKILL (fsync only adds power loss)
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


class JournalIndex:
    """Where the last record of every id lies in the journal: 16 bytes per id, not a dict of records.

    Two numpy arrays sorted by a 64-bit hash of the id (:func:`~mmx.extract.fetch.manifest.id_hashes`)
    hold the byte offset of that id's last line; the records themselves stay on disk and are read
    back a chunk of ids at a time (:meth:`records`). A record is only returned when its ``id``
    matches, so a hash collision (odds about N^2 / 2^65) costs a refetch, never a wrong status.
    """

    _BATCH = 4096  # ids hashed per batch while indexing: bounds the Python objects held at once

    def __init__(self, path: str | os.PathLike):
        import numpy as np

        from mmx.extract.fetch.manifest import id_hashes

        self.path = Path(path)
        hashes, offsets = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
        ids, starts = [], []

        def flush():
            hashes.append(id_hashes(ids))
            offsets.append(np.asarray(starts, dtype=np.int64))
            ids.clear()
            starts.clear()

        if self.path.exists():
            with open(self.path, "rb") as fh:
                offset = 0
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        rec = None  # a torn line (SIGKILL)
                    if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                        ids.append(rec["id"])
                        starts.append(offset)
                        if len(ids) == self._BATCH:
                            flush()
                    offset += len(line)
        flush()
        h, o = np.concatenate(hashes), np.concatenate(offsets)
        order = np.lexsort((o, h))            # by hash, then by position in the journal
        h, o = h[order], o[order]
        last = np.ones(len(h), dtype=bool)    # reruns append: the last line of an id wins
        last[:-1] = h[1:] != h[:-1]
        self.hashes, self.offsets = h[last], o[last]

    def __len__(self) -> int:
        return len(self.hashes)

    def records(self, ids: list[str]) -> list[dict | None]:
        """The last journal record of each id (None where it has none), in the order of ``ids``."""
        import numpy as np

        from mmx.extract.fetch.manifest import id_hashes

        out: list[dict | None] = [None] * len(ids)
        if not len(self.hashes) or not ids:
            return out
        wanted = id_hashes(ids)
        pos = np.searchsorted(self.hashes, wanted).clip(max=len(self.hashes) - 1)
        found = np.flatnonzero(self.hashes[pos] == wanted)
        offsets = self.offsets[pos[found]]
        with open(self.path, "rb") as fh:
            for k in np.argsort(offsets, kind="stable"):  # read forwards through the file
                fh.seek(int(offsets[k]))
                rec = json.loads(fh.readline())
                i = int(found[k])
                if rec.get("id") == ids[i]:
                    out[i] = rec
        return out


def status_row(item_id: str, rec: dict | None) -> dict:
    """One row of the status table (``pending`` if the item was never reached)."""
    rec = rec if rec is not None else {"id": item_id, "status": "pending"}
    return {col: rec.get(col, "") for col in STATUS_COLUMNS}


class StatusTableWriter:
    """Writes the status table row by row into a temp file, renamed into place by :meth:`commit`.

    CSV is streamed as it comes; Parquet (by suffix) is written one row group per ``batch_rows``
    rows, so neither holds the table.
    """

    def __init__(self, path: str | os.PathLike, batch_rows: int = 8192):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.batch_rows = batch_rows
        self._pending: list[dict] = []
        if self.path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._schema = pa.schema([(c, pa.string()) for c in STATUS_COLUMNS])
            self._parquet = pq.ParquetWriter(self.tmp, self._schema)
        else:
            self._parquet = None
            self._fh = open(self.tmp, "w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._fh, fieldnames=list(STATUS_COLUMNS))
            self._csv.writeheader()

    def write(self, row: dict) -> None:
        if self._parquet is None:
            self._csv.writerow(row)
            return
        self._pending.append(row)
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            columns = {c: ["" if r[c] is None else str(r[c]) for r in self._pending] for c in STATUS_COLUMNS}
            self._parquet.write_table(pa.table(columns, schema=self._schema))
            self._pending = []

    def commit(self) -> Path:
        if self._parquet is None:
            self._fh.close()
        else:
            self._flush()
            self._parquet.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._parquet is None:
            self._fh.close()
        else:
            self._parquet.close()
        self.tmp.unlink(missing_ok=True)


def write_status_table(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write the status table atomically from an iterable of rows, streaming (CSV or Parquet)."""
    writer = StatusTableWriter(path)
    try:
        for row in rows:
            writer.write(row)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def read_status_table(path: str | os.PathLike) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def needs_fetch(rec: dict | None, uri: str, root: Path, cfg: FetchConfig) -> bool:
    """Whether an item whose last journal record is ``rec`` must be (re)fetched in this run."""
    if rec is None or rec.get("uri", "") != uri:
        return True
    status = rec.get("status", "")
    if status == OK:
        path = rec.get("path") or ""
        if not path:
            return False  # inline text
        try:
            return (root / path).stat().st_size != int(rec.get("bytes") or 0)
        except OSError:
            return True
    if cfg.retry_all or (status in RECHECKED_KINDS and rec.get("allowed_roots") != allowed_roots_key(cfg)):
        return True
    return cfg.retry_failed and status in TRANSIENT_KINDS
