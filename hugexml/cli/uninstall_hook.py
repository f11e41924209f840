"""hugexml uninstall-hook: remove only the hook files hugexml installed."""
from __future__ import annotations

import argparse
import json

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "remove the hugexml qemu hook (only files hugexml wrote; restores a legacy admin hook)"
EPILOG = """examples:
  hugexml uninstall-hook --json
  hugexml uninstall-hook --root /srv/image   # same as hugexml --root /srv/image uninstall-hook"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hugexml.cli.install_hook import add_root_argument

    add_root_argument(p)
    p.add_argument("--force", action="store_true",
                   help="also remove a hugexml hook file that was edited since it was installed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli.install_hook import command_root, restart_lines
    from hugexml.qemuhook.install import uninstall_hook

    result = uninstall_hook(command_root(args, ctx), force=args.force)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    if not result["removed"]:
        print("no hugexml hook installed: nothing to do")
    for line in result["removed"]:
        print(line)
    for line in restart_lines(result["daemons"], why="re-reads its hooks"):
        print(line)
    return 0
