"""Names that become path components: item ids (file stems), and what else a user names.

The one rule for every name mmx turns into a file or folder name (item ids, dataset and
backbone names, run names, split names), so no input can reach outside the folder it is
meant for: no separator, no control character, not ``.``, no ``..`` anywhere, NFC unicode,
at most :data:`MAX_ID_LENGTH` characters.
"""

from __future__ import annotations

import re
import unicodedata

MAX_ID_LENGTH = 128
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


def name_problem(name: str, noun: str = "name") -> str | None:
    """Why ``name`` is unsafe as a path component, or None when it is fine (``noun`` words the reason)."""
    if not isinstance(name, str):
        return f"{noun} is not a string"
    if name == "":
        return f"empty {noun}"
    if len(name) > MAX_ID_LENGTH:
        return f"{noun} longer than {MAX_ID_LENGTH} characters"
    if _UNSAFE_ID.search(name):
        return f"{noun} contains a path separator or a control character"
    if name == "." or ".." in name:
        return f"{noun} is '.' or contains '..'"
    if unicodedata.normalize("NFC", name) != name:
        return f"{noun} is not NFC-normalised unicode"
    return None


def id_problem(item_id: str) -> str | None:
    """Why ``item_id`` is unsafe as a file name, or None when it is fine."""
    return name_problem(item_id, "id")


def check_name(name: str, what: str) -> str:
    """``name`` unchanged when it is a safe path component; else ValueError naming ``what`` and the fix.

    ``what`` is how the user gave it, e.g. ``--dataset`` or ``dataset name``.
    """
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{what} {name!r}: {problem}; it becomes a folder name, so use a plain name "
                         "(letters, digits, '_', '-', single '.')")
    return name
