"""The layout's rules, checked: layers (import-linter), no import cycles, small source files.

The layers are declared in ``pyproject.toml`` (``[tool.importlinter]``) and drawn in
ARCHITECTURE.md. grimp (import-linter's graph) reads every import statement, those inside
functions included, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
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


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("slowfast_trt")
    # The package root's lazy ``SlowFastRuntime`` attribute is the one upward import (the public
    # entry point); no library module imports the root.
    for module in graph.modules:
        if module != "slowfast_trt" and graph.direct_import_exists(importer=module, imported="slowfast_trt"):
            pytest.fail(f"{module} imports the package root (import from the module that defines it)")
    graph.remove_module("slowfast_trt")
    assert _cycles(graph) == []


def test_library_code_never_imports_a_cli():
    graph = grimp.build_graph("slowfast_trt")
    clis = {m for m in graph.modules if m.startswith(("slowfast_trt.cli", "slowfast_trt.tools"))}
    shims = {"slowfast_trt", "slowfast_trt.run", "slowfast_trt.bench", "slowfast_trt.serve",
             "slowfast_trt.export.__main__"}
    for module in sorted(graph.modules - clis - shims):
        imported = graph.find_modules_directly_imported_by(module) & clis
        assert not imported, f"{module} imports {sorted(imported)}"


def test_no_source_file_over_500_lines():
    files = [p for top in ("slowfast_trt", "export", "runtime", "plugins") for p in (ROOT / top).rglob("*")
             if p.suffix in {".py", ".cu", ".cuh", ".cpp", ".h"} and p.is_file() and not p.is_symlink()]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
