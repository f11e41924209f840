"""hugexml reconcile: compare the ledger with the kernel after a crash or a daemon restart."""
from __future__ import annotations

import argparse
from typing import Any

HELP = "finish interrupted transactions, expire stale claims, give back owed free pages"
EPILOG = """examples:
  hugexml reconcile
  hugexml reconcile --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.commands._alloc import allocator, print_json

    report = allocator(ctx).reconcile()
    if args.json:
        print_json(report)
    elif not report:
        print("ledger and kernel agree; nothing to do")
    else:
        for key, value in sorted(report.items()):
            print(f"{key}: {value}")
    return 0
