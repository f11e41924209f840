"""The state store's contents in memory (pure): ``State``, what ``ledger.Store`` loads and
commits, and ``due_time``, when a hook call should next do due work.

The records themselves (guest records, the host journal, kept lots) are
``hugexml.planning.records``; reading and writing them is ``hugexml.alloc.ledger``'s; changing
them under the lock is ``hugexml.alloc.recovery``'s and the allocator's.
"""
from __future__ import annotations

from hugexml.core.typed import Typed, field
from hugexml.planning.records import GuestRecord, Journal

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional


class State(Typed):
    """Everything the store holds, as loaded, and what a commit must write.

    ``notes``: what loading dropped or moved aside, one line each. ``dirty``: guest records
    to write; ``removed``: guest records to delete; ``journal_dirty``: the journal must be
    written. ``journal_lost``: there were guest records but no readable journal, so its
    books are rebuilt from them and the kernel (``hugexml.alloc.recovery.begin``)."""

    journal: Journal
    guests: dict[str, GuestRecord]
    notes: list[str] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    journal_dirty: bool = False
    journal_lost: bool = False
    legacy_path: Optional[str] = None  # a schema-1 ledger imported: moved aside on commit

    def remove(self, key: str) -> Optional[GuestRecord]:
        rec = self.guests.pop(key, None)
        self.dirty.discard(key)
        self.removed.add(key)
        return rec

    def put(self, rec: GuestRecord) -> None:
        self.guests[rec.key] = rec
        self.removed.discard(rec.key)
        self.dirty.add(rec.key)


OWED_RETRY_S = 60.0  # how soon a hook call tries again to give back pages that were busy


def due_time(state: State, now: float) -> Optional[float]:
    """When a hook call should next take the lock for due work (``ledger.DUE_FILE``): now
    plus a minute while pages are owed back, the end of the soonest keep window; None when
    nothing is due."""
    times = [lot.until for book in state.journal.pools.values() for lot in book.kept
             if lot.until is not None]
    if any(book.unreleased for book in state.journal.pools.values()):
        times.append(now + OWED_RETRY_S)
    return min(times) if times else None
