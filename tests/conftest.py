import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("MMX_SHARED_MEDIA", REPO.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """The real media fixtures of ../shared/media (skip when the folder is absent)."""
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media fixtures not found at {SHARED_MEDIA}")
    return SHARED_MEDIA


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
