"""The status of every fetched item: an append-only journal and the table built from it.

Link rot (paper 000, Sec. III-A: 88.2% of XMediaNet's images, 78.8% of its videos, 82.8% of
its audio could still be obtained) means that failures are data, not noise: every item of a
manifest ends with exactly one status row, and failed items stay in the table.

The journal (``fetch/journal.jsonl``) is the source of truth. One line is appended, and
flushed, when an item reaches its final status, which for an ``ok`` item is only after its
file has been validated and renamed into place. A SIGKILL can therefore lose only the items in
flight (their temporary ``.part`` files are swept on the next run) and at most tear the last
line, which :func:`read_journal` ignores. Reruns append; the last line of an id wins. The table
(``fetch/status.csv``) is rewritten atomically from the journal at the end of every run.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

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
    "error": "unexpected error (see the message)",
}
# Kinds worth retrying later without being asked to retry everything (``--retry-failed``).
TRANSIENT_KINDS = frozenset({"rate_limited", "server_error", "timeout", "connection", "truncated"})


def read_journal(path: str | os.PathLike) -> dict[str, dict]:
    """The last record of every id in the journal; a torn last line (SIGKILL) is ignored."""
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


class Brief(NamedTuple):
    """What resuming and reporting need of an item's last journal record (kept per item, so small)."""

    offset: int
    uri: str
    status: str
    path: str
    bytes: int


def index_journal(path: str | os.PathLike) -> dict[str, Brief]:
    """The last record of every id, as a :class:`Brief` with its byte offset in the journal.

    Holding whole records for a big manifest would make memory grow by kilobytes per item;
    the full rows are read back one at a time through the offsets (:func:`status_rows`).
    """
    index: dict[str, Brief] = {}
    path = Path(path)
    if not path.exists():
        return index
    with open(path, "rb") as fh:
        offset = 0
        for line in fh:
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None  # a torn last line
            if isinstance(rec, dict) and "id" in rec:
                index[rec["id"]] = Brief(offset, rec.get("uri", ""), rec.get("status", ""), rec.get("path") or "",
                                         int(rec.get("bytes") or 0))
            offset += len(line)
    return index


def status_rows(ids_in_order: Iterable[str], journal_path: str | os.PathLike,
                index: dict[str, Brief]) -> Iterator[dict]:
    """Rows of the status table in manifest order, one per id (``pending`` if never reached)."""
    with open(journal_path, "rb") if Path(journal_path).exists() else open(os.devnull, "rb") as fh:
        for item_id in ids_in_order:
            brief = index.get(item_id)
            if brief is None:
                rec = {"id": item_id, "status": "pending"}
            else:
                fh.seek(brief.offset)
                rec = json.loads(fh.readline())
            yield {col: rec.get(col, "") for col in STATUS_COLUMNS}


def write_status_table(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write the status table atomically, streaming rows (CSV; Parquet by suffix, in memory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(list(rows), columns=list(STATUS_COLUMNS)).astype(str).to_parquet(tmp, index=False)
    else:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(STATUS_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)
    return path


def read_status_table(path: str | os.PathLike) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)
