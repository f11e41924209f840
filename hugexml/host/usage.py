"""Hugepages each running guest really maps, next to its ledger claim and its plan.

For every qemu process (psutil, over ``<root>/proc``) the guest name comes from
``-name guest=NAME,...``; ``/proc/PID/numa_maps`` lines marked ``huge`` give the pages
mapped per host node (``N<node>=<pages>``) and page size (``kernelpagesize_kB=``). The
plan demand is computed from libvirt's live status XML (``run/libvirt/qemu/NAME.xml``),
read as a file: hugexml never calls libvirt from here. Read-only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from hugexml.core.errors import HostError, HugexmlError
from hugexml.core.lazyre import pattern
from hugexml.core.root import HostRoot
from hugexml.core.typed import Typed, field

LIBVIRT_STATUS_DIR = "run/libvirt/qemu"
MAX_NUMA_MAPS_BYTES = 64 * 1024 * 1024
_QEMU_BINARY = pattern(r"(qemu-system-[A-Za-z0-9_]+|qemu-kvm|kvm)\Z")
_NODE_COUNT = pattern(r"N([0-9]{1,4})=([0-9]{1,20})\Z")
_PAGE_SIZE = pattern(r"kernelpagesize_kB=([0-9]{1,12})\Z")

Mapped = dict[tuple[int, int], int]  # (host node, page size KiB) -> pages


class GuestUsage(Typed):
    name: str
    pid: int
    uuid: Optional[str]
    mapped: Mapped
    ledger: Optional[Mapped] = None  # None: the ledger has no claim for this guest
    demand: Optional[dict[int, int]] = None  # page size KiB -> pages; None: plan unknown
    demand_nodes: Optional[dict[int, Optional[tuple[int, ...]]]] = None
    mismatches: list[str] = field(default_factory=list)

    def mapped_by_size(self) -> dict[int, int]:
        return _by_size(self.mapped)

    def to_json(self) -> dict[str, Any]:
        def rows(m: Optional[Mapped]) -> Optional[list[dict[str, int]]]:
            if m is None:
                return None
            return [{"node": n, "page_size_kib": s, "pages": p} for (n, s), p in sorted(m.items())]

        return {
            "name": self.name,
            "pid": self.pid,
            "uuid": self.uuid,
            "mapped": rows(self.mapped),
            "ledger": rows(self.ledger),
            "demand": None
            if self.demand is None
            else [{"page_size_kib": s, "pages": p} for s, p in sorted(self.demand.items())],
            "mismatches": list(self.mismatches),
        }


# --- command line and numa_maps parsing (pure) -------------------------------------
def guest_from_cmdline(argv: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(name, uuid) from a qemu command line, or (None, None) if this is not qemu."""
    if not argv or not _QEMU_BINARY.search(os.path.basename(argv[0])):
        return None, None
    name = uuid = None
    for i, arg in enumerate(argv[:-1]):
        value = argv[i + 1]
        if arg in ("-name", "--name"):
            name = _qemu_opt_value(value, "guest")
        elif arg in ("-uuid", "--uuid"):
            uuid = value
    return name, uuid


def _qemu_opt_value(text: str, key: str) -> str:
    """QemuOpts: ``guest=a,,b,debug-threads=on`` -> ``a,b``; a bare first value is implied."""
    parts: list[str] = []
    buf = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1 : i + 2] == ",":
                buf += ","
                i += 2
                continue
            parts.append(buf)
            buf = ""
        else:
            buf += ch
        i += 1
    parts.append(buf)
    for n, part in enumerate(parts):
        k, sep, v = part.partition("=")
        if sep and k == key:
            return v
        if n == 0 and not sep:
            return part
    return parts[0]


def parse_numa_maps(text: str) -> Mapped:
    """Sum ``N<node>=pages`` of hugetlb mappings, keyed by (node, page size KiB)."""
    out: Mapped = {}
    for line in text.splitlines():
        tokens = line.split()
        if "huge" not in tokens[2:]:
            continue
        size_kib = None
        counts = []
        for tok in tokens[2:]:
            m = _PAGE_SIZE.match(tok)
            if m:
                size_kib = int(m.group(1))
                continue
            m = _NODE_COUNT.match(tok)
            if m:
                counts.append((int(m.group(1)), int(m.group(2))))
        if size_kib is None:
            continue
        for node, pages in counts:
            out[(node, size_kib)] = out.get((node, size_kib), 0) + pages
    return out


# --- reading the host ----------------------------------------------------------------
@contextlib.contextmanager
def _procfs(root: HostRoot) -> Iterator[Any]:
    import psutil

    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = root.path("proc")
    _forget_processes(psutil)
    try:
        yield psutil
    finally:
        psutil.PROCFS_PATH = saved
        _forget_processes(psutil)


def _forget_processes(psutil: Any) -> None:
    """Drop process_iter's cache: ``cache_clear`` from psutil 6, the ``_pmap`` dict before
    (psutil 5.x: EL 9, Debian 12)."""
    clear = getattr(psutil.process_iter, "cache_clear", None)
    if clear is not None:
        clear()
    else:
        psutil._pmap.clear()


def qemu_processes(root: HostRoot) -> list[tuple[int, str, Optional[str]]]:
    """(pid, guest name, uuid) of every qemu process with a ``-name``."""
    found: list[tuple[int, str, Optional[str]]] = []
    try:
        if not any(entry.isdigit() for entry in os.listdir(root.path("proc"))):
            return found  # psutil cannot list an empty procfs
    except OSError as exc:
        raise HostError(path=root.path("proc"), reason=exc.strerror or str(exc)) from exc
    with _procfs(root) as psutil:
        for proc in psutil.process_iter():
            try:
                argv = proc.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            name, uuid = guest_from_cmdline(argv)
            if name:
                found.append((proc.pid, name, uuid))
    return sorted(found)


def read_numa_maps(root: HostRoot, pid: int) -> Optional[Mapped]:
    path = root.path("proc", str(pid), "numa_maps")
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read(MAX_NUMA_MAPS_BYTES)
    except (FileNotFoundError, ProcessLookupError):
        return None  # the process exited meanwhile
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc
    return parse_numa_maps(text)


def live_domain_xml(root: HostRoot, name: str) -> Optional[bytes]:
    """The <domain> inside libvirt's status file for a running guest, or None."""
    if "/" in name or name in (".", ".."):
        return None
    path = root.path(LIBVIRT_STATUS_DIR, f"{name}.xml")
    try:
        with open(path, "rb") as fh:
            data = fh.read(16 * 1024 * 1024)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc
    start = data.find(b"<domain ")
    end = data.rfind(b"</domain>")
    if start < 0 or end < 0:
        return None
    return data[start : end + len(b"</domain>")]


# numatune modes that keep a guest's pages on its nodes ('preferred' only prefers them).
STRICT_POLICIES = frozenset({"strict", "restrictive", "interleave"})


def plan_demand(
    xml: bytes, host: Any, source: str
) -> tuple[dict[int, int], dict[int, Optional[tuple[int, ...]]]]:
    """Pages per size the plan demands, and the host nodes per size the guest is strictly
    bound to (None: it may map that size on any node: unbound or 'preferred')."""
    from hugexml.xml.domxml import plan_xml

    plan = plan_xml(xml, host, source)
    demand: dict[int, int] = {}
    nodes: dict[int, Optional[tuple[int, ...]]] = {}
    for item in plan.demand:
        size_kib = item.page_size_kib
        demand[size_kib] = demand.get(size_kib, 0) + item.pages
        strict = item.host_nodes is not None and (item.policy or "strict") in STRICT_POLICIES
        if not strict or (size_kib in nodes and nodes[size_kib] is None):
            nodes[size_kib] = None
        else:
            merged = set(nodes.get(size_kib) or ()) | set(item.host_nodes or ())
            nodes[size_kib] = tuple(sorted(merged))
    return demand, nodes


def ledger_claims(
    snapshot: Optional[Mapping[str, Any]], name: str, uuid: Optional[str]
) -> Optional[Mapped]:
    """A guest's claim in a ledger snapshot as {(node, size): pages}, or None."""
    if not snapshot:
        return None
    guests = snapshot.get("guests", snapshot.get("claims"))
    if isinstance(guests, Mapping):
        entries = list(guests.items())
    elif isinstance(guests, list):
        entries = [(str(g.get("key", "")), g) for g in guests]
    else:
        return None
    for key, entry in entries:
        if not isinstance(entry, Mapping):
            continue
        matches = (
            key in {k for k in (uuid, name) if k}
            or entry.get("name") == name
            or (uuid is not None and entry.get("uuid") == uuid)
        )
        if not matches:
            continue
        claimed: Mapped = {}
        pools = entry.get("claimed")
        if isinstance(pools, Mapping):  # ledger.json: {"<node>:<size_kib>": pages}
            for pool, pages in pools.items():
                node_text, _, size_text = str(pool).partition(":")
                if node_text.isdigit() and size_text.isdigit() and int(pages):
                    key_ns = (int(node_text), int(size_text))
                    claimed[key_ns] = claimed.get(key_ns, 0) + int(pages)
            return claimed
        items = entry.get("items", entry.get("pages", []))
        for row in items or []:
            size = row.get("page_size_kib", row.get("size_kib"))
            pages = row.get("pages", row.get("count", 0))
            node = row.get("node")
            if size is None or node is None:
                continue
            claimed[(int(node), int(size))] = claimed.get((int(node), int(size)), 0) + int(pages)
        return claimed
    return None


def _by_size(m: Mapped) -> dict[int, int]:
    out: dict[int, int] = {}
    for (_node, size_kib), pages in m.items():
        out[size_kib] = out.get(size_kib, 0) + pages
    return out


def compare(usage: GuestUsage) -> list[str]:
    """Mismatch lines for one guest (empty: consistent).

    Totals per page size are compared with the plan and with the ledger claim. The split
    over host nodes is not: the kernel may fault an unbound guest's pages on any node
    whatever node the claim was counted on. Only a strictly bound guest (numatune strict,
    restrictive or interleave; a memory device's nodemask) mapping pages outside its nodes
    is flagged.
    """
    out = []
    by_size = usage.mapped_by_size()
    if usage.demand is not None:
        for size_kib in sorted(set(by_size) | set(usage.demand)):
            have, want = by_size.get(size_kib, 0), usage.demand.get(size_kib, 0)
            if have != want:
                out.append(f"{size_kib} KiB pages: maps {have}, its plan demands {want}")
        for (node, size_kib), pages in sorted(usage.mapped.items()):
            allowed = (usage.demand_nodes or {}).get(size_kib)
            if allowed is not None and node not in allowed and pages:
                out.append(
                    f"{pages} x {size_kib} KiB pages on node {node}, "
                    f"outside its nodes {list(allowed)}"
                )
    if usage.ledger is not None:
        claimed_by_size = _by_size(usage.ledger)
        for size_kib in sorted(set(by_size) | set(claimed_by_size)):
            have, claimed = by_size.get(size_kib, 0), claimed_by_size.get(size_kib, 0)
            if have != claimed:
                out.append(
                    f"{size_kib} KiB pages: maps {have}, the ledger claims {claimed}"
                )
    return out


def guest_usage(
    root: HostRoot,
    ledger: Optional[Mapping[str, Any]] = None,
    host: Any = None,
    with_plan: bool = True,
) -> list[GuestUsage]:
    """Usage of every running qemu guest, compared with ``ledger`` and its plan."""
    if host is None and with_plan:
        from hugexml.host.hostinfo import read_host_info

        host = read_host_info(root)
    result = []
    for pid, name, uuid in qemu_processes(root):
        mapped = read_numa_maps(root, pid)
        if mapped is None:
            continue
        usage = GuestUsage(name=name, pid=pid, uuid=uuid, mapped=mapped)
        usage.ledger = ledger_claims(ledger, name, uuid)
        if with_plan:
            xml = live_domain_xml(root, name)
            if xml is not None:
                try:
                    usage.demand, usage.demand_nodes = plan_demand(xml, host, f"{name} (live XML)")
                except HugexmlError as exc:
                    usage.mismatches.append(f"no plan: {exc}")
        usage.mismatches.extend(compare(usage))
        result.append(usage)
    return result


def _pages_text(by: dict[tuple[int, int], int]) -> str:
    from hugexml.core.units import format_kib

    if not by:
        return "none"
    return ", ".join(f"{p} x {format_kib(s)} on node {n}" for (n, s), p in sorted(by.items()))


def render_text(usages: list[GuestUsage]) -> list[str]:
    """``status --guests`` lines: what each guest maps, its plan, its claim, mismatches."""
    from hugexml.core.units import format_kib

    if not usages:
        return ["running guests: none"]
    lines = [f"running guests: {len(usages)}"]
    for u in usages:
        lines.append(f"  {u.name} (pid {u.pid}): maps {_pages_text(u.mapped)}")
        if u.demand is not None:
            plan = ", ".join(f"{p} x {format_kib(s)}" for s, p in sorted(u.demand.items()))
            lines.append(f"    plan demands {plan or 'no hugepages'}")
        if u.ledger is not None:
            lines.append(f"    ledger claims {_pages_text(u.ledger)}")
        for m in u.mismatches:
            lines.append(f"    MISMATCH: {m}")
    return lines
