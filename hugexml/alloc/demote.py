"""Splitting larger hugepages hugexml owns into smaller ones, with the kernel's ``demote``.

A node is short of small pages when the kernel grants fewer than asked (fragmentation), or
when growing the small pool would break the node's normal-memory margin. Free larger pages
hugexml owns there (kept after a guest stopped, or owed back) can fill that gap at once:
``echo K > /sys/devices/system/node/nodeN/hugepages/hugepages-1048576kB/demote`` turns K
free 1G pages into 512*K free 2M pages, moving no normal memory (Linux >= 5.16; the page
size's ``demote_size`` says what it splits into). An admin's page (the baseline, or pages
``hugexml allocate`` added) is never split.

Each split is a pool change under the intent protocol: the larger pool's count before and
after, and the smaller pool's target raised by the pages it gains, are in the journal's
intent before the write, so a kill at any point is resolved by the kernel's counts.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from hugexml.alloc.recovery import debit
from hugexml.alloc.txn import read_pool, read_view
from hugexml.core.errors import InsufficientPages, MarginViolation
from hugexml.core.model import DemandItem
from hugexml.core.typed import Typed, field, replace
from hugexml.planning.fit import HostView, Margin, PoolState, place, resv_share
from hugexml.planning.records import Intent, IntentPool, Pool

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, Optional

    from hugexml.alloc.ledger import Store
    from hugexml.host.gateway import Gateway
    from hugexml.planning.state import State

SPLIT_FROM = ("unreleased", "kept")  # hugexml's own, not a live guest's: owed pages first


class Demoter:
    def __init__(self, gateway: Gateway, store: Store, clock: Callable[[], float]) -> None:
        self.gateway, self.store, self.clock = gateway, store, clock
        self.report: dict[str, int] = {}  # "node:size_kib" of the larger pool -> pages split

    def splittable(self, state: State, node: int, big: int,
                   promised: Optional[dict[Pool, int]] = None) -> int:
        """Free pages of (node, big) that hugexml owns and nobody is promised (pending
        guests, and ``promised``: the claims of the reserve in progress)."""
        book = state.journal.pools.get((node, big))
        if book is None:
            return 0
        owned = book.unreleased + book.kept_pages
        view = read_view(self.gateway, {big}, memory=False)
        pool = view.pools.get((node, big))
        if pool is None:
            return 0
        claimed = sum(r.claimed.get((node, big), 0) for r in state.guests.values()
                      if r.state == "pending") + (promised or {}).get((node, big), 0)
        return max(0, min(owned, pool.free - resv_share(view, node, big) - claimed))

    def candidates(self, state: State, node: int, small: int,
                   promised: Optional[dict[Pool, int]] = None) -> list[tuple[int, int]]:
        """(larger size, pages that could be split) on ``node`` for pages of ``small``."""
        out = []
        for big in sorted(s for s in self.gateway.page_sizes_kib() if s > small):
            if self.gateway.demote_size(node, big) == small:
                k = self.splittable(state, node, big, promised)
                if k > 0:
                    out.append((big, k))
        return out

    def split(self, state: State, node: int, small: int, missing: int,
              standalone: bool, promised: Optional[dict[Pool, int]] = None) -> int:
        """Split enough owned larger pages on ``node`` to add ``missing`` pages of ``small``;
        the pages of ``small`` added. ``standalone``: its own intent, and the new small pages
        are owed back (a reserve then claims them from the free pages); else it extends the
        grow intent in progress, whose commit attributes them."""
        added = 0
        busy = state.journal.intent.pools if state.journal.intent is not None else {}
        found = [(big, free) for big, free in self.candidates(state, node, small, promised)
                 if (node, big) not in busy]  # not a pool the change in progress grows
        if not standalone and sum(f * (b // small) for b, f in found) < missing:
            return 0  # a split that cannot complete the grow would be lost if it fails
        for big, free in found:
            if added >= missing:
                break
            k = min(free, -(-(missing - added) // (big // small)))
            added += self._split(state, node, big, small, k, standalone)
        return added

    def _split(self, state: State, node: int, big: int, small: int, k: int,
               standalone: bool) -> int:
        ratio = big // small
        big_before = read_pool(self.gateway, node, big).persistent
        small_before = read_pool(self.gateway, node, small).persistent
        intent = state.journal.intent
        if standalone or intent is None:
            intent = Intent("demote", "demote", None, self.clock(), os.getpid(), {})
            state.journal.intent = intent
        entry = intent.pools.get((node, small))
        if entry is None:
            intent.pools[(node, small)] = IntentPool(small_before, small_before + k * ratio)
        else:
            entry.target += k * ratio
        intent.pools[(node, big)] = IntentPool(big_before, big_before - k, SPLIT_FROM)
        if (node, small) not in state.journal.pools:
            state.journal.book((node, small)).baseline = small_before
        state.journal_dirty = True
        self.store.commit(state)
        got = self.gateway.demote(node, big, k)
        debit(state.journal.book((node, big)), SPLIT_FROM, got)
        pool: Pool = (node, big)
        key = f"{pool[0]}:{pool[1]}"
        self.report[key] = self.report.get(key, 0) + got
        if standalone:
            state.journal.book((node, small)).unreleased += got * ratio
            state.journal.intent = None
            self.store.commit(state)
        else:
            del intent.pools[(node, big)]  # done: its books are debited, its count final
            state.journal_dirty = True
        return got * ratio


# --- relief for a start the margin or the pools refuse --------------------------------------
class Relief(Typed):
    """What hugexml frees on a node so that a start fits: larger owned pages split into the
    size wanted, ``splits[(node, big, small)] = k``, and kept pages of other sizes given
    back at once, ``give_back[pool] = pages``."""

    splits: dict[tuple[int, int, int], int] = field(default_factory=dict)
    give_back: dict[Pool, int] = field(default_factory=dict)

    def applied_to(self, view: HostView) -> HostView:
        """The view as it would be after this relief (pure)."""
        pools = dict(view.pools)
        mem_free = dict(view.mem_free_kib)
        for (node, big, small), k in self.splits.items():
            pool = pools.get((node, small))
            if pool is not None:
                add = k * (big // small)
                pools[(node, small)] = PoolState(pool.persistent + add, pool.free + add,
                                                 pool.surplus)
        for (node, size), pages in self.give_back.items():
            mem_free[node] = mem_free.get(node, 0) + pages * size
        return replace(view, pools=pools, mem_free_kib=mem_free)


def fits(items: Sequence[DemandItem], view: HostView, margin: Margin) -> bool:
    try:
        place(items, view, margin, None)
    except (MarginViolation, InsufficientPages):
        return False
    return True


def least_relief(items: Sequence[DemandItem], view: HostView, margin: Margin,
                 splittable: dict[tuple[int, int, int], int],
                 kept_elsewhere: dict[Pool, int]) -> Optional[Relief]:
    """The least that makes ``items`` fit (pure): as few splits as will do, first without
    touching kept pages of other sizes, then with all of them given back; None when
    nothing hugexml holds would make the start fit (then nothing is changed)."""
    for give in ({}, kept_elsewhere):
        relief = Relief(dict(splittable), dict(give))
        if not fits(items, relief.applied_to(view), margin):
            continue
        for key in splittable:  # then as few splits as still fit, candidate by candidate
            while relief.splits[key] > 0:
                relief.splits[key] -= 1
                if not fits(items, relief.applied_to(view), margin):
                    relief.splits[key] += 1
                    break
        relief.splits = {key: k for key, k in relief.splits.items() if k}
        return relief
    return None
