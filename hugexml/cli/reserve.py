"""hugexml reserve: what the hook's prepare does, by hand: plan a domain, claim its pages."""
from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "claim (and allocate what is missing of) the hugepages a domain XML needs"
EPILOG = """examples:
  hugexml reserve /etc/libvirt/qemu/vm1.xml
  virsh dumpxml vm1 | hugexml reserve - --json
  hugexml release vm1        # gives back what reserve added"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("xml", metavar="DOMAIN.xml", help="domain XML file, '-' for stdin")
    p.add_argument("--name", help="guest name of the claim (default: the XML's <name>)")
    p.add_argument("--uuid", help="guest uuid of the claim, any spelling (default: the "
                                    "XML's <uuid>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def read_xml(path: str) -> bytes:
    from hugexml.core.errors import InvalidInput
    from hugexml.xml.xmlsafe import read_limited

    if path == "-":
        return read_limited(sys.stdin.buffer, source="<stdin>")
    try:
        with open(path, "rb") as fh:
            return read_limited(fh, source=path)
    except OSError as exc:
        raise InvalidInput(reason=f"{path}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli._alloc import allocator, fmt_pools, print_json
    from hugexml.core.errors import printable
    from hugexml.core.model import GuestId
    from hugexml.host.hostinfo import read_host_info
    from hugexml.xml.domxml import plan_xml

    data = read_xml(args.xml)
    plan = plan_xml(data, read_host_info(ctx.root), "<stdin>" if args.xml == "-" else args.xml)
    guest = GuestId(args.name or plan.domain, args.uuid or plan.uuid)
    warnings = mount_warnings(ctx, plan)
    result = allocator(ctx).reserve(plan, guest, keep_s=plan.keep_s)
    result = dict(result, guest=guest.name, uuid=guest.uuid, warnings=warnings)
    if args.json:
        print_json(result)
        return 0
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{printable(guest.name)}: claimed {fmt_pools(result['claimed'])}; "
          f"added {fmt_pools(result['added'])} (claim pending until the guest starts)")
    return 0


def mount_warnings(ctx: Any, plan: Any) -> list[str]:
    """The hook refuses a start whose file-backed size has no mount libvirt can see."""
    from hugexml.system.daemon import mount_problems

    return list(mount_problems(ctx.root, ctx.state_dir, plan.file_backed_sizes_kib).values())
