"""``hugexml doctor``'s checks about boot and the guests libvirt starts at boot. Read-only.

- ``default-size``: the default page size and the kernel command line's hugepage words;
- ``boot-reserve``: every node and size has what the boot-time reservation asks
  (``[boot] reserve`` and the kernel command line's ``hugepages=``);
- ``autostart``: every autostart guest (``hugexml.system.autostart``: the domain files, no libvirt
  call) would start now: its pages can be had on its nodes (``hugexml.alloc.supply``, as ``auto``
  judges them: free, kept, what the kernel can add within the margin, 1G only from
  buddyinfo's exact prediction; plus free larger pages hugexml owns that the allocator would
  split), one after the other in name order, and each file-backed size has a hugetlbfs
  mount the daemon sees (``daemon.mount_problem``, as the hook's prepare checks). One line
  per guest that would not start;
- ``hugetlb-cma``: whether a CMA area for 1G pages (``hugetlb_cma=``) is active, and its
  trade-off; it informs, it never warns unless an asked-for area did not come.
"""
from __future__ import annotations

from hugexml.core.units import format_kib
from hugexml.system.checks import FAIL, OK, SKIP, WARN, Check

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

    from hugexml.core.model import Plan
    from hugexml.host.gateway import Gateway
    from hugexml.planning.tally import Tally
    from hugexml.system.checks import Context

G1 = 1 << 20
CMA_TRADE_OFF = (
    "hugetlb_cma= sets a region aside at boot that movable allocations (page cache, "
    "anonymous memory) use until 1G pages are taken from it, so 1G pages can be allocated "
    "at runtime reliably without pinning the memory while no guest needs it; the cost: "
    "unmovable kernel memory cannot use the region (less headroom for it and for "
    "compaction), a 1G allocation first migrates what sits there, the kernel skips "
    "boot-time 1G pages (hugepages=) while it is set, and it needs CONFIG_CMA")


def cmdline_tokens(doctor: Context) -> list[str]:
    try:
        with open(doctor.root.path("proc/cmdline"), encoding="utf-8", errors="replace") as fh:
            return fh.read(64 * 1024).split()
    except OSError:
        return []


def check_default_size(doctor: Context) -> Check:
    """The default hugepage size, and the kernel command line's hugepage parameters: a
    ``default_hugepagesz`` the kernel ignored, a ``hugepagesz`` without a count."""
    from hugexml.system.boot import HUGETLB_KEYS

    ours = [t for t in cmdline_tokens(doctor) if t.split("=", 1)[0] in HUGETLB_KEYS]
    default = doctor.host.default_page_kib
    msg = (f"default size {format_kib(default) if default else 'none'}; kernel command "
           f"line: {' '.join(ours) or 'no hugepage parameters'}")
    asked = [t.split("=", 1)[1] for t in ours if t.startswith("default_hugepagesz=")]
    if asked:
        from hugexml.core.units import UnitError, parse_cli_size_kib

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


def check_boot_reserve(doctor: Context) -> Check:
    """Every node and size has what boot-time reservation asks: ``[boot] reserve`` of the
    config and the kernel command line's ``hugepages=`` (a per-node 1G ask can land on
    another node, or not at all). Persistent pages count, whoever uses them."""
    from hugexml.system.boot import HUGETLB_KEYS, cmdline_specs, parse_specs, shortfalls

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
def check_autostart(doctor: Context) -> list[Check]:
    """One line per autostart guest that would not start now; ok otherwise. The pages are
    judged as ``rewrite --page-size auto`` judges them (``hugexml.alloc.supply``: free pages nobody
    reserved or is promised, kept pages, what buddyinfo says the kernel can add within the
    margin, never the 1G MemFree bound), plus what the allocator would split from free
    larger pages hugexml owns (``take``); one tally for all, in name order: a guest that
    would start takes its pages from it."""
    import copy

    from hugexml.alloc.ledger import Store
    from hugexml.alloc.supply import read_supply
    from hugexml.planning.fit import Margin
    from hugexml.planning.tally import Tally
    from hugexml.system.autostart import running
    from hugexml.system.daemon import mount_problem
    from hugexml.system.mounts import list_mounts

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
    gw, config = doctor.gateway(), doctor.config()
    state = Store(doctor.state_dir, boot_id=gw.boot_id()).read()
    claimed = {rec.name for rec in state.guests.values()}
    margin = Margin.of(config)
    supply = read_supply(gw, doctor.state_dir, margin)
    tally = Tally(supply)
    owned = {pool: min(book.kept_pages + book.unreleased,  # free, unreserved, unpromised
                       supply.pools[pool].free + supply.pools[pool].kept)
             for pool, book in state.journal.pools.items()
             if config.demote and pool in supply.pools}
    mounts = list_mounts(doctor.root)
    ok: list[str] = []
    busy: list[str] = []
    split: list[str] = []
    for guest in sorted(huge, key=lambda g: g.plan.domain):
        name = guest.plan.domain
        if name in claimed or running(doctor.root, name):
            busy.append(name)
            continue
        why = [mount_problem(doctor.root, doctor.state_dir, size, mounts=mounts,
                             daemons=doctor.daemons, memfd_hint=False)
               for size in guest.plan.file_backed_sizes_kib]
        trial, trial_owned, trial_split = copy.deepcopy(tally), dict(owned), list(split)
        short = None
        for size in sorted({d.page_size_kib for d in guest.plan.demand if d.pages > 0},
                           reverse=True):
            problem = take(trial, guest.plan, size, gw, trial_owned, trial_split)
            if problem and ok:  # the tally is shared: say who else counted pages
                problem = problem.replace("for this guest's other memory", "for the "
                                          "guests before it or this guest's other memory")
            short = short or problem
        problems = [p for p in [short, *why] if p]
        if problems:
            bad.append(Check("autostart", FAIL, f"guest '{name}' would not start now: "
                             + "; ".join(problems), _fix(short, why)))
        else:
            tally, owned, split = trial, trial_owned, trial_split
            ok.append(name)
    if bad:
        return bad
    parts = [f"{len(ok)} autostart guest(s) with hugepages would start now"
             + (f" ({', '.join(ok[:4])}{' ...' if len(ok) > 4 else ''})" if ok else "")]
    if split:
        parts.append("with " + ", ".join(split) + " split by demote")
    if busy:
        parts.append(f"running or starting: {', '.join(busy[:4])}"
                     + (" ..." if len(busy) > 4 else ""))
    return [Check("autostart", OK, "; ".join(parts))]


def take(tally: Tally, plan: Plan, size_kib: int, gw: Gateway, owned: dict[tuple[int, int], int],
         split: list[str]) -> Optional[str]:
    """Take a guest's pages of one size from the tally; None when it fits, else the
    shortfall. A shortfall that free larger pages hugexml owns on those nodes cover (the
    allocator splits them with the demote file) fits: the pages split leave the tally."""
    from hugexml.planning.tally import Need

    needs = [Need("", d.pages * size_kib, d.host_nodes, d.policy)
             for d in plan.demand if d.page_size_kib == size_kib and d.pages > 0]
    short = tally.take(needs, size_kib)
    if short is None:
        return None
    missing = short.needed - short.got
    found: list[tuple[int, int, int]] = []
    for node in short.nodes:
        for big in sorted(s for (n, s) in owned if n == node and s > size_kib):
            if missing > 0 and owned[(node, big)] > 0 and gw.demote_size(node, big) == size_kib:
                k = min(owned[(node, big)], -(-missing // (big // size_kib)))
                found.append((node, big, k))
                missing -= k * (big // size_kib)
    if missing > 0:
        return str(short)
    tally.force(needs, size_kib)                 # what the nodes have, the rest split
    for node, big, k in found:
        tally.force([Need("demote", k * big, (node,), "strict")], big)
        owned[(node, big)] -= k
        split.append(f"{k} x {format_kib(big)} on node {node}")
    return None


def _fix(short: Optional[str], mount_lines: list[Optional[str]]) -> str:
    fixes = []
    if short:
        fixes.append("reserve their pages at boot (hugexml boot --from-guests --apply), keep "
                     "1G pages of stopped guests ([release] keep_for), or free memory there")
    if any(mount_lines):
        fixes.append("make the mount the line names and restart the daemon, or use memfd")
    return "; ".join(fixes)


# --- hugetlb_cma --------------------------------------------------------------------------
def check_hugetlb_cma(doctor: Context) -> Check:
    """Is a CMA area for 1G pages active (``CmaTotal``/``CmaFree`` of /proc/meminfo and
    ``hugetlb_cma=`` on the command line), and what would it trade."""
    from hugexml.system.boot import meminfo_kib

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
