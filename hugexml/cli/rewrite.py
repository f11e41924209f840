"""``hugexml rewrite FILE|-``: set <memoryBacking> page sizes, the rest of the XML untouched."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from hugexml.core.errors import InvalidInput

HELP = "rewrite <memoryBacking> page sizes (explicit or auto); every other byte stays as it is"
EPILOG = """examples:
  hugexml rewrite /etc/libvirt/qemu/vm1.xml --diff          # auto: what would change
  hugexml rewrite vm1.xml --page-size 1G --cells 0-1 --in-place
  virsh dumpxml vm1 | hugexml rewrite - --page-size 2M --memfd -o vm1-2m.xml
  hugexml rewrite vm1.xml --page-size auto --check          # exit 1 if not already so
  hugexml rewrite vm1.xml --page-size largest     # the largest size that divides, supply or not

exit status: 0 done (or nothing to change), 1 --check found something to change,
2 bad input or refused (one line on stderr): the output would be a domain libvirt refuses,
e.g. hugepages with <source type='anonymous'/> (--memfd) or <allocation mode='ondemand'/>
(--drop-ondemand)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE|-", help="domain XML file, or - for stdin")
    p.add_argument("--page-size", default="auto", metavar="SIZE|auto",
                   help="page size (2M, 1G, 1048576KiB, 4K = normal pages); auto: per cell, "
                        "the largest host page size that divides its memory and that the host "
                        "can supply there now (free and kept pages, and what buddyinfo says "
                        "the cell's nodes can add within the margin), else the next one down; "
                        "largest: the largest that divides, whatever the host can supply "
                        "(default: auto)")
    p.add_argument("--cells", metavar="LIST",
                   help="only these guest NUMA cells, e.g. 0,2-3 (default: all)")
    p.add_argument("--memfd", action="store_true",
                   help="back the memory with memfd (<source type='memfd'/>: no mount needed); "
                        "replaces <source type='anonymous'/>, which libvirt refuses with hugepages")
    p.add_argument("--drop-ondemand", action="store_true",
                   help="remove <allocation mode='ondemand'/>, which libvirt refuses with "
                        "hugepages (they are allocated when the guest starts)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="write the result to OUT")
    out.add_argument("--in-place", action="store_true",
                     help="replace FILE atomically, keeping FILE.bak")
    p.add_argument("--no-backup", action="store_true", help="with --in-place: no FILE.bak")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the rewrite would change anything")
    p.add_argument("--diff", action="store_true",
                   help="print a unified diff on stdout instead of the XML")
    p.add_argument("--json", action="store_true",
                   help="print {file, changed, notes, written, xml} as JSON")


def run(args: argparse.Namespace, ctx: Any) -> int:
    from hugexml.core.units import MAX_NODES, UnitError, parse_nodeset
    from hugexml.host.hostinfo import read_host_info
    from hugexml.planning.pagesize import Pick, parse_choice
    from hugexml.xml.rewrite import rewrite_xml
    from hugexml.xml.xmlsafe import read_limited

    if args.no_backup and not args.in_place:
        raise InvalidInput(reason="--no-backup needs --in-place")
    if args.in_place and args.file == "-":
        raise InvalidInput(reason="--in-place needs a FILE, not stdin")
    try:
        size = parse_choice(args.page_size)
        cells = parse_nodeset(args.cells, limit=MAX_NODES, what="--cells") \
            if args.cells is not None else None
    except UnitError as exc:
        raise InvalidInput(reason=str(exc)) from None

    source = "<stdin>" if args.file == "-" else args.file
    if args.file == "-":
        data = read_limited(sys.stdin.buffer, source)
    else:
        try:
            with open(args.file, "rb") as fh:
                data = read_limited(fh, source)
        except OSError as exc:
            raise InvalidInput(reason=f"{args.file}: {exc.strerror or exc}") from None

    host = read_host_info(ctx.root)
    supply, supply_notes = read_supply(ctx) if size is Pick.AUTO else (None, [])
    result = rewrite_xml(data, page_size=size, host=host, cells=cells, memfd=args.memfd,
                         drop_ondemand=args.drop_ondemand, source=source, supply=supply)
    result.notes[:0] = supply_notes
    if not args.json:
        for note in result.notes:
            print(f"{source}: {note}", file=sys.stderr)

    written: Optional[str] = None
    if not args.check:
        if args.in_place:
            if result.changed:
                replace_file(args.file, data, result.data, backup=not args.no_backup)
                written = args.file
        elif args.output and args.output != "-":
            try:
                mode: Optional[int] = os.stat(args.output).st_mode
            except OSError:
                mode = None
            atomic_write(args.output, result.data, mode=mode)
            written = args.output

    if args.json:
        import json

        doc = {"file": source, "changed": result.changed, "notes": result.notes,
               "written": written}
        if written is None and not args.check:
            doc["xml"] = result.data.decode("utf-8", "replace")
        print(json.dumps(doc, indent=2))
    elif args.diff or args.check:
        if args.diff:
            sys.stdout.write(unified_diff(data, result.data, source))
    elif written is None and not args.in_place:
        sys.stdout.buffer.write(result.data)
        sys.stdout.flush()
    if args.check and result.changed:
        return 1
    return 0


def read_supply(ctx: Any) -> tuple[Any, list[str]]:
    """What this host can supply now (``hugexml.alloc.supply``) for ``auto``, and notes: a host
    or state that cannot be read is a note (sizes then judged as with ``largest``), not an
    error."""
    from hugexml.alloc.supply import host_supply, unknown_note
    from hugexml.cli import _alloc
    from hugexml.core.errors import HugexmlError

    try:
        supply = host_supply(ctx.root, ctx.state_dir, _alloc.load(ctx),
                             gateway=_alloc.gateway(ctx))
    except HugexmlError as exc:
        return None, [unknown_note(exc)]
    return supply, list(supply.notes)


def unified_diff(before: bytes, after: bytes, name: str) -> str:
    import difflib

    old = before.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    new = after.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(old, new, name, name):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def atomic_write(path: str, data: bytes, mode: Optional[int] = None,
                 owner: Optional[tuple[int, int]] = None) -> None:
    """Write ``path`` via a temp file in the same directory and rename (never half-written)."""
    from hugexml.core.fsutil import write_atomic

    try:
        write_atomic(path, data, mode=mode, owner=owner)
    except OSError as exc:
        raise InvalidInput(reason=f"{path}: cannot write: {exc.strerror or exc}") from None


def replace_file(path: str, original: bytes, data: bytes, backup: bool) -> None:
    """``--in-place``: keep the original as ``path.bak`` (unless told not to), then replace.

    The file must still hold ``original`` (what was rewritten): a concurrent edit is refused.
    A symlink is followed: its target is replaced, the link stays a link.
    """
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            current = fh.read()
    except OSError as exc:
        raise InvalidInput(reason=f"{path}: {exc.strerror or exc}") from None
    if current != original:
        raise InvalidInput(reason=f"{path} changed while it was being rewritten; nothing written")
    owner = (st.st_uid, st.st_gid)
    if backup:
        atomic_write(path + ".bak", original, mode=st.st_mode, owner=owner)
    atomic_write(path, data, mode=st.st_mode, owner=owner)
