"""hugexml allocate: add pages to the pools as an admin change (raises the baseline)."""
from __future__ import annotations

import argparse

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "add N hugepages of SIZE to the pools (admin pages: guest releases never take them)"
EPILOG = """examples:
  hugexml allocate --size 2M --count 512 --node 0
  hugexml allocate --size 1G --count 4 --dry-run --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hugexml.cli._alloc import add_pool_arguments

    add_pool_arguments(p, "pages to add",
                       "host NUMA node (default: the nodes with the most free memory first)")
    p.add_argument("--dry-run", action="store_true",
                   help="show where pages would go, change nothing")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli._alloc import allocator, fmt_pools, pool_args, print_json

    size_kib, count, node = pool_args(args)
    result = allocator(ctx).allocate_admin(size_kib, count, node, dry_run=args.dry_run)
    if args.json:
        print_json(result)
    else:
        verb = "would add" if args.dry_run else "added"
        print(f"{verb}: {fmt_pools(result['add'])}")
    return 0
