"""qemu memory arguments for a domain, for running it without libvirt. Pure: no I/O.

The backend of each guest cell (``ram-nodeN``), of a guest without cells (``pc.ram``) and of
each memory device (``memdimmN``...) is chosen as libvirt's qemu driver chooses it:
``memory-backend-memfd`` for ``<source type='memfd'/>`` (``hugetlb``/``hugetlbsize`` when
the page is huge), ``memory-backend-file`` for hugepages (in the hugetlbfs mount of that
size), nvdimm paths, an explicit memAccess or ``<source type='file'/>`` (under the memory
backing dir), otherwise ``memory-backend-ram``. Host nodes and policy come from
``<numatune>`` (memnode first, then memory, placement='auto' from the host's advice, no
binding for 'restrictive'). Sizes are aligned like libvirt for a fresh start: cells and the
initial memory to 1 MiB, memory modules to 2 MiB. With ``QemuEnv.thread_context`` (qemu >=
7.2, as libvirt 9 does) each preallocated backend bound to host nodes names a
``thread-context`` object with those nodes in ``prealloc-context``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from hugexml.core.errors import InvalidDomain, MountMissing
from hugexml.core.model import Domain, MemNode, MemoryDevice
from hugexml.core.typed import Typed
from hugexml.planning.qemuxml import DomainExtras

CELL_ALIGN_KIB = 1024
MODULE_ALIGN_KIB = 2048
POLICY = {"strict": "bind", "preferred": "preferred", "interleave": "interleave"}
# Memory device model -> (qemu -device driver, alias prefix)
DEVICE_DRIVERS = {
    "dimm": ("pc-dimm", "dimm"),
    "nvdimm": ("nvdimm", "nvdimm"),
    "virtio-mem": ("virtio-mem-pci", "virtiomem"),
    "virtio-pmem": ("virtio-pmem-pci", "virtiopmem"),
    "sgx-epc": ("sgx-epc", "epc"),
}


class QemuEnv(Typed, frozen=True):
    """What the host provides. ``mounts``: page size KiB -> hugetlbfs mount point."""

    mounts: Mapping[int, str]
    default_page_kib: Optional[int]
    auto_nodes: Optional[tuple[int, ...]] = None
    system_page_kib: int = 4
    memory_backing_dir: str = "/var/lib/libvirt/qemu/ram"
    # Templates ({name}, {short_name}): the per-guest dir under a hugetlbfs mount and under
    # the memory backing dir. libvirt itself uses 'libvirt/qemu/-1-{short_name}' and
    # '-1-{short_name}' with a domain id of -1.
    hugetlbfs_subdir: str = ""
    backing_subdir: str = "{name}"
    align: bool = True  # False: keep sizes as written (libvirt on incoming migration)
    # qemu >= 7.2: a thread-context object per preallocated backend bound to host nodes
    # (libvirt 9.0 adds one when its qemu has it), so preallocation runs on those nodes
    thread_context: bool = False
    # host nodes with CPUs (None: all): a thread-context bound to nodes without any CPU is
    # refused by qemu ("The nodes select no CPUs"), so such a backend gets none
    cpu_nodes: Optional[frozenset[int]] = None


class Backend(Typed, frozen=True):
    id: str
    qom_type: str  # memory-backend-file | memory-backend-memfd | memory-backend-ram
    size_bytes: int
    page_size_kib: Optional[int] = None  # None: normal pages
    mem_path: Optional[str] = None
    hugetlb: bool = False
    share: Optional[bool] = None  # None: not set (qemu's default, private)
    prealloc: bool = False
    prealloc_threads: Optional[int] = None
    discard_data: Optional[bool] = None
    reserve: Optional[bool] = None
    pmem: bool = False
    host_nodes: Optional[tuple[int, ...]] = None
    policy: Optional[str] = None  # bind | preferred | interleave
    system_memory: bool = False
    thread_context: bool = False  # preallocate with thread-context 'tc-<id>'

    def props(self) -> dict[str, Any]:
        """The JSON -object form, keys in libvirt's order."""
        p: dict[str, Any] = {"qom-type": self.qom_type, "id": self.id}
        if self.qom_type == "memory-backend-memfd" and self.hugetlb:
            p["hugetlb"] = True
            p["hugetlbsize"] = (self.page_size_kib or 0) * 1024
        if self.mem_path is not None:
            p["mem-path"] = self.mem_path
        if self.discard_data is not None:
            p["discard-data"] = self.discard_data
        if self.share is not None:
            p["share"] = self.share
        if self.system_memory and self.qom_type != "memory-backend-ram":
            p["x-use-canonical-path-for-ramblock-id"] = False
        if self.reserve is not None:
            p["reserve"] = self.reserve
        if self.prealloc:
            p["prealloc"] = True
        if self.prealloc_threads:  # libvirt sets the threads whether it preallocates or not
            p["prealloc-threads"] = self.prealloc_threads
        p["size"] = self.size_bytes
        if self.pmem:
            p["pmem"] = True
        if self.host_nodes is not None and self.policy is not None:
            p["host-nodes"] = list(self.host_nodes)
            p["policy"] = self.policy
        if self.thread_context:
            p["prealloc-context"] = f"tc-{self.id}"
        return p

    def thread_context_props(self) -> Optional[dict[str, Any]]:
        """The thread-context object that must come before this backend, if any."""
        if not self.thread_context:
            return None
        return {"qom-type": "thread-context", "id": f"tc-{self.id}",
                "node-affinity": list(self.host_nodes or ())}


class NumaNode(Typed, frozen=True):
    node_id: int
    cpus: tuple[str, ...]  # ranges: ('0-3', '8-11')
    memdev: str


class DeviceArg(Typed, frozen=True):
    driver: str
    id: str
    memdev: str
    node: Optional[int]
    props: tuple[tuple[str, Any], ...] = ()


class QemuMemory(Typed, frozen=True):
    memory_kib: int
    slots: Optional[int]
    max_memory_kib: Optional[int]
    backends: tuple[Backend, ...]
    numa: tuple[NumaNode, ...] = ()
    devices: tuple[DeviceArg, ...] = ()
    machine_backend: Optional[str] = None  # 'pc.ram' for a guest without cells
    notes: tuple[str, ...] = ()


def align_up(value_kib: int, align_kib: int) -> int:
    return -(-value_kib // align_kib) * align_kib


def short_name(name: str) -> str:
    """libvirt's qemuDomainGetShortName: the name cut to 20 characters."""
    return name[:20]


class _Builder:
    def __init__(self, dom: Domain, extras: DomainExtras, env: QemuEnv) -> None:
        self.dom, self.extras, self.env = dom, extras, env
        self.ncells = len(dom.cells)
        self.cell_by_id = {c.cell_id: c for c in dom.cells}

    # -- numatune ------------------------------------------------------------------
    def _memnode(self, cell: int) -> Optional[MemNode]:
        nt = self.dom.numatune
        if nt is None or cell < 0:
            return None
        for mn in nt.memnodes:
            if mn.cell_id == cell:
                return mn
        return None

    def mode(self, cell: int) -> str:
        mn = self._memnode(cell)
        if mn is not None:
            return mn.mode
        nt = self.dom.numatune
        if nt is not None and nt.mode is not None:
            return nt.mode
        return "strict"

    def nodeset(self, cell: int) -> Optional[tuple[int, ...]]:
        mn = self._memnode(cell)
        if mn is not None:
            return tuple(sorted(mn.nodeset))
        nt = self.dom.numatune
        if nt is None or (nt.mode is None and nt.nodeset is None and nt.placement is None):
            return None
        if nt.placement == "auto":
            if self.env.auto_nodes is None:
                raise InvalidDomain(
                    domain=self.dom.name,
                    reason="Advice from numad is needed in case of automatic numa placement",
                )
            return tuple(self.env.auto_nodes)
        return tuple(sorted(nt.nodeset)) if nt.nodeset is not None else None

    # -- page size -----------------------------------------------------------------
    def page_for(self, cell: int, explicit_kib: Optional[int]) -> Optional[int]:
        """Page size KiB for memory on guest ``cell`` (-1: no cells); None: normal pages."""
        size: Optional[int] = explicit_kib
        use = explicit_kib is not None
        if size is None:
            master = specific = None
            for page in self.dom.pages:
                if page.guest_cells is None or (cell < 0 and page.guest_cells == frozenset({0})):
                    master = page
                elif cell >= 0 and cell in page.guest_cells and specific is None:
                    specific = page
            chosen = specific or master
            if chosen is None and self.dom.hugepages and not self.dom.pages:
                use = True  # bare <hugepages/>
            elif chosen is not None:
                size, use = chosen.size_kib, True
        if size == self.env.system_page_kib:
            return None
        if use and not size:
            if not self.env.default_page_kib:
                raise MountMissing(
                    domain=self.dom.name, reason="unable to find the default huge page size"
                )
            size = self.env.default_page_kib
        return size if use else None

    def mount_for(self, size_kib: int) -> str:
        mount = self.env.mounts.get(size_kib)
        if mount is None:
            have = (
                ", ".join(f"{k} KiB at {v}" for k, v in sorted(self.env.mounts.items())) or "none"
            )
            raise MountMissing(
                domain=self.dom.name,
                reason=f"no hugetlbfs mount for {size_kib} KiB pages (mounted: {have}); "
                "mount one or use <source type='memfd'/>",
            )
        sub = self.env.hugetlbfs_subdir.format(
            name=self.dom.name, short_name=short_name(self.dom.name)
        )
        return os.path.join(mount, sub) if sub else mount

    # -- one backend -----------------------------------------------------------------
    def backend(
        self,
        alias: str,
        backend_id: str,
        size_kib: int,
        cell: int,
        dev: Optional[MemoryDevice] = None,
        cell_access: Optional[str] = None,
        cell_discard: Optional[bool] = None,
    ) -> Backend:
        dom, env = self.dom, self.env
        access = dev.access if dev is not None else cell_access
        if dev is not None and dev.model == "virtio-pmem" and access is None:
            access = "shared"  # virDomainMemoryDefPostParse
        if access is None and cell >= 0 and dev is not None and cell in self.cell_by_id:
            access = self.cell_by_id[cell].mem_access
        if access is None:
            access = dom.access
        discard = dev.discard if dev is not None else cell_discard
        if discard is None and dev is not None and cell in self.cell_by_id:
            discard = self.cell_by_id[cell].discard
        if discard is None:
            discard = True if dom.discard else None
        page_kib = self.page_for(cell, dev.source_page_kib if dev is not None else None)
        share = {"shared": True, "private": False}.get(access or "")
        prealloc = dom.allocation == "immediate"
        nv_path = dev.path if dev is not None else None
        kw: dict[str, Any] = {}
        if nv_path:  # nvdimm / virtio-pmem: their own file, whatever the guest RAM uses
            qom = "memory-backend-file"
            kw["mem_path"] = nv_path
            pmem_dev = dev is not None and (dev.pmem or dev.model == "virtio-pmem")
            prealloc = prealloc or not pmem_dev
        elif dom.source == "memfd":
            qom = "memory-backend-memfd"
            if page_kib is not None:
                kw.update(hugetlb=True, page_size_kib=page_kib)
                prealloc = True
        elif page_kib is not None or access is not None or dom.source == "file":
            qom = "memory-backend-file"
            if page_kib is not None:
                kw["mem_path"] = self.mount_for(page_kib)
                kw["page_size_kib"] = page_kib
                prealloc = True
            else:
                sub = env.backing_subdir.format(name=dom.name, short_name=short_name(dom.name))
                kw["mem_path"] = os.path.join(env.memory_backing_dir, sub, alias)
            if discard is not None:
                kw["discard_data"] = discard
        else:
            qom = "memory-backend-ram"
        if dev is not None and dev.model == "virtio-mem":
            kw["reserve"] = False
            prealloc = False  # virtio-mem preallocates through the device
        if dev is not None and dev.pmem:
            kw["pmem"] = True
        nodes = (
            tuple(sorted(dev.source_nodemask))
            if dev is not None and dev.source_nodemask
            else self.nodeset(cell)
        )
        mode = self.mode(cell)
        if nodes is not None and mode in POLICY:
            kw.update(host_nodes=nodes, policy=POLICY[mode])
            # qemuBuildThreadContextProps: preallocating threads run on the bound nodes
            kw["thread_context"] = env.thread_context and prealloc and (
                env.cpu_nodes is None or bool(env.cpu_nodes & set(nodes)))
        return Backend(
            id=backend_id,
            qom_type=qom,
            size_bytes=size_kib * 1024,
            share=share,
            prealloc=prealloc,
            prealloc_threads=(dom.allocation_threads or None)
            if dev is None or dev.model != "virtio-mem" else None,
            system_memory=cell < 0 and dev is None,
            **kw,
        )

    # -- the whole guest ---------------------------------------------------------------
    def build(self) -> QemuMemory:
        dom, env, x = self.dom, self.env, self.extras
        backends: list[Backend] = []
        numa: list[NumaNode] = []
        devices: list[DeviceArg] = []
        machine_backend = None
        if dom.cells:
            initial = 0
            for cell in sorted(dom.cells, key=lambda c: c.cell_id):
                size = align_up(cell.memory_kib, CELL_ALIGN_KIB) if env.align else cell.memory_kib
                initial += size
                alias = f"ram-node{cell.cell_id}"
                backends.append(
                    self.backend(
                        alias,
                        alias,
                        size,
                        cell.cell_id,
                        cell_access=cell.mem_access,
                        cell_discard=cell.discard,
                    )
                )
                numa.append(NumaNode(cell.cell_id, x.cell_cpus.get(cell.cell_id, ()), alias))
        else:
            initial = align_up(dom.memory_kib, CELL_ALIGN_KIB) if env.align else dom.memory_kib
            machine_backend = "pc.ram"
            backends.append(self.backend("pc.ram", "pc.ram", initial, -1))
        for dev in dom.memory_devices:
            dev_x = x.memory[dev.index]
            driver, prefix = DEVICE_DRIVERS.get(dev.model, (dev.model, dev.model))
            dev_id = f"{prefix}{dev_x.alias_index}"
            size = align_up(dev.size_kib, MODULE_ALIGN_KIB) if env.align else dev.size_kib
            target = dev.target_node if dev.target_node is not None else -1
            back = self.backend(dev_id, f"mem{dev_id}", size, target, dev=dev)
            backends.append(back)
            props: list[tuple[str, Any]] = []
            if dev.model == "virtio-mem":
                if dev.block_kib:
                    props.append(("block-size", dev.block_kib * 1024))
                props.append(("requested-size", dev.requested_kib * 1024))
                if dom.allocation == "immediate" \
                        or self.page_for(target, dev.source_page_kib) is not None:
                    props.append(("prealloc", True))
            elif dev_x.slot is not None:
                props.append(("slot", dev_x.slot))
            devices.append(DeviceArg(driver, dev_id, f"mem{dev_id}", dev.target_node, tuple(props)))
        if not env.align and dom.cells:
            # Incoming migration: libvirt keeps <memory> as written (no ABI update).
            initial = dom.memory_kib - sum(d.size_kib for d in dom.memory_devices)
        return QemuMemory(
            memory_kib=initial,
            slots=dom.max_memory_slots or None,
            max_memory_kib=(
                align_up(dom.max_memory_kib, CELL_ALIGN_KIB) if env.align else dom.max_memory_kib
            )
            if dom.max_memory_kib
            else None,
            backends=tuple(backends),
            numa=tuple(numa),
            devices=tuple(devices),
            machine_backend=machine_backend,
        )


def build(dom: Domain, extras: DomainExtras, env: QemuEnv) -> QemuMemory:
    """The memory arguments of a domain ``validate.check`` accepted (``from_xml`` checks)."""
    return _Builder(dom, extras, env).build()


# --- from XML -------------------------------------------------------------------------
def from_xml(data: bytes, env: QemuEnv, host: Any = None, source: str = "<stdin>") -> QemuMemory:
    """Parse, validate (the plan rejects what libvirt rejects) and build. Still pure."""
    from hugexml.planning.plan import make_plan
    from hugexml.planning.qemuxml import derive
    from hugexml.xml.domxml import parse_domain_tree
    from hugexml.xml.xmlsafe import parse_bytes

    tree = parse_bytes(data, source)
    dom = parse_domain_tree(tree, source)
    make_plan(dom, host)
    return build(dom, derive(dom), env)
