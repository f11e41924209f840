"""Pure arithmetic of the allocator: what is available, where a demand goes, what may go back.

No I/O. ``HostView`` is a picture of the kernel's counters (read by ``hugexml.alloc.allocator``
under the lock) plus the pages promised to pending guests; the functions here decide.

Reserved pages: the kernel reports ``resv_hugepages`` only per size, globally. A node's share
is attributed conservatively as ``min(global resv, node free)``: every reserved page is
assumed to sit on the node being looked at. That can only make hugexml allocate a page more
than needed, or give back a page less, never take a page somebody reserved. (With one node,
as on most hosts, it is exact.)
"""
from __future__ import annotations

from collections.abc import Sequence

from hugexml.core.errors import (
    HugexmlError,
    InsufficientPages,
    MarginViolation,
    NoSuchHostNode,
    UnsupportedPageSize,
)
from hugexml.core.model import DemandItem
from hugexml.core.typed import Typed, field
from hugexml.core.units import format_nodeset

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

    from hugexml.core.config import Config

Pool = tuple[int, int]  # (node, size_kib)


class PoolState(Typed, frozen=True):
    """One node's pool of one size. ``persistent`` = nr_hugepages - surplus_hugepages."""

    persistent: int
    free: int
    surplus: int = 0


class HostView(Typed):
    nodes: tuple[int, ...]
    pools: dict[Pool, PoolState]
    resv: dict[int, int] = field(default_factory=dict)  # size_kib -> global resv
    mem_free_kib: dict[int, int] = field(default_factory=dict)
    mem_total_kib: dict[int, int] = field(default_factory=dict)
    claims: dict[Pool, int] = field(default_factory=dict)  # pending claims (of others)


class Margin(Typed, frozen=True):
    """Normal memory a node must keep: max(min_kib, percent % of the node's MemTotal)."""

    min_kib: int
    percent: float

    @classmethod
    def of(cls, config: Config) -> Margin:
        """The config's ``[allocation] margin_min`` and ``margin_percent``."""
        return cls(int(config.margin_min_kib), float(config.margin_percent))

    def floor_kib(self, mem_total_kib: int) -> int:
        return max(int(self.min_kib), int(mem_total_kib * self.percent / 100.0))


class Placement(Typed):
    claims: dict[Pool, int] = field(default_factory=dict)  # pages promised, per pool
    grow: dict[Pool, int] = field(default_factory=dict)  # pages to add, per pool


def error(cls: type[HugexmlError], domain: Optional[str], **fields: Any) -> HugexmlError:
    """The class's template; without a domain (admin changes) it names the change instead."""
    if domain is not None:
        return cls(domain=domain, **fields)
    fmt = cls.msg_fmt.replace("domain '%(domain)s'", "pool change")
    return cls(fmt % fields, domain="", **fields)


# --- availability ------------------------------------------------------------------------
def resv_share(view: HostView, node: int, size_kib: int) -> int:
    pool = view.pools.get((node, size_kib))
    if pool is None:
        return 0
    return max(0, min(view.resv.get(size_kib, 0), pool.free))


def available(view: HostView, node: int, size_kib: int) -> int:
    """Free pages nobody reserved and no pending guest was promised."""
    pool = view.pools.get((node, size_kib))
    if pool is None:
        return 0
    claimed = view.claims.get((node, size_kib), 0)
    return max(0, pool.free - resv_share(view, node, size_kib) - claimed)


def floor_kib(view: HostView, node: int, margin: Margin) -> int:
    return margin.floor_kib(view.mem_total_kib.get(node, 0))


def capacity(view: HostView, node: int, size_kib: int, margin: Margin, planned_kib: int) -> int:
    """Pages of ``size_kib`` the node could add and keep its floor (the kernel may give fewer)."""
    if (node, size_kib) not in view.pools:
        return 0
    room = view.mem_free_kib.get(node, 0) - planned_kib - floor_kib(view, node, margin)
    return max(0, room // size_kib)


def even_split(pages: int, parts: int) -> list[int]:
    base, extra = divmod(pages, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def take_in_order(buckets: Sequence[tuple[str, int]], pages: int) -> list[tuple[str, int]]:
    """Take ``pages`` from buckets in order, each at most what it holds: [(name, taken)]."""
    out = []
    for name, held in buckets:
        if pages <= 0:
            break
        taken = min(held, pages)
        if taken > 0:
            out.append((name, taken))
            pages -= taken
    return out


# --- placement -------------------------------------------------------------------------
class _Placer:
    def __init__(self, view: HostView, margin: Margin, domain: Optional[str]) -> None:
        self.view, self.margin, self.domain = view, margin, domain
        self.avail = {pool: available(view, *pool) for pool in view.pools}
        self.planned_kib: dict[int, int] = {}
        self.result = Placement()

    def _claim(self, node: int, size_kib: int, pages: int, grow: bool) -> None:
        if pages <= 0:
            return
        pool = (node, size_kib)
        self.result.claims[pool] = self.result.claims.get(pool, 0) + pages
        if grow:
            self.result.grow[pool] = self.result.grow.get(pool, 0) + pages
            self.planned_kib[node] = self.planned_kib.get(node, 0) + pages * size_kib
        else:
            self.avail[pool] -= pages

    def take(self, nodes: Sequence[int], size_kib: int, pages: int) -> int:
        """Use free pages on ``nodes``, most available first. Returns what is still needed."""
        for node in sorted(nodes, key=lambda n: (-self.avail.get((n, size_kib), 0), n)):
            used = min(pages, self.avail.get((node, size_kib), 0))
            self._claim(node, size_kib, used, grow=False)
            pages -= used
        return pages

    def cap(self, node: int, size_kib: int) -> int:
        return capacity(self.view, node, size_kib, self.margin, self.planned_kib.get(node, 0))

    def grow(self, nodes: Sequence[int], size_kib: int, pages: int) -> int:
        """Add pages on the node with the most room first, spreading as needed."""
        for node in sorted(nodes, key=lambda n: (-self.cap(n, size_kib), n)):
            added = min(pages, self.cap(node, size_kib))
            self._claim(node, size_kib, added, grow=True)
            pages -= added
        return pages

    def force(self, node: int, size_kib: int, pages: int) -> None:
        """Beyond the margin: planned anyway, so the margin check names the floor."""
        self._claim(node, size_kib, pages, grow=True)

    def short(self, nodes: Sequence[int], size_kib: int, needed: int, avail: int,
              room: int) -> HugexmlError:
        detail = "; ".join(
            f"node {n}: MemFree {self.view.mem_free_kib.get(n, 0)} KiB, "
            f"floor {floor_kib(self.view, n, self.margin)} KiB" for n in nodes)
        return error(InsufficientPages, self.domain, node=format_nodeset(list(nodes)),
                     size_kib=size_kib, needed=needed, available=avail, possible=room,
                     detail=f"({detail})")


def _nodes_for(item: DemandItem, view: HostView, domain: Optional[str]) -> tuple[int, ...]:
    if not item.host_nodes:
        return view.nodes
    for node in item.host_nodes:
        if node not in view.nodes:
            raise error(NoSuchHostNode, domain, node=node, nodes=format_nodeset(list(view.nodes)))
    return tuple(dict.fromkeys(item.host_nodes))


def place(items: Sequence[DemandItem], view: HostView, margin: Margin,
          domain: Optional[str]) -> Placement:
    """Where each demand item's pages come from: free pages or pages to add, per pool.

    - strict / restrictive / unbound: the kernel gives a bound guest any free page of its
      node set, an unbound guest any page at all, so free pages anywhere in the set count
      first; the rest is added on the node with the most normal memory above its floor
      first, spreading as needed.
    - preferred: the first listed node first (its free pages, then pages added there),
      then the other nodes, as the kernel's fallback would.
    - interleave: an even share on every listed node, each share placed on its node.
    Raises InsufficientPages (node sets) or MarginViolation (one node) when it cannot fit.
    """
    placer = _Placer(view, margin, domain)
    sizes = sorted({size for (_, size) in view.pools})
    for item in items:
        if item.pages <= 0:
            continue
        size = item.page_size_kib
        if size not in sizes:
            raise error(UnsupportedPageSize, domain, size_kib=size,
                        supported=", ".join(f"{s} KiB" for s in sizes) or "none")
        nodes = _nodes_for(item, view, domain)
        missing = [n for n in nodes if (n, size) not in view.pools]
        if missing and item.host_nodes:
            raise error(NoSuchHostNode, domain, node=missing[0],
                        nodes=format_nodeset([n for n in view.nodes if (n, size) in view.pools]))
        nodes = tuple(n for n in nodes if (n, size) in view.pools)
        if item.policy == "interleave" and len(nodes) > 1:
            for node, share in zip(nodes, even_split(item.pages, len(nodes))):
                left = placer.grow([node], size, placer.take([node], size, share))
                placer.force(node, size, left)
        elif item.policy == "preferred":
            first, others = nodes[0], [n for n in view.nodes if n != nodes[0]]
            others = [n for n in others if (n, size) in view.pools]
            left = placer.grow([first], size, placer.take([first], size, item.pages))
            left = placer.grow(others, size, placer.take(others, size, left))
            placer.force(first, size, left)
        else:
            avail = sum(placer.avail.get((n, size), 0) for n in nodes)
            room = sum(placer.cap(n, size) for n in nodes)
            left = placer.grow(nodes, size, placer.take(nodes, size, item.pages))
            if left and len(nodes) > 1:
                raise placer.short(nodes, size, item.pages, avail, room)
            if left:
                placer.force(nodes[0], size, left)
    check_margin(placer.result.grow, view, margin, domain)
    return placer.result


def spread(view: HostView, size_kib: int, count: int, margin: Margin,
           domain: Optional[str]) -> dict[Pool, int]:
    """Pages to add (not taken from free pages): the node with the most room first."""
    placer = _Placer(view, margin, domain)
    nodes = [n for n in view.nodes if (n, size_kib) in view.pools]
    room = sum(placer.cap(n, size_kib) for n in nodes)
    if placer.grow(nodes, size_kib, count):
        raise error(InsufficientPages, domain, node=format_nodeset(nodes) or "none",
                    size_kib=size_kib, needed=count, available=0, possible=room,
                    detail="(pages are added above every node's floor, not taken from free pages)")
    return dict(placer.result.grow)


def check_margin(grow: dict[Pool, int], view: HostView, margin: Margin,
                 domain: Optional[str]) -> None:
    """MarginViolation when adding ``grow`` would leave a node below its floor."""
    by_node: dict[int, list[tuple[int, int]]] = {}
    for (node, size_kib), pages in grow.items():
        if pages > 0:
            by_node.setdefault(node, []).append((size_kib, pages))
    for node, items in sorted(by_node.items()):
        floor = floor_kib(view, node, margin)
        left = view.mem_free_kib.get(node, 0)
        for size_kib, pages in sorted(items):
            left -= size_kib * pages
            if left < floor:
                raise error(MarginViolation, domain, node=node, pages=pages, size_kib=size_kib,
                            left_kib=max(left, 0), floor_kib=floor)


# --- giving back -------------------------------------------------------------------------
def releasable(view: HostView, node: int, size_kib: int, want: int, keep: int) -> int:
    """Pages that may leave a pool: at most ``want``, only free pages that nobody reserved
    and no pending guest was promised (``view.claims`` holds all pending claims here), and
    never below ``keep`` persistent pages (baseline, admin pages, other guests' pages)."""
    pool = view.pools.get((node, size_kib))
    if pool is None or want <= 0:
        return 0
    unclaimed = pool.free - resv_share(view, node, size_kib) - view.claims.get((node, size_kib), 0)
    return max(0, min(want, unclaimed, pool.persistent - keep))
