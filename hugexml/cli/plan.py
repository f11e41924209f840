"""hugexml plan: what a domain demands (page size, pages, host nodes per consumer)."""
from __future__ import annotations

import argparse
import json
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "show what a domain XML demands: page size, page count and host nodes per consumer"
EPILOG = """examples:
  hugexml plan guest.xml
  virsh dumpxml guest | hugexml plan - --json
  hugexml plan --no-host guest.xml   # no host checks (page sizes, host nodes)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE|-", help="domain XML, '-' for stdin")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--no-host", action="store_true",
                   help="plan without reading the host (default hugepage size 2048 KiB)")


def _read(path: str) -> bytes:
    from hugexml.core.errors import InvalidInput
    from hugexml.xml import xmlsafe

    if path == "-":
        return xmlsafe.read_limited(sys.stdin.buffer, "<stdin>")
    try:
        with open(path, "rb") as fh:
            return xmlsafe.read_limited(fh, path)
    except OSError as exc:
        raise InvalidInput(reason=f"{path}: {exc.strerror}") from exc


def _cell(value: Any, none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, tuple):
        from hugexml.core.units import format_nodeset

        return format_nodeset(value)
    return str(value)


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.xml.domxml import plan_xml

    host = None
    if not args.no_host:
        from hugexml.host.hostinfo import read_host_info

        host = read_host_info(ctx.root)
    source = "<stdin>" if args.file == "-" else args.file
    plan = plan_xml(_read(args.file), host, source)
    if args.json:
        print(json.dumps(plan.to_json(), indent=1))
        return 0
    print(f"domain {plan.domain}  hugepages: {'yes' if plan.hugepages else 'no'}")
    rows = [("KIND", "CELL", "INDEX", "SIZE_KIB", "PAGE_KIB", "PAGES", "HOST_NODES", "POLICY",
             "SOURCE", "SHARED")]
    for c in plan.consumers:
        rows.append((c.kind, _cell(c.guest_cell), _cell(c.index), str(c.size_kib),
                     _cell(c.page_size_kib, "normal"), str(c.pages), _cell(c.host_nodes, "any"),
                     _cell(c.policy), c.source, "yes" if c.shared else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for d in plan.demand:
        where = f"host nodes {_cell(d.host_nodes)}" if d.host_nodes is not None else "any node"
        print(f"demand: {d.pages} x {d.page_size_kib} KiB on {where}")
    return 0
