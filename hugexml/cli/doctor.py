"""hugexml doctor: check the host is set up for hugepage guests, one check a line."""
from __future__ import annotations

import argparse
import json

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "check the host for hugepage guests: ok / warn / fail per check, with the fix"
EPILOG = """examples:
  hugexml doctor                 # exit 0 all ok, 1 warnings, 2 failures
  hugexml doctor --json
  hugexml doctor --connect qemu:///system"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", metavar="URI", default="qemu:///system",
                   help="libvirt URI for the guests check (read-only; skipped when libvirt-python "
                        "is missing or the daemon is not reachable)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.system.checks import exit_code
    from hugexml.system.doctor import Doctor

    checks = Doctor(ctx.root, ctx.state_dir, libvirt_uri=args.connect,
                    config_path=ctx.config_path, config_explicit=ctx.config_explicit).run()
    code = exit_code(checks)
    if args.json:
        print(json.dumps({"checks": [c.to_json() for c in checks], "exit_code": code},
                         indent=2, sort_keys=True))
    else:
        for check in checks:
            print(check.line())
    return code
