"""What a domain demands: per memory consumer, page size, page count, host nodes, policy.

Pure (no I/O, no lxml). Follows libvirt's semantics: ``<page nodeset>`` names guest cells, a
page without nodeset is the master size, bare ``<hugepages/>`` is the host default size, the
system page size means normal RAM; host nodes come from ``<numatune>``.
"""
from __future__ import annotations

from typing import Optional

from hugexml.errors import InvalidDomain, NoSuchHostNode, UnsupportedPageSize
from hugexml.model import Consumer, DemandItem, Domain, HostInfo, Plan

FALLBACK_DEFAULT_PAGE_KIB = 2048
CELL_ALIGN_KIB = 1024
DIMM_ALIGN_KIB = 2048
# libvirt bounds memory sizes to LLONG_MAX bytes (virMemoryMaxValue), checked again after
# alignment (qemuDomainAlignMemorySizes).
MAX_MEMORY_KIB = (2**63 - 1) >> 10
NEVER_HUGE = ("nvdimm", "virtio-pmem", "sgx-epc")


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _bad(domain: Domain, reason: str) -> InvalidDomain:
    return InvalidDomain(domain=domain.name, reason=reason)


def _page_map(domain: Domain, host: Optional[HostInfo]) -> tuple[Optional[int], dict[int, int]]:
    """(master page size or None, {guest cell: page size}) with libvirt's checks, in
    libvirt's order (virDomainDefMemtuneValidate): each <page> against every earlier one,
    then its nodeset against the guest cells."""
    ncells = len(domain.cells)
    specs: list[tuple[int, Optional[frozenset[int]]]] = []
    for page in domain.pages:
        if page.size_kib is None:
            continue
        if page.size_kib == 0:
            raise _bad(domain, "hugepage size can't be zero")
        nodes = page.guest_cells
        if not ncells and nodes == frozenset({0}):
            # libvirt (virDomainDefPostParseMemtune): without guest NUMA cells a page for
            # guest node 0 alone is the master page
            nodes = None
        specs.append((page.size_kib, nodes))
    master: Optional[int] = None
    per_cell: dict[int, int] = {}
    for i, (size, nodes) in enumerate(specs):
        for earlier_size, earlier_nodes in specs[:i]:
            if nodes is not None and earlier_nodes is not None and nodes & earlier_nodes:
                raise _bad(domain, f"nodeset attribute of hugepages of sizes {size} and "
                                   f"{earlier_size} intersect")
            if nodes is None and earlier_nodes is None:
                raise _bad(domain, f"two master hugepages detected: {size} and {earlier_size}")
        if nodes is None:
            master = size
            continue
        if not nodes:
            raise _bad(domain, "hugepages: empty nodeset")
        beyond = [n for n in nodes if n >= ncells]
        if beyond:
            raise _bad(domain, f"hugepages: node {min(beyond)} not found")
        for cell in nodes:
            per_cell[cell] = size
    if domain.hugepages and master is None and not domain.pages:
        master = (host.default_page_kib if host and host.default_page_kib
                  else FALLBACK_DEFAULT_PAGE_KIB)
    return master, per_cell


def _binding(domain: Domain, host: Optional[HostInfo], cell: Optional[int]
             ) -> tuple[Optional[tuple[int, ...]], Optional[str]]:
    nt = domain.numatune
    if nt is None:
        return None, None
    for mn in nt.memnodes:
        if mn.cell_id == cell:
            return tuple(sorted(mn.nodeset)), mn.mode
    if nt.placement == "auto":
        nodes = (host.auto_nodes or host.nodes) if host is not None else None
        return (tuple(sorted(nodes)) if nodes else None), nt.mode
    if nt.nodeset is not None:
        return tuple(sorted(nt.nodeset)), nt.mode
    return None, None


def _check(domain: Domain, host: Optional[HostInfo]) -> None:
    nt = domain.numatune
    cell_ids = {c.cell_id for c in domain.cells}
    if nt is not None and nt.memnodes:
        if not domain.cells:
            raise _bad(domain, "Element 'memnode' is invalid without any guest NUMA cells")
        if nt.placement == "auto":
            raise _bad(domain, "Per-node binding is not compatible with automatic NUMA placement.")
        seen: set[int] = set()
        for mn in nt.memnodes:
            if mn.cell_id not in cell_ids:
                raise _bad(domain, f"Invalid cellid attribute in memnode element: {mn.cell_id}")
            if mn.cell_id in seen:
                raise _bad(domain, f"Multiple memnode elements with cellid {mn.cell_id}")
            seen.add(mn.cell_id)
        # virDomainNumaDefValidate: restrictive on <memory> and on <memnode> go together
        # (a numatune without <memory> has libvirt's default mode, strict)
        memory_mode = nt.mode or "strict"
        for cell in sorted(cell_ids):
            mn_mode = next((m.mode for m in nt.memnodes if m.cell_id == cell), None)
            if mn_mode is None:
                continue
            if memory_mode == "restrictive" and mn_mode != "restrictive":
                raise _bad(domain, "'restrictive' mode is required in memnode element when "
                                   "mode is 'restrictive' in memory element")
            if mn_mode == "restrictive" and memory_mode != "restrictive":
                raise _bad(domain, "'restrictive' mode is required in memory element when "
                                   "mode is 'restrictive' in memnode element")
    hotplug = domain.memory_devices or domain.max_memory_kib is not None
    if hotplug and not domain.cells:
        raise _bad(domain, "At least one numa node has to be configured when enabling "
                           "memory hotplug")
    for dev in domain.memory_devices:
        if dev.target_node is not None and dev.target_node not in cell_ids:
            raise _bad(domain, f"can't add memory backend for guest node '{dev.target_node}' as "
                               f"the guest has only '{len(cell_ids)}' NUMA nodes configured")


def make_plan(domain: Domain, host: Optional[HostInfo]) -> Plan:
    _check(domain, host)
    master, per_cell = _page_map(domain, host)
    system_kib = host.system_page_kib if host is not None else 4
    memfd = domain.source == "memfd"

    def huge(size: Optional[int]) -> Optional[int]:
        return None if size is None or size == system_kib else size

    def source(page: Optional[int]) -> str:
        if memfd:
            return "memfd"
        return "file" if page is not None else "anonymous"

    consumers: list[Consumer] = []
    cell_page: dict[int, Optional[int]] = {}
    dev_total = sum(d.size_kib for d in domain.memory_devices)
    if domain.cells:
        for cell in domain.cells:
            page = huge(per_cell.get(cell.cell_id, master))
            cell_page[cell.cell_id] = page
            size = _round_up(cell.memory_kib, CELL_ALIGN_KIB)
            if size > MAX_MEMORY_KIB:
                raise _bad(domain, f"memory size of NUMA node '{cell.cell_id}' overflowed "
                                   "after alignment")
            nodes, policy = _binding(domain, host, cell.cell_id)
            shared = (cell.mem_access or domain.access) == "shared"
            consumers.append(_consumer("cell", cell.cell_id, None, size, page, nodes, policy,
                                       source(page), shared))
    else:
        page = huge(master)
        size = _round_up(max(domain.memory_kib - dev_total, 0), CELL_ALIGN_KIB)
        if size > MAX_MEMORY_KIB:
            raise _bad(domain, "initial memory size overflowed after alignment")
        nodes, policy = _binding(domain, host, None)
        consumers.append(_consumer("memory", None, None, size, page, nodes, policy,
                                   source(page), domain.access == "shared"))
    if (domain.max_memory_kib is not None
            and _round_up(domain.max_memory_kib, CELL_ALIGN_KIB) > MAX_MEMORY_KIB):
        raise _bad(domain, "maximum memory size overflowed after alignment")
    for dev in domain.memory_devices:
        size = _round_up(dev.size_kib, DIMM_ALIGN_KIB)
        if size > MAX_MEMORY_KIB:
            raise _bad(domain, f"size of {dev.model} memory device {dev.index} overflowed "
                               "after alignment")
        if dev.model in NEVER_HUGE:
            page = None
        elif dev.source_page_kib is not None:
            page = huge(dev.source_page_kib)
        else:
            page = cell_page.get(dev.target_node) if dev.target_node is not None else None
        if dev.source_nodemask is not None:
            nodes, policy = tuple(sorted(dev.source_nodemask)), "strict"
        else:
            nodes, policy = _binding(domain, host, dev.target_node)
        shared = (dev.access or domain.access) == "shared"
        consumers.append(_consumer(dev.model, dev.target_node, dev.index, size, page, nodes,
                                   policy, source(page), shared))
    if host is not None:
        _check_host(domain, host, consumers)
    return Plan(domain=domain.name, uuid=domain.uuid, consumers=tuple(consumers),
                demand=_demand(consumers))


def _consumer(kind: str, cell: Optional[int], index: Optional[int], size_kib: int,
              page_kib: Optional[int], nodes: Optional[tuple[int, ...]],
              policy: Optional[str], source: str, shared: bool) -> Consumer:
    pages = 0 if page_kib is None else -(-size_kib // page_kib)
    return Consumer(kind=kind, guest_cell=cell, index=index, size_kib=size_kib,
                    page_size_kib=page_kib, pages=pages, host_nodes=nodes, policy=policy,
                    source=source, shared=shared)


def _check_host(domain: Domain, host: HostInfo, consumers: list[Consumer]) -> None:
    for c in consumers:
        if c.page_size_kib is not None and c.page_size_kib not in host.page_sizes_kib:
            raise UnsupportedPageSize(domain=domain.name, size_kib=c.page_size_kib,
                                      supported=",".join(map(str, host.page_sizes_kib)))
        for node in c.host_nodes or ():
            if host.nodes and node not in host.nodes:
                raise NoSuchHostNode(domain=domain.name, node=node,
                                     nodes=",".join(map(str, host.nodes)))


def _demand(consumers: list[Consumer]) -> tuple[DemandItem, ...]:
    order: list[tuple[int, Optional[tuple[int, ...]]]] = []
    pages: dict[tuple[int, Optional[tuple[int, ...]]], int] = {}
    policy: dict[tuple[int, Optional[tuple[int, ...]]], Optional[str]] = {}
    for c in consumers:
        if c.page_size_kib is None:
            continue
        key = (c.page_size_kib, c.host_nodes)
        if key not in pages:
            order.append(key)
            pages[key] = 0
            policy[key] = c.policy
        pages[key] += c.pages
    return tuple(DemandItem(page_size_kib=k[0], host_nodes=k[1], pages=pages[k],
                            policy=policy[k]) for k in order)


def plan_xml(data: bytes, host: Optional[HostInfo], source: str = "<stdin>") -> Plan:
    from hugexml.domxml import load_domain

    return make_plan(load_domain(data, source), host)
