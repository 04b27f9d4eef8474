"""The folders form one direction: pipeline -> {extract, train} -> eval -> cache.

Each stage package, and every module in it, is imported in a fresh interpreter and must not
pull in anything from a layer above it, so the import circle cannot come back unnoticed.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import mmx

# what each stage may import from mmx (besides itself); everything else is a layering error
ALLOWED = {
    "cache": set(),
    "eval": {"cache"},
    "extract": {"cache"},
    "train": {"cache", "eval"},
    "pipeline": {"cache", "eval", "extract", "train"},
}


def _modules(stage: str) -> list[str]:
    root = Path(mmx.__file__).parent / stage
    names = [f"mmx.{stage}"]
    for info in pkgutil.walk_packages([str(root)], prefix=f"mmx.{stage}."):
        names.append(info.name)
    return names


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_a_stage_imports_only_the_layers_below_it(stage):
    modules = _modules(stage)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('mmx.')})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    loaded = set(json.loads(out.stdout.strip().splitlines()[-1])) - {stage}
    assert loaded <= ALLOWED[stage], f"mmx.{stage} imports {sorted(loaded - ALLOWED[stage])}"


def test_the_checker_would_catch_an_upward_import(tmp_path):
    """The subprocess check sees a module pulled in lazily at import time (not a dead test)."""
    code = "import sys, mmx.cache, mmx.pipeline.cli; print('mmx.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_no_function_level_import_reaches_upward(stage):
    """Imports inside functions run late, so sys.modules cannot see them: read the source."""
    import ast

    root = Path(mmx.__file__).parent / stage
    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "mmx" and len(parts) > 1 and parts[1] in ALLOWED:
                    if parts[1] != stage and parts[1] not in ALLOWED[stage]:
                        bad.append(f"{path.relative_to(root.parent)}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)
