"""hugexml install-hook: put the qemu hook where libvirt looks for it."""
from __future__ import annotations

import argparse
import json

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "install the libvirt qemu hook (qemu.d/hugexml, or a legacy qemu dispatcher)"
EPILOG = """examples:
  hugexml install-hook                  # /etc/libvirt/hooks/qemu.d/hugexml, this Python
  hugexml install-hook --legacy         # /etc/libvirt/hooks/qemu, keeps an admin hook
  hugexml install-hook --python /usr/bin/python3 --json
  hugexml install-hook --root /srv/image  # into an image tree (same as hugexml --root DIR)"""

ROOT_HELP = ("host root to work under, the same as hugexml's global --root "
             "(env HUGEXML_ROOT); may be given after the command")


def add_root_argument(p: argparse.ArgumentParser) -> None:
    """``--root DIR`` after the command; SUPPRESS keeps the global option's value when absent."""
    p.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help=ROOT_HELP)


def command_root(args: argparse.Namespace, ctx: Any) -> Any:
    """The root the command works under: its own --root when given, else the global one."""
    from hugexml.core.root import HostRoot

    given = getattr(args, "root", None)
    return HostRoot(given) if given else ctx.root


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_root_argument(p)
    p.add_argument("--legacy", action="store_true",
                   help="single-file /etc/libvirt/hooks/qemu (libvirt < 6.5); an existing "
                        "admin hook is kept as qemu.hugexml-orig and runs first")
    p.add_argument("--python", metavar="PATH",
                   help="interpreter for the hook's shebang (default: this one, resolved "
                        "past wrapper scripts such as pyenv shims)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def restart_lines(daemons: list[dict[str, Any]], why: str = "discovers hooks") -> list[str]:
    stale = [d for d in daemons if d.get("started_before_hook", True)]
    if not stale:
        return []
    names = ", ".join(f"{d['name']} (pid {d['pid']})" for d in stale)
    return [f"restart {names}: libvirt only {why} when its daemon starts "
            f"(e.g. systemctl restart {stale[0]['name']})"]


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.qemuhook.install import install_hook

    result = install_hook(command_root(args, ctx), legacy=args.legacy, python=args.python)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    verb = "installed" if result["changed"] else "already installed"
    print(f"{verb}: {result['installed']} (python {result['python']})")
    for note in result["notes"]:
        print(f"  {note}")
    for line in restart_lines(result["daemons"]):
        print(line)
    if not result["daemons"]:
        print("no libvirt daemon is running: the hook is used from its next start")
    return 0
