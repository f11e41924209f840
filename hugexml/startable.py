"""Would a guest start now: the pages each node could give a start, tallied (pure).

A ``NodeSupply`` is what one node could give a guest starting now, per page size, as the
allocator would find it (``hugexml.alloc.Allocator.reserve``):

- ``avail``: free pages minus the node's share of reserved ones minus pages promised to
  guests still starting (``fit.available``); hugexml's kept pages are among them;
- ``owned``: free pages hugexml owns (kept, or owed back), which a start of a smaller size
  may split with the kernel's demote file (``demote_to``, when ``[allocation] demote``), or
  which it gives back to make room when they are of another size;
- ``room_kib``: normal memory above the node's margin floor, for pages the kernel adds;
- ``exact``: for a size above the buddy allocator's largest block (1G on x86) the pages
  buddyinfo shows the kernel could add without compaction: such a size is counted only from
  that exact prediction, never from MemFree (after fragmentation it is rarely there).

``Supply.take`` tallies one guest's demand against it (free first, then demote, then
growth; policies as ``fit.place``: interleave an even share per node, preferred its node
first then any); a guest that does not fit leaves the tally as it was and gets one line
naming the node(s), the size and the counts. Guests are judged in turn, each after the pages
the ones before it took.
"""
from __future__ import annotations

from collections.abc import Sequence

from hugexml.fit import even_split
from hugexml.typed import Typed, field
from hugexml.units import format_kib, format_nodeset

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

    from hugexml.model import DemandItem


class NodeSupply(Typed):
    avail: dict[int, int] = field(default_factory=dict)       # size -> pages
    kept: dict[int, int] = field(default_factory=dict)        # size -> kept (among avail)
    owned: dict[int, int] = field(default_factory=dict)       # size -> owned free pages
    room_kib: int = 0
    exact: dict[int, int] = field(default_factory=dict)       # size -> buddyinfo's pages
    demote_to: dict[int, int] = field(default_factory=dict)   # larger size -> smaller

    def copy(self) -> NodeSupply:
        return NodeSupply(dict(self.avail), dict(self.kept), dict(self.owned), self.room_kib,
                          dict(self.exact), dict(self.demote_to))


class Got(Typed):
    """Where a demand's pages came from."""

    free: int = 0
    kept: int = 0
    demote: int = 0
    kernel: int = 0

    @property
    def total(self) -> int:
        return self.free + self.demote + self.kernel


class Supply(Typed):
    nodes: dict[int, NodeSupply]
    demote: bool = True

    def copy(self) -> Supply:
        return Supply({n: s.copy() for n, s in self.nodes.items()}, self.demote)

    def take(self, items: Sequence[DemandItem]) -> Optional[str]:
        """Tally a guest's demand: None when it fits (the tally keeps it), else the first
        shortfall as one clause (the tally is left as it was)."""
        trial = self.copy()
        for item in items:
            if item.pages <= 0:
                continue
            size = item.page_size_kib
            have = [n for n in sorted(trial.nodes) if size in trial.nodes[n].avail]
            nodes = [n for n in (item.host_nodes or have) if n in have]
            if item.policy == "interleave" and len(nodes) > 1:
                for node, share in zip(nodes, even_split(item.pages, len(nodes))):
                    got = trial._take([node], size, share)
                    if got.total < share:
                        return _short([node], size, share, got, size in self.nodes[node].exact)
                continue
            preferred = item.policy == "preferred" and bool(nodes)
            if preferred:
                nodes = [nodes[0], *(n for n in have if n != nodes[0])]
            got = trial._take(nodes, size, item.pages, ordered=preferred)
            if got.total < item.pages:
                return _short(nodes, size, item.pages, got,
                              any(size in self.nodes[n].exact for n in nodes))
        self.nodes = trial.nodes
        return None

    def _take(self, nodes: list[int], size: int, pages: int, ordered: bool = False) -> Got:
        """Free pages first (the most available node first, or in order: preferred), then
        splits, then growth (the roomiest node first, or in order)."""
        got = Got()
        for node in nodes if ordered else sorted(
                nodes, key=lambda n: -self.nodes[n].avail.get(size, 0)):
            s = self.nodes[node]
            used = min(pages - got.total, s.avail.get(size, 0))
            s.avail[size] -= used
            kept = min(used, s.kept.get(size, 0))
            s.kept[size] = s.kept.get(size, 0) - kept
            s.owned[size] = max(0, s.owned.get(size, 0) - used)  # kept pages go first
            got.free += used
            got.kept += kept
        for node in nodes:
            if got.total < pages and self.demote:
                got.demote += self._split(node, size, pages - got.total)
        for node in nodes if ordered else sorted(nodes, key=lambda n: -self.nodes[n].room_kib):
            if got.total < pages:
                got.kernel += self._grow(node, size, pages - got.total)
        return got

    def _split(self, node: int, size: int, missing: int) -> int:
        """Owned larger pages split into ``size`` (demote): the pages of ``size`` used."""
        s, used = self.nodes[node], 0
        for big in sorted(b for b, small in s.demote_to.items() if small == size):
            ratio = big // size
            k = min(s.owned.get(big, 0), s.avail.get(big, 0), -(-(missing - used) // ratio))
            if k <= 0:
                continue
            s.owned[big] -= k
            s.avail[big] -= k
            s.kept[big] = max(0, s.kept.get(big, 0) - k)
            made = min(k * ratio, missing - used)
            s.avail[size] = s.avail.get(size, 0) + k * ratio - made  # the rest stays free
            used += made
        return used

    def _grow(self, node: int, size: int, missing: int) -> int:
        """Pages the kernel adds within the margin; owned pages of other sizes are given
        back first when the room is short (the allocator's relief)."""
        s = self.nodes[node]
        if size in s.exact:
            missing = min(missing, s.exact[size])
        for other in sorted(s.owned, reverse=True):
            while s.room_kib < missing * size and other != size and \
                    min(s.owned[other], s.avail.get(other, 0)) > 0:
                s.owned[other] -= 1
                s.avail[other] -= 1
                s.kept[other] = max(0, s.kept.get(other, 0) - 1)
                s.room_kib += other
        grown = max(0, min(missing, s.room_kib // size))
        s.room_kib -= grown * size
        if size in s.exact:
            s.exact[size] -= grown
        return grown


def _short(nodes: list[int], size: int, pages: int, got: Got, exact: bool) -> str:
    where = f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {format_nodeset(nodes) or 'none'}"
    parts = [f"{got.free} free" + (f" ({got.kept} kept)" if got.kept else "")]
    if got.demote:
        parts.append(f"{got.demote} from splitting kept larger pages")
    parts.append(f"{got.kernel} the kernel can add within the margin")
    tail = (f"; {format_kib(size)} pages are counted only as buddyinfo shows free blocks of "
            "that size, never from MemFree" if exact else "")
    return (f"{where} {format_kib(size)}: needs {pages}, has {got.total} ({', '.join(parts)})"
            f"{tail}")
