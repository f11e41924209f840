"""Read a libvirt domain XML into ``hugexml.core.model.Domain``, as libvirt 9.0 reads it.

The only module of the plan path that touches lxml (with ``numaxml`` for the guest cells
and ``<numatune>``). It follows domain_conf.c ``virDomainDefParseXML`` for what hugexml
models: ``virDomainDefParseMemory`` (``<memory>``, ``<currentMemory>``, ``<maxMemory>``,
``<memoryBacking>``), the ``<memtune>`` sizes, ``<vcpu>``, then the NUMA cells and
``<numatune>``, then ``virDomainMemoryDefParseXML`` for each memory device, each with
libvirt's syntax (``xmlread``), order and message; every failure is one ``InvalidDomain``
line. XPaths are declared once below; what libvirt checks after parsing is in
``hugexml.planning.validate``.
"""
from __future__ import annotations

from typing import Any, Optional

from hugexml.core.errors import InvalidDomain, InvalidXML
from hugexml.core.model import Domain, HostInfo, MemoryDevice, PageSpec, Plan
from hugexml.core.units import UnitError, parse_duration_s
from hugexml.xml import numaxml, xmlread, xmlsafe

# --- XPaths (declared once) -------------------------------------------------------------
X_NAME = "name"
X_UUID = "uuid"
X_MEMORY = "memory"
X_CURRENT_MEMORY = "currentMemory"
X_MAX_MEMORY = "maxMemory"
X_BACKING = "memoryBacking"
X_HUGEPAGES = "memoryBacking/hugepages"
X_PAGES = "memoryBacking/hugepages/page"
X_BACKING_SOURCE = "memoryBacking/source"
X_BACKING_ACCESS = "memoryBacking/access"
X_BACKING_ALLOCATION = "memoryBacking/allocation"
X_NOSHAREPAGES = "memoryBacking/nosharepages"
X_LOCKED = "memoryBacking/locked"
X_DISCARD = "memoryBacking/discard"
X_MEMTUNE_LIMITS = ("hard_limit", "soft_limit", "swap_hard_limit")  # under memtune/
X_MIN_GUARANTEE = "memtune/min_guarantee"
X_VCPU = "vcpu"
X_MEMORY_DEVICES = "devices/memory"
X_DEV_SOURCE = "source"
X_DEV_TARGET = "target"
X_DEV_ADDRESS = "address"
# hugexml's own element in <metadata> (libvirt keeps foreign namespaces as they are)
NS_HUGEXML = "https://hugexml.dev/xmlns/domain/1"
X_KEEP = f"metadata/{{{NS_HUGEXML}}}keep"

MAX_MEMORY_DEVICES = 256
MAX_PAGES = 1024

# libvirt's enums; the first value is the zero one (refused where libvirt says NONZERO)
MEM_ACCESS = ("default", "shared", "private")
BACKING_SOURCES = ("none", "file", "anonymous", "memfd")
ALLOCATIONS = ("none", "immediate", "ondemand")
MEMORY_MODELS = ("", "dimm", "nvdimm", "virtio-pmem", "virtio-mem", "sgx-epc")
ADDRESS_TYPES = ("none", "pci", "drive", "virtio-serial", "ccid", "usb", "spapr-vio",
                 "virtio-s390", "ccw", "virtio-mmio", "isa", "dimm", "unassigned")


def load_domain(data: bytes, source: str = "<stdin>") -> Domain:
    """Parse bytes (safe parser, size-capped) into a Domain."""
    return parse_domain_tree(xmlsafe.parse_bytes(data, source), source)


def parse_domain_tree(tree: Any, source: str) -> Domain:
    root = tree.getroot() if hasattr(tree, "getroot") else tree
    if root.tag != "domain":
        raise InvalidXML(source=source, reason=f"root element is <{root.tag}>, expected <domain>")
    name = (xmlread.text_of(root.find(X_NAME)) or "?").strip() or "?"
    try:
        return _parse(root, name)
    except UnitError as exc:
        raise InvalidDomain(domain=name, reason=str(exc)) from exc


def _size(root: Any, path: str, xpath: str, *, required: bool = False) -> Optional[int]:
    """virDomainParseMemory of an element's text and @unit (the first one of ``path``)."""
    el = root.find(path)
    return xmlread.scaled_kib(xmlread.text_of(el), None if el is None else el.get("unit"),
                              xpath, required=required)


def _backing_enum(root: Any, path: str, attr: str, values: tuple[str, ...]) -> Optional[str]:
    """``string(./memoryBacking/X/@attr)`` looked up in a libvirt enum, zero value refused."""
    el = root.find(path)
    value = None if el is None else el.get(attr) or None
    if value is not None and (value not in values or value == values[0]):
        raise UnitError(f"unknown {path}/{attr} '{xmlread.clip(value)}'")
    return value


def _xpath_uint(el: Any, attr: str, message: str) -> int:
    """virXPathUInt: absent or empty is 0, anything but an unsigned int is ``message``."""
    text = None if el is None else el.get(attr)
    if not text:
        return 0
    value = xmlread.strtoull(text)
    if value is None or value > xmlread.UINT_MAX:
        raise UnitError(message)
    return value


def _parse(root: Any, name: str) -> Domain:
    budget = [xmlread.BUDGET_BITS]
    # virDomainDefParseMemory
    memory_kib = _size(root, X_MEMORY, "./memory[1]") or 0
    _size(root, X_CURRENT_MEMORY, "./currentMemory[1]")
    max_memory_kib = _size(root, X_MAX_MEMORY, "./maxMemory[1]")
    max_el = root.find(X_MAX_MEMORY)
    slots = _xpath_uint(max_el, "slots", "Failed to parse memory slot count")
    if root.find(X_MEMORY) is not None:
        xmlread.tristate(root.find(X_MEMORY), "dumpCore", ("on", "off"))
    source = _backing_enum(root, X_BACKING_SOURCE, "type", BACKING_SOURCES)
    access = _backing_enum(root, X_BACKING_ACCESS, "mode", MEM_ACCESS)
    allocation = _backing_enum(root, X_BACKING_ALLOCATION, "mode", ALLOCATIONS)
    threads = _xpath_uint(root.find(X_BACKING_ALLOCATION), "threads",
                          "Failed to parse memory allocation threads")
    hugepages = root.find(X_HUGEPAGES) is not None
    pages: list[PageSpec] = []
    if hugepages:
        elements = root.findall(X_PAGES)
        if len(elements) > MAX_PAGES:
            raise UnitError(f"too many <page> elements: {len(elements)} (hugexml reads "
                            f"{MAX_PAGES})")
        for page in elements:
            size = xmlread.scaled_kib(page.get("size") or None, page.get("unit"), "./@size",
                                      required=True)
            if not size:
                raise UnitError("hugepage size can't be zero")
            guest_cells = None
            if page.get("nodeset") is not None:
                guest_cells = xmlread.bitmap(page.get("nodeset"), budget)
                if not guest_cells:
                    raise UnitError("Invalid value of 'nodeset': "
                                    f"{xmlread.clip(page.get('nodeset'))}")
            pages.append(PageSpec(size_kib=size, guest_cells=guest_cells))

    # virDomainDefTunablesParse: <memtune>, then <vcpu>
    for limit in X_MEMTUNE_LIMITS:
        el = root.find("memtune/" + limit)
        xmlread.memory_limit_kib(xmlread.text_of(el), None if el is None else el.get("unit"),
                                 f"./memtune/{limit}[1]")
    min_guarantee = _size(root, X_MIN_GUARANTEE, "./memtune/min_guarantee[1]") or 0
    vcpus, placement_auto = _vcpu(root)

    cells, interconnects = numaxml.parse_cells(root, vcpus, budget)
    numatune = numaxml.parse_numatune(root, len(cells), placement_auto, budget)

    devices = root.findall(X_MEMORY_DEVICES)
    if len(devices) > MAX_MEMORY_DEVICES:
        raise UnitError(f"too many memory devices: {len(devices)} (hugexml reads "
                        f"{MAX_MEMORY_DEVICES})")
    return Domain(
        name=name, uuid=(xmlread.text_of(root.find(X_UUID)) or "").strip() or None,
        memory_kib=memory_kib, hugepages=hugepages, pages=tuple(pages), source=source,
        access=access, cells=cells, numatune=numatune,
        memory_devices=tuple(_device(el, i, budget) for i, el in enumerate(devices)),
        max_memory_kib=max_memory_kib, max_memory_slots=slots, allocation=allocation,
        allocation_threads=threads, discard=root.find(X_DISCARD) is not None,
        nosharepages=root.find(X_NOSHAREPAGES) is not None,
        locked=root.find(X_LOCKED) is not None, vcpus=vcpus,
        min_guarantee_kib=min_guarantee, interconnects=interconnects, keep_s=_keep(root))


def _keep(root: Any) -> Optional[float]:
    """``<hugexml:keep for="forever|DURATION"/>`` in <metadata>: this guest's keep window
    for the pages hugexml added (-1: for ever); None without it."""
    el = root.find(X_KEEP)
    if el is None:
        return None
    text = (el.get("for") or "").strip()
    if text.lower() == "forever":
        return -1.0
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise UnitError(f"<metadata> hugexml keep for={text[:40]!r}: {exc}") from None


def _vcpu(root: Any) -> tuple[Optional[int], bool]:
    """(maximum vCPUs, placement='auto'); vCPU rules themselves are not hugexml's: a value
    libvirt would refuse gives (None, False) and libvirt's own refusal."""
    el = root.find(X_VCPU)
    if el is None:
        return 1, False
    count = xmlread.strtoull(xmlread.text_of(el) or "")
    return (count if count is not None and count <= xmlread.UINT_MAX else None,
            el.get("placement") == "auto")


def _device(el: Any, index: int, budget: list[int]) -> MemoryDevice:
    """virDomainMemoryDefParseXML."""
    model = xmlread.required_enum(el, "model", MEMORY_MODELS, nonzero=True)
    access = xmlread.enum(el, "access", MEM_ACCESS, nonzero=True)
    discard = xmlread.tristate(el, "discard")
    uuid = (xmlread.text_of(el.find("uuid")) or None) if model == "nvdimm" else None
    fields: dict[str, Any] = {}
    src = el.find(X_DEV_SOURCE)
    if src is not None:
        if model in ("dimm", "virtio-mem"):
            fields["source_page_kib"] = _size(src, "pagesize", "./pagesize") or None
        if model in ("dimm", "virtio-mem", "sgx-epc"):
            text = xmlread.text_of(src.find("nodemask"))
            if text is not None:
                mask = xmlread.bitmap(text, budget)
                if not mask:
                    raise UnitError(f"Invalid value of 'nodemask': {xmlread.clip(text)}")
                fields["source_nodemask"] = mask
        if model in ("nvdimm", "virtio-pmem"):
            fields["path"] = xmlread.text_of(src.find("path"))
        if model == "nvdimm":
            fields["align_kib"] = _size(src, "alignsize", "./alignsize") or 0
            fields["pmem"] = src.find("pmem") is not None
    target = el.find(X_DEV_TARGET)
    if target is None:
        raise UnitError("missing <target> element for <memory> device")
    node: Optional[int] = None
    node_text = xmlread.text_of(target.find("node"))
    if node_text is not None:
        node = _c_int(node_text)
        if node is None or node < 0:
            raise UnitError("invalid value of memory device node")
    size = _size(target, "size", "./size", required=True) or 0
    if model == "nvdimm":
        label = _size(target, "label/size", "./label/size") or 0
        if label and label < 128:
            raise UnitError("nvdimm label must be at least 128KiB")
        if label >= size:
            raise UnitError("label size must be smaller than NVDIMM size")
        fields["label_kib"] = label
        fields["readonly"] = target.find("readonly") is not None
    if model == "virtio-mem":
        fields["block_kib"] = _size(target, "block", "./block") or 0
        fields["requested_kib"] = _size(target, "requested", "./requested") or 0
    address = el.find(X_DEV_ADDRESS)
    if address is not None:
        fields.update(_address(address))
    return MemoryDevice(model=model, index=index, size_kib=size, target_node=node,
                        access=access, discard=discard, uuid=uuid, **fields)


def _c_int(text: str) -> Optional[int]:
    """virStrToLong_i: strtol's whole-string reading of a C int, or None."""
    s = text.lstrip(" \t\n\v\f\r")
    digits = s[1:] if s[:1] in "+-" else s
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        return None
    value = int(s)
    return value if -(2**31) <= value < 2**31 else None


def _address(address: Any) -> dict[str, Any]:
    """virDomainDeviceAddressParseXML, as far as memory devices go."""
    kind = address.get("type")
    if kind is None:
        raise UnitError("No type specified for device address")
    if kind not in ADDRESS_TYPES[1:]:
        raise UnitError(f"unknown address type '{xmlread.clip(kind)}'")
    out: dict[str, Any] = {"address_type": kind}
    if kind == "dimm":
        out["slot"] = xmlread.required_uint(address, "slot")
        base = address.get("base")
        if base is not None:
            try:
                out["base"] = int(base.strip(), 16)
            except ValueError:
                raise UnitError(f"Invalid value for attribute 'base' in element 'address': "
                                f"'{xmlread.clip(base)}'. Expected non-negative integer value"
                                ) from None
    return out


def plan_xml(data: bytes, host: Optional[HostInfo], source: str = "<stdin>") -> Plan:
    """``load_domain`` and ``plan.make_plan``: the domain's demand on this host."""
    from hugexml.planning.plan import make_plan

    return make_plan(load_domain(data, source), host)
