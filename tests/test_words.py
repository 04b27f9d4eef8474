"""Comments and docstrings say why the code is as it is, never which issue asked for it.

The history of a line is what ``git log`` is for; an issue number in the code goes stale the day
the issue closes, and a cited file that is not in the repository sends a reader nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# split so that this file does not match itself
ISSUE = re.compile(r"\b(?:issue|issues)" + r"[-\s]*#?\s*\d+", re.IGNORECASE)
CITED_ELSEWHERE = re.compile(r"STYLE" + r"\.md")


def _code_files() -> list[Path]:
    skip = {".venv", ".git", "build", "dist", "site", "node_modules"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))


def _hits(pattern: re.Pattern, files) -> list[str]:
    out = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                out.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{n}: {line.strip()}")
    return out


def test_no_issue_numbers_in_code():
    hits = _hits(ISSUE, _code_files())
    assert not hits, "issue numbers in code (say why instead; git log keeps the history):\n" + "\n".join(hits)


def test_no_citation_of_a_file_outside_the_repository():
    hits = _hits(CITED_ELSEWHERE, _code_files())
    assert not hits, "cites a style guide that is not in the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("line,caught", [("# see iss" + "ue 12 item 4", True), ("x = 1  # Iss" + "ue #7", True),
                                         ("# the issue is the order of the rows", False), ("# the iss" + "ue-12 figure", True)])
def test_the_check_catches_an_issue_number(tmp_path, line, caught):
    f = tmp_path / "m.py"
    f.write_text(line + "\n")
    assert bool(_hits(ISSUE, [f])) is caught
