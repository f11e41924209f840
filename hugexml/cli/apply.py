"""hugexml apply: rewrite defined guests' <memoryBacking> through libvirt, with backup/undo."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Optional

HELP = "rewrite defined libvirt guests for hugepages (diff, backup, redefine; --undo restores)"
EPILOG = """examples:
  hugexml apply vm1 --page-size 2M --dry-run
  hugexml apply --all --page-size auto
  hugexml apply vm1 --page-size largest   # the largest size that divides, supply or not
  hugexml apply --undo vm1
"""

# Tests replace this: (uri) -> (connection, libvirt error class).
CONNECT: Optional[Callable[[Optional[str]], tuple[Any, type[BaseException]]]] = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="domain names")
    p.add_argument("--all", action="store_true", help="every persistent domain")
    p.add_argument(
        "--page-size",
        default="auto",
        metavar="SIZE|auto",
        help="page size (2M, 1G, 2048KiB); auto: per cell, the largest host page size that "
        "divides its memory and that the host can supply there now, else the next one down; "
        "largest: the largest that divides, whatever the host can supply (default: auto)",
    )
    p.add_argument(
        "--memfd",
        action="store_true",
        help="also back memory with memfd (no mount needed); replaces <source type='anonymous'/>",
    )
    p.add_argument(
        "--drop-ondemand",
        action="store_true",
        help="remove <allocation mode='ondemand'/>, which libvirt refuses with hugepages",
    )
    p.add_argument("--undo", action="store_true", help="restore each DOMAIN from its newest backup")
    p.add_argument(
        "--connect", "-c", metavar="URI", default=None, help="libvirt URI (default: libvirt's)"
    )
    p.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    p.add_argument(
        "--backup-dir",
        default=None,
        metavar="DIR",
        help="where old XML is kept (default: /var/lib/hugexml/backups)",
    )
    p.add_argument("--no-diff", action="store_true", help="do not print diffs")
    p.add_argument("--json", action="store_true", help="print results as JSON")


def _page_size(text: str) -> Any:
    from hugexml.core.errors import InvalidInput
    from hugexml.core.units import UnitError
    from hugexml.planning.pagesize import parse_choice

    try:
        return parse_choice(text)
    except UnitError as exc:
        raise InvalidInput(reason=f"--page-size: {exc}") from None


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.core.errors import InvalidInput
    from hugexml.host.hostinfo import read_host_info
    from hugexml.ops import apply as ap

    if args.undo and (args.all or not args.domains):
        raise InvalidInput(reason="--undo needs domain names (not --all)")
    if args.all == bool(args.domains):
        raise InvalidInput(reason="name the domains, or give --all (not both)")
    from hugexml.planning.pagesize import Pick

    page_size = _page_size(args.page_size)
    host = read_host_info(ctx.root)
    supply: Any = None
    supply_notes: list[str] = []
    if page_size is Pick.AUTO and not args.undo:
        from hugexml.cli.rewrite import read_supply

        supply, supply_notes = read_supply(ctx)
    conn, error = (CONNECT or ap.connect)(args.connect)
    try:
        applier = ap.Applier(
            conn,
            error,
            host,
            backup_dir=args.backup_dir or ap.DEFAULT_BACKUP_DIR,
            dry_run=args.dry_run,
            fit_check=_fit_check(ctx),
            supply=supply,
            supply_notes=supply_notes,
        )
        names = applier.persistent_names() if args.all else list(dict.fromkeys(args.domains))
        outcomes = []
        for name in names:
            if args.undo:
                outcome = applier.undo(name)
            else:
                outcome = applier.apply(
                    name,
                    page_size,
                    memfd=args.memfd,
                    refuse_unfit=args.all and isinstance(page_size, Pick),
                    drop_ondemand=args.drop_ondemand,
                )
            outcomes.append(outcome)
            if not args.json:
                _print_outcome(outcome, args.no_diff)
    finally:
        close = getattr(conn, "close", None)
        if callable(close):
            close()
    if args.json:
        print(
            json.dumps(
                {"results": [o.to_json() for o in outcomes], "summary": ap.summary(outcomes)},
                indent=2,
            )
        )
    else:
        print(ap.summary_line(outcomes))
    return ap.exit_code(outcomes)


def _print_outcome(outcome: Any, no_diff: bool) -> None:
    if outcome.diff and not no_diff:
        sys.stdout.write(outcome.diff)
    for note in outcome.notes:
        print(f"  note: {note}")
    stream = sys.stderr if not outcome.ok else sys.stdout
    print(outcome.message, file=stream)


def _fit_check(ctx: Any) -> Any:
    from hugexml.host.sysfs import HostGateway
    from hugexml.ops.apply import capacity_fit_check

    gateway = HostGateway(ctx.root)

    def memtotal(node: int) -> Optional[int]:
        return gateway.node_meminfo(node).get("MemTotal")

    return capacity_fit_check(memtotal)
