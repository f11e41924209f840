"""The allocator: claims in the state store, pool changes as transactions, releases, reconcile.

Every public method takes the state lock for its whole read-compute-write-verify
(``_session``): it loads the state (quarantining what fails its checks), lets
``hugexml.recovery.begin`` finish what a killed process or a bad file left, does its work,
and commits (``ledger.Store.commit``). Pool changes follow one protocol: compute
(hugexml.fit), write an *intent* to the journal (per pool: the persistent count before and
the target), change the kernel (hugexml.txn), then commit the books and the guest record. A
failed grow rolls every touched pool back before raising; so does a commit that fails after
the kernel grew. A process killed in between leaves the intent, and the next session
resolves it against the kernel's counts.

Nothing here gives back a page that is not free, reserved, or promised to a pending guest,
or takes a pool below its baseline plus admin pages plus other guests' pages.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional

from hugexml import recovery
from hugexml.demote import Demoter, Relief, least_relief
from hugexml.errors import (
    GuestConflict,
    HugexmlError,
    InsufficientPages,
    InvalidInput,
    MarginViolation,
    NoSuchHostNode,
    UnsupportedPageSize,
)
from hugexml.fit import (
    HostView,
    Margin,
    Placement,
    check_margin,
    error,
    place,
    releasable,
    spread,
)
from hugexml.ledger import State, Store
from hugexml.model import GuestId
from hugexml.records import (
    DemandRow,
    GuestRecord,
    Intent,
    IntentPool,
    Pool,
    RecordError,
    check_name,
    guest_key,
    normalize_uuid,
    pool_key,
)
from hugexml.txn import PoolTxn, Progress, read_view

if TYPE_CHECKING:  # pragma: no cover
    from hugexml.config import Config
    from hugexml.live import LiveGuest
    from hugexml.model import Plan

MAX_ADMIN_PAGES = 1 << 24
ADMIN_SHRINK = ("unreleased", "kept", "admin", "baseline")


def guest_identity(guest: GuestId) -> tuple[str, Optional[str], str]:
    """(name, normalised uuid, record key) of a guest about to be recorded; InvalidInput
    for a name or uuid no record may hold."""
    try:
        name = check_name(guest.name, "domain name")
    except RecordError as exc:
        raise InvalidInput(reason=str(exc)) from None
    uuid = None
    if guest.uuid is not None:
        uuid = normalize_uuid(guest.uuid)
        if uuid is None:
            raise InvalidInput(reason=f"domain '{name}': {guest.uuid[:40]!r} is not a UUID")
    return name, uuid, guest_key(name, uuid)


def find_guest(state: State, guest: GuestId) -> Optional[str]:
    """The record key of a guest: its uuid (when the record has its name), a record of its
    name made without a uuid, or, for ``release NAME|UUID``, the one record of that name or
    uuid. A uuid whose record belongs to another name is not this guest."""
    guests = state.guests
    uuid = normalize_uuid(guest.uuid) if guest.uuid else None
    if uuid is not None:
        rec = guests.get(uuid)
        if rec is not None:
            return uuid if rec.name == guest.name else None
        by_name = _name_key(guest.name)
        return by_name if by_name in guests else None
    as_uuid = normalize_uuid(guest.name)
    if as_uuid is not None and as_uuid in guests:
        return as_uuid
    by_name = _name_key(guest.name)
    if by_name in guests:
        return by_name
    named = [k for k, r in guests.items() if r.name == guest.name]
    return named[0] if len(named) == 1 else None


def _name_key(name: str) -> Optional[str]:
    try:
        return guest_key(name, None)
    except RecordError:
        return None


def _counts(pools: dict[Pool, int]) -> dict[str, int]:
    return {pool_key(p): n for p, n in sorted(pools.items()) if n}


class Allocator:
    def __init__(self, gateway: Any, state_dir: str, config: Config,
                 clock: Callable[[], float] = time.time,
                 progress: Optional[Progress] = None) -> None:
        self.gateway = gateway
        self.config = config
        self.clock = clock
        self.progress = progress
        boot_id = getattr(gateway, "boot_id", None)
        self.store = Store(state_dir, float(config.lock_timeout_s), clock,
                           boot_id=boot_id() if callable(boot_id) else "")
        self.margin = Margin(int(config.margin_min_kib), float(config.margin_percent))
        self.demoter = Demoter(gateway, self.store, clock)
        self.report: dict[str, Any] = {}  # what the last session's recovery did

    # --- guests ------------------------------------------------------------------------
    def reserve(self, plan: Plan, guest: GuestId,
                keep_s: Optional[float] = None) -> dict[str, Any]:
        """Claim the plan's pages for the guest (``pending``), adding what is missing.
        ``keep_s``: the guest's own keep window (its ``<metadata>``), -1 for ever."""
        name, uuid, key = guest_identity(guest)
        items = [d for d in plan.demand if d.pages > 0]
        with self._session() as state:
            rec = self._adopt_key(state, name, uuid, key)
            grow: dict[Pool, int] = {}
            claims: dict[Pool, int] = {}
            grown: dict[Pool, int] = {}
            txn = None
            if items:
                view, placement = self._place(state, items, key, plan.domain)
                grow = {p: n for p, n in placement.grow.items() if n > 0}
                claims = placement.claims
                if grow:
                    txn, grown = self._grow(state, grow, view, "reserve", key, plan.domain,
                                            claims)
            now = self.clock()
            if rec is None:
                rec = GuestRecord(key=key, name=name, uuid=uuid, state="pending",
                                  created=now, updated=now, keep_s=keep_s)
            rec.keep_s = keep_s
            self._attribute_free(state, rec, claims, grow)
            for pool, pages in grow.items():
                rec.added[pool] = rec.added.get(pool, 0) + pages
                book = state.journal.book(pool)
                book.guests += pages
                book.unreleased += grown.get(pool, pages) - pages  # a demote split more
            rec.state, rec.claimed, rec.updated = "pending", dict(claims), now
            rec.demand = tuple(DemandRow(d.page_size_kib, d.pages, d.host_nodes, d.policy)
                               for d in items)
            state.put(rec)
            if txn is not None:
                state.journal.intent = None
                state.journal_dirty = True
                self._commit_or_undo(state, txn, grow, grown, rec)
        result = {"added": _counts(grow), "claimed": _counts(claims)}
        if self.demoter.report:
            result["demoted"] = dict(self.demoter.report)
        return result

    def _place(self, state: State, items: list[Any], key: str,
               domain: str) -> tuple[HostView, Placement]:
        """Where the demand goes. When a node cannot take it (the margin, too few pages),
        free what hugexml holds there without need, the least that makes it fit: split its
        larger owned pages into the size wanted (demote), then give back its kept pages of
        other sizes at once. When even that would not do, nothing is changed."""
        sizes = {d.page_size_kib for d in items}
        view = self._view(state, sizes, exclude=key)
        try:
            return view, place(items, view, self.margin, domain)
        except (MarginViolation, InsufficientPages):
            relief = self._least_relief(state, items, view)
            if relief is None:
                raise
        for (node, _big, small), k in sorted(relief.splits.items()):
            self.demoter.split(state, node, small, k * (_big // small), standalone=True)
        if relief.give_back:
            for pool, pages in relief.give_back.items():
                recovery.take_kept(state.journal.pools[pool], pages)
                state.journal.pools[pool].unreleased += pages
            state.journal_dirty = True
            self._give_back(state)
        view = self._view(state, sizes, exclude=key)
        return view, place(items, view, self.margin, domain)

    def _least_relief(self, state: State, items: list[Any], view: HostView) -> Optional[Relief]:
        nodes = sorted({n for d in items for n in (d.host_nodes or view.nodes)})
        sizes = {d.page_size_kib for d in items}
        splittable = {}
        if self.config.demote:
            for small in sorted(sizes):
                for node in nodes:
                    for big, k in self.demoter.candidates(state, node, small):
                        splittable[(node, big, small)] = k
        kept = {pool: book.kept_pages for pool, book in state.journal.pools.items()
                if pool[0] in nodes and pool[1] not in sizes and book.kept_pages}
        return least_relief(items, view, self.margin, splittable, kept)

    @staticmethod
    def _attribute_free(state: State, rec: GuestRecord, claims: dict[Pool, int],
                        grow: dict[Pool, int]) -> None:
        """The free pages a claim takes are hugexml's kept pages first, then its owed pages:
        they become this guest's (back in a keep window when it stops) rather than sit
        idle next to pages of others."""
        for pool, claimed in claims.items():
            book = state.journal.pools.get(pool)
            want = claimed - grow.get(pool, 0) - rec.added.get(pool, 0)
            if book is None or want <= 0:
                continue
            moved = recovery.take_kept(book, want)
            owed = min(book.unreleased, want - moved)
            book.unreleased -= owed
            moved += owed
            if moved:
                book.guests += moved
                rec.added[pool] = rec.added.get(pool, 0) + moved
                state.journal_dirty = True

    def _adopt_key(self, state: State, name: str, uuid: Optional[str],
                   key: str) -> Optional[GuestRecord]:
        """The guest's record, if any. A record under its uuid with another name is another
        guest: refused. A record of its name made without a uuid moves to its uuid."""
        rec = state.guests.get(key)
        if rec is not None and rec.name != name:
            raise GuestConflict(domain=name, uuid=uuid, other=rec.name, state=rec.state)
        if rec is None and uuid is not None:
            old = _name_key(name)
            if old is not None and old in state.guests:
                rec = state.remove(old)
                if rec is not None:
                    rec.key, rec.uuid = key, uuid
        return rec

    def settle(self, guest: GuestId) -> dict[str, Any]:
        """The guest started: its pages are mapped, its claim no longer holds free pages."""
        with self._session() as state:
            key = find_guest(state, guest)
            rec = state.guests.get(key) if key else None
            if rec is not None and rec.state == "pending":
                rec.state, rec.updated = "active", self.clock()
                state.dirty.add(rec.key)
        return {"guest": key, "state": rec.state if rec else None}

    def release(self, guest: GuestId) -> dict[str, Any]:
        """The guest stopped: give back what hugexml added for it, as far as it is free."""
        with self._session() as state:
            key = find_guest(state, guest)
            moved = recovery.release_record(state, key, self.config, self.clock()) if key else {}
            released = self._give_back(state)
            recovery.forget_idle_pools(state)
        owed = {pk: n for pk, n in moved.get("unreleased", {}).items()
                if n > released.get(pk, 0)}
        return {"guest": key, "released": released, "kept": moved.get("kept", {}),
                "unreleased": {pk: n - released.get(pk, 0) for pk, n in owed.items()}}

    def tidy(self) -> dict[str, int]:
        """The due work any hook call does when the ``due`` file says so: recovery, ended
        keep windows, owed pages given back as far as they are free."""
        with self._session() as state:
            released = self._give_back(state)
            recovery.forget_idle_pools(state)
        return released

    def reconcile(self, guest: Optional[GuestId] = None,
                  live: Optional[list[LiveGuest]] = None,
                  all_running: bool = False) -> dict[str, Any]:
        """Finish interrupted changes, expire stale claims, compare the books with the
        kernel, give back what is owed. ``live``: running guests seen on the host (their
        daemon status XML and numa_maps): those without a record get one back; with
        ``all_running`` (the list is every running guest), an active record of a guest not
        in it was left by a lost release and is released."""
        with self._session() as state:
            report = dict(self.report)
            report.update(recovery.sync(self.gateway, state))
            if live is not None:
                report.update(self._adopt_live(state, live, all_running))
            released = self._give_back(state)
            if released:
                report["released"] = released
            if guest is not None:
                key = find_guest(state, guest)
                report["guest"] = {"key": key,
                                   "state": state.guests[key].state if key else None}
            recovery.forget_idle_pools(state)
            if report:
                state.journal.events.append(dict(report, at=self.clock(), op="reconcile"))
                state.journal_dirty = True
        return report

    def _adopt_live(self, state: State, live: list[LiveGuest],
                    all_running: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen = set()
        for g in live:
            try:
                name, uuid, key = guest_identity(GuestId(g.name, g.uuid))
            except InvalidInput:
                continue
            seen.add(key)
            if not g.mapped and not g.demand:
                continue  # no hugepages (or not a libvirt guest): nothing to account
            rec = state.guests.get(key)
            if rec is not None:
                if rec.state == "pending" and rec.name == name:
                    rec.state, rec.updated = "active", self.clock()
                    state.dirty.add(key)
                continue
            now = self.clock()
            rec = GuestRecord(key=key, name=name, uuid=uuid, state="active", created=now,
                              updated=now, claimed=dict(g.mapped), demand=g.demand)
            for pool, pages in g.mapped.items():  # hugexml's owed pages it is using
                book = state.journal.pools.get(pool)
                take = min(pages, book.unreleased) if book else 0
                if take and book is not None:
                    book.unreleased -= take
                    book.guests += take
                    rec.added[pool] = take
                    state.journal_dirty = True
            state.put(rec)
            out.setdefault("rebuilt", {})[key] = {"name": name, "added": _counts(rec.added),
                                                 "maps": _counts(g.mapped)}
        if all_running:
            for key in [k for k, r in state.guests.items()
                        if r.state == "active" and k not in seen]:
                moved = recovery.release_record(state, key, self.config, self.clock())
                out.setdefault("released_stale", {})[key] = moved
        return out

    # --- admin pool changes ----------------------------------------------------------------
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

    def snapshot(self) -> State:
        """The state as last written, for readers (no repair, nothing moved)."""
        return self.store.read(self._known())

    # --- sessions ----------------------------------------------------------------------------
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
            from hugexml.units import format_nodeset

            raise error(NoSuchHostNode, None, node=node, nodes=format_nodeset(list(view.nodes)))


__all__ = ["Allocator", "find_guest", "guest_identity"]
