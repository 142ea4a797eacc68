"""The project's import graph, read with `ast` (nothing is imported), and the rules
the tree must obey: dependencies point one way between layers, and no module is in
an import cycle, counting imports made inside functions and under TYPE_CHECKING.

A tree is given as import roots: {"llenergymeasure.orchestrator": Path("orchestrator"), ...},
the same mapping setup.py installs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    line: int


def modules(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Every module of the tree: dotted name -> file."""
    out: dict[str, Path] = {}
    for root_name, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([root_name, *parts])] = path
    return out


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(tree: ast.AST, name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import statement, anywhere."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(name, path).split(".")
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            yield base, [a.name for a in node.names], node.lineno


def edges(roots: Mapping[str, Path]) -> list[Edge]:
    """Imports between modules of the tree (imports of anything else are left out)."""
    known = modules(roots)
    out = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module, names, line in _imports(tree, name, path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
            if not targets and module in known:
                targets = [module]
            elif not targets:  # a name from a package's module: the nearest known module above it
                parts = module.split(".")
                while parts and ".".join(parts) not in known:
                    parts.pop()
                targets = [".".join(parts)] if parts else []
            out += [Edge(name, t, line) for t in targets if t != name]
    return out


def cycles(graph_edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in graph_edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> tuple[int, str] | None:
    """(rank, layer name) of a module: the layers are listed top first; a module is in the
    first layer one of whose prefixes it equals or starts with."""
    for rank, (layer, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return len(layers) - rank, layer
    return None


def upward(graph_edges: list[Edge], layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """Imports from a layer into a layer above it (a layer may import itself and below)."""
    bad = []
    for e in graph_edges:
        a, b = layer_of(e.source, layers), layer_of(e.target, layers)
        if a is None or b is None:
            bad.append(f"{e.source}:{e.line} -> {e.target}: a module outside every layer")
        elif b[0] > a[0]:
            bad.append(f"{e.source}:{e.line} ({a[1]}) imports {e.target} ({b[1]}), a layer above it")
    return bad
