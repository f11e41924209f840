"""The state store as one plain dict, for assertions: what the old single-file ledger showed.

``snapshot(state_dir)`` reads without repairing anything. Guests are keyed by NAME (test
guests have unique names); each keeps its record ``key``. Pool counts are {"node:size": n}.
"""
from __future__ import annotations

import os
from typing import Any

from hugexml.alloc.ledger import Store
from hugexml.planning.records import pool_key


def snapshot(state_dir: Any) -> dict[str, Any]:
    state = Store(str(state_dir)).load(repair=False)
    books = state.journal.pools

    def bucket(attr: str) -> dict[str, int]:
        return {pool_key(p): getattr(b, attr) for p, b in sorted(books.items())
                if getattr(b, attr)}

    return {
        "guests": {rec.name: {"key": key, "name": rec.name, "uuid": rec.uuid,
                              "state": rec.state,
                              "added": {pool_key(p): n for p, n in rec.added.items()},
                              "claimed": {pool_key(p): n for p, n in rec.claimed.items()}}
                   for key, rec in sorted(state.guests.items())},
        "baseline": {pool_key(p): b.baseline for p, b in sorted(books.items())},
        "admin": bucket("admin"), "kept": bucket("kept_pages"),
        "unreleased": bucket("unreleased"), "guests_total": bucket("guests"),
        "intent": state.journal.intent.to_json() if state.journal.intent else None,
        "notes": list(state.notes),
    }


def quarantined(state_dir: Any) -> list[str]:
    path = os.path.join(str(state_dir), "quarantine")
    return sorted(n for n in os.listdir(path) if not n.endswith(".why")) \
        if os.path.isdir(path) else []
