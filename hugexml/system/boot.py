"""Boot-time hugepage pools: kernel command line, grub, sysctl.d, and the early-boot service.

Kernel syntax (Documentation/admin-guide/kernel-parameters.txt and
Documentation/admin-guide/mm/hugetlbpage.rst):
- ``default_hugepagesz=size[KMG]``, once;
- ``hugepagesz=size[KMG]`` followed by ``hugepages=<integer>``, one pair per size: a
  ``hugepages=`` applies to the ``hugepagesz=`` just before it (a ``hugepages=`` before any
  ``hugepagesz=`` means the default size, and then cannot be overridden, so we always write
  explicit pairs);
- node format ``hugepages=<node>:<integer>[,<node>:<integer>]`` (Linux 5.16, commit
  b5389086ad7b "hugetlbfs: extend the definition of hugepages parameter to support node
  allocation").
Gigantic (1G) pages are reliable only from the command line: at runtime memory fragments.

``--apply`` edits the boot entries with grubby where it exists; otherwise it prints the exact
edit of /etc/default/grub and the command that regenerates grub.cfg (``hugexml.system.grub``).
``--apply-runtime`` is what hugexml-reserve.service runs early at boot: [boot] reserve of
hugexml.conf through the allocator's admin path, per node: each item is the pool size to
reach (pages already there, from the command line or sysctl, count), never shrunk, so it is
idempotent.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from hugexml.core.errors import HostError, InvalidInput
from hugexml.core.root import HostRoot
from hugexml.core.typed import Typed
from hugexml.core.units import MAX_NODES, UnitError, format_kib, parse_cli_size_kib
from hugexml.host.hostinfo import read_default_page_kib, read_nodes, read_page_sizes_kib

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

HUGETLB_KEYS = ("default_hugepagesz", "hugepagesz", "hugepages")
NODE_FORMAT_KERNEL = (5, 16)
MAX_COUNT = 1 << 32
SYSCTL_FILE = "etc/sysctl.d/80-hugexml.conf"
_SPEC = re.compile(r"\s*([^:@\s]+)\s*:\s*([0-9]{1,12})\s*(?:@\s*([0-9]{1,5}))?\s*\Z")


class ReserveSpec(Typed, frozen=True):
    size_kib: int
    count: int
    node: Optional[int] = None

    def __str__(self) -> str:
        node = f"@{self.node}" if self.node is not None else ""
        return f"{format_kib(self.size_kib)}:{self.count}{node}"


def parse_spec(text: str) -> ReserveSpec:
    """``SIZE:COUNT[@NODE]``: ``1G:4@1``, ``2M:512``."""
    m = _SPEC.match(text or "")
    if not m:
        raise InvalidInput(reason=f"reservation '{text[:40]}' is not SIZE:COUNT[@NODE] "
                                  "(e.g. 1G:4@0 or 2M:512)")
    try:
        size_kib = parse_cli_size_kib(m.group(1))
    except UnitError as exc:
        raise InvalidInput(reason=f"reservation '{text}': {exc}") from None
    count = int(m.group(2))
    if count >= MAX_COUNT:
        raise InvalidInput(reason=f"reservation '{text}': {count} pages is out of range")
    node = int(m.group(3)) if m.group(3) is not None else None
    if node is not None and node >= MAX_NODES:
        raise InvalidInput(reason=f"reservation '{text}': node {node} is out of range "
                                  f"(max {MAX_NODES - 1})")
    return ReserveSpec(size_kib, count, node)


def parse_specs(texts: Sequence[str]) -> list[ReserveSpec]:
    """Several specs (each may hold several, space or comma separated). A size given both
    per node and for all nodes, or a pool given twice, is rejected."""
    specs = [parse_spec(t) for text in texts for t in re.split(r"[\s,]+", text) if t]
    seen: dict[tuple[int, Optional[int]], ReserveSpec] = {}
    for spec in specs:
        key = (spec.size_kib, spec.node)
        if key in seen:
            raise InvalidInput(reason=f"reservation {spec} repeats {seen[key]}")
        seen[key] = spec
    for size_kib in {s.size_kib for s in specs}:
        nodes = {s.node for s in specs if s.size_kib == size_kib}
        if None in nodes and len(nodes) > 1:
            raise InvalidInput(reason=f"{format_kib(size_kib)} pages are given both for all "
                                      "nodes and per node: use one form")
    return specs


# --- the kernel command line (pure) -----------------------------------------------------
def kernel_params(specs: Sequence[ReserveSpec], default_kib: Optional[int] = None) -> list[str]:
    """Parameters in the order the kernel needs: default_hugepagesz first, then one
    ``hugepagesz=`` / ``hugepages=`` pair per size (the default size first)."""
    params = []
    if default_kib is not None:
        params.append(f"default_hugepagesz={format_kib(default_kib)}")
    sizes = sorted({s.size_kib for s in specs}, key=lambda k: (k != default_kib, k))
    for size_kib in sizes:
        mine = [s for s in specs if s.size_kib == size_kib]
        params.append(f"hugepagesz={format_kib(size_kib)}")
        if mine[0].node is None:
            params.append(f"hugepages={mine[0].count}")
        else:
            by_node = sorted(mine, key=lambda s: s.node or 0)
            per_node = ",".join(f"{s.node}:{s.count}" for s in by_node)
            params.append(f"hugepages={per_node}")
    return params


def cmdline_specs(tokens: Sequence[str], default_kib: Optional[int]) -> list[ReserveSpec]:
    """What a kernel command line asks for, as the kernel reads it (hugepages_setup): each
    ``hugepages=`` counts for the ``hugepagesz=`` before it, or the default size when none
    came first; ``N`` for the whole host, ``NODE:N,...`` per node. Malformed values are
    skipped (the kernel ignores them too)."""
    size_kib, out = default_kib, []
    for token in tokens:
        key, _, value = token.partition("=")
        if key == "hugepagesz":
            try:
                size_kib = parse_cli_size_kib(value)
            except UnitError:
                size_kib = None
        elif key == "hugepages" and size_kib is not None:
            if re.fullmatch(r"[0-9]{1,12}", value):
                out.append(ReserveSpec(size_kib, int(value)))
            elif re.fullmatch(r"[0-9]{1,5}:[0-9]{1,12}(,[0-9]{1,5}:[0-9]{1,12})*", value):
                for pair in value.split(","):
                    node, count = pair.split(":")
                    out.append(ReserveSpec(size_kib, int(count), int(node)))
    return out


def shortfalls(asks: Sequence[tuple[ReserveSpec, str]],
               persistent: Callable[[int, Optional[int]], int]) -> tuple[list[str], list[str]]:
    """Each boot-time ask against what the kernel has now (``persistent(size_kib, node)``:
    persistent pages of a node, or of the whole host for None): (short, met) lines such as
    ``node 3 1G: 1 of 2 (kernel command line)``. Pure."""
    short: list[str] = []
    met: list[str] = []
    for spec, source in asks:
        have = persistent(spec.size_kib, spec.node)
        where = "all nodes" if spec.node is None else f"node {spec.node}"
        line = f"{where} {format_kib(spec.size_kib)}: {have} of {spec.count} ({source})"
        (short if have < spec.count else met).append(line)
    return short, met


def strip_hugetlb(tokens: Sequence[str]) -> list[str]:
    return [t for t in tokens if t.split("=", 1)[0] not in HUGETLB_KEYS]


def merged_cmdline(current: str, params: Sequence[str]) -> str:
    """``current`` without its hugetlb parameters, ours appended (kept together, in order)."""
    return " ".join([*strip_hugetlb(current.split()), *params])


# --- checks against the host --------------------------------------------------------------
def kernel_version(root: HostRoot) -> Optional[tuple[int, int]]:
    try:
        with open(root.path("proc/sys/kernel/osrelease"), encoding="ascii") as fh:
            m = re.match(r"(\d+)\.(\d+)", fh.read(64))
    except OSError:
        return None
    return (int(m.group(1)), int(m.group(2))) if m else None


def meminfo_kib(path: str, key: str) -> Optional[int]:
    """``key``'s value in a meminfo file (``proc/meminfo`` or a node's), None when absent."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.replace(":", " ").split()
                if key in fields:
                    return int(fields[fields.index(key) + 1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_host(root: HostRoot, specs: Sequence[ReserveSpec], default_kib: Optional[int],
               margin_min_kib: int = 1 << 20, margin_percent: float = 5,
               service_hint: bool = True) -> list[str]:
    """Refuses what the host cannot boot with (InvalidInput); returns warnings.
    ``service_hint``: say to put per-node 1G items in [boot] reserve too (``--from-guests``
    does that itself)."""
    notes = []
    sizes = read_page_sizes_kib(root)
    cpu_1g = _has_pdpe1gb(root)
    for size_kib in sorted({s.size_kib for s in specs} | ({default_kib} if default_kib else set())):
        if size_kib in sizes:
            continue
        if size_kib == 1 << 20 and cpu_1g is False:
            raise InvalidInput(reason="1G pages need a CPU with pdpe1gb; this one has none")
        if sizes:
            raise InvalidInput(reason=f"this kernel has no {format_kib(size_kib)} hugepages "
                                      f"(it has: {', '.join(format_kib(s) for s in sizes)})")
    nodes = read_nodes(root)
    per_node = [s for s in specs if s.node is not None]
    for spec in per_node:
        if nodes and spec.node not in nodes:
            raise InvalidInput(reason=f"reservation {spec}: node {spec.node} does not exist "
                                      f"(nodes: {', '.join(map(str, nodes))})")
    version = kernel_version(root)
    if per_node and version is not None and version < NODE_FORMAT_KERNEL:
        raise InvalidInput(reason=f"the per-node form hugepages=N:COUNT needs Linux 5.16 or "
                                  f"later (this is {version[0]}.{version[1]}): put the "
                                  "reservation in [boot] reserve for hugexml-reserve.service")
    total_kib = meminfo_kib(root.path("proc/meminfo"), "MemTotal")
    want: dict[Optional[int], int] = {}
    for spec in specs:
        want[spec.node] = want.get(spec.node, 0) + spec.count * spec.size_kib
    for node, kib in sorted(want.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        if node is None:
            mem, where = total_kib, "the host"
        else:
            mem = meminfo_kib(root.path(f"sys/devices/system/node/node{node}/meminfo"), "MemTotal")
            where = f"node {node}"
        if mem is None:
            continue
        floor = max(margin_min_kib, int(mem * margin_percent / 100))
        if kib > mem - floor:
            raise InvalidInput(reason=f"reserving {human_kib(kib)} on {where} would leave less "
                                      f"than {human_kib(floor)} of its {human_kib(mem)} "
                                      "for the host: the boot would run out of memory")
    all_nodes = sum(kib for n, kib in want.items() if n is not None)
    if all_nodes and total_kib:
        if all_nodes > total_kib - max(margin_min_kib, int(total_kib * margin_percent / 100)):
            raise InvalidInput(reason="the per-node reservations together leave too little "
                                      "memory for the host")
    if any(s.size_kib == 1 << 20 and s.count for s in specs):
        notes.append("1G pages: the kernel takes them from memblock before anything fragments "
                     "memory; a smaller runtime reservation would likely fail")
    notes += gigantic_per_node_notes(root, [s for s in per_node if s.size_kib >= 1 << 20
                                            and s.count], nodes, service_hint)
    return notes


def spare_pages(total_kib: int, size_kib: int, first: bool) -> int:
    """Pages of a gigantic size a node of ``total_kib`` can hold at boot on its own: its
    whole GiBs less the top one (its own NODE_DATA, struct pages), and on the first node
    the lowest one too (the kernel image, the initrd). See gigantic_per_node_notes."""
    return max(0, total_kib // size_kib - (2 if first else 1))


def node_total_kib(root: HostRoot, node: int) -> Optional[int]:
    return meminfo_kib(root.path(f"sys/devices/system/node/node{node}/meminfo"), "MemTotal")


def mem_totals(root: HostRoot, nodes: Sequence[int]) -> dict[int, int]:
    """MemTotal per node (a host without NUMA sysfs: /proc/meminfo's, as node 0)."""
    out = {}
    for node in nodes:
        total = node_total_kib(root, node)
        if total is None and len(nodes) == 1:
            total = meminfo_kib(root.path("proc/meminfo"), "MemTotal")
        if total is None:
            raise HostError(path=root.path(f"sys/devices/system/node/node{node}/meminfo"),
                            reason=f"no MemTotal for node {node}")
        out[node] = total
    return out


def cmdline_default_kib(root: HostRoot) -> Optional[int]:
    """The ``default_hugepagesz=`` of the running kernel's command line, if any."""
    try:
        with open(root.path("proc/cmdline"), encoding="utf-8", errors="replace") as fh:
            tokens = fh.read(64 * 1024).split()
    except OSError:
        return None
    asked = [t.split("=", 1)[1] for t in tokens if t.startswith("default_hugepagesz=")]
    try:
        return parse_cli_size_kib(asked[-1]) if asked else None
    except UnitError:
        return None


def gigantic_per_node_notes(root: HostRoot, specs: Sequence[ReserveSpec],
                            nodes: Sequence[int], service_hint: bool = True) -> list[str]:
    """The per-node form for 1G pages is honoured only where the node has a free, aligned
    GiB for each page at boot. Linux's boot allocator (mm/hugetlb.c
    __alloc_bootmem_huge_page) takes a page the node cannot hold from another node with
    memblock_alloc_try_nid_raw, silently, up to at least 6.1 (Debian 12): with nodes of
    2G/2G/2G/3G, hugepages=0:1,3:2 gave 0/1/1/1. A node's top GiB holds its own data
    (NODE_DATA, struct pages) and the first node's lowest the kernel: warn when an ask
    leaves no such spare GiB, and always say how the service tops up."""
    if not specs:
        return []
    notes = []
    first = min(nodes) if nodes else 0
    for spec in specs:
        total = node_total_kib(root, spec.node or 0)
        if total is None:
            continue
        if spec.count > spare_pages(total, spec.size_kib, spec.node == first):
            notes.append(f"{spec}: node {spec.node} has {total // spec.size_kib} whole "
                         f"{format_kib(spec.size_kib)} of memory; the kernel may place some of "
                         "these pages on other nodes at boot (its own data takes a GiB)")
    if not service_hint:
        return notes
    items = " ".join(str(s) for s in specs)
    notes.append(f"per-node 1G pages: a node that cannot hold them at boot gets them placed "
                 f"on other nodes, silently (Linux 6.1); also set [boot] reserve = {items} "
                 "so hugexml-reserve.service tops up each node, and check with hugexml doctor")
    return notes


def human_kib(kib: int) -> str:
    """1234182 -> '1.2 GiB' (reports only; exact sizes use units.format_kib)."""
    for unit, scale in (("TiB", 1 << 30), ("GiB", 1 << 20), ("MiB", 1 << 10)):
        if kib >= scale:
            return f"{kib / scale:.1f} {unit}"
    return f"{kib} KiB"


def _has_pdpe1gb(root: HostRoot) -> Optional[bool]:
    try:
        with open(root.path("proc/cpuinfo"), encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "pdpe1gb" in line.split()
    except OSError:
        return None
    return None


# --- sysctl.d ---------------------------------------------------------------------------
def sysctl_snippet(specs: Sequence[ReserveSpec], default_kib: Optional[int]) -> str:
    """vm.nr_hugepages for the default size (whole host only: sysctl has no per-node form)."""
    mine = [s for s in specs if s.size_kib == default_kib]
    if not mine:
        raise InvalidInput(reason=f"--sysctl sets vm.nr_hugepages, the default size "
                                  f"({format_kib(default_kib or 0)}); no reservation of that "
                                  "size given")
    if mine[0].node is not None:
        raise InvalidInput(reason="vm.nr_hugepages has no per-node form: put per-node "
                                  "reservations in [boot] reserve (hugexml-reserve.service)")
    return ("# Written by hugexml boot --sysctl: the default hugepage size's pool at boot.\n"
            f"vm.nr_hugepages = {mine[0].count}\n")


def write_sysctl(root: HostRoot, text: str) -> str:
    from hugexml.system.mountunits import write_text_atomic

    path = root.path(SYSCTL_FILE)
    write_text_atomic(path, text)
    return path


# --- runtime: [boot] reserve through the allocator ---------------------------------------
def apply_runtime(specs: Sequence[ReserveSpec], allocator: Any,
                  dry_run: bool = False) -> list[dict[str, Any]]:
    """Each spec is a TARGET pool size: add what the pool lacks now (persistent pages the
    kernel has on that node, or on the whole host without @NODE, read through the gateway:
    the ledger in /run is empty at every boot and pages of the kernel command line or
    sysctl count), never shrink. Errors are collected per spec (the boot goes on), each as
    one line."""
    from hugexml.core.errors import HugexmlError

    results = []
    for spec in specs:
        row: dict[str, Any] = {"spec": str(spec)}
        try:
            done = allocator.top_up_admin(spec.size_kib, spec.count, spec.node, dry_run)
        except HugexmlError as exc:
            row["error"] = str(exc)
        else:
            row.update(pool_pages=done["pool_pages"], adding=done["adding"], add=done["add"])
        results.append(row)
    return results


def default_size(root: HostRoot) -> Optional[int]:
    return read_default_page_kib(root)
