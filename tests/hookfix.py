"""Shared by the hook's tests: calling hook.main in-process, domain XMLs, and a fake host
(sysfs/procfs tree for the plan and mounts, a SimKernel behind the gateway)."""
from __future__ import annotations

import io
from pathlib import Path

from hugexml.qemuhook import dispatch as hook


class Unreadable(io.RawIOBase):
    """A stdin that fails the test if the hook reads it."""

    def read(self, *args, **kwargs):  # type: ignore[override]
        raise AssertionError("the hook read stdin on a no-op path")

    readinto = read  # type: ignore[assignment]


def call(argv: list[str], data: bytes | None = None, **kw):
    stdin = Unreadable() if data is None else io.BytesIO(data)
    out, err = io.BytesIO(), io.StringIO()
    code = hook.main(argv, stdin, out, err, **kw)
    return code, out.getvalue(), err.getvalue()


def no_gateway(root):
    raise AssertionError("the hook built a host gateway on a no-op path")


M2, G1 = 2048, 1048576


def guest_xml(name: str, memory_mib: int, page_kib: int | None, node: int | None = None,
              memfd: bool = False, uuid: str | None = None) -> bytes:
    uuid = uuid or f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}"
    backing = ""
    if page_kib is not None:
        backing = (f"<memoryBacking><hugepages><page size='{page_kib}' unit='KiB'/></hugepages>"
                   + ("<source type='memfd'/>" if memfd else "") + "</memoryBacking>")
    numatune = (f"<numatune><memory mode='strict' nodeset='{node}'/></numatune>"
                if node is not None else "")
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<memory unit='MiB'>{memory_mib}</memory>{backing}{numatune}<vcpu>1</vcpu>"
            "<os><type arch='x86_64'>hvm</type></os></domain>\n").encode()


class FakeHost:
    """Host info and mounts as files under a root; pools in a SimKernel (the gateway)."""

    def __init__(self, base: Path, nodes: int = 2, mounts: tuple[int, ...] = (M2, G1)) -> None:
        from simkernel import SimKernel

        self.base = base
        self.sim = SimKernel(nodes=nodes, sizes=(M2, G1))
        for size in (M2, G1):
            (base / f"sys/kernel/mm/hugepages/hugepages-{size}kB").mkdir(parents=True)
        for n in range(nodes):
            (base / f"sys/devices/system/node/node{n}").mkdir(parents=True)
        (base / "proc/self").mkdir(parents=True)
        (base / "proc/meminfo").write_text("MemTotal: 67108864 kB\nHugepagesize: 2048 kB\n")
        self.set_mounts(mounts)

    def set_mounts(self, sizes: tuple[int, ...]) -> None:
        rows = ["proc /proc proc rw 0 0"]
        names = {M2: "2M", G1: "1G"}
        for size in sizes:
            label = names[size]
            rows.append(f"hugetlbfs /dev/hugepages{label} hugetlbfs rw,pagesize={label} 0 0")
        (self.base / "proc/self/mounts").write_text("\n".join(rows) + "\n")

    def gateway(self, root):
        assert root.base == str(self.base)
        return self.sim


def hook_call(h: FakeHost, op: str, data: bytes, name: str = "vm1"):
    subop = "end" if op == "release" else "begin"
    return call(["qemu", name, op, subop, "-"], data, make_gateway=h.gateway)


