"""Import of hugexml 0.1's single ``ledger.json`` (schema 1) into the schema-2 store.

An upgrade on a hypervisor with running guests must not forget the pages the old version
added. The import is tolerant: every valid part is carried over, every bad part is named in
the state's notes (its pages, where they can still be read, are owed back rather than
lost). The old file is moved to ``quarantine/`` only after the new files are written
(``ledger.Store.commit``); when a schema-2 journal already exists the old file is stale and
is only moved aside.
"""
from __future__ import annotations

from hugexml.planning import records as rc
from hugexml.planning.records import GuestRecord, Intent, KeptLot, Pool, RecordError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

    from hugexml.planning.state import State

V1_BUCKETS = ("baseline", "admin", "unreleased")


def import_legacy(raw: dict[str, Any], state: State, known: Optional[set[Pool]],
                  path: str) -> None:
    """The schema-1 ledger ``raw`` (read from ``path`` by ``ledger.Store``) into ``state``."""
    notes: list[str] = []
    journal = state.journal
    for bucket in (*V1_BUCKETS, "kept"):
        counts = rc._pool_counts(raw.get(bucket, {}), f"schema-1 {bucket}", notes, known)
        for pool, pages in counts.items():
            book = journal.book(pool)
            if bucket == "kept":
                book.kept.append(KeptLot(pages, None))
            else:
                setattr(book, bucket, getattr(book, bucket) + pages)
    guests = raw.get("guests", {})
    for old_key, old in (guests.items() if isinstance(guests, dict) else ()):
        _import_guest(state, old_key, old, notes, known)
    intent = raw.get("intent")
    if isinstance(intent, dict):
        intent = dict(intent, guest=None, started=intent.get("started", 0),
                      pid=intent.get("pid", 0), purpose=str(intent.get("purpose", "v1")))
        pools = intent.get("pools")
        if isinstance(pools, dict):
            intent["pools"] = {k: dict(v, buckets=[b for b in v.get("buckets", [])
                                                   if b in rc.SHRINK_BUCKETS])
                               for k, v in pools.items() if isinstance(v, dict)}
        try:
            journal.intent = Intent.from_json(intent, notes, known)
        except RecordError as exc:
            notes.append(f"schema-1 intent dropped: {exc}")
    state.notes.append(f"{path}: schema-1 ledger imported ({len(state.guests)} guests)")
    state.notes.extend(f"{path}: {n}" for n in notes)
    state.journal_dirty = True
    state.dirty.update(state.guests)
    state.legacy_path = path


def _import_guest(state: State, old_key: str, old: Any, notes: list[str],
                  known: Optional[set[Pool]]) -> None:
    where = f"schema-1 guest {str(old_key)[:40]!r}"
    added = rc._pool_counts(old.get("added", {}) if isinstance(old, dict) else {},
                            f"{where} added", notes, known)
    try:
        if not isinstance(old, dict) or old.get("state") not in ("pending", "active",
                                                                 "releasing"):
            raise RecordError("not a guest record")
        if old["state"] == "releasing":
            raise RecordError("was being released")
        name = rc.check_name(old.get("name"))
        uuid = rc.normalize_uuid(old.get("uuid")) if old.get("uuid") else None
        rec = GuestRecord(key=rc.guest_key(name, uuid), name=name, uuid=uuid,
                          state=old["state"], created=_time(old.get("created")),
                          updated=_time(old.get("updated")), added=added,
                          claimed=rc._pool_counts(old.get("claimed", {}), f"{where} claimed",
                                                  notes, known)).check()
    except RecordError as exc:
        for pool, pages in added.items():
            state.journal.book(pool).unreleased += pages
        if added:
            notes.append(f"{where}: {exc}; its pages are owed back")
        return
    for pool, pages in added.items():
        state.journal.book(pool).guests += pages
    state.guests[rec.key] = rec


def _time(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value <= rc.MAX_TIME:
        raise RecordError(f"{str(value)[:40]!r} is not a time")
    return float(value)
