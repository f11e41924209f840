"""hugexml boot: hugepage pools reserved at boot (kernel command line, sysctl.d, service)."""
from __future__ import annotations

import argparse
import json

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

HELP = "print (or apply) the kernel command line that reserves hugepages at boot"
EPILOG = """examples:
  hugexml boot --reserve 1G:8@0 --reserve 1G:8@1 --reserve 2M:1024 --default-size 1G
  hugexml boot --reserve 1G:16 --apply          # grubby, or the /etc/default/grub edit
  hugexml boot --reserve 2M:512 --sysctl --apply   # /etc/sysctl.d/80-hugexml.conf
  hugexml boot --apply-runtime      # [boot] reserve, per node (hugexml-reserve.service)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reserve", action="append", default=[], metavar="SIZE:COUNT[@NODE]",
                   help="pages to reserve at boot, e.g. 1G:4@1 or 2M:512 (repeatable)")
    p.add_argument("--default-size", metavar="SIZE",
                   help="default_hugepagesz (the size of /dev/hugepages and vm.nr_hugepages)")
    p.add_argument("--apply", action="store_true",
                   help="update the boot entries with grubby, else print the /etc/default/grub "
                        "edit and the regenerate command; with --sysctl write the sysctl.d file")
    p.add_argument("--sysctl", action="store_true",
                   help="vm.nr_hugepages for the default size in /etc/sysctl.d/80-hugexml.conf "
                        "(runtime, for hosts that do not reboot; whole host, no per-node form)")
    p.add_argument("--apply-runtime", action="store_true",
                   help="grow the pools to [boot] reserve of hugexml.conf now, per node, through "
                        "the allocator (adds only what the pools lack; never shrinks)")
    p.add_argument("--dry-run", action="store_true", help="with --apply-runtime: change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml import boot
    from hugexml.errors import InvalidInput
    from hugexml.units import UnitError, format_kib, parse_cli_size_kib

    if args.apply_runtime:
        return _runtime(args, ctx)
    if not args.reserve:
        raise InvalidInput(reason="give at least one --reserve SIZE:COUNT[@NODE] "
                                  "(or --apply-runtime)")
    specs = boot.parse_specs(args.reserve)
    try:
        default_kib = parse_cli_size_kib(args.default_size) if args.default_size else None
    except UnitError as exc:
        raise InvalidInput(reason=f"--default-size: {exc}") from None
    notes = boot.check_host(ctx.root, specs, default_kib)
    params = boot.kernel_params(specs, default_kib)
    out: dict[str, Any] = {"params": params, "cmdline": " ".join(params), "notes": notes}
    if args.sysctl:
        effective = default_kib or boot.default_size(ctx.root)
        out["sysctl"] = {"file": "/" + boot.SYSCTL_FILE,
                         "text": boot.sysctl_snippet(specs, effective)}
        if args.apply:
            out["sysctl"]["written"] = boot.write_sysctl(ctx.root, out["sysctl"]["text"])
    elif args.apply:
        import shutil

        if ctx.root.is_real and shutil.which("grubby"):
            out["grubby"] = boot.apply_grubby(params)
        else:
            out["grub"] = boot.grub_default_edit(ctx.root, params)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(out["cmdline"])
    for note in notes:
        print(f"note: {note}")
    if "sysctl" in out:
        sysctl = out["sysctl"]
        where = f"wrote {sysctl['written']}" if "written" in sysctl else f"for {sysctl['file']}"
        print(f"sysctl ({where}):\n  {sysctl['text'].splitlines()[-1]}")
    if "grubby" in out:
        for cmd in out["grubby"]:
            print(f"ran: {cmd}")
        print("reboot to apply")
    if "grub" in out:
        grub = out["grub"]
        if grub["old"]:
            print(f"in {grub['file']} replace\n  {grub['old']}\nwith\n  {grub['new']}")
        else:
            print(f"add to {grub['file']}\n  {grub['new']}")
        print(f"then run: {grub['regenerate']}, and reboot (grub.cfg is not edited by hand)")
    sizes = ", ".join(sorted({format_kib(s.size_kib) for s in specs}))
    if not args.apply:
        print(f"(printed only: --apply to change the boot entries; mounts for {sizes}: "
              "hugexml mounts ensure --persist)")
    return 0


def _runtime(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml import boot
    from hugexml.commands._alloc import allocator, load

    config = load(ctx)
    text = (config.boot_reserve or "").strip()
    if not text:
        print(json.dumps({"reserved": []}) if args.json
              else f"nothing to reserve: [boot] reserve is empty in {ctx.config_path}")
        return 0
    specs = boot.parse_specs([text])
    results = boot.apply_runtime(specs, allocator(ctx, progress=False), dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"reserved": results}, indent=2, sort_keys=True))
    else:
        for row in results:
            if "error" in row:
                print(f"{row['spec']}: FAILED: {row['error']}")
            elif row["adding"] == 0:
                print(f"{row['spec']}: already reserved ({row['pool_pages']} pages in the pool)")
            else:
                verb = "would add" if args.dry_run else "added"
                print(f"{row['spec']}: {verb} {row['adding']} (the pool had {row['pool_pages']})")
    return 1 if any("error" in row for row in results) else 0
