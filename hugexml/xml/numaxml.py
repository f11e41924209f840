"""A domain's guest NUMA cells and ``<numatune>``, read as libvirt 9.0 reads them.

numa_conf.c: ``virDomainNumaDefParseXML`` (cells, distances, HMAT caches and
interconnects), ``virDomainNumatuneParseXML``, ``virDomainNumatuneSet`` and
``virDomainNumatuneNodeParseXML``, in their order and with their messages; the CPU count
checks of domain_conf.c ``virDomainDefParseXML``. Every failure is a ``units.UnitError``
(``domxml`` makes it one ``InvalidDomain`` line). Pure: the tree comes from ``xmlsafe``.
"""
from __future__ import annotations

from typing import Any, Optional

from hugexml.core.model import Cell, Interconnect, MemNode, NumaTune
from hugexml.core.typed import replace
from hugexml.core.units import UnitError
from hugexml.xml import xmlread

X_NUMA = "cpu/numa"
X_CELLS = "cpu/numa/cell"
X_DISTANCES = "distances"  # relative to <cell>
X_SIBLINGS = "distances/sibling"
X_CACHES = "cache"  # relative to <cell>
X_CACHE_SIZE = "size"  # @value @unit, relative to <cache>
X_CACHE_LINE = "line"
X_INTERCONNECTS = "cpu/numa/interconnects"
X_NUMATUNE = "numatune"
X_NUMATUNE_MEMORY = "numatune/memory"
X_MEMNODES = "numatune/memnode"

MAX_CELLS = 1024  # hugexml's bound (qemu itself takes at most 128 nodes)
MEM_ACCESS = ("default", "shared", "private")
MODES = ("strict", "preferred", "interleave", "restrictive")
PLACEMENTS = ("default", "static", "auto")
ASSOCIATIVITY = ("none", "direct", "full")
CACHE_POLICY = ("none", "writeback", "writethrough")
LATENCY = ("none", "access", "read", "write")
LOCAL_DISTANCE, UNREACHABLE = 10, 255


def parse_cells(root: Any, vcpus: Optional[int], budget: list[int]
                ) -> tuple[tuple[Cell, ...], tuple[Interconnect, ...]]:
    numa = root.find(X_NUMA)
    if numa is None:
        return (), ()
    elements = numa.findall("cell")
    if not elements:
        raise UnitError("NUMA topology defined without NUMA cells")
    if len(elements) > MAX_CELLS:
        raise UnitError(f"too many NUMA cells: {len(elements)} (hugexml reads {MAX_CELLS})")
    n = len(elements)
    by_id: dict[int, Cell] = {}
    for position, el in enumerate(elements):
        cid = xmlread.uint(el, "id")
        cid = position if cid is None else cid
        if cid >= n:
            raise UnitError("Exactly one 'cell' element per guest NUMA cell allowed, "
                            "non-contiguous ranges or ranges not starting from 0 are not "
                            "allowed")
        if by_id.get(cid) is not None and by_id[cid].memory_kib:
            raise UnitError(f"Duplicate NUMA cell info for cell id '{cid}'")
        cpus: Optional[frozenset[int]] = None
        if el.get("cpus") is not None:
            cpus = xmlread.bitmap(el.get("cpus"), budget) or None
        if cpus:
            for other in sorted(by_id):
                mask = by_id[other].cpus
                if other != cid and mask and mask & cpus:
                    raise UnitError(f"NUMA cells {cid} and {other} have overlapping vCPU ids")
        memory = xmlread.scaled_kib(el.get("memory"), el.get("unit"), "./@memory",
                                    required=True)
        access = xmlread.enum(el, "memAccess", MEM_ACCESS, nonzero=True)
        discard = xmlread.tristate(el, "discard")
        _distances(el, cid, n)
        by_id[cid] = Cell(cell_id=cid, memory_kib=memory or 0, mem_access=access, cpus=cpus,
                          discard=discard, cache_levels=_caches(el, cid))
    interconnects = _interconnects(numa)
    # an id given twice to cells without memory leaves libvirt an empty cell
    cells = tuple(by_id.get(c, Cell(cell_id=c, memory_kib=0)) for c in range(n))
    if vcpus is not None:
        all_cpus = [cpu for c in cells for cpu in (c.cpus or ())]
        if len(all_cpus) > vcpus:
            raise UnitError("Number of CPUs in <numa> exceeds the <vcpu> count")
        if all_cpus and max(all_cpus) >= vcpus:
            raise UnitError("CPU IDs in <numa> exceed the <vcpu> count")
    return cells, interconnects


def _distances(cell: Any, cid: int, ncells: int) -> None:
    if cell.find(X_DISTANCES) is None:
        return
    siblings = cell.find(X_DISTANCES).findall("sibling")
    if not siblings:
        raise UnitError("NUMA distances defined without siblings")
    for sib in siblings:
        sid = xmlread.required_uint(sib, "id")
        if sid >= ncells:
            raise UnitError(f"'sibling_id {sid}' does not refer to a valid cell within NUMA "
                            f"'cell id {cid}'")
        value = xmlread.required_uint(sib, "value")
        if not LOCAL_DISTANCE <= value <= UNREACHABLE or (sid == cid) != (
                value == LOCAL_DISTANCE):
            raise UnitError(f"'value {value}' is invalid for 'sibling id {sid}' under NUMA "
                            f"'cell id {cid}'")


def _caches(cell: Any, cid: int) -> tuple[int, ...]:
    levels = []
    for cache in cell.findall(X_CACHES):
        level_text = cache.get("level")
        if level_text is None:
            raise UnitError(f"Missing 'level' attribute in cache element for NUMA node {cid}")
        level = xmlread.strtoull(level_text)
        if not level or level > xmlread.UINT_MAX:
            raise UnitError(f"Invalid 'level' attribute in cache element for NUMA node {cid}")
        if cache.get("associativity") is None:
            raise UnitError("Missing 'associativity' attribute in cache element for NUMA "
                            f"node {cid}")
        if cache.get("associativity") not in ASSOCIATIVITY:
            raise UnitError("Invalid cache associativity "
                            f"'{xmlread.clip(cache.get('associativity'))}'")
        if cache.get("policy") not in CACHE_POLICY:  # a missing one ends up here too
            raise UnitError("Invalid cache policy "
                            f"'{xmlread.clip(cache.get('policy') or '(null)')}'")
        # libvirt reads the unit from a <unit> child ("./size/unit"), not from @unit
        size = cache.find(X_CACHE_SIZE)
        xmlread.scaled_kib(None if size is None else size.get("value"),
                           xmlread.text_of(cache.find(X_CACHE_SIZE + "/unit")),
                           "./size/@value", required=True)
        line = cache.find(X_CACHE_LINE)
        xmlread.scaled_bytes(None if line is None else line.get("value"),
                             xmlread.text_of(cache.find(X_CACHE_LINE + "/unit")),
                             "./line/@value", required=True, scale=1,
                             limit=xmlread.ULLONG_MAX)
        levels.append(level)
    return tuple(levels)


def _interconnects(numa: Any) -> tuple[Interconnect, ...]:
    out = []
    group = numa.find("interconnects")
    for el in () if group is None else group:
        if el.tag == "latency":
            xmlread.required_uint(el, "value", limit=xmlread.ULLONG_MAX)
        elif el.tag == "bandwidth":
            xmlread.scaled_kib(el.get("value"), el.get("unit"), "./@value", required=True)
        else:
            continue
        initiator = xmlread.required_uint(el, "initiator")
        target = xmlread.required_uint(el, "target")
        cache = xmlread.uint(el, "cache") or 0
        access = xmlread.required_enum(el, "type", LATENCY, nonzero=True)
        out.append(Interconnect(el.tag, initiator, target, cache, access))
    return tuple(out)


def parse_numatune(root: Any, ncells: int, vcpu_placement_auto: bool,
                   budget: list[int]) -> Optional[NumaTune]:
    """virDomainNumatuneParseXML: None when libvirt has no numatune at all."""
    if len(root.findall(X_NUMATUNE)) > 1:
        raise UnitError("only one numatune is supported")
    mem = root.find(X_NUMATUNE_MEMORY)
    mode = placement = None
    nodeset: Optional[frozenset[int]] = None
    if mem is None and vcpu_placement_auto:
        placement = "auto"
    if mem is not None:
        mode = mem.get("mode")
        if mode is not None and mode not in MODES:
            raise UnitError(f"Unsupported NUMA memory tuning mode '{xmlread.clip(mode)}'")
        placement = mem.get("placement")
        if placement is not None and placement not in PLACEMENTS:
            raise UnitError("Unsupported NUMA memory placement mode "
                            f"'{xmlread.clip(placement)}'")
        if mem.get("nodeset") is not None:
            nodeset = _nonempty(mem.get("nodeset"), "nodeset", budget)
    tune: Optional[NumaTune] = None
    if mode is not None or placement is not None or nodeset is not None:
        # virDomainNumatuneSet
        mode = mode or "strict"
        if placement in (None, "default") and nodeset is not None:
            placement = "static"
        if placement in (None, "default"):
            placement = "auto" if vcpu_placement_auto else "static"
        if placement == "static" and nodeset is None:
            raise UnitError("nodeset for NUMA memory tuning must be set if 'placement' is "
                            "'static'")
        if placement == "auto":
            nodeset = None
        tune = NumaTune(mode=mode, nodeset=nodeset, placement=placement)
    memnodes = _memnodes(root, tune, ncells, budget)
    if memnodes:
        tune = replace(tune or NumaTune(), memnodes=memnodes)
    elif tune is None and root.find(X_NUMATUNE) is not None:
        tune = NumaTune()
    return tune


def _memnodes(root: Any, tune: Optional[NumaTune], ncells: int, budget: list[int]
              ) -> tuple[MemNode, ...]:
    elements = root.findall(X_MEMNODES)
    if not elements:
        return ()
    if tune is not None and tune.placement == "auto":
        raise UnitError("Per-node binding is not compatible with automatic NUMA placement.")
    if not ncells:
        raise UnitError("Element 'memnode' is invalid without any guest NUMA cells")
    memory_mode = tune.mode if tune is not None else "strict"
    seen: dict[int, MemNode] = {}
    for el in elements:
        cid = xmlread.required_uint(el, "cellid")
        if cid >= ncells:
            raise UnitError("Argument 'cellid' in memnode element must correspond to "
                            "existing guest's NUMA cell")
        if cid in seen:
            raise UnitError(f"Multiple memnode elements with cellid {cid}")
        mode = xmlread.enum(el, "mode", MODES) or "strict"
        if memory_mode == "restrictive" and mode != "restrictive":
            raise UnitError("'restrictive' mode is required in memnode element when mode is "
                            "'restrictive' in memory element")
        if el.get("nodeset") is None:
            raise UnitError("Missing required nodeset attribute in memnode element")
        seen[cid] = MemNode(cell_id=cid, mode=mode,
                            nodeset=_nonempty(el.get("nodeset"), "nodeset", budget))
    return tuple(seen.values())


def _nonempty(text: str, attr: str, budget: list[int]) -> frozenset[int]:
    nodes = xmlread.bitmap(text, budget)
    if not nodes:
        raise UnitError(f"Invalid value of '{attr}': {xmlread.clip(text)}")
    return nodes
