"""The package's shape, checked from its source (AST), so it stays the way DESIGN.md describes it.

- no import cycles between featuremaps modules, function-level imports included (``if TYPE_CHECKING:`` blocks,
  which never run, are left out);
- a private name (``_x``) is imported only from a module of the same package;
- an import inside a function says why it is lazy (a ``# lazy:`` comment on its line or the line above): lazy
  imports exist only to keep heavy or optional code (matplotlib, rich, click, browsers, extras) out of
  ``import featuremaps``;
- no module over 600 lines of code and no function over 100 lines.

The import graph is built independently of Python's import machinery: each ``import``/``from ... import`` node
is resolved by hand (relative levels, ``from package import module``), and cycles are the strongly connected
components of that graph (Tarjan). A hand-made package in ``tmp_path`` checks that the checker finds what it
should.
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(os.environ.get("FEATUREMAPS_SRC", Path(__file__).resolve().parents[1] / "src"))
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)
    unexplained_lazy: list[str] = field(default_factory=list)


def _modules(root: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skip.update(id(n) for n in ast.walk(inner))
    return skip


def _package_of(module: str, modules: dict[str, Path]) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    if modules[module].name == "__init__.py":
        return module
    return module.rsplit(".", 1)[0]


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name or None


def build_graph(root: Path, package: str = "featuremaps") -> Graph:
    modules = _modules(root, package)
    graph = Graph(modules, {m: set() for m in modules})
    for module, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        skip = _type_checking_nodes(tree)
        top = {id(n) for n in tree.body}
        for stmt in tree.body:  # imports directly under a top-level try/if are module-level too
            if isinstance(stmt, (ast.Try, ast.If)):
                top.update(id(n) for n in ast.walk(stmt))
        here = _package_of(module, modules)
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets: list[tuple[str, str | None]] = []  # (module imported, name taken from it)
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names if a.name.split(".")[0] == package]
            else:
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    source_name = node.module or ""
                if source_name.split(".")[0] != package:
                    continue
                for alias in node.names:
                    full = f"{source_name}.{alias.name}"
                    targets.append((full, None) if full in modules else (source_name, alias.name))
            if not targets:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            if id(node) not in top:
                around = " ".join(lines[max(0, node.lineno - 2): node.end_lineno])
                if "# lazy:" not in around:
                    graph.unexplained_lazy.append(f"{where}: {ast.unparse(node)}")
            for target, name in targets:
                owner = _owner(target, modules)
                if owner is None:
                    continue
                if owner != module:
                    graph.edges[module].add(owner)
                private_module = any(p.startswith("_") and not p.startswith("__") for p in owner.split(".")[1:])
                if name and name.startswith("_") and not name.startswith("__"):
                    if _package_of(owner, modules) != here:
                        graph.private.append(f"{where}: {name} from {owner}")
                elif private_module:
                    # a private module is open to its own package and the packages below it
                    parent = owner.rsplit(".", 1)[0] if modules[owner].name != "__init__.py" else owner
                    if not (here == parent or here.startswith(parent + ".")):
                        graph.private.append(f"{where}: private module {owner}")
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
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


def long_code(root: Path, package: str = "featuremaps") -> tuple[list[str], list[str]]:
    modules, functions = [], []
    for path in sorted((root / package).rglob("*.py")):
        source = path.read_text()
        n = len(source.splitlines())
        if n > MAX_MODULE_LINES:
            modules.append(f"{path.relative_to(root)}: {n} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    functions.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines")
    return modules, functions


# --------------------------------------------------------------------------- the checker, on planted answers


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import f\n",
        "pkg/b.py": "def f():\n    from . import c  # lazy: test\n",
        "pkg/c.py": "from pkg.a import f\n",
        "pkg/d.py": "from .a import f\n",
    })
    graph = build_graph(tmp_path, "pkg")
    assert cycles(graph.edges) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert graph.unexplained_lazy == []


def test_checker_ignores_type_checking_and_flags_unexplained_lazy_and_private(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\n"
                    "def f():\n    from .b import g\n",
        "pkg/b.py": "from .a import f\n_g = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/x.py": "from ..b import _g\nfrom pkg.sub._y import ok\n",
        "pkg/sub/_y.py": "ok = 1\n",
        "pkg/z.py": "from .sub._y import ok\n",
    })
    graph = build_graph(tmp_path, "pkg")
    assert cycles(graph.edges) == [["pkg.a", "pkg.b"]]  # the function-level import closes it
    assert graph.unexplained_lazy == ["pkg/a.py:5: from .b import g"]
    assert graph.private == ["pkg/sub/x.py:1: _g from pkg.b", "pkg/z.py:1: private module pkg.sub._y"]


def test_long_code_counts_lines(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": f"def short():\n    pass\n\ndef long():\n{body}\n"})
    modules, functions = long_code(tmp_path, "pkg")
    assert modules == []
    assert functions == [f"pkg/a.py:4 long: {MAX_FUNCTION_LINES + 1} lines"]


# --------------------------------------------------------------------------- featuremaps itself


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(SRC)


def test_no_import_cycles(graph: Graph) -> None:
    assert cycles(graph.edges) == []


def test_private_names_stay_in_their_package(graph: Graph) -> None:
    assert graph.private == []


def test_lazy_imports_say_why(graph: Graph) -> None:
    assert graph.unexplained_lazy == []


def test_no_god_modules_or_functions() -> None:
    assert long_code(SRC) == ([], [])


if __name__ == "__main__":  # a report for people: python tests/test_architecture.py [src]
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else SRC
    g = build_graph(root)
    for c in cycles(g.edges):
        print("cycle:", " ".join(c))
    for line in g.private + g.unexplained_lazy:
        print(line)
    for line in sum(long_code(root), []):
        print(line)
