"""hugexml.core.typed: records as dataclasses behave, with no code generated at import."""
from __future__ import annotations

import subprocess
import sys
from typing import Optional

import pytest

from hugexml.core.typed import Typed, as_dict, field, fields, replace


class Point(Typed, frozen=True):
    x: int
    y: int = 0
    label: Optional[str] = None


class Bag(Typed):
    name: str
    items: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class Tagged(Point, frozen=True):
    tag: str = "t"


@pytest.mark.parametrize("args, kwargs, expected", [
    ((1,), {}, (1, 0, None)),
    ((1, 2), {}, (1, 2, None)),
    ((1, 2, "a"), {}, (1, 2, "a")),
    ((), {"x": 3, "label": "b"}, (3, 0, "b")),
    ((4,), {"y": 5}, (4, 5, None)),
])
def test_construction_follows_field_order_and_defaults(args, kwargs, expected):
    p = Point(*args, **kwargs)
    assert (p.x, p.y, p.label) == expected and fields(p) == ("x", "y", "label")


@pytest.mark.parametrize("args, kwargs, message", [
    ((), {}, "needs 'x'"),
    ((1, 2, "a", 4), {}, "takes 3 fields, 4 given"),
    ((1,), {"x": 2}, "'x' given twice"),
    ((1,), {"z": 2}, "has no field 'z'"),
])
def test_bad_construction_is_a_type_error(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)


def test_frozen_records_are_immutable_and_hashable():
    p = Point(1, 2)
    with pytest.raises(AttributeError, match="frozen"):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del p.y  # type: ignore[misc]
    assert hash(p) == hash(Point(1, 2)) and {p, Point(1, 2)} == {p}
    assert p == Point(1, 2) and p != Point(1, 3) and p != (1, 2, None)
    assert repr(p) == "Point(x=1, y=2, label=None)"


def test_mutable_records_get_their_own_defaults_and_are_unhashable():
    a, b = Bag("a"), Bag("b")
    a.items.append(1)
    assert b.items == [] and a.items == [1]
    a.name = "c"
    assert as_dict(a) == {"name": "c", "items": [1], "counts": {}}
    with pytest.raises(TypeError):
        hash(a)


def test_subclasses_extend_the_fields_and_replace_copies():
    t = Tagged(1, tag="q")
    assert fields(Tagged) == ("x", "y", "label", "tag") and t.tag == "q"
    u = replace(t, y=9)
    assert u == Tagged(1, 9, None, "q") and t.y == 0 and type(u) is Tagged
    assert Tagged(1) != Point(1)  # another class is another record


def test_importing_records_does_not_import_dataclasses():
    code = ("import sys, hugexml.core.typed, hugexml.core.model, hugexml.planning.records, "
            "hugexml.planning.fit; "
            "print(sorted(m for m in ('dataclasses', 'inspect', 'typing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True, cwd="/")
    assert "dataclasses" not in out.stdout and "inspect" not in out.stdout, out.stdout
