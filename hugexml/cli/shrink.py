"""hugexml shrink: remove free pages from the pools, never pages guests in the ledger need."""
from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "remove up to N free hugepages of SIZE (never pages claimed or used by guests)"
EPILOG = """examples:
  hugexml shrink --size 2M --count 512 --node 0
  hugexml shrink --size 1G --count 4 --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hugexml.cli._alloc import add_pool_arguments

    add_pool_arguments(p, "pages to remove (at most)", "host NUMA node (default: any)")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli._alloc import allocator, fmt_pools, pool_args, print_json

    size_kib, count, node = pool_args(args)
    result = allocator(ctx).shrink_admin(size_kib, count, node)
    removed = sum(result["removed"].values())
    if args.json:
        print_json(result)
    else:
        print(f"removed: {fmt_pools(result['removed'])}")
    if removed == count:
        return 0
    # exit 1 always says why, on stderr, in one line (with --json too)
    from hugexml.core.units import format_kib

    where = "" if node is None else f" on node {node}"
    print(f"hugexml shrink: {count - removed} of {count} x {format_kib(size_kib)} pages{where} "
          "were not removed: not free, reserved, or needed by guests", file=sys.stderr)
    return 1
