"""docs/architecture.md stays true: one bold-headed paragraph per module of the package, no
paragraph for a module that is gone, and every module the hook-call walk-through names exists."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"


def package_modules() -> set[str]:
    """Dotted names of every module under hugexml/ (a package by its own name)."""
    names = set()
    for path in (REPO / "hugexml").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    return names


def documented_modules(text: str) -> list[str]:
    """The modules the document gives a paragraph: lines that start with **`hugexml...`**."""
    return re.findall(r"^\*\*`(hugexml(?:\.[A-Za-z_][A-Za-z0-9_]*)*)`\*\*", text, re.M)


def test_package_modules_are_found():
    modules = package_modules()
    assert {"hugexml", "hugexml.qemuhook.dispatch", "hugexml.cli", "hugexml.cli.plan"} <= modules


def test_every_module_has_exactly_one_paragraph():
    documented = documented_modules(ARCHITECTURE.read_text())
    duplicates = sorted({m for m in documented if documented.count(m) > 1})
    assert not duplicates, f"docs/architecture.md describes these twice: {duplicates}"
    modules = package_modules()
    missing = sorted(modules - set(documented))
    gone = sorted(set(documented) - modules)
    assert not missing, f"docs/architecture.md lacks a paragraph for: {missing}"
    assert not gone, f"docs/architecture.md describes modules that do not exist: {gone}"


def test_walk_through_names_only_real_modules_and_functions():
    """`hook._prepare`, `alloc.Allocator.reserve`, ...: the first part is a module of the
    package and the rest an attribute it has, so the walk-through cannot rot silently."""
    import importlib

    text = ARCHITECTURE.read_text().split("## The path of a hook call", 1)[1]
    # A short name is a module's last part; a CLI command module never shadows the module it
    # is named after (`plan.make_plan` is hugexml.planning.plan), and a group package
    # (`alloc`) is no module of its own.
    modules = {m.split(".")[-1]: m
               for m in sorted(package_modules(), key=lambda m: not m.startswith("hugexml.cli."))
               if m.count(".") >= 2}
    checked = 0
    for ref in set(re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)`", text)):
        head, *attrs = ref.split(".")
        if head not in modules or head == "hugexml":
            continue
        obj = importlib.import_module(modules[head])
        for attr in attrs:
            assert hasattr(obj, attr), f"docs/architecture.md names {ref}: no {attr}"
            obj = getattr(obj, attr)
        checked += 1
    assert checked >= 10, "the walk-through names too few module.function references"
