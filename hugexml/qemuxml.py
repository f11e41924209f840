"""The parts of a domain XML only the qemu command line needs (not in hugexml.model).

Guest cell vCPUs and discard, ``<allocation>``, ``<discard/>``, maxMemory slots, and per
memory device its nvdimm path, pmem, discard, dimm slot, virtio-mem block and requested
sizes. XPaths are declared once, here. Devices keep document order, as in
``Domain.memory_devices``. Read-only; the tree comes from ``hugexml.xmlsafe``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hugexml.errors import InvalidDomain
from hugexml.units import UnitError, format_nodeset, parse_nodeset, to_kib

MAX_VCPUS = 16384
MAX_SLOTS = 4096

XP_NAME = "string(/domain/name)"
XP_CELLS = "/domain/cpu/numa/cell"
XP_BACKING_DISCARD = "/domain/memoryBacking/discard"
XP_ALLOCATION = "/domain/memoryBacking/allocation"
XP_MAX_MEMORY = "/domain/maxMemory"
XP_MEMORY_DEVICES = "/domain/devices/memory"
XP_DEV_PATH = "string(source/path)"
XP_DEV_PMEM = "source/pmem"
XP_DEV_SLOT = "address[@type='dimm']/@slot"
XP_DEV_BLOCK = "target/block"
XP_DEV_REQUESTED = "target/requested"

_TRISTATE = {"yes": True, "no": False}


@dataclass(frozen=True)
class MemoryExtras:
    model: str
    alias_index: int
    path: Optional[str] = None
    pmem: bool = False
    discard: Optional[bool] = None
    slot: Optional[int] = None
    block_kib: Optional[int] = None
    requested_kib: Optional[int] = None


@dataclass(frozen=True)
class DomainExtras:
    cell_cpus: dict[int, tuple[str, ...]] = field(default_factory=dict)
    cell_discard: dict[int, Optional[bool]] = field(default_factory=dict)
    discard: Optional[bool] = None
    allocation_immediate: bool = False
    allocation_threads: Optional[int] = None
    slots: Optional[int] = None
    memory: tuple[MemoryExtras, ...] = ()


def _int(text: Optional[str], what: str, name: str, limit: int) -> Optional[int]:
    if text is None:
        return None
    if not text.strip().isdigit() or int(text) > limit:
        raise InvalidDomain(
            domain=name, reason=f"{what} '{text[:40]}' is not an integer up to {limit}"
        )
    return int(text)


def _size(el: Any, name: str, what: str) -> Optional[int]:
    if el is None:
        return None
    try:
        return to_kib(el.text, el.get("unit"), what=what)
    except UnitError as exc:
        raise InvalidDomain(domain=name, reason=str(exc)) from None


def _tristate(value: Optional[str], name: str, what: str) -> Optional[bool]:
    if value is None:
        return None
    if value not in _TRISTATE:
        raise InvalidDomain(domain=name, reason=f"invalid {what} value '{value[:20]}'")
    return _TRISTATE[value]


def parse_extras(tree: Any) -> DomainExtras:
    name = str(tree.xpath(XP_NAME)) or "?"
    cell_cpus: dict[int, tuple[str, ...]] = {}
    cell_discard: dict[int, Optional[bool]] = {}
    for i, cell in enumerate(tree.xpath(XP_CELLS)):
        cid = _int(cell.get("id", str(i)), "cell id", name, MAX_VCPUS)
        assert cid is not None
        cpus = cell.get("cpus")
        if cpus:
            try:
                ranges = format_nodeset(parse_nodeset(cpus, limit=MAX_VCPUS, what="cell cpus"))
            except UnitError as exc:
                raise InvalidDomain(domain=name, reason=str(exc)) from None
            cell_cpus[cid] = tuple(ranges.split(","))
        cell_discard[cid] = _tristate(cell.get("discard"), name, "cell discard")
    alloc = tree.xpath(XP_ALLOCATION)
    mode = alloc[0].get("mode") if alloc else None
    threads = _int(alloc[0].get("threads"), "allocation threads", name, 4096) if alloc else None
    maxmem = tree.xpath(XP_MAX_MEMORY)
    slots = _int(maxmem[0].get("slots"), "maxMemory slots", name, MAX_SLOTS) if maxmem else None

    devices = tree.xpath(XP_MEMORY_DEVICES)
    # dimm/nvdimm slots: given ones are kept, the others take the lowest free slot.
    used = set()
    given: list[Optional[int]] = []
    for dev in devices:
        raw = dev.xpath(XP_DEV_SLOT)
        slot = _int(str(raw[0]), "dimm slot", name, MAX_SLOTS) if raw else None
        given.append(slot)
        if slot is not None:
            used.add(slot)
    counters: dict[str, int] = {}
    memory: list[MemoryExtras] = []
    for dev, slot in zip(devices, given):
        model = dev.get("model", "")
        if model in ("dimm", "nvdimm"):
            if slot is None:
                slot = next(s for s in range(MAX_SLOTS + len(devices) + 1) if s not in used)
                used.add(slot)
            index = slot
        else:
            index = counters.get(model, 0)
        counters[model] = max(counters.get(model, 0), index + 1)
        memory.append(
            MemoryExtras(
                model=model,
                alias_index=index,
                path=str(dev.xpath(XP_DEV_PATH)) or None,
                pmem=bool(dev.xpath(XP_DEV_PMEM)),
                discard=_tristate(dev.get("discard"), name, "memory discard"),
                slot=slot if model in ("dimm", "nvdimm") else None,
                block_kib=_size(
                    next(iter(dev.xpath(XP_DEV_BLOCK)), None), name, "virtio-mem block"
                ),
                requested_kib=_size(
                    next(iter(dev.xpath(XP_DEV_REQUESTED)), None), name, "virtio-mem requested"
                ),
            )
        )
    return DomainExtras(
        cell_cpus=cell_cpus,
        cell_discard=cell_discard,
        discard=True if tree.xpath(XP_BACKING_DISCARD) else None,
        allocation_immediate=mode == "immediate",
        allocation_threads=threads,
        slots=slots,
        memory=tuple(memory),
    )
