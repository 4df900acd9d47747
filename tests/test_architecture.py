"""The layout's rules, checked: layers (import-linter), no import cycles, small source files.

The layers are declared in ``pyproject.toml`` (``[tool.importlinter]``) and drawn in
ARCHITECTURE.md. grimp (import-linter's graph) reads every import statement, those inside
functions included, so a lazy import cannot hide a cycle.

The checks run on a copy of the package as it is installed (``export/`` and ``runtime/`` inside
``slowfast_trt/``, Python files only), imported in a child process without the editable
install's finder: an editable install also puts the repository root on the package's path,
which would make ``tests`` and the top-level folders look like subpackages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500
SHIMS = ("slowfast_trt", "slowfast_trt.run", "slowfast_trt.bench", "slowfast_trt.serve", "slowfast_trt.export.__main__")

_NO_EDITABLE_FINDER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if "skbuild" not in type(f).__name__.lower() and "editable" not in type(f).__module__.lower()]
"""

_GRAPH_FACTS = """
import json, grimp
graph = grimp.build_graph("slowfast_trt")
edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
print(json.dumps(edges))
"""


@pytest.fixture(scope="module")
def installed_copy(tmp_path_factory) -> Path:
    """tmp/slowfast_trt laid out as the wheel installs it, plus pyproject.toml and a site dir."""
    root = tmp_path_factory.mktemp("arch")
    package = root / "slowfast_trt"
    for source, target in ((ROOT / "slowfast_trt", package), (ROOT / "export", package / "export"),
                           (ROOT / "runtime", package / "runtime")):
        for file in source.rglob("*.py"):
            if "__pycache__" in file.parts:
                continue
            dest = target / file.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, dest)
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_EDITABLE_FINDER)
    return root


def _child_env(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "site"), str(copy)])
    return env


def test_import_linter_contracts_hold(installed_copy):
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    proc = subprocess.run(command, cwd=installed_copy, env=_child_env(installed_copy), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.fixture(scope="module")
def import_graph(installed_copy) -> dict[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", _GRAPH_FACTS], cwd=installed_copy, env=_child_env(installed_copy),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def strongly_connected(edges: dict[str, list[str]]) -> list[list[str]]:
    """Components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(edges.get(root, ())))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules(import_graph):
    # The package root's lazy ``SlowFastRuntime`` attribute is the one upward import (the public
    # entry point); no library module imports the root.
    importers = sorted(m for m, imported in import_graph.items() if "slowfast_trt" in imported and m not in SHIMS)
    assert not importers, f"{importers} import the package root (import from the module that defines the name)"
    edges = {m: [i for i in imported if i != "slowfast_trt"] for m, imported in import_graph.items() if m != "slowfast_trt"}
    assert strongly_connected(edges) == []


def test_library_code_never_imports_a_cli(import_graph):
    top = ("slowfast_trt.cli", "slowfast_trt.tools", "slowfast_trt.server")
    clis = {m for m in import_graph if m.startswith(top)}
    for module, imported in sorted(import_graph.items()):
        if module in clis or module in SHIMS:
            continue
        assert not clis & set(imported), f"{module} imports {sorted(clis & set(imported))}"


def test_no_source_file_over_500_lines():
    files = [p for top in ("slowfast_trt", "export", "runtime", "plugins") for p in (ROOT / top).rglob("*")
             if p.suffix in {".py", ".cu", ".cuh", ".cpp", ".h"} and p.is_file()]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
