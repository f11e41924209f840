"""What a domain demands: per memory consumer, page size, page count, host nodes, policy.

Pure (no I/O, no lxml). Follows libvirt's semantics: ``<page nodeset>`` names guest cells, a
page without nodeset is the master size, bare ``<hugepages/>`` is the host default size, the
system page size means normal RAM; host nodes come from ``<numatune>``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from hugexml.core.errors import NoSuchHostNode, UnsupportedPageSize
from hugexml.core.model import Consumer, DemandItem, Domain, HostInfo, Plan
from hugexml.planning.validate import check, effective_pages

FALLBACK_DEFAULT_PAGE_KIB = 2048
CELL_ALIGN_KIB = 1024
DIMM_ALIGN_KIB = 2048
NEVER_HUGE = ("nvdimm", "virtio-pmem", "sgx-epc")


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _page_map(domain: Domain, host: Optional[HostInfo]) -> tuple[Optional[int], dict[int, int]]:
    """(master page size or None, {guest cell: page size}); ``validate`` checked the list."""
    master: Optional[int] = None
    per_cell: dict[int, int] = {}
    for page in effective_pages(domain):
        if page.size_kib is None:
            continue
        if page.guest_cells is None:
            master = page.size_kib
        else:
            for cell in page.guest_cells:
                per_cell[cell] = page.size_kib
    if domain.hugepages and master is None and not domain.pages:
        master = (host.default_page_kib if host and host.default_page_kib
                  else FALLBACK_DEFAULT_PAGE_KIB)
    return master, per_cell


def binding(domain: Domain, host: Optional[HostInfo], cell: Optional[int]
            ) -> tuple[Optional[tuple[int, ...]], Optional[str]]:
    """(host nodes or None for any, numatune mode) of a guest cell (None: the whole RAM)."""
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


def make_plan(domain: Domain, host: Optional[HostInfo]) -> Plan:
    check(domain)
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
    if domain.cells:
        for cell in domain.cells:
            page = huge(per_cell.get(cell.cell_id, master))
            cell_page[cell.cell_id] = page
            size = _round_up(cell.memory_kib, CELL_ALIGN_KIB)
            nodes, policy = binding(domain, host, cell.cell_id)
            shared = (cell.mem_access or domain.access) == "shared"
            consumers.append(_consumer("cell", cell.cell_id, None, size, page, nodes, policy,
                                       source(page), shared))
    else:
        page = huge(master)
        size = _round_up(domain.initial_memory_kib, CELL_ALIGN_KIB)
        nodes, policy = binding(domain, host, None)
        consumers.append(_consumer("memory", None, None, size, page, nodes, policy,
                                   source(page), domain.access == "shared"))
    for dev in domain.memory_devices:
        size = _round_up(dev.size_kib, DIMM_ALIGN_KIB)
        if dev.model in NEVER_HUGE:
            page = None
        elif dev.source_page_kib is not None:
            page = huge(dev.source_page_kib)
        else:
            page = cell_page.get(dev.target_node) if dev.target_node is not None else None
        if dev.source_nodemask is not None:
            nodes, policy = tuple(sorted(dev.source_nodemask)), "strict"
        else:
            nodes, policy = binding(domain, host, dev.target_node)
        shared = (dev.access or domain.access) == "shared"
        consumers.append(_consumer(dev.model, dev.target_node, dev.index, size, page, nodes,
                                   policy, source(page), shared))
    if host is not None:
        _check_host(domain, host, consumers)
    return Plan(domain=domain.name, uuid=domain.uuid, consumers=tuple(consumers),
                demand=_demand(consumers), keep_s=domain.keep_s)


def _consumer(kind: str, cell: Optional[int], index: Optional[int], size_kib: int,
              page_kib: Optional[int], nodes: Optional[tuple[int, ...]],
              policy: Optional[str], source: str, shared: bool) -> Consumer:
    pages = 0 if page_kib is None else -(-size_kib // page_kib)
    return Consumer(kind=kind, guest_cell=cell, index=index, size_kib=size_kib,
                    page_size_kib=page_kib, pages=pages, host_nodes=nodes, policy=policy,
                    source=source, shared=shared)


def _check_host(domain: Domain, host: HostInfo, consumers: list[Consumer]) -> None:
    """What libvirt checks against the host when it starts the guest: with guest cells,
    every numatune nodeset first (virDomainNumatuneNodesetIsAvailable); then per backend its
    page size (a mount of that size; hugexml: the kernel has the size, memfd too) and its
    host nodes (virNumaNodesetIsAvailable)."""
    def nodes_exist(nodes: Iterable[int]) -> None:
        for node in sorted(nodes):
            if host.nodes and node not in host.nodes:
                raise NoSuchHostNode(domain=domain.name, node=node,
                                     nodes=",".join(map(str, host.nodes)))

    nt = domain.numatune
    if domain.cells and nt is not None:
        nodes_exist(nt.nodeset or ())
        for mn in nt.memnodes:
            nodes_exist(mn.nodeset)
    for c in consumers:
        if c.page_size_kib is not None and c.page_size_kib not in host.page_sizes_kib:
            raise UnsupportedPageSize(domain=domain.name, size_kib=c.page_size_kib,
                                      supported=",".join(map(str, host.page_sizes_kib)))
        nodes_exist(c.host_nodes or ())


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
