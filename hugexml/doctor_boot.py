"""``hugexml doctor``'s checks about boot and the guests libvirt starts at boot. Read-only.

- ``default-size``: the default page size and the kernel command line's hugepage words;
- ``boot-reserve``: every node and size has what the boot-time reservation asks
  (``[boot] reserve`` and the kernel command line's ``hugepages=``);
- ``autostart``: every autostart guest (``hugexml.autostart``: the domain files, no libvirt
  call) would start now: its pages can be had on its nodes (``hugexml.startable``: free,
  kept, split from kept larger pages, what the kernel can add within the margin, 1G only
  from buddyinfo's exact prediction), one after the other in name order, and each
  file-backed size has a hugetlbfs mount the daemon sees (``daemon.mount_problem``, as
  the hook's prepare checks). One line per guest that would not start;
- ``hugetlb-cma``: whether a CMA area for 1G pages (``hugetlb_cma=``) is active, and its
  trade-off; it informs, it never warns unless an asked-for area did not come.
"""
from __future__ import annotations

from hugexml.doctor import FAIL, OK, SKIP, WARN, Check
from hugexml.errors import HugexmlError
from hugexml.units import format_kib

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

    from hugexml.doctor import Doctor
    from hugexml.startable import Supply

G1 = 1 << 20
CMA_TRADE_OFF = (
    "hugetlb_cma= sets a region aside at boot that movable allocations (page cache, "
    "anonymous memory) use until 1G pages are taken from it, so 1G pages can be allocated "
    "at runtime reliably without pinning the memory while no guest needs it; the cost: "
    "unmovable kernel memory cannot use the region (less headroom for it and for "
    "compaction), a 1G allocation first migrates what sits there, the kernel skips "
    "boot-time 1G pages (hugepages=) while it is set, and it needs CONFIG_CMA")


def cmdline_tokens(doctor: Doctor) -> list[str]:
    try:
        with open(doctor.root.path("proc/cmdline"), encoding="utf-8", errors="replace") as fh:
            return fh.read(64 * 1024).split()
    except OSError:
        return []


def check_default_size(doctor: Doctor) -> Check:
    """The default hugepage size, and the kernel command line's hugepage parameters: a
    ``default_hugepagesz`` the kernel ignored, a ``hugepagesz`` without a count."""
    from hugexml.boot import HUGETLB_KEYS

    ours = [t for t in cmdline_tokens(doctor) if t.split("=", 1)[0] in HUGETLB_KEYS]
    default = doctor.host.default_page_kib
    msg = (f"default size {format_kib(default) if default else 'none'}; kernel command "
           f"line: {' '.join(ours) or 'no hugepage parameters'}")
    asked = [t.split("=", 1)[1] for t in ours if t.startswith("default_hugepagesz=")]
    if asked:
        from hugexml.units import UnitError, parse_cli_size_kib

        try:
            wanted: Optional[int] = parse_cli_size_kib(asked[-1])
        except UnitError:
            wanted = None
        if wanted != default:
            return Check("default-size", WARN, msg + f" (the kernel ignored "
                         f"default_hugepagesz={asked[-1]})", "fix the kernel command line: "
                         "hugexml boot --default-size SIZE --reserve ... --apply")
    for i, token in enumerate(ours):
        if token.startswith("hugepagesz=") and not (
                i + 1 < len(ours) and ours[i + 1].startswith("hugepages=")):
            return Check("default-size", WARN, msg + f" ({token} has no hugepages= after it)",
                         "reserve with: hugexml boot --reserve SIZE:COUNT --apply")
    return Check("default-size", OK, msg)


def check_boot_reserve(doctor: Doctor) -> Check:
    """Every node and size has what boot-time reservation asks: ``[boot] reserve`` of the
    config and the kernel command line's ``hugepages=`` (a per-node 1G ask can land on
    another node, or not at all). Persistent pages count, whoever uses them."""
    from hugexml.boot import HUGETLB_KEYS, cmdline_specs, parse_specs, shortfalls

    asks = []
    if doctor.config_path is not None:
        reserve = doctor.config().boot_reserve
        asks += [(spec, "[boot] reserve") for spec in parse_specs([reserve]) if reserve]
    tokens = [t for t in cmdline_tokens(doctor) if t.split("=", 1)[0] in HUGETLB_KEYS]
    asks += [(spec, "kernel command line")
             for spec in cmdline_specs(tokens, doctor.host.default_page_kib)]
    if not asks:
        return Check("boot-reserve", OK, "no boot-time reservation ([boot] reserve empty, "
                     "no hugepages= on the kernel command line)")
    gw = doctor.gateway()

    def persistent(size_kib: int, node: Optional[int]) -> int:
        pools = [gw.node_pool(n, size_kib) for n in (
            doctor.host.nodes if node is None else (node,))]
        return sum(p.nr - p.surplus for p in pools)

    short, met = shortfalls(asks, persistent)
    if short:
        return Check("boot-reserve", WARN, "short of the boot-time reservation: "
                     + "; ".join(short), "hugexml boot --apply-runtime (adds what each "
                     "node lacks; hugexml-reserve.service runs it at boot)")
    return Check("boot-reserve", OK, "every boot-time reservation is in place: "
                 + "; ".join(met))


# --- autostart guests ------------------------------------------------------------------
def read_supply(doctor: Doctor, sizes_kib: Any) -> Supply:
    """What each node could give a start now (see hugexml.startable), read through the
    gateway and the state store (read-only)."""
    from hugexml.fit import Margin, available, floor_kib
    from hugexml.ledger import Store
    from hugexml.startable import NodeSupply, Supply
    from hugexml.txn import predicted_allocatable, read_view

    gw = doctor.gateway()
    config = doctor.config()
    sizes = sorted(set(sizes_kib) | set(gw.page_sizes_kib()))
    view = read_view(gw, sizes)
    state = Store(doctor.state_dir, boot_id=gw.boot_id()).read(set(view.pools))
    for rec in state.guests.values():
        if rec.state == "pending":
            for pool, pages in rec.claimed.items():
                if pool in view.pools:
                    view.claims[pool] = view.claims.get(pool, 0) + pages
    margin = Margin(int(config.margin_min_kib), float(config.margin_percent))
    try:
        buddy = gw.buddyinfo()
    except HugexmlError:
        buddy = {}
    supply = Supply({}, demote=config.demote)
    for node in view.nodes:
        s = NodeSupply(room_kib=max(0, view.mem_free_kib.get(node, 0)
                                    - floor_kib(view, node, margin)))
        for size in sizes:
            if (node, size) not in view.pools:
                continue
            s.avail[size] = available(view, node, size)
            book = state.journal.pools.get((node, size))
            if book is not None:
                s.kept[size] = min(book.kept_pages, s.avail[size])
                s.owned[size] = min(book.kept_pages + book.unreleased, s.avail[size])
            if _above_buddy(buddy.get(node, {}), size):
                pages, seen = predicted_allocatable(gw, node, size, buddy)
                s.exact[size] = pages if seen else 0   # never the MemFree upper bound
            small = gw.demote_size(node, size)
            if small is not None:
                s.demote_to[size] = small
        supply.nodes[node] = s
    return supply


def _above_buddy(zones: dict[str, list[int]], size_kib: int) -> bool:
    """The page is larger than the buddy allocator's largest block (1G on x86: 4M blocks),
    so only a compaction could make one; without buddyinfo, gigantic sizes are."""
    from hugexml.host import page_order

    orders = [len(o) for zone, o in zones.items() if zone != "DMA"]
    try:
        return page_order(size_kib) >= max(orders) if orders else size_kib >= G1
    except ValueError:
        return size_kib >= G1


def check_autostart(doctor: Doctor) -> list[Check]:
    """One line per autostart guest that would not start now; ok otherwise."""
    from hugexml.autostart import running
    from hugexml.daemon import mount_problem
    from hugexml.ledger import Store
    from hugexml.mounts import list_mounts

    guests, skipped = doctor.autostart()
    if any(not s.entry for s in skipped):
        return [Check("autostart", WARN, f"{skipped[0].reason}: the autostart guests are not "
                      "checked", "run hugexml doctor as root")]
    bad = [Check("autostart", FAIL if s.planned else WARN,
                 f"{s.line()}" + (": libvirt would not start it" if s.planned else
                                  ": libvirt cannot autostart it"),
                 "fix or remove the definition (virsh edit, virsh autostart --disable)")
           for s in skipped]
    huge = [g for g in guests if g.plan.hugepages]
    if not huge:
        return bad or [Check("autostart", OK, f"{len(guests)} autostart domain(s), none asks "
                             "for hugepages" if guests else "no autostart domains "
                             f"({doctor.root.path('etc/libvirt/qemu/autostart')})")]
    records = Store(doctor.state_dir, boot_id=doctor.gateway().boot_id()).read().guests
    claimed = {rec.name for rec in records.values()}
    sizes = {d.page_size_kib for g in huge for d in g.plan.demand}
    supply = read_supply(doctor, sizes)
    mounts = list_mounts(doctor.root)
    ok, busy = [], []
    for guest in sorted(huge, key=lambda g: g.plan.domain):
        name = guest.plan.domain
        if name in claimed or running(doctor.root, name):
            busy.append(name)
            continue
        why = [mount_problem(doctor.root, doctor.state_dir, size, mounts=mounts,
                             daemons=doctor.daemons, memfd_hint=False)
               for size in guest.plan.file_backed_sizes_kib]
        short = supply.take([d for d in guest.plan.demand if d.pages > 0])
        problems = [p for p in [short, *why] if p]
        if problems:
            bad.append(Check("autostart", FAIL, f"guest '{name}' would not start now: "
                             + "; ".join(problems), _fix(short, why)))
        else:
            ok.append(name)
    if bad:
        return bad
    parts = [f"{len(ok)} autostart guest(s) with hugepages would start now"
             + (f" ({', '.join(ok[:4])}{' ...' if len(ok) > 4 else ''})" if ok else "")]
    if busy:
        parts.append(f"running or starting: {', '.join(busy[:4])}"
                     + (" ..." if len(busy) > 4 else ""))
    return [Check("autostart", OK, "; ".join(parts))]


def _fix(short: Optional[str], mount_lines: list[Optional[str]]) -> str:
    fixes = []
    if short:
        fixes.append("reserve their pages at boot (hugexml boot --from-guests --apply), keep "
                     "1G pages of stopped guests ([release] keep_for), or free memory there")
    if any(mount_lines):
        fixes.append("make the mount the line names and restart the daemon, or use memfd")
    return "; ".join(fixes)


# --- hugetlb_cma --------------------------------------------------------------------------
def check_hugetlb_cma(doctor: Doctor) -> Check:
    """Is a CMA area for 1G pages active (``CmaTotal``/``CmaFree`` of /proc/meminfo and
    ``hugetlb_cma=`` on the command line), and what would it trade."""
    from hugexml.boot import meminfo_kib

    meminfo = doctor.root.path("proc/meminfo")
    total, free = meminfo_kib(meminfo, "CmaTotal"), meminfo_kib(meminfo, "CmaFree")
    asked = [t.split("=", 1)[1] for t in cmdline_tokens(doctor) if t.startswith("hugetlb_cma=")]
    if total is None:
        why = (f"hugetlb_cma={asked[-1]} is on the kernel command line but " if asked else "")
        return Check("hugetlb-cma", SKIP, f"{why}this kernel has no CMA (no CmaTotal in "
                     "/proc/meminfo: CONFIG_CMA is off), so hugetlb_cma= is not available; "
                     "1G pages come from boot-time reservations, kept pages or a lucky "
                     "runtime allocation")
    sizes = (f"CmaTotal {format_kib(total) if total else '0'}, "
             f"CmaFree {format_kib(free) if free else '0'}")
    if asked and not total:
        return Check("hugetlb-cma", WARN, f"hugetlb_cma={asked[-1]} is on the kernel command "
                     f"line but the kernel set no CMA area aside ({sizes})",
                     "see dmesg | grep hugetlb_cma (a size below 1G, or a node without the "
                     "memory, is ignored)")
    if asked:
        return Check("hugetlb-cma", OK, f"hugetlb_cma={asked[-1]} is active ({sizes}): 1G "
                     f"pages at runtime come from that area; {CMA_TRADE_OFF}")
    demand = sum(d.pages for g in doctor.autostart()[0] for d in g.plan.demand
                 if d.page_size_kib == G1)
    hint = (f"; the autostart guests need {demand} x 1G: hugexml boot --from-guests says "
            "whether hugetlb_cma= would suit them" if demand else "")
    return Check("hugetlb-cma", OK, f"no hugetlb_cma= ({sizes}, other CMA users included): "
                 f"{CMA_TRADE_OFF}{hint}")
