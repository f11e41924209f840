"""Read a libvirt domain XML into ``hugexml.model.Domain``.

The only module of the plan path that touches lxml. XPaths are declared once below; every
value is bounded (units, node ids < MAX_NODES, 64-bit sizes, element counts) and every bad
value becomes one ``InvalidDomain`` line.
"""
from __future__ import annotations

from typing import Any, Optional

from hugexml import units, xmlsafe
from hugexml.errors import InvalidDomain, InvalidXML
from hugexml.model import (
    MEMORY_DEVICE_MODELS,
    Cell,
    Domain,
    MemNode,
    MemoryDevice,
    NumaTune,
    PageSpec,
)

# --- XPaths (declared once) -------------------------------------------------------------
X_NAME = "name"
X_UUID = "uuid"
X_MEMORY = "memory"
X_MAX_MEMORY = "maxMemory"
X_BACKING = "memoryBacking"
X_HUGEPAGES = "memoryBacking/hugepages"
X_PAGES = "memoryBacking/hugepages/page"
X_BACKING_SOURCE = "memoryBacking/source"
X_BACKING_ACCESS = "memoryBacking/access"
X_NUMA = "cpu/numa"
X_CELLS = "cpu/numa/cell"
X_VCPU = "vcpu"
X_NUMATUNE = "numatune"
X_NUMATUNE_MEMORY = "numatune/memory"
X_MEMNODES = "numatune/memnode"
X_MEMORY_DEVICES = "devices/memory"
X_DEV_TARGET_SIZE = "target/size"
X_DEV_TARGET_NODE = "target/node"
X_DEV_SOURCE_PAGESIZE = "source/pagesize"
X_DEV_SOURCE_NODEMASK = "source/nodemask"
X_DEV_ACCESS = "access"  # attribute on <memory>

MAX_CELLS = 1024
MAX_MEMORY_DEVICES = 256
MAX_PAGES = 1024

# Enumerated attributes, as libvirt's enums (a value outside is rejected when parsing).
MEM_ACCESS = ("default", "shared", "private")
BACKING_SOURCES = ("file", "anonymous", "memfd")
NUMATUNE_MODES = ("strict", "preferred", "interleave", "restrictive")
PLACEMENTS = ("static", "auto")


def load_domain(data: bytes, source: str = "<stdin>") -> Domain:
    """Parse bytes (safe parser, size-capped) into a Domain."""
    return parse_domain_tree(xmlsafe.parse_bytes(data, source), source)


def _text(el: Any) -> Optional[str]:
    return None if el is None or el.text is None else el.text.strip()


def parse_domain_tree(tree: Any, source: str) -> Domain:
    root = tree.getroot() if hasattr(tree, "getroot") else tree
    if root.tag != "domain":
        raise InvalidXML(source=source, reason=f"root element is <{root.tag}>, expected <domain>")
    name = _text(root.find(X_NAME)) or "?"
    try:
        return _parse(root, name)
    except units.UnitError as exc:
        raise InvalidDomain(domain=name, reason=str(exc)) from exc


def _size(el: Any, what: str) -> int:
    if el is None:
        raise units.UnitError(f"missing {what}")
    return units.to_kib(_text(el), el.get("unit"), what=what)


def _node_id(text: Optional[str], what: str) -> int:
    value = units.parse_number(text, what)
    if value >= units.MAX_NODES:
        raise units.UnitError(f"{what} {value} exceeds the limit of {units.MAX_NODES} nodes")
    return value


def _enum(el: Any, attr: str, allowed: tuple[str, ...], element: str) -> Optional[str]:
    """An enumerated attribute (None when absent), worded as libvirt's virXMLPropEnum."""
    value = el.get(attr)
    if value is None or value in allowed:
        return value
    raise units.UnitError(f"Invalid value for attribute '{attr}' in element '{element}': "
                          f"'{_clip(value)}'.")


def _clip(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _access(el: Any, attr: str, element: str) -> Optional[str]:
    value = _enum(el, attr, MEM_ACCESS, element)
    return None if value == "default" else value


def _bounded(items: list[Any], limit: int, what: str) -> list[Any]:
    if len(items) > limit:
        raise units.UnitError(f"too many {what}: {len(items)} (limit {limit})")
    return items


def _placement(root: Any, mem: Any, nodeset: Optional[frozenset[int]]) -> Optional[str]:
    """libvirt: numatune placement defaults to the <vcpu placement> when no nodeset."""
    if mem is None:
        return None
    placement = _enum(mem, "placement", PLACEMENTS, "memory")
    if placement is not None or nodeset is not None:
        return placement
    vcpu = root.find(X_VCPU)
    return "auto" if vcpu is not None and vcpu.get("placement") == "auto" else None


def _parse(root: Any, name: str) -> Domain:
    memory_kib = _size(root.find(X_MEMORY), "<memory>")
    max_el = root.find(X_MAX_MEMORY)
    max_memory_kib = _size(max_el, "<maxMemory>") if max_el is not None else None

    hugepages = root.find(X_HUGEPAGES) is not None
    pages: list[PageSpec] = []
    for page in _bounded(root.findall(X_PAGES), MAX_PAGES, "<page> elements"):
        size = units.to_kib(page.get("size"), page.get("unit"), what="page size")
        nodeset_text = page.get("nodeset")
        guest_cells = None if nodeset_text is None else units.parse_nodeset(
            nodeset_text, what="page nodeset")
        pages.append(PageSpec(size_kib=size, guest_cells=guest_cells))

    src = root.find(X_BACKING_SOURCE)
    acc = root.find(X_BACKING_ACCESS)

    cells = _cells(root)

    numatune = None
    if root.find(X_NUMATUNE) is not None:
        mem = root.find(X_NUMATUNE_MEMORY)
        memnodes: list[MemNode] = []
        for mn in _bounded(root.findall(X_MEMNODES), MAX_CELLS, "<memnode> elements"):
            memnodes.append(MemNode(cell_id=_node_id(mn.get("cellid"), "memnode cellid"),
                                    mode=_enum(mn, "mode", NUMATUNE_MODES, "memnode")
                                    or "strict",
                                    nodeset=units.parse_nodeset(mn.get("nodeset"),
                                                                what="memnode nodeset")))
        nodeset = None
        if mem is not None and mem.get("nodeset") is not None:
            nodeset = units.parse_nodeset(mem.get("nodeset"), what="numatune nodeset")
        mode = None if mem is None else (_enum(mem, "mode", NUMATUNE_MODES, "memory")
                                         or "strict")
        numatune = NumaTune(mode=mode,
                            nodeset=nodeset,
                            placement=_placement(root, mem, nodeset),
                            memnodes=tuple(memnodes))

    devices: list[MemoryDevice] = []
    for dev in _bounded(root.findall(X_MEMORY_DEVICES), MAX_MEMORY_DEVICES, "memory devices"):
        model = dev.get("model") or ""
        if model not in MEMORY_DEVICE_MODELS:
            raise units.UnitError(f"unknown memory device model '{model}'")
        node_el = dev.find(X_DEV_TARGET_NODE)
        page_el = dev.find(X_DEV_SOURCE_PAGESIZE)
        mask_el = dev.find(X_DEV_SOURCE_NODEMASK)
        size_el = dev.find(X_DEV_TARGET_SIZE)
        devices.append(MemoryDevice(
            model=model, index=len(devices),
            size_kib=_size(size_el, f"{model} size") if size_el is not None else 0,
            target_node=None if node_el is None else _node_id(_text(node_el), "target node"),
            source_page_kib=None if page_el is None else _size(page_el, "source pagesize"),
            source_nodemask=None if mask_el is None
            else units.parse_nodeset(_text(mask_el), what="nodemask"),
            access=_access(dev, X_DEV_ACCESS, "memory")))

    return Domain(name=name, uuid=_text(root.find(X_UUID)), memory_kib=memory_kib,
                  hugepages=hugepages, pages=tuple(pages),
                  source=None if src is None else _enum(src, "type", BACKING_SOURCES, "source"),
                  access=None if acc is None else _access(acc, "mode", "access"),
                  cells=tuple(cells), numatune=numatune, memory_devices=tuple(devices),
                  max_memory_kib=max_memory_kib)


def _cells(root: Any) -> tuple[Cell, ...]:
    """<cpu><numa><cell>, checked as libvirt's virDomainNumaDefParseXML: ids default to the
    document position and must be exactly 0..n-1, each once."""
    if root.find(X_NUMA) is None:
        return ()
    elements = _bounded(root.findall(X_CELLS), MAX_CELLS, "NUMA cells")
    if not elements:
        raise units.UnitError("NUMA topology defined without NUMA cells")
    by_id: dict[int, Cell] = {}
    for position, cell in enumerate(elements):
        id_text = cell.get("id")
        cell_id = position if id_text is None else units.parse_number(id_text, "cell id")
        if cell_id >= len(elements):
            raise units.UnitError(
                "Exactly one 'cell' element per guest NUMA cell allowed, non-contiguous ranges "
                "or ranges not starting from 0 are not allowed")
        if cell_id in by_id:
            raise units.UnitError(f"Duplicate NUMA cell info for cell id '{cell_id}'")
        by_id[cell_id] = Cell(cell_id=cell_id,
                              memory_kib=units.to_kib(cell.get("memory"), cell.get("unit"),
                                                      what=f"cell {cell_id} memory"),
                              mem_access=_access(cell, "memAccess", "cell"))
    return tuple(by_id[c] for c in sorted(by_id))
