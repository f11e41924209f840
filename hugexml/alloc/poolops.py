"""The pool-change protocol under the state lock, shared by every allocator operation.

``PoolOps._session`` takes the lock, loads the state (quarantining what fails its checks),
lets ``hugexml.alloc.recovery.begin`` finish what a killed process or a bad file left, yields the
state and commits it. Pool changes follow one protocol: compute (hugexml.planning.fit), write an
*intent* to the journal (per pool: the persistent count before and the target), change the
kernel (hugexml.alloc.txn), then commit the books. ``_grow`` rolls every touched pool back before
raising; ``_commit_or_undo`` rolls the kernel back when the commit itself fails; a process
killed in between leaves the intent, resolved by the next session from the kernel's counts.
``_give_back`` shrinks pools by what hugexml owes, as far as those pages are free.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hugexml.alloc import recovery
from hugexml.alloc.demote import Demoter
from hugexml.alloc.ledger import Store
from hugexml.alloc.txn import PoolTxn, read_view
from hugexml.core.errors import HugexmlError
from hugexml.planning.fit import HostView, Margin, releasable
from hugexml.planning.records import GuestRecord, Intent, IntentPool, Pool, pool_key
from hugexml.planning.state import State

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

    from hugexml.alloc.txn import Progress
    from hugexml.core.config import Config
    from hugexml.host.gateway import Gateway


class PoolOps:
    def __init__(self, gateway: Gateway, state_dir: str, config: Config,
                 clock: Callable[[], float] = time.time,
                 progress: Optional[Progress] = None) -> None:
        self.gateway = gateway
        self.config = config
        self.clock = clock
        self.progress = progress
        boot_id = getattr(gateway, "boot_id", None)
        self.store = Store(state_dir, float(config.lock_timeout_s), clock,
                           boot_id=boot_id() if callable(boot_id) else "")
        self.margin = Margin.of(config)
        self.demoter = Demoter(gateway, self.store, clock)
        self.report: dict[str, Any] = {}  # what the last session's recovery did

    def snapshot(self) -> State:
        """The state as last written, for readers (no repair, nothing moved)."""
        return self.store.read(self._known())

    @contextmanager
    def _session(self) -> Iterator[State]:
        with self.store.lock():
            state = self.store.load(self._known())
            self.demoter.report = {}
            self.report = recovery.begin(self.gateway, state, self.config, self.clock())
            if self.report:
                state.journal.events.append(dict(self.report, at=self.clock(), op="recover"))
                state.journal_dirty = True
            try:
                yield state
            except Exception:  # (a kill, simulated or real, writes nothing more)
                if state.journal.intent is None:  # keep the recovery work, if it can be
                    try:
                        self.store.commit(state)
                    except HugexmlError:
                        pass
                raise
            self.store.commit(state)

    def _known(self) -> set[Pool]:
        sizes = tuple(self.gateway.page_sizes_kib())
        return {(n, s) for n in self.gateway.nodes() for s in sizes}

    def _view(self, state: State, sizes_kib: set[int], exclude: Optional[str] = None,
              memory: bool = True) -> HostView:
        view = read_view(self.gateway, sizes_kib, memory=memory)
        for key, rec in state.guests.items():
            if rec.state != "pending" or key == exclude:
                continue
            for pool, pages in rec.claimed.items():
                if pool in view.pools:
                    view.claims[pool] = view.claims.get(pool, 0) + pages
        return view

    def _grow(self, state: State, grow: dict[Pool, int], view: HostView, purpose: str,
              key: Optional[str], domain: Optional[str],
              claims: Optional[dict[Pool, int]] = None) -> tuple[PoolTxn, dict[Pool, int]]:
        """Intent, kernel writes; on any failure roll back, commit, re-raise. On success the
        caller commits the books (and clears the intent) with ``_commit_or_undo``. Returns
        the transaction and how much each pool grew (a demote may split more than asked)."""
        pools = {}
        for pool, pages in sorted(grow.items()):
            before = view.pools[pool].persistent
            pools[pool] = IntentPool(before, before + pages)
            if pool not in state.journal.pools:
                state.journal.book(pool).baseline = before  # every page here is someone else's
        state.journal.intent = Intent("grow", purpose, key, self.clock(), os.getpid(), pools)
        state.journal_dirty = True
        self.store.commit(state)
        relieve = None
        if self.config.demote:
            def relieve(node: int, size_kib: int, missing: int) -> int:
                return self.demoter.split(state, node, size_kib, missing, standalone=False,
                                          promised=claims)
        txn = PoolTxn(self.gateway, self.config, domain, self.progress, relieve=relieve)
        try:
            grown = txn.grow(grow, view.pools)
        except BaseException:
            left = txn.rollback()  # raising here leaves the intent for the next session
            for pool, pages in left.items():
                state.journal.book(pool).unreleased += pages
            state.journal.intent = None
            recovery.forget_idle_pools(state)
            state.journal_dirty = True
            self.store.commit(state)
            raise
        return txn, grown

    def _commit_or_undo(self, state: State, txn: PoolTxn, grow: dict[Pool, int],
                        grown: dict[Pool, int], rec: Optional[GuestRecord]) -> None:
        """Commit a grow; when the commit fails (a full or read-only state dir), put the
        kernel back as it was and undo the books, so nothing stays allocated. (A kill leaves
        the intent instead, which the next session resolves by the kernel's counts.)"""
        try:
            self.store.commit(state)
        except Exception:
            left = txn.rollback()
            for pool, pages in grow.items():
                book = state.journal.book(pool)
                if rec is None:
                    book.admin -= pages
                else:
                    book.guests -= pages
                    rec.added[pool] = rec.added.get(pool, 0) - pages
                    if rec.added[pool] <= 0:
                        del rec.added[pool]
                book.unreleased += left.get(pool, 0) - (grown.get(pool, pages) - pages)
            state.journal_dirty = True
            try:
                self.store.commit(state)
            except HugexmlError:
                pass  # the journal on disk still holds the intent: resolved next time
            raise

    def _shrink(self, state: State, plan: dict[Pool, tuple[int, tuple[str, ...]]],
                view: HostView, purpose: str) -> dict[str, int]:
        if not plan:
            return {}
        state.journal.intent = Intent("shrink", purpose, None, self.clock(), os.getpid(), {
            pool: IntentPool(view.pools[pool].persistent,
                             view.pools[pool].persistent - pages, buckets)
            for pool, (pages, buckets) in plan.items()})
        state.journal_dirty = True
        self.store.commit(state)
        txn = PoolTxn(self.gateway, self.config, None, self.progress)
        removed: dict[str, int] = {}
        for pool, (pages, buckets) in sorted(plan.items()):
            got = txn.shrink(pool[0], pool[1], pages, view.pools[pool])
            if got:
                removed[pool_key(pool)] = got
                recovery.debit(state.journal.book(pool), buckets, got)
        state.journal.intent = None
        state.journal_dirty = True
        return removed

    def _give_back(self, state: State) -> dict[str, int]:
        """Shrink pools by what hugexml owes back, as far as those pages are free and
        unclaimed now."""
        wants = {pool: book.unreleased for pool, book in state.journal.pools.items()
                 if book.unreleased > 0}
        if not wants:
            return {}
        view = self._view(state, {size for (_, size) in wants}, memory=False)
        plan: dict[Pool, tuple[int, tuple[str, ...]]] = {}
        for pool, want in wants.items():
            if pool not in view.pools:
                continue
            keep = state.journal.pools[pool].expected - want
            pages = releasable(view, pool[0], pool[1], want, keep)
            if pages > 0:
                plan[pool] = (pages, ("unreleased",))
        return self._shrink(state, plan, view, "release")
