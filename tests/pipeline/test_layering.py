"""The folders form one direction: pipeline -> {extract, train} -> eval -> cache; no file circles.

Each stage package, and every module in it, is imported in a fresh interpreter and must not
pull in anything from a layer above it, so the import circle cannot come back unnoticed.
Within the whole package, no two modules import each other, directly or in a loop: the
source of every module is read (imports inside functions too, relative ones resolved, a
package's ``__init__`` counting as a module).
"""

from __future__ import annotations

import ast
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


def import_graph(root: Path, name: str = "mmx") -> dict[str, set[str]]:
    """Each module of the package at ``root`` -> the package's modules its source imports.

    Folders with an ``__init__.py`` are subpackages, and an ``__init__`` is the module named after
    its package. ``import a.b`` points at ``a.b``; ``from a import b`` at ``a``, and at ``a.b``
    when that is a module. Imports at any level count: inside functions, under ``TYPE_CHECKING``.
    """
    files: dict[str, Path] = {}

    def walk(folder: Path, prefix: str) -> None:
        files[prefix] = folder / "__init__.py"
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                walk(path, f"{prefix}.{path.name}")
            elif path.suffix == ".py" and path.name != "__init__.py":
                files[f"{prefix}.{path.stem}"] = path

    walk(root, name)
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            deps.update(t for t in targets if t in files and t != module)
        graph[module] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: each group of modules that reach each other, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(graph):  # Tarjan's strongly connected components, without recursion
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return sorted(sorted(group) for group in groups)


def shortest_loop(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, inside the group."""
    first, group = min(group), set(group)
    came_from: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == first:
                    loop = [first]
                    while node != first:
                        loop.append(node)
                        node = came_from[node]
                    return [first] + loop[:0:-1] + [first]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{sorted(group)} has no loop")  # a strongly connected group always has one


def test_no_two_modules_import_each_other():
    """No file circle anywhere in mmx, however deep the import sits in a module."""
    graph = import_graph(Path(mmx.__file__).parent)
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(
        f"{' -> '.join(shortest_loop(graph, group))} (in a circle: {', '.join(group)})" for group in found)


def test_the_circle_checker_would_catch_a_planted_circle(tmp_path):
    """A loop through a function-level import, a relative import, and a package's __init__ (not a dead test)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "from pkg.sub import tool\n",
        "a.py": "from . import b\n",
        "b.py": "def late():\n    from pkg.a import thing\n",
        "c.py": "import pkg.a\n",  # imports into the circle, is not part of it
        "sub/__init__.py": "",
        "sub/tool.py": "from .. import helper\n",  # the package's __init__ imports this module
        "helper.py": "",
    }
    for name, text in sources.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.sub.tool"] == {"pkg", "pkg.helper"}
    assert circles(graph) == [["pkg", "pkg.sub.tool"], ["pkg.a", "pkg.b"]]
    assert shortest_loop(graph, ["pkg.a", "pkg.b"]) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("def late():\n    return 1\n")
    (pkg / "sub/tool.py").write_text("from ..helper import name\n")
    assert circles(import_graph(pkg, "pkg")) == []
