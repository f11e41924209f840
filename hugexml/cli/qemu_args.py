"""hugexml qemu-args: the qemu memory arguments of a domain, for running it without libvirt."""

from __future__ import annotations

import argparse
import json
import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

HELP = "print the qemu memory arguments (-m, -mem-path or -object/-numa) for a domain XML"
EPILOG = """examples:
  hugexml qemu-args vm1.xml
  hugexml qemu-args vm1.xml --objects --mount 1G=/mnt/huge1G --json
  hugexml qemu-args vm1.xml --objects --thread-context no   # for a qemu older than 7.2
"""
QEMU_THREAD_CONTEXT = (7, 2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain_xml", metavar="DOMAIN.xml", help="domain XML file ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print argv and backends as JSON")
    p.add_argument(
        "--objects",
        action="store_true",
        help="always use -object memory backends (as libvirt does), never -mem-path",
    )
    p.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="SIZE=PATH",
        help="hugetlbfs mount for a page size, instead of the host's (repeatable)",
    )
    p.add_argument(
        "--memory-backing-dir",
        default="/var/lib/libvirt/qemu/ram",
        metavar="DIR",
        help="directory for file-backed normal memory (default: %(default)s)",
    )
    p.add_argument(
        "--hugetlbfs-subdir",
        default="",
        metavar="TEMPLATE",
        help="directory under the mount for the guest's files, {name}/{short_name} "
        "expanded (default: the mount itself)",
    )
    p.add_argument(
        "--backing-subdir",
        default="{name}",
        metavar="TEMPLATE",
        help="directory under --memory-backing-dir (default: %(default)s)",
    )
    p.add_argument(
        "--thread-context",
        choices=("auto", "yes", "no"),
        default="auto",
        help="a thread-context object per preallocated backend bound to host nodes, as "
        "libvirt 9 writes them (qemu >= 7.2); auto: when the domain's <emulator> (or "
        "qemu-system-x86_64 on PATH) is qemu 7.2 or newer (default: %(default)s)",
    )
    p.add_argument(
        "--no-align",
        action="store_true",
        help="keep memory sizes unaligned (as libvirt does for incoming migration)",
    )


def parse_mount_option(text: str) -> tuple[int, str]:
    from hugexml.core.errors import InvalidInput
    from hugexml.core.units import UnitError, parse_cli_size_kib

    size, sep, path = text.partition("=")
    if not sep or not path.startswith("/"):
        raise InvalidInput(reason=f"--mount '{text}' is not SIZE=/absolute/path")
    try:
        return parse_cli_size_kib(size), path
    except UnitError as exc:
        raise InvalidInput(reason=f"--mount: {exc}") from None


def emulator_of(data: bytes) -> Optional[str]:
    """The domain's <devices><emulator>, or None (unreadable XML: from_xml will say why)."""
    from hugexml.core.errors import HugexmlError
    from hugexml.xml.xmlsafe import parse_bytes

    try:
        el = parse_bytes(data).getroot().find("devices/emulator")
    except HugexmlError:
        return None
    return el.text.strip() if el is not None and el.text and el.text.strip() else None


def nodes_with_cpus(root: Any) -> Optional[frozenset[int]]:
    """Host nodes whose ``cpulist`` names a CPU; None when sysfs says nothing (all)."""
    base = root.path("sys/devices/system/node")
    try:
        names = [n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit()]
    except OSError:
        return None
    found = set()
    for name in names:
        try:
            with open(os.path.join(base, name, "cpulist"), encoding="ascii") as fh:
                if fh.read(4096).strip():
                    found.add(int(name[4:]))
        except OSError:
            return None
    return frozenset(found) if names else None


def qemu_has_thread_context(emulator: Optional[str]) -> bool:
    """qemu 7.2 added the thread-context object: ask the qemu that will run the guest."""
    import re
    import shutil
    import subprocess

    binary = emulator or shutil.which("qemu-system-x86_64")
    if not binary:
        return False
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    m = re.search(r"version (\d+)\.(\d+)", out)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= QEMU_THREAD_CONTEXT


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.core.errors import InvalidInput
    from hugexml.host.hostinfo import read_host_info
    from hugexml.system.mounts import list_mounts
    from hugexml.xml import qemuargs, qemurender
    from hugexml.xml.xmlsafe import read_limited

    source = args.domain_xml
    if source == "-":
        data = read_limited(sys.stdin.buffer, "<stdin>")
    else:
        try:
            with open(source, "rb") as fh:
                data = read_limited(fh, source)
        except OSError as exc:
            raise InvalidInput(reason=f"{source}: {exc.strerror or exc}") from None
    host = read_host_info(ctx.root)
    mounts = {m.page_size_kib: m.path for m in reversed(list_mounts(ctx.root))}
    mounts.update(parse_mount_option(m) for m in args.mount)
    env = qemuargs.QemuEnv(
        mounts=mounts,
        default_page_kib=host.default_page_kib,
        auto_nodes=host.auto_nodes or host.nodes,
        system_page_kib=host.system_page_kib,
        memory_backing_dir=args.memory_backing_dir,
        hugetlbfs_subdir=args.hugetlbfs_subdir,
        backing_subdir=args.backing_subdir,
        align=not args.no_align,
        thread_context=args.thread_context == "yes"
        or (args.thread_context == "auto" and qemu_has_thread_context(emulator_of(data))),
        cpu_nodes=nodes_with_cpus(ctx.root),
    )
    mem = qemuargs.from_xml(data, env, host, source)
    argv = qemurender.argv(mem, objects=args.objects)
    if args.json:
        print(json.dumps(qemurender.to_json(mem, argv), indent=2))
    else:
        sys.stdout.write(qemurender.format_shell(argv))
    return 0
