"""hugexml reconcile: make the state true again after a crash, a daemon restart, a lost
hook call or a bad state file."""
from __future__ import annotations

import argparse
import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = ("finish interrupted changes, rebuild lost claims of running guests, release claims "
        "of guests that stopped, give back owed free pages")
EPILOG = """examples:
  hugexml reconcile
  hugexml reconcile --json
  hugexml reconcile --no-live     # books against the kernel only, no look at running guests"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-live", action="store_true",
                   help="do not read the running qemu guests (their numa_maps and libvirt's "
                        "status files) to rebuild lost claims and release stale ones")


def live_guests(ctx: Any) -> tuple[Any, bool]:
    """(running guests, whether that list is complete): a fake root without a procfs of its
    own cannot prove that a guest stopped."""
    from hugexml.core.errors import HugexmlError
    from hugexml.host.hostinfo import read_host_info
    from hugexml.host.live import running_guests

    try:
        guests = running_guests(ctx.root, read_host_info(ctx.root))
    except HugexmlError:
        return None, False
    return guests, os.path.isdir(ctx.root.path("proc/self"))


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli._alloc import allocator, print_json
    from hugexml.core.errors import printable

    live, complete = (None, False) if args.no_live else live_guests(ctx)
    report = allocator(ctx).reconcile(live=live, all_running=complete)
    if args.json:
        print_json(report)
    elif not report:
        print("state and kernel agree; nothing to do")
    else:
        for key, value in sorted(report.items()):
            print(printable(f"{key}: {value}"))
    return 0
