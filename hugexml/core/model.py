"""Typed model of what hugexml reads from a domain and a host, and what it plans.

Pure data: no I/O, no lxml. ``hugexml.xml.domxml`` fills ``Domain`` from XML,
``hugexml.host.hostinfo`` fills ``HostInfo`` from sysfs, ``hugexml.planning.plan`` turns both
into a ``Plan``.
"""
from __future__ import annotations

from hugexml.core.typed import Typed

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

SYSTEM_PAGE_KIB = 4

POLICIES = ("strict", "preferred", "interleave", "restrictive")
SOURCES = ("file", "memfd", "anonymous")
MEMORY_DEVICE_MODELS = ("dimm", "virtio-mem", "nvdimm", "virtio-pmem", "sgx-epc")


class PageSpec(Typed, frozen=True):
    """One ``<hugepages><page>``: size (None for bare ``<hugepages/>``) and guest cells."""

    size_kib: Optional[int]
    guest_cells: Optional[frozenset[int]] = None  # None: no nodeset (master size)


class Cell(Typed, frozen=True):
    cell_id: int
    memory_kib: int
    mem_access: Optional[str] = None  # 'shared' | 'private' | None
    cpus: Optional[frozenset[int]] = None  # None: no cpus (or an empty list)
    discard: Optional[bool] = None
    cache_levels: tuple[int, ...] = ()  # HMAT <cache level>, in document order


class Interconnect(Typed, frozen=True):
    """An HMAT ``<interconnects>`` ``<latency>`` or ``<bandwidth>``."""

    kind: str  # 'latency' | 'bandwidth'
    initiator: int
    target: int
    cache: int
    access_type: str


class MemNode(Typed, frozen=True):
    cell_id: int
    mode: str
    nodeset: frozenset[int]


class NumaTune(Typed, frozen=True):
    """libvirt's numatune after parsing: ``mode`` None means no ``<memory>`` binding (libvirt's
    ``memory.specified`` is false); ``placement='auto'`` also comes from ``<vcpu
    placement='auto'>``, and then ``nodeset`` is None."""

    mode: Optional[str] = None
    nodeset: Optional[frozenset[int]] = None
    placement: Optional[str] = None  # 'static' | 'auto' | None
    memnodes: tuple[MemNode, ...] = ()


class MemoryDevice(Typed, frozen=True):
    model: str
    index: int  # document order among memory devices
    size_kib: int
    target_node: Optional[int]
    source_page_kib: Optional[int] = None  # None: no <pagesize> (or 0)
    source_nodemask: Optional[frozenset[int]] = None
    access: Optional[str] = None
    discard: Optional[bool] = None
    path: Optional[str] = None  # nvdimm / virtio-pmem <source><path>
    pmem: bool = False
    align_kib: int = 0
    block_kib: int = 0  # virtio-mem
    requested_kib: int = 0  # virtio-mem
    label_kib: int = 0  # nvdimm
    readonly: bool = False
    uuid: Optional[str] = None
    address_type: Optional[str] = None  # <address type>
    slot: Optional[int] = None  # dimm address
    base: Optional[int] = None  # dimm address


class Domain(Typed, frozen=True):
    name: str
    uuid: Optional[str]
    memory_kib: int  # <memory> as written (0 when absent)
    hugepages: bool  # <hugepages> present
    pages: tuple[PageSpec, ...] = ()
    source: Optional[str] = None  # <memoryBacking><source type>; None when absent
    access: Optional[str] = None  # <memoryBacking><access mode>
    cells: tuple[Cell, ...] = ()
    numatune: Optional[NumaTune] = None
    memory_devices: tuple[MemoryDevice, ...] = ()
    max_memory_kib: Optional[int] = None  # None: no <maxMemory>
    max_memory_slots: int = 0
    allocation: Optional[str] = None  # 'immediate' | 'ondemand'
    allocation_threads: int = 0
    discard: bool = False
    nosharepages: bool = False
    locked: bool = False
    vcpus: Optional[int] = None  # <vcpu> maximum; None when it cannot be read
    min_guarantee_kib: int = 0
    interconnects: tuple[Interconnect, ...] = ()
    # hugexml's own <metadata>: this guest's keep window in seconds (-1: for ever)
    keep_s: Optional[float] = None

    @property
    def hotplug(self) -> bool:
        """libvirt's virDomainDefHasMemoryHotplug."""
        return bool(self.max_memory_slots or self.max_memory_kib)

    @property
    def total_memory_kib(self) -> int:
        """What libvirt makes of <memory> (ABI update: the cells plus the devices)."""
        cells = sum(c.memory_kib for c in self.cells)
        if cells:
            return cells + sum(d.size_kib for d in self.memory_devices)
        return self.memory_kib

    @property
    def initial_memory_kib(self) -> int:
        """virDomainDefGetMemoryInitial: the total without the memory devices."""
        return self.total_memory_kib - sum(d.size_kib for d in self.memory_devices)


class HostInfo(Typed, frozen=True):
    """What the plan needs to know of a host. ``nodes`` empty: no NUMA information."""

    default_page_kib: Optional[int]
    page_sizes_kib: tuple[int, ...]
    nodes: tuple[int, ...] = (0,)
    system_page_kib: int = SYSTEM_PAGE_KIB
    # Host nodes a numad/placement='auto' guest is advised to; None: all nodes.
    auto_nodes: Optional[tuple[int, ...]] = None


class Consumer(Typed, frozen=True):
    kind: str  # 'cell', 'memory', or a memory device model
    guest_cell: Optional[int]
    index: Optional[int]
    size_kib: int
    page_size_kib: Optional[int]  # None: normal RAM
    pages: int
    host_nodes: Optional[tuple[int, ...]]  # None: any node
    policy: Optional[str]
    source: str
    shared: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "guest_cell": self.guest_cell,
            "index": self.index,
            "size_kib": self.size_kib,
            "page_size_kib": self.page_size_kib,
            "pages": self.pages,
            "host_nodes": list(self.host_nodes) if self.host_nodes is not None else None,
            "policy": self.policy,
            "source": self.source,
            "shared": self.shared,
        }


class DemandItem(Typed, frozen=True):
    page_size_kib: int
    host_nodes: Optional[tuple[int, ...]]
    pages: int
    # 'strict' | 'preferred' | 'interleave' | 'restrictive' | None (unbound)
    policy: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "page_size_kib": self.page_size_kib,
            "host_nodes": list(self.host_nodes) if self.host_nodes is not None else None,
            "pages": self.pages,
        }


class Plan(Typed, frozen=True):
    domain: str
    uuid: Optional[str]
    consumers: tuple[Consumer, ...]
    demand: tuple[DemandItem, ...] = ()
    keep_s: Optional[float] = None  # the guest's own keep window (Domain.keep_s)

    @property
    def hugepages(self) -> bool:
        return any(c.page_size_kib is not None for c in self.consumers)

    @property
    def file_backed_sizes_kib(self) -> tuple[int, ...]:
        """Page sizes that need a hugetlbfs mount (memfd needs none)."""
        return tuple(sorted({
            c.page_size_kib for c in self.consumers
            if c.page_size_kib is not None and c.source == "file"
        }))

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "uuid": self.uuid,
            "hugepages": self.hugepages,
            "consumers": [c.to_json() for c in self.consumers],
            "demand": [d.to_json() for d in self.demand],
        }


class GuestId(Typed, frozen=True):
    name: str
    uuid: Optional[str] = None

    @property
    def key(self) -> str:
        return self.uuid or self.name
