"""The boot reservation planned from the guests' demand (pure: no I/O).

``plan_boot`` places every autostart guest's demand as the allocator places a start
(``fit.place``) on a picture of the host at boot: every pool empty, each node's free memory
its MemTotal less what the guests before it took, the ``[allocation]`` margin as for
runtime growth. So a bound guest's pages go to its nodes (preferred: its node first,
interleave: an even share each), and a guest without ``<numatune>`` is spread like
``fit.spread``: over the nodes with the most room above their floor first. A guest that
does not fit is refused in one line naming it, the node, the size and the counts.

``cmdline_split`` says which items the kernel command line can carry (the per-node form
needs Linux 5.16; a node holds 1G pages at boot only where it has a spare GiB for each, or
Linux 6.1 places them on other nodes, see ``boot.gigantic_per_node_notes``); every item goes
to ``[boot] reserve`` for hugexml-reserve.service, which tops up what the boot missed.
``cma_suggestion`` offers ``hugetlb_cma=`` when 1G pages dominate a large reservation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from hugexml.core.errors import DoesNotFitAtBoot, InsufficientPages, MarginViolation
from hugexml.core.typed import Typed, field
from hugexml.core.units import format_kib
from hugexml.planning.fit import HostView, Margin, PoolState, place
from hugexml.system.boot import NODE_FORMAT_KERNEL, ReserveSpec, human_kib

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

    from hugexml.core.model import Plan

Pool = tuple[int, int]  # (node, size_kib)
G1 = 1 << 20
CMA_NODE_FORMAT_KERNEL = (5, 17)  # hugetlb_cma=N:SIZE ("hugetlb: support node specified
                                  # when using cma for gigantic hugepages")
# hugetlb_cma= is offered when the 1G pages are at least this share of what the boot
# reservation pins, and pin at least this share of the host's memory.
CMA_SHARE_OF_RESERVATION = 0.5
CMA_SHARE_OF_MEMORY = 0.25


class GuestShare(Typed):
    """One guest's part of the reservation: pages per (node, size)."""

    name: str
    pools: dict[Pool, int] = field(default_factory=dict)
    unbound: bool = False   # some demand without <numatune>: spread like fit.spread

    def specs(self, per_node: bool) -> list[ReserveSpec]:
        return to_specs(self.pools, per_node)


class BootPlan(Typed):
    pools: dict[Pool, int] = field(default_factory=dict)
    guests: list[GuestShare] = field(default_factory=list)

    def specs(self, per_node: bool) -> list[ReserveSpec]:
        return to_specs(self.pools, per_node)


def to_specs(pools: Mapping[Pool, int], per_node: bool) -> list[ReserveSpec]:
    """``SIZE:COUNT@NODE`` items, larger sizes first, then by node; without ``per_node``
    one item per size for the whole host (a one-node host: every kernel reads that form)."""
    out: list[ReserveSpec] = []
    for size_kib in sorted({s for (_, s) in pools}, reverse=True):
        mine = sorted((n, c) for (n, s), c in pools.items() if s == size_kib and c > 0)
        if not mine:
            continue
        if per_node:
            out += [ReserveSpec(size_kib, count, node) for node, count in mine]
        else:
            out.append(ReserveSpec(size_kib, sum(c for _, c in mine)))
    return out


def plan_boot(plans: Sequence[Plan], mem_total_kib: Mapping[int, int],
              sizes_kib: Sequence[int], margin: Margin) -> BootPlan:
    """Every guest's demand placed at boot, in the order given (InvalidInput when one does
    not fit: one line naming the guest, node, size and counts)."""
    nodes = tuple(sorted(mem_total_kib))
    pools = {(n, s): PoolState(0, 0) for n in nodes for s in sizes_kib}
    free = dict(mem_total_kib)
    result = BootPlan()
    for plan in plans:
        items = [d for d in plan.demand if d.pages > 0]
        if not items:
            continue
        view = HostView(nodes=nodes, pools=pools, mem_free_kib=dict(free),
                        mem_total_kib=dict(mem_total_kib))
        try:
            placement = place(items, view, margin, plan.domain)
        except (MarginViolation, InsufficientPages) as exc:
            raise refusal(plan.domain, exc, view) from None
        share = GuestShare(plan.domain, unbound=any(not d.host_nodes for d in items))
        for pool, pages in sorted(placement.grow.items()):
            if pages <= 0:
                continue
            share.pools[pool] = share.pools.get(pool, 0) + pages
            result.pools[pool] = result.pools.get(pool, 0) + pages
            free[pool[0]] -= pages * pool[1]
        result.guests.append(share)
    return result


def refusal(domain: str, exc: Any, view: HostView) -> DoesNotFitAtBoot:
    """The allocator's refusal in boot terms: at boot a node's free memory is its MemTotal
    less the pages planned for the guests before this one."""
    kw = exc.kwargs
    size = format_kib(kw["size_kib"])
    if isinstance(exc, MarginViolation):
        node = kw["node"]
        total = view.mem_total_kib.get(node, 0)
        before = total - view.mem_free_kib.get(node, 0)
        taken = f"; the guests before it take {human_kib(before)}" if before else ""
        return DoesNotFitAtBoot(domain=domain, reason=(
            f"node {node}: {kw['pages']} x {size} would leave {human_kib(kw['left_kib'])} of "
            f"its {human_kib(total)} for the host, below the floor of "
            f"{human_kib(kw['floor_kib'])}{taken}"))
    return DoesNotFitAtBoot(domain=domain, reason=(
        f"node {kw['node']}, {size} pages: needs {kw['needed']}, room for {kw['possible']} "
        "above the nodes' floors after the guests before it"))


def cmdline_split(specs: Sequence[ReserveSpec], kernel: Optional[tuple[int, int]],
                  spare: Mapping[tuple[int, int], int]) -> tuple[list[ReserveSpec], list[str]]:
    """(the items the kernel command line can carry, notes on those it cannot). ``spare``:
    (node, size) -> gigantic pages the node can hold at boot (``boot.spare_pages``)."""
    per_node = [s for s in specs if s.node is not None]
    if per_node and kernel is not None and kernel < NODE_FORMAT_KERNEL:
        return [s for s in specs if s.node is None], [
            f"Linux {kernel[0]}.{kernel[1]} has no per-node hugepages= (5.16 and later): "
            f"{' '.join(map(str, per_node))} only in [boot] reserve, for "
            "hugexml-reserve.service"]
    out, notes = [], []
    for spec in specs:
        room = spare.get((spec.node, spec.size_kib)) if spec.node is not None else None
        if room is not None and spec.count > room:
            notes.append(f"{spec}: node {spec.node} can hold {room} x "
                         f"{format_kib(spec.size_kib)} at boot (its own data takes a GiB; Linux "
                         "6.1 places the rest on other nodes): only in [boot] reserve, for "
                         "hugexml-reserve.service")
            continue
        out.append(spec)
    return out, notes


def cma_suggestion(specs: Sequence[ReserveSpec], mem_total_kib: Mapping[int, int],
                   kernel: Optional[tuple[int, int]],
                   cma_kernel: Optional[bool]) -> Optional[dict[str, Any]]:
    """``hugetlb_cma=`` in place of boot-time 1G pages, when 1G pages are at least
    CMA_SHARE_OF_RESERVATION of the memory the reservation pins and at least
    CMA_SHARE_OF_MEMORY of the host's memory; None otherwise. Per node (``0:4G,1:2G``) from
    Linux 5.17 when the items are per node, else one size for the host (the kernel then
    spreads it over the nodes). ``cma_kernel``: the running kernel has CONFIG_CMA (a
    CmaTotal line in /proc/meminfo); None unknown."""
    pinned = sum(s.count * s.size_kib for s in specs)
    big = [s for s in specs if s.size_kib == G1 and s.count > 0]
    big_kib = sum(s.count * s.size_kib for s in big)
    total = sum(mem_total_kib.values())
    if (not big or big_kib < pinned * CMA_SHARE_OF_RESERVATION
            or big_kib < total * CMA_SHARE_OF_MEMORY):
        return None
    by_node = all(s.node is not None for s in big) and (
        kernel is None or kernel >= CMA_NODE_FORMAT_KERNEL)
    if by_node:
        value = ",".join(f"{s.node}:{s.count}G" for s in sorted(big, key=lambda s: s.node or 0))
    else:
        value = f"{sum(s.count for s in big)}G"
    replaces = " ".join(map(str, big))
    why = (f"1G pages are {big_kib * 100 // max(pinned, 1)}% of this reservation and "
           f"{big_kib * 100 // max(total, 1)}% of the memory: with hugetlb_cma= the kernel "
           "sets that memory aside at boot as a CMA area that page cache and other movable "
           "memory use until 1G pages are taken from it, so runtime 1G allocation becomes "
           "reliable without pinning the memory while the guests are down. The kernel then "
           "skips boot-time 1G pages: leave them off hugepages= (the hook takes each guest's "
           "from the area when it starts; [boot] reserve would pin them from boot on). Needs "
           "CONFIG_CMA; hugexml doctor explains the trade-off")
    if cma_kernel is False:
        why += "; this kernel has no CONFIG_CMA (no CmaTotal in /proc/meminfo): it would ignore it"
    return {"param": f"hugetlb_cma={value}", "replaces": replaces, "why": why,
            "kernel_has_cma": cma_kernel}
