"""hugexml boot: hugepage pools reserved at boot (kernel command line, sysctl.d, service),
given by hand (``--reserve``) or planned from the autostart guests (``--from-guests``)."""
from __future__ import annotations

import argparse
import json
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

HELP = "print (or apply) the kernel command line that reserves hugepages at boot"
EPILOG = """examples:
  hugexml boot --reserve 1G:8@0 --reserve 1G:8@1 --reserve 2M:1024 --default-size 1G
  hugexml boot --reserve 1G:16 --apply          # grubby, or the /etc/default/grub edit
  hugexml boot --reserve 2M:512 --sysctl --apply   # /etc/sysctl.d/80-hugexml.conf
  hugexml boot --from-guests                    # what the autostart guests need, per node
  hugexml boot --from-guests --apply --into config   # only [boot] reserve in hugexml.conf
  hugexml boot --apply-runtime      # [boot] reserve, per node (hugexml-reserve.service)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reserve", action="append", default=[], metavar="SIZE:COUNT[@NODE]",
                   help="pages to reserve at boot, e.g. 1G:4@1 or 2M:512 (repeatable)")
    p.add_argument("--from-guests", action="store_true",
                   help="plan the reservation from the autostart domains "
                        "(/etc/libvirt/qemu/autostart/*.xml, read as files): their demand per "
                        "node and size; guests without <numatune> are spread over the nodes "
                        "with the most room; the [allocation] margin applies")
    p.add_argument("--into", choices=("both", "cmdline", "config"), default="both",
                   help="with --from-guests --apply: write the kernel command line, [boot] "
                        "reserve of hugexml.conf, or both (default)")
    p.add_argument("--default-size", metavar="SIZE",
                   help="default_hugepagesz (the size of /dev/hugepages and vm.nr_hugepages)")
    p.add_argument("--apply", action="store_true",
                   help="update the boot entries with grubby, else print the /etc/default/grub "
                        "edit and the regenerate command; with --sysctl write the sysctl.d file; "
                        "with --from-guests also set [boot] reserve in hugexml.conf (in place, "
                        "the previous file kept as hugexml.conf.bak)")
    p.add_argument("--sysctl", action="store_true",
                   help="vm.nr_hugepages for the default size in /etc/sysctl.d/80-hugexml.conf "
                        "(runtime, for hosts that do not reboot; whole host, no per-node form)")
    p.add_argument("--apply-runtime", action="store_true",
                   help="grow the pools to [boot] reserve of hugexml.conf now, per node, through "
                        "the allocator (adds only what the pools lack; never shrinks)")
    p.add_argument("--dry-run", action="store_true", help="with --apply-runtime: change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _default_kib(args: argparse.Namespace) -> Optional[int]:
    from hugexml.core.errors import InvalidInput
    from hugexml.core.units import UnitError, parse_cli_size_kib

    try:
        return parse_cli_size_kib(args.default_size) if args.default_size else None
    except UnitError as exc:
        raise InvalidInput(reason=f"--default-size: {exc}") from None


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.core.errors import InvalidInput
    from hugexml.system import boot

    if args.apply_runtime:
        return _runtime(args, ctx)
    if args.from_guests:
        if args.reserve or args.sysctl:
            raise InvalidInput(reason="--from-guests plans the reservation itself: give it "
                                      "without --reserve and --sysctl")
        return _from_guests(args, ctx)
    if not args.reserve:
        raise InvalidInput(reason="give at least one --reserve SIZE:COUNT[@NODE], "
                                  "--from-guests or --apply-runtime")
    specs = boot.parse_specs(args.reserve)
    default_kib = _default_kib(args)
    notes = boot.check_host(ctx.root, specs, default_kib)
    params = boot.kernel_params(specs, default_kib)
    out: dict[str, Any] = {"params": params, "cmdline": " ".join(params), "notes": notes,
                           "hugetlb_cma": _cma(ctx, specs)}
    if args.sysctl:
        effective = default_kib or boot.default_size(ctx.root)
        out["sysctl"] = {"file": "/" + boot.SYSCTL_FILE,
                         "text": boot.sysctl_snippet(specs, effective)}
        if args.apply:
            out["sysctl"]["written"] = boot.write_sysctl(ctx.root, out["sysctl"]["text"])
    elif args.apply:
        _apply_cmdline(ctx, params, out)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(out["cmdline"])
    _print_tail(out, specs, args.apply, "the boot entries")
    return 0


def _cma(ctx: Any, specs: Any, totals: Optional[dict[int, int]] = None) -> Any:
    """The hugetlb_cma= suggestion for these items (None: not 1G-heavy, or unknown host)."""
    from hugexml.core.errors import HugexmlError
    from hugexml.host.hostinfo import read_nodes
    from hugexml.system import boot
    from hugexml.system.bootplan import cma_suggestion

    try:
        totals = totals or boot.mem_totals(ctx.root, read_nodes(ctx.root) or (0,))
    except HugexmlError:
        return None
    has_cma = boot.meminfo_kib(ctx.root.path("proc/meminfo"), "CmaTotal") is not None
    return cma_suggestion(specs, totals, boot.kernel_version(ctx.root), has_cma)


def _apply_cmdline(ctx: Any, params: list[str], out: dict[str, Any]) -> None:
    import shutil

    from hugexml.system import grub

    if ctx.root.is_real and shutil.which("grubby"):
        out["grubby"] = grub.apply_grubby(params)
    else:
        out["grub"] = grub.grub_default_edit(ctx.root, params)


def _print_tail(out: dict[str, Any], specs: Any, applied: bool, what: str) -> None:
    """Notes, the hugetlb_cma suggestion and what --apply did (or would do)."""
    from hugexml.core.units import format_kib

    for note in out["notes"]:
        print(f"note: {note}")
    cma = out.get("hugetlb_cma")
    if cma:
        print(f"suggest: {cma['param']} in place of {cma['replaces']} on the kernel command "
              f"line: {cma['why']}")
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
    config = out.get("config")
    if config:
        if not config["changed"]:
            print(f"[boot] reserve in {config['path']} is already {out['reserve']}")
        else:
            backup = f" (the previous file: {config['backup']})" if config["backup"] else ""
            print(f"wrote [boot] reserve = {out['reserve']} in {config['path']}{backup}; "
                  "systemctl enable hugexml-reserve.service applies it at every boot")
    sizes = ", ".join(sorted({format_kib(s.size_kib) for s in specs}))
    if not applied:
        print(f"(printed only: --apply to change {what}; mounts for {sizes}: "
              "hugexml mounts ensure --persist)")


def _from_guests(args: argparse.Namespace, ctx: Any) -> int:
    """The boot reservation the autostart guests need (hugexml.system.bootplan)."""
    from hugexml.cli._alloc import load
    from hugexml.core.errors import HostError, printable
    from hugexml.host.hostinfo import read_host_info
    from hugexml.planning.fit import Margin
    from hugexml.system import boot, bootplan
    from hugexml.system.autostart import plan_autostart

    config = load(ctx)
    host = read_host_info(ctx.root)
    guests, skipped = plan_autostart(ctx.root, host)
    if any(not s.entry for s in skipped):  # the directory itself: no plan at all
        raise HostError(path=skipped[0].reason.split(": ", 1)[0],
                        reason=skipped[0].reason.split(": ", 1)[-1])
    totals = boot.mem_totals(ctx.root, host.nodes)
    margin = Margin.of(config)
    plan = bootplan.plan_boot([g.plan for g in guests], totals, host.page_sizes_kib, margin)
    per_node = len(host.nodes) > 1
    specs = plan.specs(per_node)
    default_kib = _default_kib(args) or boot.cmdline_default_kib(ctx.root)
    first = min(host.nodes)
    spare = {(n, s): boot.spare_pages(totals[n], s, n == first)
             for (n, s) in plan.pools if s >= bootplan.G1 and per_node}
    on_cmdline, notes = bootplan.cmdline_split(specs, boot.kernel_version(ctx.root), spare)
    if on_cmdline:
        notes = boot.check_host(ctx.root, on_cmdline, default_kib, int(config.margin_min_kib),
                                float(config.margin_percent), service_hint=False) + notes
    params = boot.kernel_params(on_cmdline, default_kib) if on_cmdline else []
    reserve = " ".join(map(str, specs))
    paths = {g.plan.domain: g.file.path for g in guests}
    out: dict[str, Any] = {
        "params": params, "cmdline": " ".join(params), "reserve": reserve,
        "specs": [str(s) for s in specs], "cmdline_specs": [str(s) for s in on_cmdline],
        "guests": [{"name": g.name, "path": paths.get(g.name), "unbound": g.unbound,
                    "reserve": " ".join(map(str, g.specs(per_node)))} for g in plan.guests],
        "skipped": [s.line() for s in skipped], "notes": notes,
        "hugetlb_cma": _cma(ctx, specs, totals)}
    if config.boot_reserve and config.boot_reserve != reserve:
        out["notes"].append(f"[boot] reserve is '{config.boot_reserve}' in {ctx.config_path} "
                            "now: --apply replaces it with the guests' (pages for anything but "
                            "the autostart guests are not planned here)")
    out["notes"] += [f"guest '{printable(g.name)}' has no <numatune>: its pages are spread "
                     "over the nodes with the most room above their floor, as runtime growth "
                     "spreads them (bind it with <numatune> to choose)"
                     for g in plan.guests if g.unbound]
    if args.apply and specs:
        if args.into in ("both", "cmdline") and params:
            _apply_cmdline(ctx, params, out)
        if args.into in ("both", "config"):
            from hugexml.core.confedit import write_key

            out["config"] = write_key(ctx.config_path, "boot", "reserve", reserve,
                                      lambda c: c.boot_reserve == reserve)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    for line in out["skipped"]:
        print(f"hugexml boot: skipped {line}", file=sys.stderr)
    if not specs:
        print(f"nothing to reserve: no autostart guest asks for hugepages ({len(guests)} read)")
        return 0
    print(out["cmdline"] or "(nothing on the kernel command line: see the notes)")
    print(f"[boot] reserve = {reserve}")
    for g in out["guests"]:
        print(f"guest {printable(g['name'])}: {g['reserve']}")
    _print_tail(out, specs, args.apply, "the boot entries and [boot] reserve")
    return 0


def _runtime(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.cli._alloc import allocator, load
    from hugexml.system import boot

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
