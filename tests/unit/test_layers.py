"""The package's layers, checked from the source (AST), not by importing it.

Rules (STYLE.md, "Boundaries worth keeping"):
- no import cycle among pyresty's modules, counting module-level imports,
  ``if TYPE_CHECKING:`` imports and imports inside functions alike (a lazy
  import does not excuse a cycle: it only hides it until the first call);
- ``pyresty.http`` knows bytes: it imports nothing of ``server``, ``runtime``,
  ``supervisor``, ``config`` or the public facade;
- the supervisor imports neither ``http`` nor ``server`` (the master never
  loads the request path; test_package.py checks the same at run time).
"""
from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pyresty"

pytestmark = pytest.mark.timeout(60)


def modules_of(package: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module under ``package``."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_by(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package modules ``name`` imports, wherever the import statement sits."""
    known = set(known)
    root = next(iter(known)).split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
    edges = set()
    for target in targets:
        if not target.split(".")[0] == root:
            continue
        while target not in known and "." in target:
            target = target.rpartition(".")[0]
        if target in known and target != name:
            edges.add(target)
    return edges


def import_graph(package: Path) -> dict[str, set[str]]:
    known = modules_of(package)
    return {name: imported_by(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(graph: dict[str, set[str]], group: list[str]) -> str:
    return "\n".join(f"  {m} -> {', '.join(sorted(graph[m] & set(group)))}" for m in group)


def test_pyresty_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n\n".join(describe(graph, g) for g in found)


@pytest.mark.parametrize("layer, forbidden", [
    ("pyresty.http", ("pyresty.server", "pyresty.runtime", "pyresty.supervisor",
                      "pyresty.config", "pyresty.cli")),
    ("pyresty.supervisor", ("pyresty.http", "pyresty.server")),
])
def test_layers_import_only_downward(layer: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph(PACKAGE)
    bad = [f"{module} imports {target}"
           for module, targets in graph.items() if module == layer or module.startswith(layer + ".")
           for target in sorted(targets)
           if target == "pyresty" or any(target == f or target.startswith(f + ".")
                                         for f in forbidden)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_cycles_hidden_in_type_checking_and_functions(tmp_path: Path) -> None:
    # the shapes the request core had before the Stream seam: a TYPE_CHECKING
    # import closing a circle, and a lazy import inside a function closing another
    files = {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "b.py": "from pkg import c\nB = 1\n",
        "c.py": "from . import a\n",
        "d.py": "def later():\n    from pkg.e import x\n    return x\n",
        "e.py": "from pkg.d import later\nx = 1\n",
        "f.py": "from pkg import a\n",
    }
    package = tmp_path / "pkg"
    package.mkdir()
    for name, text in files.items():
        (package / name).write_text(textwrap.dedent(text))
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.e"]]
