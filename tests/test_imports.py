"""No import cycles among ksym's and dropcapture's modules.

Every ``import`` and ``from ... import`` statement of src/ksym and src/dropcapture is read with :mod:`ast`,
wherever it stands: at the top, inside a function (the lazy imports that keep a command's start fast),
under ``if TYPE_CHECKING:``. A lazy import still ties its module to the other one, and a cycle that only
works because one side imports late is one a refactoring breaks, so each counts. An edge goes from the
importing module to the module it names (``from .pkg import sub`` to ``pkg.sub`` when that is a module
of its own, else to ``pkg``); a submodule's implicit import of its parent package is not an edge (a
package's ``__init__`` importing its own submodules is how packages work). The failure names every
cycle, module by module, with the file and line of each import on it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from anchors import REPO_ROOT

SRC = REPO_ROOT / "src"
PACKAGES = ("ksym", "dropcapture")


class Edge(NamedTuple):
    """One import statement: ``source`` imports ``target`` at ``path``:``line``."""

    source: str
    target: str
    path: str
    line: int


def _modules(src: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``src``."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((src / pkg).rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _edges_of(name: str, path: Path, modules: dict[str, Path], src: Path) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # the package a relative import starts from: the module's own package (itself for an __init__)
    here = name.split(".") if _is_package(path) else name.split(".")[:-1]
    rel = path.relative_to(src).as_posix()

    def known(target: str) -> str | None:
        # the longest prefix of ``target`` that is one of our modules (``ksym.dwarf.X`` -> ``ksym.dwarf``)
        parts = target.split(".")
        while parts:
            cand = ".".join(parts)
            if cand in modules:
                return cand
            parts.pop()
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = known(alias.name)
                if target is not None and target != name:
                    yield Edge(name, target, rel, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here[: len(here) - (node.level - 1)] if node.level > 1 else list(here)
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                # ``from .pkg import sub``: the submodule when it is one, else a name in ``base``
                targets.append(sub if sub in modules else base)
            for t in dict.fromkeys(targets):
                target = known(t)
                if target is not None and target != name:
                    yield Edge(name, target, rel, node.lineno)


def import_graph(src: Path = SRC, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[Edge]]:
    """Module -> its import edges to other modules of ``packages``."""
    modules = _modules(src, packages)
    return {name: list(_edges_of(name, path, modules, src)) for name, path in modules.items()}


def _components(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            succ = sorted({e.target for e in graph.get(v, [])})
            if i < len(succ):
                work.append((v, i + 1))
                w = succ[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return sorted(out)


def _shortest_cycle(graph: dict[str, list[Edge]], comp: list[str]) -> list[Edge]:
    """A shortest cycle through the first module of ``comp``, as the edges along it."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, Edge] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for v in frontier:
            for e in sorted(graph[v], key=lambda e: (e.target, e.line)):
                if e.target not in members:
                    continue
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, prev[path[0].source])
                    return path
                if e.target not in seen:
                    seen.add(e.target)
                    prev[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a component of two or more always has one


class Cycle(NamedTuple):
    """Modules that import each other (``modules``), and one shortest cycle among them (``edges``)."""

    modules: list[str]
    edges: list[Edge]

    def __str__(self) -> str:
        names = " -> ".join([e.source for e in self.edges] + [self.edges[0].source])
        where = "; ".join(f"{e.source} -> {e.target} at {e.path}:{e.line}" for e in self.edges)
        return f"{', '.join(self.modules)} import each other: {names} ({where})"


def import_cycles(graph: dict[str, list[Edge]]) -> list[Cycle]:
    """One :class:`Cycle` for each group of modules that import each other."""
    return [Cycle(comp, _shortest_cycle(graph, comp)) for comp in _components(graph)]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "ksym.cli" in graph and "dropcapture.cli" in graph and "ksym.symbolizer" in graph
    cycles = import_cycles(graph)
    if cycles:
        pytest.fail("import cycles:\n" + "\n".join(f"  {c}" for c in cycles), pytrace=False)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The walk on a small package: a cycle closed by a function-level ``from . import`` is found and
    named; a package ``__init__`` importing its submodules, and imports from outside, are no cycle."""
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import A\nfrom .sub import helper\n",  # helper: a submodule
        "pkg/a.py": "import os\nfrom .b import B\nA = 1\n",
        "pkg/b.py": "def f():\n    from . import c\n    return c\nB = 2\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/sub/__init__.py": "from .helper import helper\n",
        "pkg/sub/helper.py": "from ..b import B\nhelper = B\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert {e.target for e in graph["pkg"]} == {"pkg.a", "pkg.sub.helper"}
    assert [(e.target, e.line) for e in graph["pkg.b"]] == [("pkg.c", 2)]
    assert [e.target for e in graph["pkg.sub.helper"]] == ["pkg.b"]
    cycles = import_cycles(graph)
    assert [c.modules for c in cycles] == [["pkg.a", "pkg.b", "pkg.c"]]
    assert [e.source for e in cycles[0].edges] == ["pkg.a", "pkg.b", "pkg.c"]
    assert str(cycles[0]) == ("pkg.a, pkg.b, pkg.c import each other: pkg.a -> pkg.b -> pkg.c -> pkg.a "
                              "(pkg.a -> pkg.b at pkg/a.py:2; pkg.b -> pkg.c at pkg/b.py:2; "
                              "pkg.c -> pkg.a at pkg/c.py:1)")
