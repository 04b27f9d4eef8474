import os
from pathlib import Path

import pytest

# Tests use tiny tensors: on a small shared machine, torch's intra-op threads cost far more
# than they bring (10-25x slower epochs were measured with 2 threads on 2 busy cores).
# Set before torch is imported, so subprocesses started by tests inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("MMX_SHARED_MEDIA", REPO.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def shared_media(tmp_path_factory) -> Path:
    """The media files tests decode, fetch and extract: generated once per session (tests/make_media.py),
    so a fresh clone runs the same tests as CI. Same relative paths as ../shared/media."""
    from make_media import make_media  # tests/make_media.py (tests/ is on sys.path: conftest rootdir)

    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def real_media() -> Path:
    """The real photos and sounds of ../shared/media, for the few checks that need real content
    (marked ``shared_files``, opt-in: ``python -m pytest -m shared_files``)."""
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media not found at {SHARED_MEDIA} (set MMX_SHARED_MEDIA)")
    return SHARED_MEDIA


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """Each test body once per device: ``cpu`` in the default suite, ``cuda`` with ``-m gpu``
    (benchmarks/gpu_check.sh). The CUDA case skips, saying so, where no GPU is visible."""
    if request.param == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("CUDA is not available here (run benchmarks/gpu_check.sh on a GPU machine)")
    return request.param
