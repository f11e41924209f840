"""hugexml.xml.domxml: what a domain XML says, read into the model (no plan, no host)."""
from __future__ import annotations

import pytest

from hugexml.core.errors import InvalidDomain, InvalidXML
from hugexml.core.model import Cell, MemNode, MemoryDevice, NumaTune, PageSpec
from hugexml.xml.domxml import load_domain


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


# --- libvirt's value readers (hugexml.xml.xmlread) ---------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("0", {0}), ("0-3", {0, 1, 2, 3}), ("0-3,^2", {0, 1, 3}), (" 1 , 3 ", {1, 3}),
    ("^0,0", {0}), ("0,^0,0", {0}), ("0-2,^1,1", {0, 1, 2}), ("0- 2", {0, 1, 2}),
    ("0-+2", {0, 1, 2}), ("16383", {16383}), ("1,^1", set()), ("^1", set()), ("1,", {1}),
])
def test_bitmaps_read_left_to_right_as_libvirt(text, expected):
    from hugexml.xml.xmlread import bitmap

    assert bitmap(text) == frozenset(expected)


@pytest.mark.parametrize("text", ["", " ", "a", "1-0", "0-", "-1", "^ 1", "^1-2", "0,,1",
                                  "1 2", "+1", "16384", "0-16384", "0x1", ",1"])
def test_bad_bitmaps_fail_as_libvirt(text):
    from hugexml.core.units import UnitError
    from hugexml.xml.xmlread import bitmap

    with pytest.raises(UnitError, match="Failed to parse bitmap"):
        bitmap(text)


@pytest.mark.parametrize("value,unit,kib", [
    ("2048", None, 2048), ("+2048", "KiB", 2048), (" 2", "M", 2048), ("2", "MiB", 2048),
    ("2", "mib", 2048), ("2", "MB", 1954), ("1", "b", 1), ("1025", "bytes", 2),
    ("1", "G", 1048576), ("1", "GB", 976563), ("1", "T", 1073741824), ("0", "EiB", 0),
])
def test_sizes_as_libvirt_scales_them(value, unit, kib):
    from hugexml.xml.xmlread import scaled_kib

    assert scaled_kib(value, unit, "./x") == kib


@pytest.mark.parametrize("value,unit,message", [
    ("2048 ", None, "Invalid value '2048 ' for element or attribute './x'"),
    ("-1", None, "Invalid value '-1' for element or attribute './x'"),
    ("0x10", None, "Invalid value '0x10' for element or attribute './x'"),
    ("1.5", "G", "Invalid value '1.5' for element or attribute './x'"),
    ("2", " MiB", "unknown suffix ' MiB'"), ("2", "Mi", "unknown suffix 'Mi'"),
    ("2", "XiB", "unknown suffix 'XiB'"),
    ("8", "EiB", "value too large: 8EiB"),
    ("9223372036854775807", "b", "size value too large"),
    ("9" * 100, None, f"Invalid value '{'9' * 61}...' for element or attribute './x'"),
])
def test_bad_sizes_fail_as_libvirt(value, unit, message):
    from hugexml.core.units import UnitError
    from hugexml.xml.xmlread import scaled_kib

    with pytest.raises(UnitError) as info:
        scaled_kib(value, unit, "./x")
    assert str(info.value) == message


def test_what_libvirt_reads_beyond_page_sizes():
    d = load_domain(dom(
        "<maxMemory slots='8' unit='GiB'>16</maxMemory><memoryBacking><hugepages/>"
        "<nosharepages/><locked/><source type='memfd'/><access mode='shared'/>"
        "<allocation mode='immediate' threads='4'/><discard/></memoryBacking>"
        "<memtune><min_guarantee unit='MiB'>1</min_guarantee></memtune>"
        "<vcpu placement='auto'>4</vcpu>"
        "<cpu><numa><cell id='0' cpus='0-1' memory='2' unit='GiB' discard='no'>"
        "<cache level='1' associativity='direct' policy='writeback'><size value='10' "
        "unit='KiB'/><line value='8' unit='B'/></cache></cell>"
        "<cell id='1' memory='2' unit='GiB'/>"
        "<interconnects><latency initiator='0' target='1' type='access' value='5'/>"
        "</interconnects></numa></cpu>"))
    assert (d.max_memory_slots, d.nosharepages, d.locked, d.source, d.access) == (
        8, True, True, "memfd", "shared")
    assert (d.allocation, d.allocation_threads, d.discard, d.min_guarantee_kib, d.vcpus) == (
        "immediate", 4, True, 1024, 4)
    assert d.cells[0].discard is False and d.cells[0].cache_levels == (1,)
    assert d.cells[1].cpus is None and d.interconnects[0].target == 1
    # <vcpu placement='auto'> without <numatune>: automatic memory placement
    assert d.numatune == NumaTune("strict", None, "auto")
    assert d.total_memory_kib == 4 * 1024 * 1024 and d.hotplug
