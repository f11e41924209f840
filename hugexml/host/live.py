"""Running guests as the host shows them, read without calling libvirt.

What the state store lost, the host still shows: each running qemu guest's identity (its
command line, or the daemon's status files ``run/libvirt/qemu/NAME.{xml,pid}``), the
hugepages it maps per node and size (``/proc/PID/numa_maps``) and its live domain XML (the
plan of what it demands). ``Allocator.reconcile(live=...)`` gives a running guest without a
record its record back, and releases records of guests that no longer run.
"""
from __future__ import annotations

from hugexml.core.errors import HugexmlError
from hugexml.core.root import HostRoot
from hugexml.core.typed import Typed
from hugexml.planning.records import DemandRow, Pool

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

LIBVIRT_STATUS_DIR = "run/libvirt/qemu"


class LiveGuest(Typed, frozen=True):
    name: str
    uuid: Optional[str]
    pid: Optional[int]
    mapped: dict[Pool, int]
    demand: tuple[DemandRow, ...] = ()


def demand_rows(xml: bytes, host: Any, source: str) -> tuple[DemandRow, ...]:
    """The plan's demand of a live XML; () when it cannot be planned."""
    from hugexml.xml.domxml import plan_xml

    try:
        plan = plan_xml(xml, host, source)
    except HugexmlError:
        return ()
    return tuple(DemandRow(d.page_size_kib, d.pages, d.host_nodes, d.policy)
                 for d in plan.demand if d.pages > 0)


def daemon_pid(root: HostRoot, name: str) -> Optional[int]:
    """The qemu pid libvirt recorded for a running guest (``NAME.pid``), or None."""
    if "/" in name or name in (".", ".."):
        return None
    try:
        with open(root.path(LIBVIRT_STATUS_DIR, f"{name}.pid"), "rb") as fh:
            text = fh.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 1 << 22 else None


def live_guest(root: HostRoot, name: str, uuid: Optional[str], xml: bytes,
               host: Any) -> LiveGuest:
    """The guest libvirt reconnects to: its XML came on the hook's stdin."""
    from hugexml.host.usage import read_numa_maps

    pid = daemon_pid(root, name)
    mapped = None
    if pid is not None:
        try:
            mapped = read_numa_maps(root, pid)
        except HugexmlError:
            mapped = None
    return LiveGuest(name, uuid, pid, mapped or {},
                     demand_rows(xml, host, f"domain '{name}' live XML"))


def running_guests(root: HostRoot, host: Any) -> list[LiveGuest]:
    """Every running qemu guest (HostError when the process table cannot be read)."""
    from hugexml.host.usage import live_domain_xml, qemu_processes, read_numa_maps

    out = []
    for pid, name, uuid in qemu_processes(root):
        mapped = read_numa_maps(root, pid)
        if mapped is None:
            continue  # it exited meanwhile
        xml = live_domain_xml(root, name)
        demand = demand_rows(xml, host, f"{name} (live XML)") if xml is not None else ()
        out.append(LiveGuest(name, uuid, pid, mapped, demand))
    return out
