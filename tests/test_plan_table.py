"""Table-driven cases for hugexml.planning.plan (pure): one row per libvirt semantic or
rejection."""
from __future__ import annotations

import pytest

from hugexml.core.errors import InvalidDomain, NoSuchHostNode, UnsupportedPageSize
from hugexml.core.model import HostInfo
from hugexml.xml.domxml import plan_xml

HOST = HostInfo(default_page_kib=2048, page_sizes_kib=(2048, 1048576), nodes=(0, 1, 2, 3),
                auto_nodes=(0, 1, 2, 3))


def dom(backing: str = "", cells: str = "", numatune: str = "", devices: str = "",
        memory: str = "4194304") -> bytes:
    numa = f"<cpu><numa>{cells}</numa></cpu>" if cells else ""
    mb = f"<memoryBacking>{backing}</memoryBacking>" if backing else ""
    return (f"<domain type='kvm'><name>g</name><memory>{memory}</memory>{mb}<vcpu>4</vcpu>"
            f"{numatune}{numa}<devices>{devices}</devices></domain>").encode()


HOTPLUG = "<maxMemory slots='4' unit='G'>16</maxMemory>"
CELLS2 = ("<cell id='0' cpus='0' memory='1048576'/>"
          "<cell id='1' cpus='1' memory='1048576'/>")

# (id, xml, [(kind, cell, page_kib, pages, host_nodes)])
OK = [
    ("no-hugepages", dom(), [("memory", None, None, 0, None)]),
    ("bare-default", dom("<hugepages/>"), [("memory", None, 2048, 2048, None)]),
    ("master-1G", dom("<hugepages><page size='1' unit='G'/></hugepages>"),
     [("memory", None, 1048576, 4, None)]),
    ("system-size-is-ram", dom("<hugepages><page size='4' unit='KiB'/></hugepages>"),
     [("memory", None, None, 0, None)]),
    ("nodeset-is-guest-cells",
     dom("<hugepages><page size='1' unit='G' nodeset='1'/></hugepages>", CELLS2),
     [("cell", 0, None, 0, None), ("cell", 1, 1048576, 1, None)]),
    ("master-for-uncovered",
     dom("<hugepages><page size='2048'/><page size='1G' nodeset='0'/></hugepages>"
         .replace("size='1G'", "size='1' unit='G'"), CELLS2),
     [("cell", 0, 1048576, 1, None), ("cell", 1, 2048, 512, None)]),
    ("memnode-and-inherit",
     dom("<hugepages/>", CELLS2,
         "<numatune><memory mode='preferred' nodeset='2'/>"
         "<memnode cellid='0' mode='strict' nodeset='1,3'/></numatune>"),
     [("cell", 0, 2048, 512, (1, 3)), ("cell", 1, 2048, 512, (2,))]),
    ("placement-auto", dom("<hugepages/>", "", "<numatune><memory placement='auto'/></numatune>"),
     [("memory", None, 2048, 2048, (0, 1, 2, 3))]),
    ("dimm-inherits-cell",
     dom("<hugepages><page size='1' unit='G' nodeset='0'/></hugepages>", CELLS2, HOTPLUG,
         "<memory model='dimm'><target><size unit='G'>1</size><node>0</node></target></memory>"),
     [("cell", 0, 1048576, 1, None), ("cell", 1, None, 0, None),
      ("dimm", 0, 1048576, 1, None)]),
    ("dimm-own-source",
     dom("<hugepages/>", CELLS2, HOTPLUG,
         "<memory model='dimm'><source><pagesize unit='G'>1</pagesize><nodemask>1-3</nodemask>"
         "</source><target><size unit='G'>1</size><node>1</node></target></memory>"),
     [("cell", 0, 2048, 512, None), ("cell", 1, 2048, 512, None),
      ("dimm", 1, 1048576, 1, (1, 2, 3))]),
    ("cell-ids-default-to-position",
     dom("<hugepages><page size='1' unit='G' nodeset='1'/></hugepages>",
         "<cell cpus='0' memory='1048576'/><cell cpus='1' memory='1048576'/>"),
     [("cell", 0, None, 0, None), ("cell", 1, 1048576, 1, None)]),
    ("cells-in-id-order",
     dom("<hugepages/>", "<cell id='1' memory='2048'/><cell id='0' memory='4096'/>"),
     [("cell", 0, 2048, 2, None), ("cell", 1, 2048, 1, None)]),
    ("node0-page-without-cells-is-master",
     dom("<hugepages><page size='1' unit='G' nodeset='0'/></hugepages>"),
     [("memory", None, 1048576, 4, None)]),
    # libvirt 9.0 takes a restrictive memnode under a strict <memory> (newer libvirt does not)
    ("restrictive-memnode-strict-memory",
     dom("<hugepages/>", CELLS2, "<numatune><memory mode='strict' nodeset='0'/>"
                                 "<memnode cellid='1' mode='restrictive' nodeset='1'/></numatune>"),
     [("cell", 0, 2048, 512, (0,)), ("cell", 1, 2048, 512, (1,))]),
    ("restrictive-both", dom("<hugepages/>", CELLS2,
                             "<numatune><memory mode='restrictive' nodeset='0-1'/>"
                             "<memnode cellid='1' mode='restrictive' nodeset='1'/></numatune>"),
     [("cell", 0, 2048, 512, (0, 1)), ("cell", 1, 2048, 512, (1,))]),
    ("nvdimm-never-huge",
     dom("<hugepages/>", CELLS2, "<maxMemory slots='2' unit='G'>8</maxMemory>",
         "<memory model='nvdimm'><source><path>/x</path></source>"
         "<target><size unit='M'>512</size><node>0</node></target></memory>"),
     [("cell", 0, 2048, 512, None), ("cell", 1, 2048, 512, None), ("nvdimm", 0, None, 0, None)]),
]


@pytest.mark.parametrize("xml,expected", [c[1:] for c in OK], ids=[c[0] for c in OK])
def test_plan(xml: bytes, expected: list) -> None:
    plan = plan_xml(xml, HOST, "t")
    got = [(c.kind, c.guest_cell, c.page_size_kib, c.pages, c.host_nodes) for c in plan.consumers]
    assert got == expected


BAD = [
    ("two-masters", dom("<hugepages><page size='2048'/><page size='1048576'/></hugepages>"),
     InvalidDomain, "two master hugepages detected: 1048576 and 2048"),  # libvirt: later first
    ("two-masters-node0-no-cells",
     dom("<hugepages><page size='1048576'/><page size='2048' nodeset='0'/></hugepages>"),
     InvalidDomain, "two master hugepages detected: 2048 and 1048576"),
    ("missing-cell", dom("<hugepages><page size='2048' nodeset='4'/></hugepages>", CELLS2),
     InvalidDomain, "hugepages: node 4 not found"),
    ("cell-twice", dom("<hugepages><page size='2048' nodeset='0'/>"
                       "<page size='1048576' nodeset='0'/></hugepages>", CELLS2),
     InvalidDomain, "nodeset attribute of hugepages of sizes 1048576 and 2048 intersect"),
    ("page-zero", dom("<hugepages><page size='0'/></hugepages>"),
     InvalidDomain, "hugepage size can't be zero"),
    ("cell-id-gap", dom("", "<cell id='0' memory='1024'/><cell id='2' memory='1024'/>"),
     InvalidDomain, "Exactly one 'cell' element per guest NUMA cell allowed"),
    ("cell-id-twice", dom("", "<cell id='1' memory='1024'/><cell id='1' memory='1024'/>"),
     InvalidDomain, "Duplicate NUMA cell info for cell id '1'"),
    ("numa-without-cells", dom("", "", "", "").replace(b"<devices>", b"<cpu><numa/></cpu>"
                                                        b"<devices>"),
     InvalidDomain, "NUMA topology defined without NUMA cells"),
    ("memaccess-bad", dom("", "<cell id='0' memory='1024' memAccess='public'/>"),
     InvalidDomain, "Invalid value for attribute 'memAccess' in element 'cell': 'public'."),
    ("backing-source-bad", dom("<source type='tmpfs'/>"),
     InvalidDomain, "unknown memoryBacking/source/type 'tmpfs'"),
    ("memnode-mode-bad", dom("", CELLS2, "<numatune><memnode cellid='0' mode='lax' nodeset='0'/>"
                                         "</numatune>"),
     InvalidDomain, "Invalid value for attribute 'mode' in element 'memnode': 'lax'."),
    ("memnode-twice", dom("", CELLS2, "<numatune><memnode cellid='0' mode='strict' nodeset='0'/>"
                                      "<memnode cellid='0' mode='strict' nodeset='1'/></numatune>"),
     InvalidDomain, "Multiple memnode elements with cellid 0"),
    ("restrictive-memory-strict-memnode",
     dom("", CELLS2, "<numatune><memory mode='restrictive' nodeset='0-1'/>"
                     "<memnode cellid='1' mode='strict' nodeset='1'/></numatune>"),
     InvalidDomain, "'restrictive' mode is required in memnode element"),
    ("cell-overflow-after-align",
     dom("", "<cell id='0' memory='9007199254740991'/>", memory="9007199254740991"),
     InvalidDomain, "memory size of NUMA node '0' overflowed after alignment"),
    ("memory-overflow-after-align", dom(memory="9007199254740991"),
     InvalidDomain, "initial memory size overflowed after alignment"),
    ("units-beyond-64-bits", dom().replace(b"<memory>4194304", b"<memory unit='TiB'>17179869184"),
     InvalidDomain, "value too large: 17179869184TiB"),
    ("memnode-no-cells", dom("", "", "<numatune><memnode cellid='0' mode='strict' nodeset='0'/>"
                                     "</numatune>"), InvalidDomain, "memnode"),
    ("memnode-auto", dom("", CELLS2, "<numatune><memory placement='auto'/>"
                                     "<memnode cellid='0' mode='strict' nodeset='0'/></numatune>"),
     InvalidDomain, "Per-node binding is not compatible with automatic NUMA placement."),
    ("empty-nodeset", dom("", "", "<numatune><memory nodeset='0,^0'/></numatune>"),
     InvalidDomain, "Invalid value of 'nodeset': 0,^0"),
    ("dimm-missing-cell", dom("", CELLS2, HOTPLUG,
                              "<memory model='dimm'><target><size>524288</size>"
                              "<node>5</node></target></memory>"),
     InvalidDomain, "guest node '5'"),
    ("hotplug-no-cells", dom("", "", HOTPLUG, "<memory model='dimm'><target><size>524288</size>"
                                              "</target></memory>"),
     InvalidDomain, "At least one numa node has to be configured when enabling memory hotplug"),
    ("page-5M", dom("<hugepages><page size='5' unit='M'/></hugepages>"),
     UnsupportedPageSize, "5120 KiB"),
    ("host-node-4", dom("", "", "<numatune><memory nodeset='4'/></numatune>"),
     NoSuchHostNode, "NUMA node 4 is unavailable"),
]


@pytest.mark.parametrize("xml,exc,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_reject(xml: bytes, exc: type, words: str) -> None:
    with pytest.raises(exc) as info:
        plan_xml(xml, HOST, "t")
    assert words in str(info.value)
    assert "\n" not in str(info.value)
