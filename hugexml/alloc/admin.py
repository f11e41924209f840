"""The admin's pool changes: ``hugexml allocate``, ``shrink`` and the boot-time top-up.

Pages an admin adds are the admin's (``admin`` in the books): no guest's release gives them
back. A shrink takes only free pages no guest with a record needs, hugexml's idle pages
(owed, kept) first, then the admin's, then others'. A dry run writes nothing on the host.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hugexml.alloc import recovery
from hugexml.alloc.poolops import PoolOps
from hugexml.core.errors import InvalidInput, NoSuchHostNode, UnsupportedPageSize
from hugexml.planning.fit import HostView, check_margin, error, releasable, spread
from hugexml.planning.records import Pool
from hugexml.planning.state import State

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

MAX_ADMIN_PAGES = 1 << 24
ADMIN_SHRINK = ("unreleased", "kept", "admin", "baseline")


def _counts(pools: dict[Pool, int]) -> dict[str, int]:
    from hugexml.planning.records import pool_key

    return {pool_key(p): n for p, n in sorted(pools.items()) if n}


class AdminOps(PoolOps):
    def allocate_admin(self, size_kib: int, count: int, node: Optional[int] = None,
                       dry_run: bool = False) -> dict[str, Any]:
        """Add ``count`` pages to the pools as an admin change. A dry run writes nothing on
        the host: no state dir, lock file, state file or kernel write."""
        self._check_admin_args(size_kib, count)
        with self._admin_session(dry_run) as state:
            view = self._view(state, {size_kib})
            return self._admin_grow(state, view, size_kib, count, node, dry_run)

    def top_up_admin(self, size_kib: int, target: int, node: Optional[int] = None,
                     dry_run: bool = False) -> dict[str, Any]:
        """Grow the pool of ``node`` (None: the whole host) to ``target`` persistent pages,
        counting every page the kernel has now; never shrinks. Read and grow under one lock,
        so a second run adds nothing."""
        self._check_admin_args(size_kib, target)
        with self._admin_session(dry_run) as state:
            view = self._view(state, {size_kib})
            if node is not None:
                self._check_node(view, node, size_kib)
                have = view.pools[(node, size_kib)].persistent
            else:
                have = sum(view.pools[(n, size_kib)].persistent for n in view.nodes)
            need = max(0, target - have)
            result = self._admin_grow(state, view, size_kib, need, node, dry_run)
        return dict(result, pool_pages=have, target=target, adding=need)

    @contextmanager
    def _admin_session(self, dry_run: bool) -> Iterator[State]:
        """The state under the lock, or for a dry run a read-only copy (recovery applied in
        memory only, nothing written)."""
        if not dry_run:
            with self._session() as state:
                yield state
            return
        state = self.store.read(self._known())
        recovery.begin(self.gateway, state, self.config, self.clock())
        yield state

    def _admin_grow(self, state: State, view: HostView, size_kib: int, count: int,
                    node: Optional[int], dry_run: bool) -> dict[str, Any]:
        if node is not None:
            self._check_node(view, node, size_kib)
            grow = {(node, size_kib): count} if count else {}
            check_margin(grow, view, self.margin, None)
        else:
            grow = spread(view, size_kib, count, self.margin, None) if count else {}
        result: dict[str, Any] = {"size_kib": size_kib, "add": _counts(grow), "dry_run": dry_run}
        if dry_run or not grow:
            return result
        txn, grown = self._grow(state, grow, view, "admin", None, None)
        for pool, pages in grow.items():
            state.journal.book(pool).admin += pages
            state.journal.book(pool).unreleased += grown.get(pool, pages) - pages
        state.journal.intent = None
        state.journal_dirty = True
        self._commit_or_undo(state, txn, grow, grown, None)
        return result

    def shrink_admin(self, size_kib: int, count: int, node: Optional[int] = None) -> dict[str, Any]:
        """Remove up to ``count`` free pages no guest with a record needs."""
        self._check_admin_args(size_kib, count)
        with self._session() as state:
            sync = recovery.sync(self.gateway, state)
            view = self._view(state, {size_kib}, memory=False)
            if node is not None:
                self._check_node(view, node, size_kib)
            nodes = [node] if node is not None else list(view.nodes)
            plan: dict[Pool, tuple[int, tuple[str, ...]]] = {}
            left = count
            for n in sorted(nodes, key=lambda n: -view.pools[(n, size_kib)].free):
                book = state.journal.pools.get((n, size_kib))
                pages = releasable(view, n, size_kib, left, book.guests if book else 0)
                if pages > 0:
                    if book is None:  # the admin's own pool: track what leaves it
                        state.journal.book((n, size_kib)).baseline = \
                            view.pools[(n, size_kib)].persistent
                    plan[(n, size_kib)] = (pages, ADMIN_SHRINK)
                    left -= pages
            removed = self._shrink(state, plan, view, "shrink")
            recovery.forget_idle_pools(state)
        return {"size_kib": size_kib, "requested": count, "removed": removed,
                **({"reconciled": sync} if sync else {})}

    def _check_admin_args(self, size_kib: int, count: int) -> None:
        if count < 0 or count > MAX_ADMIN_PAGES:
            raise InvalidInput(reason=f"page count {count} is out of range (0-{MAX_ADMIN_PAGES})")
        sizes = tuple(self.gateway.page_sizes_kib())
        if size_kib not in sizes:
            raise error(UnsupportedPageSize, None, size_kib=size_kib,
                        supported=", ".join(f"{s} KiB" for s in sizes) or "none")

    @staticmethod
    def _check_node(view: HostView, node: int, size_kib: int) -> None:
        if (node, size_kib) not in view.pools:
            from hugexml.core.units import format_nodeset

            raise error(NoSuchHostNode, None, node=node, nodes=format_nodeset(list(view.nodes)))

