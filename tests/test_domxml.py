"""hugexml.domxml: what a domain XML says, read into the model (no plan, no host)."""
from __future__ import annotations

import pytest

from hugexml.domxml import load_domain
from hugexml.errors import InvalidDomain, InvalidXML
from hugexml.model import Cell, MemNode, MemoryDevice, NumaTune, PageSpec


def dom(body: str, memory: str = "<memory unit='GiB'>4</memory>") -> bytes:
    return (f"<domain type='kvm'><name>g</name><uuid>6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10"
            f"</uuid>{memory}{body}</domain>").encode()


CELLS = ("<cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/>"
         "<cell id='1' cpus='1' memory='512' unit='MiB' memAccess='shared'/></numa></cpu>")


def test_defaults_of_a_plain_domain():
    d = load_domain(dom(""))
    assert (d.name, d.uuid, d.memory_kib, d.hugepages, d.pages, d.source, d.access, d.cells,
            d.numatune, d.memory_devices, d.max_memory_kib) == (
        "g", "6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10", 4 * 1024 * 1024, False, (), None, None,
        (), None, (), None)


@pytest.mark.parametrize("backing,hugepages,pages,source,access", [
    ("<hugepages/>", True, (), None, None),
    ("<hugepages><page size='2048' unit='KiB'/></hugepages>", True, (PageSpec(2048),), None,
     None),
    ("<hugepages><page size='1' unit='G' nodeset='0-1,^1'/><page size='2' unit='M' "
     "nodeset='1'/></hugepages>", True,
     (PageSpec(1048576, frozenset({0})), PageSpec(2048, frozenset({1}))), None, None),
    ("<hugepages><page size='2097152' unit='b'/></hugepages><source type='memfd'/>"
     "<access mode='shared'/>", True, (PageSpec(2048),), "memfd", "shared"),
    ("<source type='file'/><access mode='private'/>", False, (), "file", "private"),
    ("<nosharepages/><locked/>", False, (), None, None),
])
def test_memory_backing(backing, hugepages, pages, source, access):
    d = load_domain(dom(f"<memoryBacking>{backing}</memoryBacking>"))
    assert (d.hugepages, d.pages, d.source, d.access) == (hugepages, pages, source, access)


def test_cells_sizes_units_and_mem_access():
    d = load_domain(dom("<vcpu>2</vcpu>" + CELLS))
    assert d.cells == (Cell(0, 1048576, None, frozenset({0})),
                       Cell(1, 524288, "shared", frozenset({1})))


def test_numatune_memory_and_memnodes():
    d = load_domain(dom("<vcpu>2</vcpu>" + CELLS +
                        "<numatune><memory mode='interleave' nodeset='0-3,^2'/>"
                                "<memnode cellid='1' mode='preferred' nodeset='3'/>"
                                "<memnode cellid='0' nodeset='0'/></numatune>"))
    assert d.numatune == NumaTune(mode="interleave", nodeset=frozenset({0, 1, 3}),
                                  placement="static",
                                  memnodes=(MemNode(1, "preferred", frozenset({3})),
                                            MemNode(0, "strict", frozenset({0}))))


@pytest.mark.parametrize("numatune,vcpu,expected", [
    ("<numatune><memory nodeset='1'/></numatune>", "<vcpu>2</vcpu>",
     NumaTune("strict", frozenset({1}), "static")),
    ("<numatune><memory placement='auto'/></numatune>", "<vcpu>2</vcpu>",
     NumaTune("strict", None, "auto")),
    # libvirt: without a nodeset the numatune placement follows <vcpu placement>
    ("<numatune><memory mode='preferred'/></numatune>", "<vcpu placement='auto'>2</vcpu>",
     NumaTune("preferred", None, "auto")),
    ("<numatune><memory nodeset='0'/></numatune>", "<vcpu placement='auto'>2</vcpu>",
     NumaTune("strict", frozenset({0}), "static")),
    # and without any <numatune>, <vcpu placement='auto'> binds the memory to numad's advice
    ("", "<vcpu placement='auto'>2</vcpu>", NumaTune("strict", None, "auto")),
    ("<numatune><memory placement='auto' nodeset='1'/></numatune>", "<vcpu>1</vcpu>",
     NumaTune("strict", None, "auto")),
    ("<numatune/>", "<vcpu>1</vcpu>", NumaTune(None, None, None)),
    ("", "<vcpu>1</vcpu>", None),
])
def test_numatune_placement(numatune, vcpu, expected):
    assert load_domain(dom(vcpu + numatune)).numatune == expected


def test_memory_devices_with_own_source():
    d = load_domain(dom(
        "<vcpu>2</vcpu>" + CELLS + "<maxMemory slots='4' unit='GiB'>16</maxMemory><devices>"
        "<memory model='dimm' access='shared'><source><pagesize unit='KiB'>1048576</pagesize>"
        "<nodemask>1-2</nodemask></source><target><size unit='GiB'>2</size><node>1</node>"
        "</target></memory>"
        "<memory model='virtio-mem'><target><size unit='MiB'>512</size><node>0</node>"
        "<block unit='MiB'>2</block><requested unit='MiB'>256</requested></target></memory>"
        "<memory model='nvdimm'><source><path>/tmp/nv</path></source>"
        "<target><size unit='MiB'>128</size></target></memory></devices>"))
    assert d.max_memory_kib == 16 * 1024 * 1024
    assert (d.max_memory_slots, d.vcpus) == (4, 2)
    assert d.memory_devices == (
        MemoryDevice("dimm", 0, 2097152, 1, 1048576, frozenset({1, 2}), "shared"),
        MemoryDevice("virtio-mem", 1, 524288, 0, block_kib=2048, requested_kib=262144),
        MemoryDevice("nvdimm", 2, 131072, None, path="/tmp/nv"),
    )


def test_cells_default_to_their_position_and_are_sorted_by_id():
    d = load_domain(dom("<cpu><numa><cell id='1' memory='2048'/><cell id='0' memory='1024'/>"
                        "</numa></cpu>"))
    assert [c.cell_id for c in d.cells] == [0, 1] and d.cells[0].memory_kib == 1024
    d = load_domain(dom("<cpu><numa><cell memory='1'/><cell memory='2'/></numa></cpu>"))
    assert [(c.cell_id, c.memory_kib) for c in d.cells] == [(0, 1), (1, 2)]


def test_unmodelled_elements_are_ignored():
    d = load_domain(dom("<!-- c --><metadata><x:y xmlns:x='urn:x'/></metadata><?pi x?>"
                        "<devices><disk type='file'/></devices>"))
    assert d.memory_devices == () and d.name == "g"


# libvirt's own rules are tested row by row in test_validate.py; these are hugexml's bounds
def test_the_message_is_one_line_naming_the_domain():
    with pytest.raises(InvalidDomain) as info:
        load_domain(dom("<memoryBacking><hugepages><page size='2' unit='Q'/></hugepages>"
                        "</memoryBacking>"))
    assert str(info.value) == "domain 'g': unknown suffix 'Q'"


def test_a_domain_without_memory_reads_as_zero():
    """libvirt: <memory> may be left out (the cells make the total); validate decides."""
    assert load_domain(dom("", memory="")).memory_kib == 0


@pytest.mark.parametrize("data,words", [
    (b"<vm/>", "root element is <vm>"),
    (b"<domain>", "<stdin>: not a readable domain XML"),
    (b"", "empty input"),
])
def test_not_a_domain(data, words):
    with pytest.raises(InvalidXML) as info:
        load_domain(data)
    assert words in str(info.value)


def test_too_many_elements_are_bounded():
    cells = "".join(f"<cell id='{i}' memory='1'/>" for i in range(1025))
    with pytest.raises(InvalidDomain, match="too many NUMA cells: 1025"):
        load_domain(dom(f"<cpu><numa>{cells}</numa></cpu>"))
    pages = "<page size='2048'/>" * 1025
    with pytest.raises(InvalidDomain, match="too many <page> elements"):
        load_domain(dom(f"<memoryBacking><hugepages>{pages}</hugepages></memoryBacking>"))
