"""Import structure: graphguard never imports dsa, and no import between its modules is circular."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "graphguard"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the graphguard package: dotted name -> (path, is a package __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements anywhere (module level, functions, methods), except the bodies of
    ``if TYPE_CHECKING:`` blocks, which never run."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(module: str, is_package: bool, tree: ast.AST) -> Iterator[str]:
    """Absolute dotted names this module imports: ``import a.b`` gives ``a.b``, and
    ``from .x import y`` in package ``p`` gives ``p.x.y`` (a submodule, or a name of ``p.x``)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        yield from (f"{source}.{alias.name}" for alias in node.names)


def _edges(module: str, is_package: bool, tree: ast.AST, modules: Collection[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports.

    ``from . import _x`` depends on the submodule ``_x``; ``from . import __version__`` depends on
    the package itself, which must have run far enough to define the name.
    """
    edges = set()
    for name in _imported_names(module, is_package, tree):
        if name in modules:
            edges.add(name)
        elif name.rpartition(".")[0] in modules:
            edges.add(name.rpartition(".")[0])
    return edges - {module}


def _import_graph() -> dict[str, set[str]]:
    """graphguard's modules and, for each, the modules of the package it imports."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = _edges(name, is_package, tree, modules)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graphguard_source_never_imports_dsa() -> None:
    """No module of graphguard/ imports dsa, at module level or inside a function."""
    offenders = []
    for name, (path, is_package) in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in _imported_names(name, is_package, tree):
            if target == "dsa" or target.startswith("dsa."):
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert offenders == []


def test_importing_graphguard_does_not_import_dsa() -> None:
    """A fresh process that imports graphguard, its certify and CLI modules has no dsa loaded."""
    code = (
        "import sys, graphguard, graphguard._certify, graphguard._workload, graphguard._cli\n"
        "print(sorted(m for m in sys.modules if m == 'dsa' or m.startswith('dsa.')))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_graphguard_has_no_import_cycle() -> None:
    """The imports between graphguard's modules, top-level and in functions, form no cycle."""
    graph = _import_graph()
    assert graph.get("graphguard._certify")
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


def test_cycle_finder_reports_a_function_level_cycle() -> None:
    """The cycle check sees an import made inside a function: a lazy import cannot hide a cycle."""
    modules = {"pkg", "pkg.a", "pkg.b"}
    graph = {
        "pkg": set(),
        "pkg.a": _edges("pkg.a", False, ast.parse("def f():\n    from . import b\n"), modules),
        "pkg.b": _edges("pkg.b", False, ast.parse("from .a import f\n"), modules),
    }
    assert _find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_cycle_check_ignores_type_checking_imports() -> None:
    """Imports under ``if TYPE_CHECKING:`` never run, so they make no edge."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import T\n")
    assert _edges("pkg.a", False, tree, {"pkg", "pkg.a", "pkg.b"}) == set()
