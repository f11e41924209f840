"""The allocator's guest operations: claims in the state store, releases, reconcile.

``Allocator`` is what the hook and the CLI use: ``reserve`` (claim a plan's pages for a
guest, adding what is missing; when a node cannot take it, free the least hugexml holds
there without need first: demote, then kept pages of other sizes), ``settle``, ``release``
(the guest's pages kept for their window or owed back, then given back as far as free),
``tidy`` (due work), ``reconcile`` (also with the live guests the host shows). The admin's
operations are ``hugexml.alloc.admin``, the session and pool-change protocol
``hugexml.alloc.poolops``.

Nothing here gives back a page that is not free, reserved, or promised to a pending guest,
or takes a pool below its baseline plus admin pages plus other guests' pages.
"""
from __future__ import annotations

from hugexml.alloc import recovery
from hugexml.alloc.admin import AdminOps
from hugexml.alloc.demote import Relief, least_relief
from hugexml.core.errors import GuestConflict, InsufficientPages, InvalidInput, MarginViolation
from hugexml.core.model import GuestId
from hugexml.planning.fit import HostView, Placement, place
from hugexml.planning.records import (
    DemandRow,
    GuestRecord,
    Pool,
    RecordError,
    check_name,
    guest_key,
    normalize_uuid,
    pool_key,
)
from hugexml.planning.state import State

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

    from hugexml.core.model import Plan
    from hugexml.host.live import LiveGuest

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
        by_name = _name_key(guest.name, state)
        return by_name if by_name in guests else None
    as_uuid = normalize_uuid(guest.name)
    if as_uuid is not None and as_uuid in guests:
        return as_uuid
    by_name = _name_key(guest.name, state)
    if by_name in guests:
        return by_name
    named = [k for k, r in guests.items() if r.name == guest.name]
    return named[0] if len(named) == 1 else None


def _name_key(name: str, state: State) -> Optional[str]:
    """The record key of a guest recorded without a uuid, when such records exist at all
    (the digest is not computed, and hashlib not imported, on a host without them)."""
    if not any(key.startswith("name-") for key in state.guests):
        return None
    try:
        return guest_key(name, None)
    except RecordError:
        return None


def _counts(pools: dict[Pool, int]) -> dict[str, int]:
    return {pool_key(p): n for p, n in sorted(pools.items()) if n}


__all__ = ["Allocator", "find_guest", "guest_identity"]


class Allocator(AdminOps):
    """The guests' operations (reserve, settle, release, tidy, reconcile) over the admin's
    (hugexml.alloc.admin) and the pool-change protocol (hugexml.alloc.poolops)."""

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
            old = _name_key(name, state)
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
