"""Render a ``hugexml.xml.qemuargs.QemuMemory`` as qemu arguments, shell text or JSON. Pure.

A guest without cells whose RAM is one hugetlbfs file with nothing else to say gets the
classic ``-mem-path``/``-mem-prealloc``; anything else (shared, bound to host nodes, memfd,
discard) gets ``-machine memory-backend=pc.ram`` and an ``-object``. Backends are written in
qemu's JSON ``-object`` form (qemu >= 6.0), as libvirt writes them, since the keyval form
cannot carry a host-nodes list; ``-numa`` and memory ``-device`` options follow.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from hugexml.xml.qemuargs import Backend, QemuMemory


# --- rendering ------------------------------------------------------------------------
def _legacy_ok(mem: QemuMemory) -> bool:
    """Can the guest's RAM be said with ``-mem-path``/``-mem-prealloc`` alone?"""
    if mem.machine_backend is None or len(mem.backends) != 1:
        return False
    b = mem.backends[0]
    if b.qom_type == "memory-backend-ram":
        return b.host_nodes is None and not b.prealloc
    return (
        b.qom_type == "memory-backend-file"
        and b.page_size_kib is not None
        and b.share is None
        and b.host_nodes is None
        and b.discard_data is None
        and not b.prealloc_threads
    )


def argv(mem: QemuMemory, *, objects: bool = False) -> list[str]:
    """qemu arguments. ``objects``: always use -object backends (libvirt's form)."""
    # libvirt passes -m in whole MiB (rounded down; aligned sizes are whole already).
    m = f"size={mem.memory_kib // 1024 * 1024}k"
    if mem.slots:
        m += f",slots={mem.slots}"
    if mem.max_memory_kib:
        m += f",maxmem={mem.max_memory_kib}k"
    out = ["-m", m]
    by_id = {b.id: b for b in mem.backends}
    if mem.machine_backend is not None:
        b = by_id[mem.machine_backend]
        if not objects and _legacy_ok(mem):
            if b.mem_path is not None:
                out += ["-mem-path", b.mem_path]
            if b.prealloc:
                out.append("-mem-prealloc")
        else:
            out += ["-machine", f"memory-backend={b.id}", *_objects(b)]
    for node in mem.numa:
        out += _objects(by_id[node.memdev])
        cpus = "".join(f",cpus={c}" for c in node.cpus)
        out += ["-numa", f"node,nodeid={node.node_id}{cpus},memdev={node.memdev}"]
    for dev in mem.devices:
        out += _objects(by_id[dev.memdev])
        opts: dict[str, Any] = {"driver": dev.driver}
        if dev.node is not None:
            opts["node"] = dev.node
        opts["memdev"] = dev.memdev
        opts["id"] = dev.id
        opts.update(dict(dev.props))
        out += ["-device", json.dumps(opts, separators=(",", ":"))]
    return out


def _objects(backend: Backend) -> list[str]:
    """-object options of a backend: its thread-context first, as libvirt orders them."""
    out = []
    context = backend.thread_context_props()
    if context is not None:
        out += ["-object", json.dumps(context, separators=(",", ":"))]
    return [*out, "-object", json.dumps(backend.props(), separators=(",", ":"))]


def format_shell(args: list[str]) -> str:
    """One option per line, shell-quoted, continued with a backslash (like libvirt's .args)."""
    lines: list[str] = []
    i = 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("-"):
            lines.append(f"{shlex.quote(args[i])} {shlex.quote(args[i + 1])}")
            i += 2
        else:
            lines.append(shlex.quote(args[i]))
            i += 1
    return " \\\n".join(lines) + "\n"


def to_json(mem: QemuMemory, args: list[str]) -> dict[str, Any]:
    return {
        "argv": args,
        "memory_kib": mem.memory_kib,
        "slots": mem.slots,
        "max_memory_kib": mem.max_memory_kib,
        "backends": [b.props() for b in mem.backends],
        "thread_contexts": [t for t in (b.thread_context_props() for b in mem.backends) if t],
        "numa": [{"nodeid": n.node_id, "cpus": list(n.cpus), "memdev": n.memdev} for n in mem.numa],
        "devices": [
            {"driver": d.driver, "id": d.id, "memdev": d.memdev, "node": d.node}
            for d in mem.devices
        ],
    }
