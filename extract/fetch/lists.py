"""Turn per-modality URL lists with class labels into a manifest (XMediaNet's distribution form).

``columns`` names the fields of a line in order (``id``, ``label``, ``uri`` or ``text``,
``group``, ``split``, or ``-`` to ignore one); the last field takes the rest of the line. Without
an ``id`` column the line number is the id; ids are prefixed with the modality by default
(``image_17``). Blank lines and ``#`` lines are skipped; every malformed line is reported at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmx.extract.manifest import COLUMNS, ManifestError, normalise_frame, validate_frame
from mmx.cache.modality import Modality

FIELD_NAMES = ("id", "label", "uri", "text", "group", "split", "-")
SEPARATORS = {"whitespace": None, "tab": "\t", "comma": ",", "space": " ", "semicolon": ";", "pipe": "|"}


def parse_columns(spec: str | tuple[str, ...], needed: str) -> tuple[str, ...]:
    """``"id,label,uri"`` -> a checked tuple of field names that includes ``needed``."""
    cols = tuple(c.strip().lower() for c in (spec.split(",") if isinstance(spec, str) else spec) if c.strip())
    unknown = [c for c in cols if c not in FIELD_NAMES]
    if unknown:
        raise ValueError(f"unknown column name(s) {', '.join(unknown)}; known: {', '.join(FIELD_NAMES)}")
    named = [c for c in cols if c != "-"]
    if len(set(named)) != len(named):
        raise ValueError(f"column named twice in {spec!r}")
    if needed not in cols:
        raise ValueError(f"columns {spec!r} name no {needed!r} field")
    return cols


def read_list(path: str | os.PathLike, modality: str, columns: tuple[str, ...], sep: str | None,
              id_prefix: bool, problems: list[str]) -> list[dict]:
    """The rows of one list file; malformed lines are appended to ``problems``."""
    rows = []
    path = Path(path)
    if not path.is_file():
        problems.append(f"{path}: list file not found")
        return rows
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split(sep, len(columns) - 1) if sep else line.split(None, len(columns) - 1)
            if len(fields) < len(columns):
                problems.append(f"{path}:{lineno}: expected {len(columns)} fields ({' '.join(columns)}), "
                                f"got {len(fields)}: {line[:80]!r}")
                continue
            rec = {c: v.strip() for c, v in zip(columns, fields) if c != "-"}
            item_id = rec.get("id") or str(lineno)
            rec["id"] = f"{modality}_{item_id}" if id_prefix else item_id
            rec["modality"] = modality
            rows.append(rec)
    return rows


def manifest_from_lists(lists: dict[str, str | os.PathLike], texts: str | os.PathLike | None = None, *,
                        columns="id,label,uri", text_columns="id,label,text", sep: str = "whitespace",
                        id_prefix: bool = True):
    """A validated manifest table from per-modality URL lists and an optional inline-text list."""
    import pandas as pd

    if sep not in SEPARATORS:
        raise ValueError(f"unknown separator {sep!r}; known: {', '.join(SEPARATORS)}")
    if not lists and texts is None:
        raise ValueError("give at least one list (--list MODALITY=FILE) or --texts FILE")
    split_on = SEPARATORS[sep]
    media_cols = parse_columns(columns, "uri")
    problems: list[str] = []
    rows: list[dict] = []
    for modality, path in lists.items():
        m = Modality.parse(modality)
        if m is Modality.TEXT:
            raise ValueError("texts are inline in such datasets: give them with --texts, not --list text=...")
        rows += read_list(path, m.value, media_cols, split_on, id_prefix, problems)
    if texts is not None:
        rows += read_list(texts, "text", parse_columns(text_columns, "text"), split_on, id_prefix, problems)
    frame = normalise_frame(pd.DataFrame(rows, columns=list(COLUMNS))) if rows else None
    if frame is not None:
        problems += validate_frame(frame)
    elif not problems:
        problems.append("the lists hold no items")
    if problems:
        raise ManifestError("the URL lists", problems)
    return frame
