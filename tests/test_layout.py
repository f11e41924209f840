"""The package tree is the architecture: each group is a subpackage, groups are layered, and
imports only go down (or sideways within a group). Every import counts: module level, inside
functions (lazy imports) and under TYPE_CHECKING. No import circles, and every ``__init__``
is empty, so importing a group costs nothing.

Bottom to top (docs/architecture.md follows the same order)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hugexml"
GROUPS = ("core", "planning", "xml", "host", "alloc", "system", "qemuhook", "ops", "cli")
# outside the groups: the package itself, ``python -m hugexml`` and the name installed hook
# files import (``hugexml.hook``: it re-exports the hook's entry points, stable across versions)
ENTRY = {"hugexml": None, "hugexml.__main__": "cli", "hugexml.hook": "qemuhook"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """Every hugexml module ``name`` imports, wherever the import statement is."""
    path = MODULES[name]
    return imports_in(path.read_text(), name, path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "hugexml")
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))  # importlib.import_module("hugexml.x.y")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] != "hugexml":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {m for m in found if m != name}


def group_of(name: str) -> str | None:
    if name in ENTRY:
        return None
    return name.split(".")[1]


def test_every_module_is_in_a_group() -> None:
    loose = sorted(m for m in MODULES if m not in ENTRY and group_of(m) not in GROUPS)
    assert not loose, f"modules outside the groups {GROUPS}: {loose}"
    assert {m for m in MODULES if m.count(".") == 1 and m not in ENTRY} == {
        f"hugexml.{g}" for g in GROUPS}, "each group is a subpackage of hugexml"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down(name: str) -> None:
    """A module imports from its own group or a group below it, never above."""
    mine = group_of(name)
    rank = GROUPS.index(mine) if mine else None
    for target in sorted(imports_of(name)):
        theirs = group_of(target)
        if theirs is None:
            assert target == "hugexml", f"{name} imports the entry module {target}"
            continue
        if name in ENTRY:
            assert ENTRY[name] == theirs, f"{name} imports {target}"
            continue
        assert GROUPS.index(theirs) <= rank, (
            f"{name} ({mine}) imports {target} ({theirs}), a group above its own")


def test_no_import_circles() -> None:
    graph = {m: {t for t in imports_of(m) if t in MODULES} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_group_inits_are_empty() -> None:
    """Importing a group imports nothing: the hook's start-up does not grow with the tree."""
    for group in GROUPS:
        assert (PACKAGE / group / "__init__.py").read_text() == "", group


def test_the_import_walk_sees_every_kind_of_import() -> None:
    """What the direction test relies on: lazy imports, TYPE_CHECKING imports and relative
    imports are all read."""
    source = ("TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from hugexml.cli import main\n"
              "def f():\n    from hugexml.alloc import ledger\n"
              "from . import errors\nfrom ..xml.domxml import load_domain\nimport json\n"
              "importlib.import_module('hugexml.host.live')\n")
    assert imports_in(source, "hugexml.core.probe", False) == {
        "hugexml.cli.main", "hugexml.alloc.ledger", "hugexml.core.errors", "hugexml.xml.domxml",
        "hugexml.host.live"}
