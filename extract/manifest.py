"""The manifest: mmx's input contract, one row per item.

Columns (CSV, JSON Lines or Parquet):

=========  ========  ================================================================
column     required  meaning
=========  ========  ================================================================
id         yes       unique item id; also its file name stem, so it must be safe
modality   yes       one of ``text``, ``image``, ``audio``, ``video``
uri        one of    http(s) URL, local path (relative to the manifest) or ``file://``
text       one of    inline text (text items only)
label      no        class name (class-aligned data, papers 000/002)
group      no        items that belong together (instance-aligned data, paper 001)
split      no        ``train``, ``test`` or ``val``
=========  ========  ================================================================

:func:`read_manifest` reports every problem at once, with 1-based row numbers. Bounded before
parsing (:func:`check_size`): a row past :data:`MAX_ROW_BYTES`, a Parquet row group that inflates
past it a row, a file past :data:`MAX_MANIFEST_BYTES`. A cell is one string: lists are refused,
whole floats read as integers, labels, groups and texts NFC-normalised (docs/guarantees.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from mmx.cache.modality import NAMES, Modality
from mmx.cache.names import id_problem

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("id", "modality", "uri", "text", "label", "group", "split")
SPLITS = ("train", "test", "val")
# A row (a CSV record, quoted line breaks included, or a JSON line) past this is refused before
# it is parsed: an inline text is read up to 65,536 characters (4 bytes each at most), so
# 1 MiB leaves room for every other column; a longer text goes in a file (``uri``).
MAX_ROW_BYTES = 1 << 20
# read_manifest holds the whole table (mmx extract); mmx fetch reads any size in chunks.
MAX_MANIFEST_BYTES = 2 << 30
SCAN_BLOCK = 1 << 20


class ManifestError(ValueError):
    """A manifest with one or more problems; ``problems`` lists them all."""

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        # one line each, whatever a parser's own message looked like
        problems = [" / ".join(x.strip() for x in str(p).strip().splitlines() if x.strip()) for p in problems]
        self.problems = problems
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path}: {len(problems)} problem(s) in the manifest:\n  {shown}{more}")


def table_format(path: Path) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``parquet``, from the file's suffix."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".csv", ".csv.gz", ".tsv"):
        return "tsv" if suffix == ".tsv" else "csv"
    if suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ManifestError(path, [f"unknown manifest format {path.suffix!r}; use .csv, .jsonl or .parquet"])


def longest_row(path: Path, kind: str | None = None, cap: int = MAX_ROW_BYTES) -> int:
    """The size in bytes of the longest row of a CSV/TSV/JSONL file (0 for Parquet), read a block
    at a time; raises :class:`ManifestError` at the first row longer than ``cap``.

    CSV rows end at a line break outside double quotes (a quoted field may span lines; a doubled
    quote inside one toggles twice), JSON lines at every line break. The header is row 0.
    """
    import numpy as np

    kind = kind or table_format(path)
    if kind == "parquet":
        return 0
    quoted = kind in ("csv", "tsv")
    opener = _gzip_open if path.suffix.lower() == ".gz" else open
    longest = current = ended = parity = 0
    with opener(path, "rb") as f:
        while True:
            block = f.read(SCAN_BLOCK)
            if not block:
                break
            a = np.frombuffer(block, np.uint8)
            breaks = a == 10
            if quoted:
                inside = np.bitwise_xor.accumulate((a == 34).view(np.uint8)) ^ parity
                parity = int(inside[-1])
                breaks &= inside == 0
            ends = np.flatnonzero(breaks)
            if len(ends):
                sizes = np.diff(ends, prepend=-1)
                sizes[0] += current
                big = np.flatnonzero(sizes > cap)
                if len(big):
                    _too_long(path, kind, ended + int(big[0]), cap)
                longest = max(longest, int(sizes.max()))
                ended += len(ends)
                current = len(a) - int(ends[-1]) - 1
            else:
                current += len(a)
            if current > cap:
                _too_long(path, kind, ended, cap)
    return max(longest, current)


def _gzip_open(path, mode="rb"):
    import gzip

    return gzip.open(path, mode)


def _too_long(path: Path, kind: str, index: int, cap: int):
    where = ("the header" if index == 0 else f"row {index}") if kind in ("csv", "tsv") else f"row {index + 1}"
    raise ManifestError(path, [f"{where} is longer than {cap // 2**20} MiB (a manifest row holds an id, a uri and "
                               "at most a short text; put a long text in a file and give its path as the uri)"])


def check_size(path: Path) -> None:
    """Refuse a manifest too large to hold whole (:data:`MAX_MANIFEST_BYTES`), and any over-long row."""
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(path, [f"{size / 2**30:.1f} GiB is more than the {MAX_MANIFEST_BYTES // 2**30} GiB a "
                                   "manifest may have here; split it into several datasets"])
    if table_format(path) == "parquet":
        check_parquet(path)
    else:
        longest_row(path)


def check_parquet(path: Path) -> None:
    """Refuse a Parquet row group whose decompressed size is past :data:`MAX_ROW_BYTES` a row on
    average (a few KB that inflate to a GiB-long cell), from the file's metadata, before reading."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.total_byte_size > MAX_ROW_BYTES * max(1, group.num_rows):
            raise ManifestError(path, [f"row group {i} inflates to {group.total_byte_size / 2**20:.0f} MiB for "
                                       f"{group.num_rows} row(s), more than {MAX_ROW_BYTES // 2**20} MiB a row"])


def _read_table(path: Path) -> "pd.DataFrame":
    import pandas as pd

    kind = table_format(path)
    if kind in ("csv", "tsv"):
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if kind == "tsv" else ",",
                           encoding="utf-8-sig")
    if kind == "jsonl":
        return pd.read_json(path, lines=True, dtype=False, encoding="utf-8-sig").astype(object)
    return pd.read_parquet(path)


def _clean(value) -> str:
    """Cells as stripped strings; NaN/None become '', a whole float its integer (``1.0`` -> ``"1"``:
    Parquet and JSON give an integer column with a gap as floats)."""
    if value is None:
        return ""
    if isinstance(value, float):  # numpy's float64 is a float too
        if value != value:
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def lower_columns(raw: "pd.DataFrame", path) -> "pd.DataFrame":
    """``raw`` with its column names stripped and lower-cased; two that become one are refused."""
    names = [str(c).strip().lower() for c in raw.columns]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        spelled = {n: [str(c) for c in raw.columns if str(c).strip().lower() == n] for n in twice}
        raise ManifestError(path, [f"column {n!r} appears {len(spelled[n])} times ({', '.join(map(repr, spelled[n]))}); "
                                   "keep one" for n in twice])
    raw.columns = names
    return raw


def cell_problems(frame: "pd.DataFrame") -> list[str]:
    """Cells that hold a list, mapping or array (JSON lists, Parquet list columns), with 1-based rows.

    A manifest cell is one string; a nested value has no string form a user would choose.
    """
    import numpy as np

    problems = []
    for j, col in enumerate(frame.columns):
        column = frame.iloc[:, j]
        if column.dtype != object:
            continue
        for row, value in enumerate(column, start=1):
            if isinstance(value, (list, tuple, dict, set, np.ndarray)):
                shown = repr(value if not isinstance(value, np.ndarray) else value.tolist())
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                problems.append(f"row {row}: column {str(col).strip().lower()!r} holds a {type(value).__name__}, "
                                f"not a string: {shown}")
    return problems


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``frame`` has every column of :data:`COLUMNS` as strings."""

    path: Path
    frame: "pd.DataFrame"

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def modalities(self) -> list[Modality]:
        present = set(self.frame["modality"])
        return [m for m in Modality if m.value in present]

    def of(self, modality: Modality | str) -> "pd.DataFrame":
        """Rows of one modality, in manifest order."""
        m = Modality.parse(modality)
        return self.frame[self.frame["modality"] == m.value].reset_index(drop=True)

    def resolve(self, uri: str) -> str:
        """A local ``uri`` resolved against the manifest's folder; URLs unchanged."""
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri):
            return uri
        p = Path(uri)
        return str(p if p.is_absolute() else (self.path.parent / p))


def validate_frame(frame: "pd.DataFrame") -> list[str]:
    """Every problem of a manifest table, with 1-based row numbers."""
    problems: list[str] = []
    missing = [c for c in ("id", "modality") if c not in frame.columns]
    if missing:
        return [f"missing required column(s): {', '.join(missing)} (have: {', '.join(map(str, frame.columns))})"]
    if "uri" not in frame.columns and "text" not in frame.columns:
        return ["missing column: a manifest needs 'uri' or 'text' (or both)"]
    seen: dict[str, int] = {}
    for row, rec in enumerate(frame.itertuples(index=False), start=1):
        item_id, modality = rec.id, rec.modality
        uri, text = getattr(rec, "uri", ""), getattr(rec, "text", "")
        why = id_problem(item_id)
        if why:
            problems.append(f"row {row}: {why}: {item_id!r}")
        elif item_id in seen:
            problems.append(f"row {row}: duplicate id {item_id!r} (first at row {seen[item_id]})")
        else:
            seen[item_id] = row
        if modality not in NAMES:
            problems.append(f"row {row}: unknown modality {modality!r}; known: {', '.join(NAMES)}")
        if not uri and not text:
            problems.append(f"row {row}: neither uri nor text given for {item_id!r}")
        elif text and modality in NAMES and modality != "text":
            problems.append(f"row {row}: inline text given for a {modality} item {item_id!r}")
        split = getattr(rec, "split", "")
        if split and split not in SPLITS:
            problems.append(f"row {row}: unknown split {split!r}; known: {', '.join(SPLITS)}")
    return problems


def normalise_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """All :data:`COLUMNS` present, as stripped strings; modality lower-cased."""
    frame = frame.copy()
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = ""
        frame[col] = [_clean(v) for v in frame[col]]
    frame["modality"] = frame["modality"].str.lower()
    # one spelling per text and class: a label typed with a combining accent and one with the
    # precomposed letter are the same class
    for col in ("text", "label", "group"):
        frame[col] = [unicodedata.normalize("NFC", t) for t in frame[col]]
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest; raise :class:`ManifestError` listing every problem."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(path, ["file not found"])
    try:
        check_size(path)
        raw = _read_table(path)
    except ManifestError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors, with their own message
        raise ManifestError(path, [f"cannot parse as a table: {exc}"]) from exc
    if len(raw) == 0:
        raise ManifestError(path, ["the manifest has no rows"])
    lower_columns(raw, path)
    missing = [c for c in ("id", "modality") if c not in raw.columns]
    if not missing and "uri" not in raw.columns and "text" not in raw.columns:
        raise ManifestError(path, validate_frame(raw))
    if missing:
        raise ManifestError(path, validate_frame(raw))
    problems = cell_problems(raw)
    if problems:
        raise ManifestError(path, problems)
    frame = normalise_frame(raw)
    problems = validate_frame(frame)
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path=path, frame=frame)


def write_manifest(frame: "pd.DataFrame", path: str | os.PathLike) -> Path:
    """Write a manifest atomically in the format its suffix names."""
    from mmx.cache.atomic import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    writers = {".csv": lambda t: frame.to_csv(t, index=False),
               ".jsonl": lambda t: frame.to_json(t, orient="records", lines=True, force_ascii=False),
               ".parquet": lambda t: frame.to_parquet(t, index=False)}
    writers[".ndjson"], writers[".pq"] = writers[".jsonl"], writers[".parquet"]
    if suffix not in writers:
        raise ValueError(f"unknown manifest format {suffix!r}; use .csv, .jsonl or .parquet")
    with atomic_path(path) as tmp:
        writers[suffix](tmp)
    return path
