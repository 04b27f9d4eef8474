"""The documentation site builds with ``mkdocs build --strict``: a broken link or anchor, a page
left out of the navigation or any other MkDocs warning fails the build, and so this test.
MkDocs comes with the test extra (``pip install -e '.[test]'``); without it this test fails."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                             "--site-dir", str(site)], capture_output=True, text=True, cwd=ROOT)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    assert (site / "index.html").is_file() and (site / "own-media" / "index.html").is_file()
