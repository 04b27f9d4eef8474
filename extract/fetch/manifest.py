"""A manifest read in chunks of ``CHUNK_ROWS`` rows, so ``mmx fetch`` never holds it whole.

:func:`scan_manifest` validates every chunk as :func:`~mmx.extract.manifest.read_manifest` does
(the same problems, all at once, with 1-based row numbers), refuses ids duplicated across chunks
or sharing a media file (found through 64-bit hashes of their case-folded file stems), and
lists the ids whose files differ only in case (:attr:`ManifestStream.case_collisions`). How and
why: docs/notes/extract.md.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator

from mmx.extract.manifest import (COLUMNS, ManifestError, cell_problems, check_parquet, longest_row, lower_columns,
                                  normalise_frame, table_format, validate_frame)

CHUNK_ROWS = 2048  # a few MB of Python strings per chunk in flight; parsing overhead stays small
MAX_LISTED_PROBLEMS = 10_000  # a manifest broken on every row must not fill memory with messages
_ROW = re.compile(r"^row (\d+): ")
_DUPLICATE = re.compile(r"^row \d+: duplicate id ")


def id_hashes(ids) -> "np.ndarray":  # noqa: F821
    """64-bit hashes of ids (pandas' keyed SipHash: the same in every process)."""
    import numpy as np
    import pandas as pd

    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False)


_format = table_format
CHUNK_BYTES = 64 << 20  # rows per chunk shrink below CHUNK_ROWS when the longest row asks for it


def chunk_rows_for(longest: int, chunk_rows: int) -> int:
    """At most ``chunk_rows`` rows, and at most :data:`CHUNK_BYTES` of the longest row's size."""
    return max(1, min(chunk_rows, CHUNK_BYTES // max(1, longest)))


def _raw_chunks(path: Path, chunk_rows: int) -> Iterator["pd.DataFrame"]:  # noqa: F821
    """The file's rows as raw frames of at most ``chunk_rows`` rows (the readers of read_manifest)."""
    import pandas as pd

    kind = _format(path)
    if kind in ("csv", "tsv"):
        with pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if kind == "tsv" else ",",
                         chunksize=chunk_rows, encoding="utf-8-sig") as reader:
            yield from reader
    elif kind == "jsonl":
        with pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows, encoding="utf-8-sig") as reader:
            for chunk in reader:
                yield chunk.astype(object)
    else:
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as pf:
            if pf.metadata.num_rows == 0:
                yield pf.schema_arrow.empty_table().to_pandas()
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()


@dataclasses.dataclass
class ManifestStream:
    """A validated manifest on disk, read again chunk by chunk whenever it is walked."""

    path: Path
    rows: int
    columns: list[str]           # COLUMNS, then the file's other columns in first-seen order
    chunk_rows: int = CHUNK_ROWS
    stamp: tuple = ()            # size and mtime when validated: the walks must see the same file
    # ids whose media file names differ only in case: "row R: ..." messages (see _duplicate_problems)
    case_collisions: list = dataclasses.field(default_factory=list)

    def chunks(self) -> Iterator[tuple[int, "pd.DataFrame"]]:  # noqa: F821
        """``(first row index, normalised frame)`` for each chunk, every column present, as strings."""
        if self.stamp and _stamp(self.path) != self.stamp:
            raise ManifestError(self.path, ["the manifest changed while 'mmx fetch' was reading it; run again"])
        start = 0
        for raw in _raw_chunks(self.path, self.chunk_rows):
            if len(raw) == 0:
                continue
            frame = _normalise(raw).reindex(columns=self.columns, fill_value="")
            frame.index = range(start, start + len(frame))
            yield start, frame
            start += len(frame)

    def resolve(self, uri: str) -> str:
        """A local ``uri`` resolved against the manifest's folder; URLs unchanged (as Manifest.resolve)."""
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri):
            return uri
        p = Path(uri)
        return str(p if p.is_absolute() else (self.path.parent / p))


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _normalise(raw, path=""):
    return normalise_frame(lower_columns(raw, path))


def scan_manifest(path, chunk_rows: int | None = None) -> ManifestStream:
    """Validate a manifest in one pass of chunks; raise :class:`ManifestError` listing every problem.

    Accepts what :func:`~mmx.extract.manifest.read_manifest` accepts, with the same messages.
    """
    import numpy as np

    path = Path(path)
    chunk_rows = chunk_rows or CHUNK_ROWS
    if not path.exists():
        raise ManifestError(path, ["file not found"])
    stamp = _stamp(path)
    kind = _format(path)
    fixed_schema = kind != "jsonl"  # every chunk of a CSV/Parquet file has all columns
    problems: list[tuple[int, str]] = []
    unlisted = 0
    hashes, seen_columns = [], []
    rows = 0
    try:
        if kind == "parquet":
            check_parquet(path)
        else:
            chunk_rows = chunk_rows_for(longest_row(path, kind), chunk_rows)
        for raw in _raw_chunks(path, chunk_rows):
            if len(raw) == 0:
                continue
            shape = cell_problems(raw)
            lower_columns(raw, path)
            seen_columns += [c for c in raw.columns if c not in seen_columns]
            if fixed_schema and ({"id", "modality"} - set(raw.columns)
                                 or not {"uri", "text"} & set(raw.columns)):
                raise ManifestError(path, validate_frame(raw))
            frame = normalise_frame(raw)
            for message in shape + validate_frame(frame):
                if _DUPLICATE.match(message):
                    continue  # duplicates are found across chunks below, once
                match = _ROW.match(message)
                row = rows + int(match.group(1)) if match else 0
                if len(problems) < MAX_LISTED_PROBLEMS:
                    problems.append((row, f"row {row}: {message[match.end():]}" if match else message))
                else:
                    unlisted += 1
            hashes.append(id_hashes(_folded(_stems(frame["id"].tolist()))))
            rows += len(frame)
    except ManifestError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors, with their own message
        raise ManifestError(path, [f"cannot parse as a table: {exc}"]) from exc
    if rows == 0:
        raise ManifestError(path, ["the manifest has no rows"])
    missing = [c for c in ("id", "modality") if c not in seen_columns]
    if missing:
        raise ManifestError(path, [f"missing required column(s): {', '.join(missing)} "
                                   f"(have: {', '.join(seen_columns)})"])
    if "uri" not in seen_columns and "text" not in seen_columns:
        raise ManifestError(path, ["missing column: a manifest needs 'uri' or 'text' (or both)"])
    all_hashes = np.sort(np.concatenate(hashes))
    del hashes
    repeated = np.unique(all_hashes[1:][all_hashes[1:] == all_hashes[:-1]])
    del all_hashes
    case_only: list = []
    if len(repeated):
        found, case_only = _duplicate_problems(path, chunk_rows, repeated)
        problems += found
    if problems:
        problems.sort(key=lambda p: p[0])
        listed = [message for _, message in problems]
        if unlisted:
            listed.append(f"... and {unlisted} more problem(s) not listed")
        raise ManifestError(path, listed)
    columns = list(COLUMNS) + [c for c in seen_columns if c not in COLUMNS]
    return ManifestStream(path, rows, columns, chunk_rows, stamp, [m for _, m in sorted(case_only)])


def _stems(ids: list[str]) -> list[str]:
    from mmx.extract.fetch.files import safe_stem  # looked up per call: a test swaps it for colliding stems

    return [safe_stem(i) for i in ids]


def _folded(stems: list[str]) -> list[str]:
    return [s.casefold() for s in stems]


def _duplicate_problems(path: Path, chunk_rows: int, repeated) -> tuple[list, list]:
    """Among the rows whose case-folded stem hash repeats (a second pass): ``(problems, case
    collisions)``, each a list of ``(row, message)``. Problems: an id, or a file stem, that repeats
    an earlier row's; case collisions: stems that differ only in case from an earlier row's of the
    same modality, both with a media file to fetch (a ``uri``)."""
    import numpy as np

    first: dict[str, int] = {}
    owner: dict[str, tuple[str, int]] = {}  # stem -> (id, row) of its first row
    # (modality, case-folded stem) -> (stem, id, row) of its first row with a media file
    folded: dict[tuple[str, str], tuple[str, str, int]] = {}
    found, case_only = [], []
    rows = 0
    for raw in _raw_chunks(path, chunk_rows):
        if len(raw) == 0:
            continue
        frame = _normalise(raw)
        ids, modalities, uris = frame["id"].tolist(), frame["modality"].tolist(), frame["uri"].tolist()
        stems = _stems(ids)
        candidates = np.isin(id_hashes(_folded(stems)), repeated)
        for offset in np.flatnonzero(candidates):
            item_id, stem, row = ids[offset], stems[offset], rows + int(offset) + 1
            if item_id in first:
                found.append((row, f"row {row}: duplicate id {item_id!r} (first at row {first[item_id]})"))
            elif stem in owner:
                other, at = owner[stem]
                found.append((row, f"row {row}: id {item_id!r} and id {other!r} (row {at}) would share the media "
                                   f"file name {stem!r}; rename one of them"))
            else:
                first[item_id] = row
                owner[stem] = (item_id, row)
                if not uris[offset]:
                    continue  # no media file (inline text)
                key = (modalities[offset], stem.casefold())  # files go to media/<modality>/
                if key in folded:
                    other_stem, other, at = folded[key]
                    case_only.append((row, f"row {row}: id {item_id!r} and id {other!r} (row {at}) would share one media "
                                           f"file ({stem!r} and {other_stem!r} differ only in case); rename one of them"))
                else:
                    folded[key] = (stem, item_id, row)
        rows += len(ids)
    return found, case_only


def ignores_case(folder: Path) -> bool:
    """Whether the file system of ``folder`` (an existing directory) treats names that differ
    only in case as one file: a probe file is created there and looked up in upper case."""
    import os
    import tempfile

    fd, probe = tempfile.mkstemp(prefix=".mmx-case-probe-", dir=folder)
    os.close(fd)
    try:
        name = os.path.basename(probe)
        return os.path.exists(os.path.join(folder, name.upper()))
    finally:
        os.unlink(probe)
