"""The package keeps its shape: no module over the size limit, no import cycle.

Imports are read from the source (every ``import`` statement anywhere in a module:
inside functions and ``if TYPE_CHECKING:`` blocks too), so a cycle hidden behind a
lazy import is still a cycle here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module
    base = current.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, by any statement anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, name, is_package)
            # ``from pkg import mod`` imports the module ``pkg.mod`` when there is one.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that starts and ends on one module."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_no_import_cycle() -> None:
    """No module of batchgen imports, directly or through others, itself."""
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _sizes() -> Iterator[tuple[str, int]]:
    for name, path in _modules().items():
        yield name, len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_over_the_size_limit() -> None:
    """Every module under batchgen/ (the simulator included) has at most 500 lines."""
    over = {name: lines for name, lines in _sizes() if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_every_subpackage_says_what_it_owns() -> None:
    """Each subpackage's ``__init__`` has a docstring (what the stage owns, hands on)."""
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init.parent.name}/__init__.py has no docstring"
        assert len(doc.split()) >= 20, f"{init.parent.name}/__init__.py: say what it owns"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
        ({"a": {"a"}}, ["a", "a"]),
    ],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, set[str]], expected: list[str] | None
) -> None:
    """The walker reports a cycle exactly when there is one (so the test above can fail)."""
    assert find_cycle(graph) == expected


def test_imports_are_read_from_every_statement(tmp_path: Path) -> None:
    """Imports inside functions, TYPE_CHECKING blocks and relative imports all count."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from batchgen.x import A\n"
        "def f():\n    import batchgen.y\n"
        "from . import z\n",
        encoding="utf-8",
    )
    known = {"batchgen.x", "batchgen.y", "batchgen.z", "batchgen.mod"}
    assert imports_of("batchgen.mod", source, known) == {"batchgen.x", "batchgen.y", "batchgen.z"}
