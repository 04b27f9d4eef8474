"""Names that become path components: item ids (file stems), and what else a user names.

The one rule for every name mmx turns into a file or folder name, so no input can reach
outside the folder it is meant for.
"""

from __future__ import annotations

import re
import unicodedata

MAX_ID_LENGTH = 128
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


def id_problem(item_id: str) -> str | None:
    """Why ``item_id`` is unsafe as a file name, or None when it is fine."""
    if item_id == "":
        return "empty id"
    if len(item_id) > MAX_ID_LENGTH:
        return f"id longer than {MAX_ID_LENGTH} characters"
    if _UNSAFE_ID.search(item_id):
        return "id contains a path separator or a control character"
    if item_id == "." or ".." in item_id:
        return "id is '.' or contains '..'"
    if unicodedata.normalize("NFC", item_id) != item_id:
        return "id is not NFC-normalised unicode"
    return None
