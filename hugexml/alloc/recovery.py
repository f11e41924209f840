"""Bookkeeping the allocator runs under the lock, before and after its own work.

``begin`` makes a freshly loaded state consistent, whatever a killed process, a bad file or
another tool left: it resolves an intent by the kernel's counts, rebuilds lost books,
balances the journal's per-pool guest total against the guest records (pages no record
claims any more are owed back; records claiming more than the journal knows are clamped),
expires stale pending claims and ended keep windows. ``sync`` compares the books with the
kernel. Every function works on a ``state.State`` and marks what it changed; the caller
commits.

Two rules hold throughout: a page hugexml cannot attribute to itself is never freed (it
joins the baseline), and a page hugexml added is never forgotten while a number still names
it (it is owed back until it is free).
"""
from __future__ import annotations

from hugexml.alloc.txn import read_pool
from hugexml.core.errors import HugexmlError
from hugexml.planning.records import KeptLot, Pool, PoolBook, pool_key

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

    from hugexml.core.config import Config
    from hugexml.host.gateway import Gateway
    from hugexml.planning.state import State


def begin(gateway: Gateway, state: State, config: Config, now: float) -> dict[str, Any]:
    """The report of everything done (empty when the state was consistent)."""
    report: dict[str, Any] = {}
    if state.notes:
        report["notes"] = list(state.notes)
    recovered = recover_intent(gateway, state, config, now)
    if recovered:
        report["recovered"] = recovered
    if state.journal_lost:
        for pool in {p for rec in state.guests.values() for p in rec.added}:
            state.journal.book(pool)
        report["rebuilt"] = "host journal rebuilt from the guest records and the kernel"
    balanced = balance(state, config, now, trust_records=state.journal_lost)
    if balanced:
        report["balanced"] = balanced
    if state.journal_lost:
        report.update(sync(gateway, state))
        state.journal_lost = False
    expired = expire(state, config, now)
    if expired:
        report["expired"] = expired
    ended = end_keep_windows(state, now)
    if ended:
        report["keep_ended"] = ended
    return report


# --- unfinished pool changes -------------------------------------------------------------
def recover_intent(gateway: Gateway, state: State, config: Config,
                   now: float) -> Optional[dict[str, Any]]:
    """Resolve the intent of a pool change that never committed, by the kernel's counts,
    pool by pool: where it grew, the pages added are kept for their window (the retried
    prepare finds them) or owed back; where it shrank (a release, an admin's shrink, the
    larger pool of a demote), the pages removed leave the books it named."""
    intent = state.journal.intent
    if intent is None:
        return None
    out: dict[str, Any] = {"op": intent.op, "purpose": intent.purpose, "guest": intent.guest,
                           "pid": intent.pid, "pools": {}}
    for pool, rec in sorted(intent.pools.items()):
        have = read_pool(gateway, *pool).persistent
        book = state.journal.book(pool)
        if rec.target >= rec.before:
            added = max(0, min(have - rec.before, rec.target - rec.before))
            if added:  # an admin's failed `allocate` keeps nothing
                owe(book, pool, added, config, now,
                    keep=0.0 if intent.purpose == "admin" else None)
            out["pools"][pool_key(pool)] = {"added_then_owed_back": added}
        else:
            removed = max(0, min(rec.before - have, rec.before - rec.target))
            out["pools"][pool_key(pool)] = {"removed": removed,
                                            "from": debit(book, rec.buckets, removed)}
    state.journal.intent = None
    state.journal_dirty = True
    return out


FOREVER = -1.0  # a keep window without end (``policy = keep``, a guest's keep for="forever")


def owe(book: PoolBook, pool: Pool, pages: int, config: Config, now: float,
        keep: Optional[float] = None) -> str:
    """Pages a guest gave up: kept for a window, or owed back. ``keep``: the window in
    seconds (FOREVER, 0 for at once), else the guest's override or ``[release]``'s:
    ``policy = keep`` is for ever, ``keep_for`` per page size."""
    if keep is None:
        keep = FOREVER if config.release_policy == "keep" else config.keep_window_s(pool[1])
    if keep == FOREVER:
        add_kept(book, pages, None)
        return "kept"
    if keep > 0:
        add_kept(book, pages, now + keep)
        return "kept"
    book.unreleased += pages
    return "unreleased"


def add_kept(book: PoolBook, pages: int, until: Optional[float]) -> None:
    for lot in book.kept:
        if lot.until == until:
            lot.pages += pages
            return
    book.kept.append(KeptLot(pages, until))
    book.kept.sort(key=lambda lot: (lot.until is None, lot.until or 0.0))
    while len(book.kept) > 64:  # records.MAX_KEPT_LOTS: merge the two soonest-ending lots
        first = book.kept.pop(0)
        book.kept[0].pages += first.pages


def take_kept(book: PoolBook, pages: int) -> int:
    """Take up to ``pages`` kept pages, soonest-ending lots first; how many were taken."""
    taken = 0
    for lot in book.kept:
        step = min(lot.pages, pages - taken)
        lot.pages -= step
        taken += step
    book.kept = [lot for lot in book.kept if lot.pages]
    return taken


def debit(book: PoolBook, buckets: tuple[str, ...], pages: int) -> dict[str, int]:
    """Take ``pages`` from the books in ``buckets`` order; what each gave."""
    out: dict[str, int] = {}
    for bucket in buckets:
        if pages <= 0:
            break
        if bucket == "kept":
            taken = take_kept(book, pages)
        else:
            taken = min(pages, getattr(book, bucket))
            setattr(book, bucket, getattr(book, bucket) - taken)
        if taken:
            out[bucket] = taken
            pages -= taken
    return out


# --- the journal against the guest records ------------------------------------------------
def balance(state: State, config: Config, now: float,
            trust_records: bool = False) -> dict[str, Any]:
    """Make each pool's ``guests`` total equal the sum of the records' ``added``.

    Fewer in the records (a record was lost, quarantined or half-written): the difference is
    owed back. More in the records: the journal is the authority (a record may be forged or
    stale) and the records are clamped, newest first; unless the journal itself was lost,
    then the records are all there is (``trust_records``)."""
    out: dict[str, Any] = {}
    attributed: dict[Pool, int] = {}
    for rec in state.guests.values():
        for pool, pages in rec.added.items():
            attributed[pool] = attributed.get(pool, 0) + pages
    for pool in sorted(set(attributed) | set(state.journal.pools)):
        book = state.journal.book(pool)
        have = attributed.get(pool, 0)
        if have == book.guests:
            continue
        state.journal_dirty = True
        if trust_records:
            book.guests = have
        elif have < book.guests:
            orphans = book.guests - have
            book.guests = have
            out[pool_key(pool)] = {"unclaimed_pages": orphans,
                                   "now": owe(book, pool, orphans, config, now)}
        else:
            out[pool_key(pool)] = {"clamped": clamp_records(state, pool, have - book.guests)}
    return out


def clamp_records(state: State, pool: Pool, pages: int) -> dict[str, int]:
    """Remove ``pages`` from the records' ``added`` in ``pool``, newest records first; the
    pages taken per guest name (for reports)."""
    out: dict[str, int] = {}
    for rec in sorted(state.guests.values(), key=lambda r: (-r.created, r.key)):
        if pages <= 0:
            break
        taken = min(pages, rec.added.get(pool, 0))
        if taken:
            rec.added[pool] -= taken
            if not rec.added[pool]:
                del rec.added[pool]
            state.dirty.add(rec.key)
            out[rec.name] = out.get(rec.name, 0) + taken
            pages -= taken
    return out


def release_record(state: State, key: str, config: Config, now: float) -> dict[str, Any]:
    """Forget a guest's record; its added pages are kept for their window or owed back."""
    rec = state.remove(key)
    moved: dict[str, dict[str, int]] = {"kept": {}, "unreleased": {}}
    if rec is None:
        return moved
    for pool, pages in rec.added.items():
        book = state.journal.book(pool)
        book.guests = max(0, book.guests - pages)
        moved[owe(book, pool, pages, config, now, keep=rec.keep_s)][pool_key(pool)] = pages
    state.journal_dirty = True
    return moved


def expire(state: State, config: Config, now: float) -> list[str]:
    """Pending claims older than ``[claims] pending_timeout``: the guest never started."""
    limit = float(config.pending_timeout_s)
    stale = [k for k, r in state.guests.items() if r.state == "pending" and now - r.updated > limit]
    names = [state.guests[k].name for k in stale]
    for key in stale:
        release_record(state, key, config, now)
    return names


def end_keep_windows(state: State, now: float) -> dict[str, int]:
    """Kept pages whose window ended are owed back (given back as soon as they are free)."""
    out: dict[str, int] = {}
    for pool, book in state.journal.pools.items():
        ended = sum(lot.pages for lot in book.kept if lot.until is not None and lot.until <= now)
        if ended:
            book.kept = [lot for lot in book.kept if lot.until is None or lot.until > now]
            book.unreleased += ended
            out[pool_key(pool)] = ended
            state.journal_dirty = True
    return out


# --- the books against the kernel --------------------------------------------------------
def sync(gateway: Gateway, state: State) -> dict[str, Any]:
    """Compare every tracked pool with the kernel: more pages than the books explain join
    the baseline (someone else's, never freed); fewer are debited: owed pages first, then
    kept, guests' (newest records first), admin, baseline pages."""
    grown: dict[str, int] = {}
    clamped: dict[str, Any] = {}
    for pool, book in sorted(state.journal.pools.items()):
        try:
            now = read_pool(gateway, *pool).persistent
        except HugexmlError as exc:
            clamped[pool_key(pool)] = {"error": str(exc)}
            continue
        expected = book.expected
        if now > expected:
            book.baseline += now - expected
            grown[pool_key(pool)] = now - expected
            state.journal_dirty = True
        elif now < expected:
            deficit = expected - now
            took = debit(book, ("unreleased", "kept"), deficit)
            deficit -= sum(took.values())
            from_guests = min(deficit, book.guests)
            if from_guests:
                for name, pages in clamp_records(state, pool, from_guests).items():
                    took[f"guest:{name}"] = pages
                book.guests -= from_guests
                deficit -= from_guests
            took.update(debit(book, ("admin", "baseline"), deficit))
            clamped[pool_key(pool)] = took
            state.journal_dirty = True
    out: dict[str, Any] = {}
    if grown:
        out["unexplained_growth"] = grown
    if clamped:
        out["clamped"] = clamped
    return out


def forget_idle_pools(state: State) -> None:
    """Drop the books of pools where hugexml holds nothing: later changes there are the
    admin's business, not differences to explain."""
    for pool in [p for p, b in state.journal.pools.items() if b.hugexml_pages == 0]:
        del state.journal.pools[pool]
        state.journal_dirty = True
