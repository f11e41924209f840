"""Recovery and bookkeeping of the ledger for hugexml.alloc: intents left by a killed
writer, stale pending claims, differences between the ledger and the kernel, and the orders
in which buckets give pages back. Called with the ledger lock held.
"""
from __future__ import annotations

from typing import Any, Optional

from hugexml import ledger as lg
from hugexml.errors import HugexmlError
from hugexml.ledger import Ledger_t, parse_pool_key
from hugexml.txn import read_pool


def recover(gateway: Any, data: Ledger_t) -> Optional[dict[str, Any]]:
    """Resolve the intent of a transaction that never committed, by the kernel's counts."""
    intent = data.get("intent")
    if not intent:
        return None
    out: dict[str, Any] = {"op": intent["op"], "purpose": intent.get("purpose"),
                           "guest": intent.get("guest"), "pid": intent.get("pid"),
                           "pools": {}}
    for pk, rec in sorted(intent["pools"].items()):
        node, size_kib = parse_pool_key(pk)
        now = read_pool(gateway, node, size_kib).persistent
        before, target = rec["before"], rec["target"]
        if intent["op"] == "grow":
            added = max(0, min(now - before, target - before))
            if added:
                data["baseline"].setdefault(pk, before)
                lg.bump(data["unreleased"], pk, added)
            out["pools"][pk] = {"added_then_owed_back": added}
        else:
            removed = max(0, min(before - now, before - target))
            out["pools"][pk] = {"removed": removed, "from": lg.debit_in_order(
                data, pk, list(rec.get("buckets") or []), removed)}
    data["intent"] = None
    return out

def expire(config: Any, now: float, data: Ledger_t) -> list[str]:
    limit = float(config.pending_timeout_s)
    expired = []
    for key, rec in list(data["guests"].items()):
        if rec["state"] == "pending" and now - float(rec.get("updated", now)) > limit:
            bucket = "kept" if config.release_policy == "keep" else "unreleased"
            for pk, pages in rec["added"].items():
                lg.bump(data[bucket], pk, pages)
            del data["guests"][key]
            expired.append(key)
    return expired

def sync(gateway: Any, data: Ledger_t) -> dict[str, Any]:
    """Compare tracked pools with the kernel: more pages than the ledger explains join
    the baseline (someone else's, never freed); fewer are debited, pages owed back first,
    then kept, guests' (newest first), admin, baseline pages."""
    grown: dict[str, int] = {}
    clamped: dict[str, Any] = {}
    for pk in sorted(lg.pools_in(data)):
        node, size_kib = parse_pool_key(pk)
        try:
            now = read_pool(gateway, node, size_kib).persistent
        except HugexmlError as exc:
            clamped[pk] = {"error": str(exc)}
            continue
        expected = lg.expected_pages(data, pk)
        if now > expected:
            lg.bump(data["baseline"], pk, now - expected)
            grown[pk] = now - expected
        elif now < expected:
            clamped[pk] = lg.debit_in_order(data, pk, deficit_order(data, pk),
                                            expected - now)
    drop_released_guests(data)
    out: dict[str, Any] = {}
    if grown:
        out["unexplained_growth"] = grown
    if clamped:
        out["clamped"] = clamped
    return out

def releasing(data: Ledger_t, pk: str) -> list[str]:
    recs = [(rec.get("updated", 0), gk) for gk, rec in data["guests"].items()
            if rec["state"] == "releasing" and lg.count(rec["added"], pk)]
    return [f"guest:{gk}" for _, gk in sorted(recs)]

def shrink_order(data: Ledger_t, pk: str, admin: bool) -> list[str]:
    order = ["unreleased", *releasing(data, pk)]
    return [*order, "kept", "admin", "baseline"] if admin else order

def deficit_order(data: Ledger_t, pk: str) -> list[str]:
    live = sorted(((rec.get("created", 0), gk) for gk, rec in data["guests"].items()
                   if rec["state"] != "releasing"), reverse=True)
    return ["unreleased", *releasing(data, pk), "kept",
            *(f"guest:{gk}" for _, gk in live), "admin", "baseline"]

def drop_released_guests(data: Ledger_t) -> None:
    for gk, rec in list(data["guests"].items()):
        if rec["state"] == "releasing" and not rec["added"]:
            del data["guests"][gk]

