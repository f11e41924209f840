"""What libvirt 9.0 checks after it has read a domain, for memory, NUMA, numatune,
memoryBacking and memory devices, in libvirt's order and with libvirt's words. Pure.

``check(domain)`` raises the first ``InvalidDomain`` libvirt would raise, through:
domain_postparse.c (``virDomainDefPostParseMemory``), qemu_validate.c
(``qemuValidateDomainDef``: min_guarantee, ``qemuDomainDefValidateMemoryHotplug``,
``qemuValidateDomainDefMemory``), domain_validate.c (``virDomainMemoryDefValidate`` per
device, ``virDomainDefMemtuneValidate``), numa_conf.c (``virDomainNumaDefValidate``) and
qemu_domain.c ``qemuDomainAlignMemorySizes`` (at start). What needs a host (page sizes,
host nodes) is ``plan._check_host``. The rule table with sources and tests:
docs/libvirt-validation.md.
"""
from __future__ import annotations

from typing import Optional

from hugexml.core.errors import InvalidDomain
from hugexml.core.model import Domain, MemoryDevice, PageSpec
from hugexml.core.typed import replace

THP_KIB = 2048  # virHostMemGetTHPSize's fallback, and x86's THP size
CELL_ALIGN_KIB = 1024  # qemuDomainGetMemorySizeAlignment (x86)
MODULE_ALIGN_KIB = 2048  # qemuDomainGetMemoryModuleSizeAlignment (x86)
MAX_MEMORY_KIB = (2**63 - 1) >> 10  # virMemoryMaxValue >> 10
HOTPLUG_MODELS = ("dimm", "nvdimm", "virtio-pmem", "virtio-mem")


def _bad(domain: Domain, reason: str) -> InvalidDomain:
    return InvalidDomain(domain=domain.name, reason=reason)


def effective_pages(domain: Domain) -> tuple[PageSpec, ...]:
    """virDomainDefPostParseMemtune: without guest cells, a page for guest node 0 alone is
    the master page."""
    if domain.cells:
        return domain.pages
    return tuple(PageSpec(p.size_kib) if p.guest_cells == frozenset({0}) else p
                 for p in domain.pages)


def check(domain: Domain) -> None:
    post_parse(domain)
    domain = assign_slots(domain)
    validate_domain(domain)
    for dev in domain.memory_devices:
        validate_device(domain, dev)
    validate_pages(domain)
    validate_numa(domain)
    align(domain)


def post_parse(domain: Domain) -> None:
    """virDomainDefPostParseMemory (with ABI update: the cells make the total)."""
    hotplug_kib = sum(d.size_kib for d in domain.memory_devices)
    if not sum(c.memory_kib for c in domain.cells) and hotplug_kib > domain.memory_kib:
        raise _bad(domain, "Total size of memory devices exceeds the total memory size")
    if domain.initial_memory_kib == 0:
        raise _bad(domain, "Memory size must be specified via <memory> or in the <numa> "
                           "configuration")
    if bool(domain.max_memory_kib) != bool(domain.max_memory_slots):
        raise _bad(domain, "both maximum memory size and memory slot count must be specified")
    if domain.max_memory_kib and domain.max_memory_kib < domain.total_memory_kib:
        raise _bad(domain, "maximum memory size must be equal or greater than the actual "
                           "memory size")


def assign_slots(domain: Domain) -> Domain:
    """qemuDomainAssignMemorySlots (define assigns addresses before it validates): with
    memory hotplug, every dimm/nvdimm without a dimm address takes the lowest free slot."""
    if not domain.hotplug:
        return domain
    used = {d.slot for d in domain.memory_devices
            if d.address_type == "dimm" and d.slot is not None}
    devices = []
    for dev in domain.memory_devices:
        if dev.model in ("dimm", "nvdimm") and dev.address_type != "dimm":
            free = next((s for s in range(domain.max_memory_slots) if s not in used), None)
            if free is None:
                raise _bad(domain, "failed to find an empty memory slot")
            used.add(free)
            dev = replace(dev, address_type="dimm", slot=free, base=None)
        devices.append(dev)
    return replace(domain, memory_devices=tuple(devices))


def validate_domain(domain: Domain) -> None:
    """qemuValidateDomainDef, its memory parts in its order."""
    if domain.min_guarantee_kib:
        raise _bad(domain, "Parameter 'min_guarantee' not supported by QEMU.")
    validate_hotplug(domain)
    if domain.hugepages:  # qemuValidateDomainDefMemory: any <hugepages>, even of 4 KiB
        if domain.allocation == "ondemand":
            raise _bad(domain, "hugepages are not allowed with memory allocation ondemand")
        if domain.source == "anonymous":
            raise _bad(domain, "hugepages are not allowed with anonymous memory source")


def validate_hotplug(domain: Domain) -> None:
    """qemuDomainDefValidateMemoryHotplug(def, NULL)."""
    devices = domain.memory_devices
    if not domain.hotplug:
        if devices:
            raise _bad(domain, "cannot use/hotplug a memory device when domain 'maxMemory' is "
                               "not defined")
        return
    if not domain.cells:
        raise _bad(domain, "At least one numa node has to be configured when enabling memory "
                           "hotplug")
    if len(devices) > domain.max_memory_slots:
        raise _bad(domain, f"memory device count '{len(devices)}' exceeds slots count "
                           f"'{domain.max_memory_slots}'")
    for dev in devices:
        if dev.model not in HOTPLUG_MODELS:
            continue
        if dev.model in ("dimm", "nvdimm"):
            if dev.address_type not in (None, "dimm"):
                raise _bad(domain, "only 'dimm' addresses are supported for the pc-dimm "
                                   "device")
            if dev.target_node is None:
                raise _bad(domain, "target NUMA node needs to be specified for memory device")
            if dev.address_type == "dimm":
                _check_dimm_address(domain, dev.index)
        elif dev.address_type not in (None, "pci"):
            raise _bad(domain, f"only 'pci' addresses are supported for the {dev.model} "
                               "device")
        if dev.model != "virtio-pmem" and dev.target_node is None:
            raise _bad(domain, "target NUMA node needs to be specified for memory device")
    hotplug_space = (domain.max_memory_kib or 0) - domain.initial_memory_kib
    if sum(d.size_kib for d in devices) > hotplug_space:
        raise _bad(domain, "memory device total size exceeds hotplug space")


def _check_dimm_address(domain: Domain, index: int) -> None:
    """The slot within the slots, and qemuCheckMemoryDimmConflict."""
    dev = domain.memory_devices[index]
    if dev.slot is not None and dev.slot >= domain.max_memory_slots:
        raise _bad(domain, f"memory device slot '{dev.slot}' exceeds slots count "
                           f"'{domain.max_memory_slots}'")
    for other in domain.memory_devices:
        if other.index == index or other.address_type != "dimm":
            continue
        if dev.slot == other.slot:
            raise _bad(domain, f"memory device slot '{dev.slot}' is already being used by "
                               "another memory device")
        if dev.base and dev.base == other.base:
            raise _bad(domain, f"memory device base '{dev.base:#x}' is already being used "
                               "by another memory device")


def validate_device(domain: Domain, dev: MemoryDevice) -> None:
    """virDomainMemoryDefValidate."""
    ncells = len(domain.cells)
    if dev.target_node is not None:
        if not ncells:
            raise _bad(domain, "can't add memory backend as guest has no NUMA nodes "
                               "configured")
        if dev.target_node >= ncells:
            raise _bad(domain, f"can't add memory backend for guest node '{dev.target_node}' "
                               f"as the guest has only '{ncells}' NUMA nodes configured")
    if dev.model in ("nvdimm", "virtio-pmem"):
        if not dev.path:
            raise _bad(domain, f"path is required for model '{dev.model}'")
        if dev.discard:
            raise _bad(domain, "discard is not supported for nvdimms" if dev.model == "nvdimm"
                       else f"discard is not supported for model '{dev.model}'")
    if dev.model == "nvdimm" and dev.uuid:
        raise _bad(domain, "UUID is not supported for NVDIMM device")
    if dev.model == "virtio-pmem":
        if dev.access not in (None, "shared"):  # post-parse makes the default shared
            raise _bad(domain, "shared access mode required for virtio-pmem device")
        if dev.target_node is not None:
            raise _bad(domain, "virtio-pmem does not support NUMA nodes")
    if dev.model == "virtio-mem":
        if dev.requested_kib > dev.size_kib:
            raise _bad(domain, "requested size must be smaller than or equal to @size "
                               f"({dev.size_kib}KiB)")
        block = dev.block_kib
        if not block or block & (block - 1):
            raise _bad(domain, "block size must be a power of two")
        if block < THP_KIB:
            raise _bad(domain, f"block size too small, must be at least {THP_KIB}KiB")
        if dev.requested_kib % block:
            raise _bad(domain, "requested size must be an integer multiple of block size")
    if dev.model == "sgx-epc" and dev.address_type is not None:
        raise _bad(domain, "memory device address is not supported for model 'sgx-epc'")


def validate_pages(domain: Domain) -> None:
    """virDomainDefMemtuneValidate: each <page> against every earlier one, then its nodeset
    against the guest cells."""
    pages = [p for p in effective_pages(domain) if p.size_kib is not None]
    ncells = len(domain.cells)
    for i, page in enumerate(pages):
        for earlier in pages[:i]:
            if page.guest_cells and earlier.guest_cells and page.guest_cells & earlier.guest_cells:
                raise _bad(domain, f"nodeset attribute of hugepages of sizes {page.size_kib} "
                                   f"and {earlier.size_kib} intersect")
            if page.guest_cells is None and earlier.guest_cells is None:
                raise _bad(domain, f"two master hugepages detected: {page.size_kib} and "
                                   f"{earlier.size_kib}")
        if page.guest_cells is not None:
            beyond = [n for n in page.guest_cells if n >= ncells]
            if beyond:
                raise _bad(domain, f"hugepages: node {min(beyond)} not found")


def cell_cpus(domain: Domain, cell_id: int) -> Optional[frozenset[int]]:
    """A cell's vCPUs after qemuDomainDefNumaCPUsRectify: cell 0 takes every vCPU no cell
    names, when the cells name fewer than <vcpu>."""
    cpus = domain.cells[cell_id].cpus
    if cell_id != 0 or domain.vcpus is None:
        return cpus
    named = sum(len(c.cpus or ()) for c in domain.cells)
    if named >= domain.vcpus:
        return cpus
    others = {cpu for c in domain.cells[1:] for cpu in (c.cpus or ())}
    return frozenset(set(range(domain.vcpus)) - others) or None


def validate_numa(domain: Domain) -> None:
    """virDomainNumaDefValidate: HMAT caches and interconnects."""
    for cell in domain.cells:
        seen: set[int] = set()
        for level in cell.cache_levels:
            if level > 3:
                raise _bad(domain, "Ain't nobody heard of that much cache level")
            if level in seen:
                raise _bad(domain, f"Cache level '{level}' already defined")
            seen.add(level)
    links = domain.interconnects
    ncells = len(domain.cells)
    for i, link in enumerate(links):
        if link.initiator >= ncells:
            raise _bad(domain, "'initiator' refers to a non-existent NUMA node")
        if link.target >= ncells:
            raise _bad(domain, "'target' refers to a non-existent NUMA node")
        if not cell_cpus(domain, link.initiator):
            raise _bad(domain, "NUMA nodes without CPUs can't be initiator")
        if link.cache and link.cache not in domain.cells[link.target].cache_levels:
            raise _bad(domain, "'cache' refers to a non-existent NUMA node cache")
        for other in links[:i]:
            if (link.kind, link.initiator, link.target, link.cache, link.access_type) == (
                    other.kind, other.initiator, other.target, other.cache, other.access_type):
                raise _bad(domain, "Duplicate info for NUMA latencies")
            if link.initiator != link.target and link.initiator == other.target \
                    and link.target == other.initiator:
                raise _bad(domain, "Link already defined")


def align(domain: Domain) -> None:
    """qemuDomainAlignMemorySizes (at start): the aligned sizes must still fit."""
    def up(kib: int, to: int) -> int:
        return -(-kib // to) * to

    initial = 0
    for cell in domain.cells:
        size = up(cell.memory_kib, CELL_ALIGN_KIB)
        initial += size
        if size > MAX_MEMORY_KIB:
            raise _bad(domain, f"memory size of NUMA node '{cell.cell_id}' overflowed after "
                               "alignment")
    if not initial:
        initial = up(domain.initial_memory_kib, CELL_ALIGN_KIB)
    if initial > MAX_MEMORY_KIB:
        raise _bad(domain, "initial memory size overflowed after alignment")
    if up(domain.max_memory_kib or 0, CELL_ALIGN_KIB) > MAX_MEMORY_KIB:
        raise _bad(domain, "maximum memory size overflowed after alignment")
    for dev in domain.memory_devices:
        if up(dev.size_kib, MODULE_ALIGN_KIB) > MAX_MEMORY_KIB:
            raise _bad(domain, f"size of memory module '{dev.index}' overflowed after "
                               "alignment")
