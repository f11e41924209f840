"""The allocator: claims in the ledger, pool changes as transactions, releases, reconcile.

Every public method takes the ledger's lock for its whole read-compute-write-verify and
starts by finishing what a crashed writer left (``_recover``) and expiring stale pending
claims. Pool changes follow one protocol: compute (hugexml.fit), write an *intent* to the
ledger (per pool: the persistent count before and the target), change the kernel
(hugexml.txn), then commit the result and clear the intent in one atomic ledger write. A
failed grow rolls every touched pool back before raising; a process killed in between leaves
the intent, and the next run resolves it against the kernel's counts: pages a grow added
are owed back (``unreleased``), pages a shrink removed are debited from the buckets it named.

Nothing here ever gives back a page that is not free, reserved, or promised to a pending
guest, or takes a pool below its baseline plus admin pages plus other guests' pages.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional

from hugexml import ledger as lg
from hugexml import recovery
from hugexml.errors import HugexmlError, InvalidInput, NoSuchHostNode, UnsupportedPageSize
from hugexml.fit import (
    HostView,
    Margin,
    Pool,
    check_margin,
    error,
    place,
    releasable,
    spread,
)
from hugexml.ledger import Ledger, Ledger_t, parse_pool_key, pool_key
from hugexml.model import DemandItem, GuestId
from hugexml.txn import PoolTxn, Progress, read_view

if TYPE_CHECKING:  # pragma: no cover
    from hugexml.config import Config
    from hugexml.model import Plan

MAX_ADMIN_PAGES = 1 << 24


def guest_key(guest: GuestId) -> str:
    return guest.uuid.lower() if guest.uuid else guest.name


def find_guest(data: Ledger_t, guest: GuestId) -> Optional[str]:
    """The ledger key of a guest: by uuid or name (``release NAME|UUID`` passes either)."""
    guests = data["guests"]
    key = guest_key(guest)
    if key in guests:
        return key
    wanted = guest.name.lower() if guest.uuid is None else None
    for gk, rec in guests.items():
        if rec["name"] == guest.name and (guest.uuid is None or rec.get("uuid") is None
                                          or rec["uuid"] == guest.uuid.lower()):
            return gk
        if wanted is not None and (gk == wanted or rec.get("uuid") == wanted):
            return gk
    return None


def _counts(pools: dict[Pool, int]) -> dict[str, int]:
    return {pool_key(*p): n for p, n in sorted(pools.items()) if n}


class Allocator:
    def __init__(self, gateway: Any, state_dir: str, config: Config,
                 clock: Callable[[], float] = time.time,
                 progress: Optional[Progress] = None) -> None:
        self.gateway = gateway
        self.config = config
        self.clock = clock
        self.progress = progress
        self.ledger = Ledger(state_dir, float(config.lock_timeout_s), clock)
        self.margin = Margin(int(config.margin_min_kib), float(config.margin_percent))

    # --- public API --------------------------------------------------------------------
    def reserve(self, plan: Plan, guest: GuestId) -> dict[str, Any]:
        """Claim the plan's pages for the guest (``pending``), adding what is missing."""
        key = guest_key(guest)
        items = [d for d in plan.demand if d.pages > 0]
        with self._locked() as data:
            found = find_guest(data, guest)
            if found is not None and found != key:
                data["guests"][key] = data["guests"].pop(found)
            rec = data["guests"].get(key)
            grow: dict[Pool, int] = {}
            claims: dict[Pool, int] = {}
            if items:
                view = self._view(data, {d.page_size_kib for d in items}, exclude=key)
                placement = place(items, view, self.margin, plan.domain)
                grow = {p: n for p, n in placement.grow.items() if n > 0}
                claims = placement.claims
                if grow:
                    self._grow(data, grow, view, "reserve", key, plan.domain)
            now = self.clock()
            if rec is None:
                rec = {"name": guest.name, "uuid": guest.uuid.lower() if guest.uuid else None,
                       "created": now, "added": {}}
                data["guests"][key] = rec
            for pool, pages in grow.items():
                lg.bump(rec["added"], pool_key(*pool), pages)
            rec.update(state="pending", claimed=_counts(claims), updated=now,
                       demand=[dict(d.to_json(), policy=d.policy) for d in items])
            data["intent"] = None
            self.ledger.write(data)
        return {"added": _counts(grow), "claimed": _counts(claims)}

    def settle(self, guest: GuestId) -> dict[str, Any]:
        """The guest started: its pages are mapped, its claim no longer holds free pages."""
        with self._locked() as data:
            key = find_guest(data, guest)
            rec = data["guests"].get(key) if key else None
            if rec is not None and rec["state"] == "pending":
                rec.update(state="active", updated=self.clock())
            self.ledger.write(data)
        return {"guest": key, "state": rec["state"] if rec else None}

    def release(self, guest: GuestId) -> dict[str, Any]:
        """The guest stopped: give back what hugexml added for it, as far as it is free."""
        with self._locked() as data:
            key = find_guest(data, guest)
            rec = data["guests"].get(key) if key else None
            kept: dict[str, int] = {}
            if rec is not None and key is not None:
                if self.config.release_policy == "keep":
                    for pk, pages in rec["added"].items():
                        lg.bump(data["kept"], pk, pages)
                    kept = dict(rec["added"])
                    del data["guests"][key]
                else:
                    rec.update(state="releasing", claimed={}, updated=self.clock())
            released = self._give_back(data)
            left = data["guests"].get(key, {}).get("added", {}) if key else {}
            lg.forget_idle_pools(data)
            self.ledger.write(data)
        return {"guest": key, "released": released, "kept": kept, "unreleased": dict(left)}

    def reconcile(self, guest: Optional[GuestId] = None) -> dict[str, Any]:
        """Finish crashed transactions, expire stale claims, compare the ledger with the
        kernel, retry what is owed back. Reports; never frees what it cannot explain."""
        report: dict[str, Any] = {}
        with self.ledger.lock():
            try:
                data = self.ledger.read()
            except HugexmlError as exc:
                report["corrupt"] = {"moved_to": self.ledger.quarantine(), "error": str(exc),
                                     "rebuilt": "empty ledger: earlier claims and pages "
                                                "hugexml added are unknown, pools left as found"}
                data = lg.empty_ledger()
            report.update(self._begin(data))
            report.update(recovery.sync(self.gateway, data))
            released = self._give_back(data)
            if released:
                report["released"] = released
            if guest is not None:
                key = find_guest(data, guest)
                report["guest"] = {"key": key,
                                   "state": data["guests"][key]["state"] if key else None}
            lg.forget_idle_pools(data)
            if report:
                lg.add_event(data, dict(report, at=self.clock(), op="reconcile"))
            self.ledger.write(data)
        return report

    def allocate_admin(self, size_kib: int, count: int, node: Optional[int] = None,
                       dry_run: bool = False) -> dict[str, Any]:
        """Add ``count`` pages to the pools as an admin change (raises the baseline). A dry
        run writes nothing on the host: no state dir, lock file, ledger or kernel write."""
        self._check_admin_args(size_kib, count)
        with self._admin_session(dry_run) as data:
            view = self._view(data, {size_kib})
            return self._admin_grow(data, view, size_kib, count, node, dry_run)

    def top_up_admin(self, size_kib: int, target: int, node: Optional[int] = None,
                     dry_run: bool = False) -> dict[str, Any]:
        """Grow the pool of ``node`` (None: the whole host) to ``target`` persistent pages,
        counting every page the kernel has now (command line, sysctl, anyone's); never
        shrinks. Read and grow under one lock, so a second run adds nothing."""
        self._check_admin_args(size_kib, target)
        with self._admin_session(dry_run) as data:
            view = self._view(data, {size_kib})
            if node is not None:
                self._check_node(view, node, size_kib)
                have = view.pools[(node, size_kib)].persistent
            else:
                have = sum(view.pools[(n, size_kib)].persistent for n in view.nodes)
            need = max(0, target - have)
            result = self._admin_grow(data, view, size_kib, need, node, dry_run)
        return dict(result, pool_pages=have, target=target, adding=need)

    @contextmanager
    def _admin_session(self, dry_run: bool) -> Iterator[Ledger_t]:
        """The ledger under the lock, or for a dry run a read-only copy (recovery and
        expiry applied in memory only, nothing written)."""
        if not dry_run:
            with self._locked() as data:
                yield data
            return
        data = self.ledger.read_shared()
        self._begin(data)
        yield data

    def _admin_grow(self, data: Ledger_t, view: HostView, size_kib: int, count: int,
                    node: Optional[int], dry_run: bool) -> dict[str, Any]:
        if node is not None:
            self._check_node(view, node, size_kib)
            grow = {(node, size_kib): count} if count else {}
            check_margin(grow, view, self.margin, None)
        else:
            grow = spread(view, size_kib, count, self.margin, None) if count else {}
        result: dict[str, Any] = {"size_kib": size_kib, "add": _counts(grow), "dry_run": dry_run}
        if dry_run:
            return result  # nothing written: recovery, if any, runs again next time
        if grow:
            self._grow(data, grow, view, "admin", None, None)
            for pool, pages in grow.items():
                lg.bump(data["admin"], pool_key(*pool), pages)
            data["intent"] = None
        self.ledger.write(data)  # also keeps what recovery found
        return result

    def shrink_admin(self, size_kib: int, count: int, node: Optional[int] = None) -> dict[str, Any]:
        """Remove up to ``count`` free pages no guest in the ledger needs."""
        self._check_admin_args(size_kib, count)
        with self._locked() as data:
            sync = recovery.sync(self.gateway, data)
            view = self._view(data, {size_kib}, memory=False)
            if node is not None:
                self._check_node(view, node, size_kib)
            nodes = [node] if node is not None else list(view.nodes)
            plan: dict[Pool, tuple[int, list[str]]] = {}
            left = count
            for n in sorted(nodes, key=lambda n: -view.pools[(n, size_kib)].free):
                pk = pool_key(n, size_kib)
                keep = lg.guest_added(data, pk, ("pending", "active"))
                pages = releasable(view, n, size_kib, left, keep)
                if pages > 0:
                    plan[(n, size_kib)] = (pages, recovery.shrink_order(data, pk, admin=True))
                    left -= pages
            removed = self._shrink(data, plan, view, "shrink")
            recovery.drop_released_guests(data)
            lg.forget_idle_pools(data)
            self.ledger.write(data)
        return {"size_kib": size_kib, "requested": count, "removed": removed,
                **({"reconciled": sync} if sync else {})}

    def snapshot(self) -> Ledger_t:
        """The ledger as last written (no lock: the file is replaced atomically)."""
        return self.ledger.read()

    # --- locking and recovery --------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[Ledger_t]:
        with self.ledger.locked() as data:
            notes = self._begin(data)
            if notes:
                lg.add_event(data, dict(notes, at=self.clock(), op="recover"))
            try:
                yield data
            except HugexmlError:
                if notes and data.get("intent") is None:
                    self.ledger.write(data)  # keep the recovery work
                raise

    def _begin(self, data: Ledger_t) -> dict[str, Any]:
        report: dict[str, Any] = {}
        recovered = recovery.recover(self.gateway, data)
        if recovered:
            report["recovered"] = recovered
        expired = recovery.expire(self.config, self.clock(), data)
        if expired:
            report["expired"] = expired
        return report

    # --- helpers -----------------------------------------------------------------------
    def _view(self, data: Ledger_t, sizes_kib: set[int], exclude: Optional[str] = None,
              memory: bool = True) -> HostView:
        view = read_view(self.gateway, sizes_kib, memory=memory)
        for pool in view.pools:
            claimed = lg.pending_claims(data, pool_key(*pool), exclude=exclude)
            if claimed:
                view.claims[pool] = claimed
        return view

    def _grow(self, data: Ledger_t, grow: dict[Pool, int], view: HostView, purpose: str,
              key: Optional[str], domain: Optional[str]) -> None:
        """Intent, kernel writes; on any failure roll back, write the ledger, re-raise. On
        success the caller commits (and clears the intent) in its own ledger write."""
        pools = {}
        for pool, pages in sorted(grow.items()):
            before = view.pools[pool].persistent
            pools[pool_key(*pool)] = {"before": before, "target": before + pages}
            data["baseline"].setdefault(pool_key(*pool), before)
        data["intent"] = {"op": "grow", "purpose": purpose, "guest": key, "pools": pools,
                          "started": self.clock(), "pid": os.getpid()}
        self.ledger.write(data)
        txn = PoolTxn(self.gateway, self.config, domain, self.progress)
        try:
            txn.grow(grow, view.pools)
        except BaseException:
            left = txn.rollback()  # raising here leaves the intent for reconcile
            for pool, pages in left.items():
                lg.bump(data["unreleased"], pool_key(*pool), pages)
            data["intent"] = None
            lg.forget_idle_pools(data)
            self.ledger.write(data)
            raise

    def _shrink(self, data: Ledger_t, plan: dict[Pool, tuple[int, list[str]]], view: HostView,
                purpose: str) -> dict[str, int]:
        if not plan:
            return {}
        data["intent"] = {"op": "shrink", "purpose": purpose, "guest": None,
                          "started": self.clock(), "pid": os.getpid(), "pools": {
                              pool_key(*pool): {"before": view.pools[pool].persistent,
                                                "target": view.pools[pool].persistent - pages,
                                                "buckets": buckets}
                              for pool, (pages, buckets) in plan.items()}}
        self.ledger.write(data)
        txn = PoolTxn(self.gateway, self.config, None, self.progress)
        removed: dict[str, int] = {}
        for pool, (pages, buckets) in sorted(plan.items()):
            got = txn.shrink(pool[0], pool[1], pages, view.pools[pool])
            if got:
                removed[pool_key(*pool)] = got
                lg.debit_in_order(data, pool_key(*pool), buckets, got)
        data["intent"] = None
        return removed

    def _give_back(self, data: Ledger_t) -> dict[str, int]:
        """Shrink pools by what hugexml owes back (unreleased, releasing guests), as far as
        those pages are free and unclaimed now."""
        wants = {}
        for pk in lg.pools_in(data):
            want = lg.count(data["unreleased"], pk) + lg.guest_added(data, pk, ("releasing",))
            if want > 0:
                wants[pk] = want
        if not wants:
            return {}
        view = self._view(data, {parse_pool_key(pk)[1] for pk in wants}, memory=False)
        plan: dict[Pool, tuple[int, list[str]]] = {}
        for pk, want in wants.items():
            pool = parse_pool_key(pk)
            keep = lg.expected_pages(data, pk) - want
            pages = releasable(view, pool[0], pool[1], want, keep)
            if pages > 0:
                plan[pool] = (pages, recovery.shrink_order(data, pk, admin=False))
        removed = self._shrink(data, plan, view, "release")
        recovery.drop_released_guests(data)
        return removed

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


__all__ = ["Allocator", "DemandItem", "find_guest", "guest_key"]
