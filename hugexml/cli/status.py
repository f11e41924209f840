"""hugexml status: the hugepage pools per node and size, the mounts, the guests with a claim.

``--guests`` adds what every running qemu guest really maps (``hugexml.host.usage``) next to its
ledger claim and its plan; a mismatch exits 1. ``--prometheus [FILE]`` writes the same data
in the node-exporter textfile format (``hugexml.system.prometheus``), atomically; ``-`` = stdout.
"""
from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

HELP = "show hugepage pools per node and size, hugetlbfs mounts and claimed guests"
EPILOG = """examples:
  hugexml status
  hugexml status --json
  hugexml status --reconcile     # first compare the ledger with the kernel (takes the lock)
  hugexml status --guests        # pages each running guest maps vs its claim and plan
  hugexml status --prometheus /var/lib/node_exporter/textfile/hugexml.prom"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--reconcile", action="store_true",
                   help="reconcile the ledger with the kernel first (finishes crashed "
                        "transactions, gives back owed pages, quarantines bad state files)")
    p.add_argument("--guests", action="store_true",
                   help="also show the hugepages each running qemu guest maps per node and "
                        "size, next to its ledger claim and its plan; exit 1 on a mismatch")
    p.add_argument("--prometheus", nargs="?", const="-", default=None, metavar="FILE",
                   help="write node-exporter textfile metrics to FILE, replaced atomically "
                        "('-' or no FILE: stdout). Mismatches are the metric "
                        "hugexml_guest_hugepages_mismatch, not the exit code")


def _mounts(ctx: Any) -> list[dict[str, Any]]:
    from hugexml.system.mounts import list_mounts

    return [{"path": m.path, "page_size_kib": m.page_size_kib} for m in list_mounts(ctx.root)]


def collect_status(ctx: Any) -> dict[str, Any]:
    """Everything ``status`` shows, as data (also what ``--json`` prints)."""
    from hugexml.alloc.ledger import Store
    from hugexml.alloc.txn import predicted_allocatable, read_view
    from hugexml.cli._alloc import gateway
    from hugexml.core.errors import HugexmlError
    from hugexml.planning.fit import resv_share
    from hugexml.planning.records import Journal, pool_key
    from hugexml.planning.state import State

    gw = gateway(ctx)
    sizes = tuple(gw.page_sizes_kib())
    view = read_view(gw, sizes)
    known = {(n, s) for n in view.nodes for s in sizes}
    store = Store(ctx.state_dir, boot_id=gw.boot_id() if hasattr(gw, "boot_id") else "")
    status: dict[str, Any] = {"state_dir": ctx.state_dir, "state_error": None}
    try:
        state = store.read(known)
    except HugexmlError as exc:
        status["state_error"] = str(exc)
        state = State(journal=Journal(), guests={})
    try:
        buddy = gw.buddyinfo()
    except HugexmlError:
        buddy = {}
    claimed: dict[tuple[int, int], dict[str, int]] = {}
    for rec in state.guests.values():
        for claim_pool, pages in rec.claimed.items():
            row = claimed.setdefault(claim_pool, {"pending": 0, "active": 0})
            row[rec.state] += pages
    pools = []
    for (node, size_kib), pool in sorted(view.pools.items()):
        book = state.journal.pools.get((node, size_kib))
        predicted, exact = (predicted_allocatable(gw, node, size_kib, buddy) if buddy
                            else (None, False))
        claim = claimed.get((node, size_kib), {"pending": 0, "active": 0})
        pools.append({
            "node": node, "size_kib": size_kib, "total": pool.persistent + pool.surplus,
            "free": pool.free, "reserved_at_most": resv_share(view, node, size_kib),
            "surplus": pool.surplus, "claimed": claim["pending"] + claim["active"],
            "claimed_pending": claim["pending"], "claimed_active": claim["active"],
            "added_by_hugexml": book.hugexml_pages if book else 0,
            "baseline": book.baseline if book else None,
            "admin": book.admin if book else 0, "kept": book.kept_pages if book else 0,
            "kept_lots": [{"pages": lot.pages, "until": lot.until}
                          for lot in (book.kept if book else [])],
            "kept_until": min((lot.until for lot in (book.kept if book else [])
                               if lot.until is not None), default=None),
            "unreleased": book.unreleased if book else 0,
            "predicted_allocatable": predicted,
            "predicted_from": "buddyinfo" if exact else "memfree-after-compaction",
        })
    globals_ = {}
    for size_kib in sizes:
        g = gw.global_pool(size_kib)
        globals_[str(size_kib)] = {"total": g.nr, "free": g.free, "reserved": g.resv,
                                   "surplus": g.surplus, "overcommit": g.overcommit}
    guests = [dict({k: v for k, v in rec.to_json().items()
                    if k not in ("demand", "schema", "boot_id")}, key=key)
              for key, rec in sorted(state.guests.items())]

    def books(attr: str) -> dict[str, int]:
        return {pool_key(p): getattr(b, attr) for p, b in sorted(state.journal.pools.items())
                if getattr(b, attr)}
    status.update(
        nodes=list(view.nodes), page_sizes_kib=list(sizes), pools=pools, global_pools=globals_,
        memory={str(n): {"free_kib": view.mem_free_kib.get(n),
                         "total_kib": view.mem_total_kib.get(n)} for n in view.nodes},
        mounts=_mounts(ctx), guests=guests, admin=books("admin"), kept=books("kept_pages"),
        unreleased=books("unreleased"),
        intent=state.journal.intent.to_json() if state.journal.intent else None,
        state_notes=list(state.notes), quarantine=store.quarantined(),
        journal_path=store.journal_path, journal_exists=os.path.exists(store.journal_path))
    return status


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            .rstrip() for r in rows]


def _left(until: Optional[float], now: float) -> str:
    """A keep window's remaining time, short: 9m, 2h, 3d; "ever" for no end."""
    if until is None:
        return "ever"
    left = max(0.0, until - now)
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= seconds:
            return f"{left // seconds:.0f}{unit}"
    return f"{left:.0f}s"


def _kept(pool: dict[str, Any], now: float) -> str:
    if not pool["kept"]:
        return "0"
    lots = pool.get("kept_lots") or []
    ends = [lot["until"] for lot in lots if lot["until"] is not None]
    return f"{pool['kept']} ({_left(min(ends) if ends else None, now)})"


def render(status: dict[str, Any], now: Optional[float] = None) -> list[str]:
    """The table an operator reads at a glance: one row per node and page size. Every
    number here (and more) is in --json."""
    import time

    from hugexml.cli._alloc import fmt_pools
    from hugexml.core.errors import printable
    from hugexml.core.units import format_kib

    now = time.time() if now is None else now
    rows = [["node", "size", "total", "free", "claimed", "kept", "added", "admin",
             "allocatable"]]
    for p in status["pools"]:
        if p["baseline"] is None:  # a pool hugexml never changed: all the admin's
            admin = p["total"] - p["surplus"]
        else:
            admin = p["baseline"] + p["admin"]
        claimed = f"{p['claimed_pending']}+{p['claimed_active']}" if p["claimed"] else "0"
        predicted = p["predicted_allocatable"]
        rows.append([str(p["node"]), format_kib(p["size_kib"]), str(p["total"]), str(p["free"]),
                     claimed, _kept(p, now), str(p["added_by_hugexml"] - p["admin"]), str(admin),
                     "?" if predicted is None else
                     ("<=" if p.get("predicted_from") == "memfree-after-compaction" else "")
                     + str(predicted)])
    lines = _table(rows)
    lines.append("claimed: starting+running guests; kept: for restarts (time left); "
                 "added: by hugexml;")
    lines.append("admin: the admin's own; allocatable: the kernel could add now "
                 "(<=N: at most)")
    mounts = status["mounts"]
    lines.append("mounts: " + (", ".join(
        f"{m['path']} ({format_kib(m['page_size_kib']) if m['page_size_kib'] else '?'})"
        for m in mounts) or "no hugetlbfs mount"))
    if status["state_error"]:
        lines.append(f"state: {status['state_error']}")
    for note in status["state_notes"]:
        lines.append(f"state: {printable(note)}")
    if status["quarantine"]:
        newest = status["quarantine"][-1]
        lines.append(f"quarantined state files: {len(status['quarantine'])} in "
                     f"{status['state_dir']}/quarantine (newest: {printable(newest['why'])})")
    guests = status["guests"]
    lines.append(f"guests with a claim: {len(guests) or 'none'}")
    for g in guests:
        lines.append(f"  {printable(g['name'])} ({g['key']}): {g['state']}; "
                     f"added {fmt_pools(g['added'])}; claimed {fmt_pools(g.get('claimed', {}))}")
    if status["unreleased"]:
        lines.append(f"owed back, given back once free: {fmt_pools(status['unreleased'])}")
    if status["intent"]:
        lines.append("an interrupted transaction awaits reconcile (hugexml status --reconcile)")
    return lines


def guest_usage(ctx: Any, status: dict[str, Any]) -> list[Any]:
    """Running guests' usage, compared with the ledger records ``status`` already holds."""
    from hugexml.host.usage import guest_usage as usage_of

    return usage_of(ctx.root, ledger={"guests": status["guests"]})


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli._alloc import allocator, print_json
    from hugexml.core.errors import InvalidInput

    if args.prometheus == "":
        raise InvalidInput(reason="--prometheus: an empty FILE name")
    to_stdout = args.prometheus == "-"
    if to_stdout and (args.json or args.guests or args.reconcile):
        raise InvalidInput(reason="--prometheus to stdout cannot be combined with --json, "
                                  "--guests or --reconcile; give it a FILE")
    reconciled = allocator(ctx).reconcile() if args.reconcile else None
    status = collect_status(ctx)
    if reconciled is not None:
        status["reconciled"] = reconciled
    wanted = args.guests or args.prometheus is not None
    usages = guest_usage(ctx, status) if wanted else None
    if args.prometheus is not None:
        from hugexml.system.prometheus import render as render_metrics
        from hugexml.system.prometheus import write_textfile

        text = render_metrics(status, usages or [])
        if to_stdout:
            sys.stdout.write(text)
            return 0
        write_textfile(args.prometheus, text)
        if not (args.json or args.guests):
            return 0  # quiet for a timer; the metrics carry everything
    mismatch = 1 if args.guests and any(u.mismatches for u in usages or []) else 0
    if args.guests:
        status["guest_usage"] = [u.to_json() for u in usages or []]
    if args.json:
        print_json(status)
        return mismatch
    if reconciled:
        print(f"reconciled: {reconciled}")
    for line in render(status):
        print(line)
    if args.guests:
        from hugexml.host.usage import render_text

        for line in render_text(usages or []):
            print(line)
    return mismatch
