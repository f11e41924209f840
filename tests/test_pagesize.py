"""Page sizes as explicit types (``hugexml.planning.pagesize``): the page map a domain asks
for, what it means on a host, ``--page-size`` words, and the rewrite's read-back check."""
from __future__ import annotations

from typing import Any

import pytest

from hugexml.core.errors import HugexmlError, SelfCheckFailed
from hugexml.core.model import HostInfo
from hugexml.core.units import UnitError
from hugexml.planning.pagesize import Backing, Pick, current_pages, describe, parse_choice, resolve
from hugexml.xml.domxml import load_domain
from hugexml.xml.rewrite import verify

M2, G1 = 2048, 1048576
NORMAL, DEFAULT = Backing.NORMAL, Backing.HOST_DEFAULT
HOST = HostInfo(default_page_kib=M2, page_sizes_kib=(M2, G1), nodes=(0,))
NO_DEFAULT = HostInfo(default_page_kib=None, page_sizes_kib=(), nodes=(0,))
CELLS = ("<cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/>"
         "<cell id='1' cpus='1' memory='1' unit='GiB'/></numa></cpu>")


def domain(backing: str, cells: str = "") -> bytes:
    return (f"<domain type='kvm'><name>g</name><memory unit='GiB'>2</memory>{backing}"
            f"<vcpu>2</vcpu>{cells}<os><type arch='x86_64'>hvm</type></os></domain>").encode()


# backing XML, with two cells?, expected page map
CURRENT: list[tuple[str, bool, dict[Any, Any]]] = [
    ("", False, {None: NORMAL}),
    ("<memoryBacking><hugepages/></memoryBacking>", False, {None: DEFAULT}),
    ("<memoryBacking><hugepages><page size='2' unit='M'/></hugepages></memoryBacking>", False,
     {None: M2}),
    ("<memoryBacking><hugepages><page size='4' unit='KiB'/></hugepages></memoryBacking>",
     False, {None: NORMAL}),
    ("<memoryBacking><hugepages/></memoryBacking>", True, {0: DEFAULT, 1: DEFAULT}),
    ("<memoryBacking><hugepages><page size='1' unit='G' nodeset='1'/></hugepages>"
     "</memoryBacking>", True, {0: NORMAL, 1: G1}),
    ("<memoryBacking><hugepages><page size='2' unit='M'/><page size='1' unit='G' "
     "nodeset='0'/></hugepages></memoryBacking>", True, {0: G1, 1: M2}),
]


@pytest.mark.parametrize("backing, cells, expected", CURRENT)
def test_current_pages(backing: str, cells: bool, expected: dict[Any, Any]) -> None:
    dom = load_domain(domain(backing, CELLS if cells else ""))
    assert current_pages(dom) == expected


@pytest.mark.parametrize("asked, host, expected", [
    (DEFAULT, HOST, M2),
    (DEFAULT, NO_DEFAULT, None),
    (G1, HOST, G1),
    (4, HOST, NORMAL),
    (NORMAL, HOST, NORMAL),
    (NORMAL, NO_DEFAULT, NORMAL),
])
def test_resolve(asked: Any, host: HostInfo, expected: Any) -> None:
    assert resolve(asked, host) == expected


@pytest.mark.parametrize("text, expected", [
    ("auto", Pick.AUTO), (" Largest ", Pick.LARGEST), ("2M", M2), ("1G", G1),
    ("2048KiB", M2), ("2048", M2),
])
def test_parse_choice(text: str, expected: Any) -> None:
    assert parse_choice(text) == expected


@pytest.mark.parametrize("text", ["", "autoo", "big", "-2M", "2Q"])
def test_parse_choice_refuses(text: str) -> None:
    with pytest.raises(UnitError):
        parse_choice(text)


@pytest.mark.parametrize("size, words", [
    (M2, "2M pages"), (G1, "1G pages"), (NORMAL, "normal pages"),
    (DEFAULT, "the host's default hugepage size"),
])
def test_describe(size: Any, words: str) -> None:
    assert describe(size) == words


def test_verify_refuses_a_result_that_is_not_the_map_meant() -> None:
    """The rewrite's read-back check: a mismatch is one line naming what was meant and what
    came out, a HugexmlError (the CLI's one line, exit 70), never an AssertionError."""
    data = domain("<memoryBacking><hugepages><page size='2' unit='M'/></hugepages>"
                  "</memoryBacking>")
    verify(data, "g.xml", {None: M2}, None, 4)
    with pytest.raises(SelfCheckFailed) as info:
        verify(data, "g.xml", {None: G1}, None, 4)
    message = str(info.value)
    assert isinstance(info.value, HugexmlError) and info.value.exit_code == 70
    assert "the rewrite of g.xml" in message and "memory: 2M pages" in message
    assert "meant memory: 1G pages" in message and "\n" not in message
    with pytest.raises(SelfCheckFailed, match="memory source memfd"):
        verify(data, "g.xml", {None: M2}, "memfd", 4)
