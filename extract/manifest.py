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

:func:`read_manifest` reports every problem at once, with 1-based row numbers.
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


class ManifestError(ValueError):
    """A manifest with one or more problems; ``problems`` lists them all."""

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path}: {len(problems)} problem(s) in the manifest:\n  {shown}{more}")


def _read_table(path: Path) -> "pd.DataFrame":
    import pandas as pd

    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".csv", ".csv.gz", ".tsv"):
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
        return pd.read_json(path, lines=True, dtype=False).astype(object)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ManifestError(path, [f"unknown manifest format {path.suffix!r}; use .csv, .jsonl or .parquet"])


def _clean(value) -> str:
    """Cells as stripped strings; NaN/None become ''."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    return str(value).strip()


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
    frame["text"] = [unicodedata.normalize("NFC", t) for t in frame["text"]]
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest; raise :class:`ManifestError` listing every problem."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(path, ["file not found"])
    try:
        raw = _read_table(path)
    except ManifestError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors, with their own message
        raise ManifestError(path, [f"cannot parse as a table: {exc}"]) from exc
    if len(raw) == 0:
        raise ManifestError(path, ["the manifest has no rows"])
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in ("id", "modality") if c not in raw.columns]
    if not missing and "uri" not in raw.columns and "text" not in raw.columns:
        raise ManifestError(path, validate_frame(raw))
    if missing:
        raise ManifestError(path, validate_frame(raw))
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
