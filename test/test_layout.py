"""
Tests of the package's layout: no import loop among its modules (imports
inside functions count; only C{if TYPE_CHECKING:} imports do not), no
module over 600 lines, a docstring atop every module, and a light
C{import asynqueue}.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import asynqueue

PACKAGE = Path(asynqueue.__file__).parent


def moduleName(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {moduleName(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _typeCheckingOnly(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def importsOf(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that C{name} imports, anywhere but under TYPE_CHECKING."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _typeCheckingOnly(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            for alias in node.names:
                found.add(f"{base}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != name}


def test_noImportLoop() -> None:
    known = modules()
    graph = {name: importsOf(name, path, set(known)) for name, path in known.items()}
    loops: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert loops == [], "import loops:\n" + "\n".join(" -> ".join(x) for x in loops)


def test_loopFinderFindsALoop(tmp_path: Path) -> None:
    # The finder itself can fail: a module that imports another inside a
    # function is an edge, one under TYPE_CHECKING is not.
    source = (
        "def f():\n    from asynqueue.b import x\n"
        "if TYPE_CHECKING:\n    import asynqueue.c\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {"asynqueue.a", "asynqueue.b", "asynqueue.c"}
    assert importsOf("asynqueue.a", path, known) == {"asynqueue.b"}


def test_noModuleOver600Lines() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert long == {}


def test_everyModuleSaysWhatItHolds() -> None:
    missing = [
        name
        for name, path in modules().items()
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


def test_importingThePackageLoadsNoOutOfProcessMachinery() -> None:
    code = (
        "import sys, asynqueue; "
        "print(sorted(m for m in sys.modules if m.startswith('asynqueue.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = eval(out)
    heavy = [
        m
        for m in loaded
        if m.startswith(
            ("asynqueue.node", "asynqueue.wire.", "asynqueue.workers.process")
        )
        or m in ("asynqueue.workers.remote", "asynqueue.workers.children")
    ]
    assert heavy == [], heavy
