"""hugexml release: what the hook's release does, by hand: give back a guest's added pages."""
from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "give back the hugepages hugexml added for a guest (only pages that are free)"
EPILOG = """examples:
  hugexml release vm1
  hugexml release 8f1d6c3e-0b6a-4a43-9d7e-3f3c4f0e7a11 --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("guest", metavar="NAME|UUID", help="guest name or uuid of a claim")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli._alloc import allocator, fmt_pools, print_json
    from hugexml.core.errors import InvalidInput, printable
    from hugexml.core.model import GuestId
    from hugexml.planning.records import MAX_NAME_BYTES

    name = args.guest.strip()
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or "\0" in name:
        raise InvalidInput(reason=f"guest name must be 1-{MAX_NAME_BYTES} bytes")
    result = allocator(ctx).release(GuestId(name))
    shown = printable(name)
    if args.json:
        print_json(result)
    elif result["guest"] is None:
        print(f"{shown}: no claim; released owed pages: {fmt_pools(result['released'])}")
    else:
        print(f"{shown}: released {fmt_pools(result['released'])}")
        if result["kept"]:
            print(f"kept in the pool (release policy 'keep'): {fmt_pools(result['kept'])}")
        if result["unreleased"]:
            print(f"still in use, given back later: {fmt_pools(result['unreleased'])}")
    if result["guest"] is None:  # exit 1 always says why, on stderr, in one line
        print(f"hugexml release: {shown}: no claim to release", file=sys.stderr)
        return 1
    return 0
