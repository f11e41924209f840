"""What only the qemu command line derives from a domain (``hugexml.core.model.Domain``).

Per guest cell its vCPUs as ``-numa cpus=`` ranges after libvirt's rectification (cell 0
takes the vCPUs no cell names), and per memory device its alias index: dimm and nvdimm share
the DIMM slots (a given ``<address type='dimm' slot>`` is kept, the others take the lowest
free slot, as qemuDomainAssignMemorySlots), other models count per model. Pure.
"""

from __future__ import annotations

from typing import Optional

from hugexml.core.model import Domain
from hugexml.core.typed import Typed, field
from hugexml.core.units import format_nodeset
from hugexml.planning.validate import cell_cpus


class MemoryExtras(Typed, frozen=True):
    model: str
    alias_index: int
    slot: Optional[int] = None


class DomainExtras(Typed, frozen=True):
    cell_cpus: dict[int, tuple[str, ...]] = field(default_factory=dict)
    memory: tuple[MemoryExtras, ...] = ()


def derive(dom: Domain) -> DomainExtras:
    cpus: dict[int, tuple[str, ...]] = {}
    for cell in dom.cells:
        mask = cell_cpus(dom, cell.cell_id)
        if mask:
            cpus[cell.cell_id] = tuple(format_nodeset(mask).split(","))
    used = {d.slot for d in dom.memory_devices if d.address_type == "dimm" and d.slot is not None}
    counters: dict[str, int] = {}
    memory: list[MemoryExtras] = []
    for dev in dom.memory_devices:
        slot: Optional[int] = None
        if dev.model in ("dimm", "nvdimm"):
            slot = dev.slot if dev.address_type == "dimm" else None
            if slot is None:
                slot = next(s for s in range(len(used) + len(dom.memory_devices) + 1)
                            if s not in used)
                used.add(slot)
            index = slot
        else:
            index = counters.get(dev.model, 0)
        counters[dev.model] = max(counters.get(dev.model, 0), index + 1)
        memory.append(MemoryExtras(model=dev.model, alias_index=index, slot=slot))
    return DomainExtras(cell_cpus=cpus, memory=tuple(memory))
