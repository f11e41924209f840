"""hugexml mounts: list hugetlbfs mounts, make the missing ones, persist them for boot."""
from __future__ import annotations

import argparse
import json

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "list hugetlbfs mounts per page size; 'ensure' mounts missing sizes, 'remove' unmounts"
EPILOG = """examples:
  hugexml mounts --json
  hugexml mounts ensure --size 2M,1G --persist   # then restart libvirtd
  hugexml mounts remove --size 1G"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("list", "ensure", "remove"), default="list")
    p.add_argument("--size", metavar="SIZES",
                   help="page sizes, comma separated (ensure: default every size the kernel has)")
    p.add_argument("--path", metavar="DIR", help="mount point (one size only; default "
                   "/dev/hugepages for the default size, /dev/hugepages<SIZE> otherwise)")
    p.add_argument("--persist", action="store_true",
                   help="ensure: also a systemd .mount unit ordered before libvirtd/virtqemud "
                        "(an /etc/fstab line where systemd is not running)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _sizes(text: str | None, ctx: Any) -> list[int]:
    from hugexml.core.errors import InvalidInput
    from hugexml.core.units import UnitError, parse_cli_size_kib
    from hugexml.host.hostinfo import read_page_sizes_kib

    if not text:
        return list(read_page_sizes_kib(ctx.root))
    try:
        return [parse_cli_size_kib(s) for s in text.split(",") if s.strip()]
    except UnitError as exc:
        raise InvalidInput(reason=f"--size: {exc}") from None


def run(args: argparse.Namespace, ctx: Any) -> int:
    if args.action == "ensure":
        return _ensure(args, ctx)
    if args.action == "remove":
        return _remove(args, ctx)
    from hugexml.core.units import format_kib
    from hugexml.host.hostinfo import read_page_sizes_kib
    from hugexml.system.daemon import mount_report

    report = mount_report(ctx.root, ctx.state_dir)
    mounted = {row["page_size_kib"] for row in report["mounts"]}
    report["missing_sizes_kib"] = [s for s in read_page_sizes_kib(ctx.root) if s not in mounted]
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    for row in report["mounts"]:
        flags = [] if row["allowed_by_qemu_conf"] else ["not in qemu.conf hugetlbfs_mount"]
        flags += [f"pid {pid}: NOT SEEN ({v['why']})"
                  for pid, v in row["seen_by"].items() if not v["visible"]]
        note = f"  [{'; '.join(flags)}]" if flags else ""
        print(f"{row['page_size']:>5}  {row['path']}{note}")
    for size_kib in report["missing_sizes_kib"]:
        print(f"{format_kib(size_kib):>5}  (no mount: hugexml mounts ensure --size "
              f"{format_kib(size_kib)} --persist)")
    for path in report["qemu_conf"]["not_mounted"]:
        print(f"qemu.conf hugetlbfs_mount lists {path}, not a hugetlbfs mount: libvirtd "
              "will refuse to start")
    return 0


def _ensure(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.core.errors import InvalidInput
    from hugexml.system import mounts as mt

    sizes = _sizes(args.size, ctx)
    if args.path and len(sizes) != 1:
        raise InvalidInput(reason="--path needs exactly one --size")
    before = {m.path for m in mt.list_mounts(ctx.root)}
    results = []
    for size_kib in sizes:
        mount = mt.ensure_mount(ctx.root, size_kib, args.path, state_dir=ctx.state_dir)
        row: dict[str, Any] = {**mount.to_json(), "mounted_now": mount.path not in before}
        if args.persist:
            row["persisted"] = _persist(ctx, size_kib, mount.path)
        results.append(row)
    new = [r for r in results if r["mounted_now"]]
    restart = None
    if new:
        from hugexml.system.daemon import find_daemons

        daemons = find_daemons(ctx.root)
        if daemons:
            restart = ", ".join(f"{d.name} (pid {d.pid})" for d in daemons)
    if args.json:
        print(json.dumps({"mounts": results, "restart": restart}, indent=2, sort_keys=True))
        return 0
    for row in results:
        verb = "mounted" if row["mounted_now"] else "already mounted"
        print(f"{verb}: {row['page_size']} at {row['path']} (statfs page size checked)")
        if row.get("persisted"):
            print(f"  persisted: {row['persisted']}")
    if restart:
        print(f"restart {restart}: libvirt only sees mounts present when it starts")
    return 0


def _persist(ctx: Any, size_kib: int, path: str) -> str:
    """The unit written and enabled (systemd), or the fstab line; a HostError when systemd
    did not take the unit: nothing is reported as persisted that is not."""
    import subprocess

    from hugexml.core.errors import HostError
    from hugexml.system import mountunits as mu

    if mu.has_systemd(ctx.root):
        unit = mu.persist_unit(size_kib, path, ctx.root.path("etc/systemd/system"))
        if ctx.root.is_real:
            name = mu.unit_name_for_path(path)
            for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", name]):
                try:
                    proc = subprocess.run(argv, check=False, capture_output=True, text=True,
                                          timeout=60)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise HostError(path=unit, reason=f"written, but {' '.join(argv)} could "
                                                      f"not run: {exc}") from exc
                if proc.returncode != 0:
                    raise HostError(path=unit, reason=f"written, but {' '.join(argv)} failed "
                                    f"(exit {proc.returncode}): {proc.stderr.strip()[:200]}")
        return unit
    return mu.persist_fstab(size_kib, path, ctx.root.path("etc/fstab"))


def _remove(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.core.errors import InvalidInput
    from hugexml.system import mounts as mt

    if not args.size and not args.path:
        raise InvalidInput(reason="remove needs --size or --path")
    targets = [args.path] if args.path else [
        m.path for m in mt.list_mounts(ctx.root) if m.page_size_kib in _sizes(args.size, ctx)]
    done = [p for p in targets if mt.unmount(ctx.root, p, ctx.state_dir)]
    if args.json:
        print(json.dumps({"unmounted": done}, indent=2))
    else:
        print("unmounted: " + (", ".join(done) or "nothing"))
    return 0
