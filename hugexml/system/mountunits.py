"""Boot-time persistence of hugetlbfs mounts: a systemd .mount unit, or an fstab line.

libvirt learns hugetlbfs mounts only when its daemon starts, so the unit is ordered
``Before=libvirtd.service virtqemud.service`` (and sysinit.target, as systemd's own
dev-hugepages.mount). Unit names follow ``systemd-escape --path --suffix=mount``. Where
systemd is not the running init (no /run/systemd/system), an /etc/fstab line is added
instead; a different line for the same mount point is never rewritten. Files are replaced
atomically (temp file, fsync, rename) keeping their mode.
"""
from __future__ import annotations

import os

from hugexml.core.errors import HostError
from hugexml.core.root import HostRoot
from hugexml.core.units import format_kib
from hugexml.system.mounts import MOUNT_OPTIONS, unescape

_UNIT_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.")


def unit_name_for_path(path: str) -> str:
    """``systemd-escape --path --suffix=mount``: /dev/hugepages1G -> dev-hugepages1G.mount."""
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not parts:
        return "-.mount"
    chars = []
    for i, ch in enumerate("/".join(parts)):
        if ch == "/":
            chars.append("-")
        elif ch in _UNIT_SAFE and not (i == 0 and ch == "."):
            chars.append(ch)
        else:
            chars.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(chars) + ".mount"


def render_unit(size_kib: int, path: str) -> str:
    size = format_kib(size_kib)
    return (
        f"# Written by hugexml (hugexml mounts ensure --persist).\n"
        f"# libvirt learns hugetlbfs mounts only when its daemon starts: this mount is\n"
        f"# ordered before libvirtd and virtqemud.\n"
        f"[Unit]\n"
        f"Description=Huge Pages File System ({size} pages, for KVM guests)\n"
        f"DefaultDependencies=no\n"
        f"Before=sysinit.target libvirtd.service virtqemud.service\n"
        f"ConditionPathExists=/sys/kernel/mm/hugepages/hugepages-{size_kib}kB\n\n"
        f"[Mount]\nWhat=hugetlbfs\nWhere={path}\nType=hugetlbfs\n"
        f"Options=pagesize={size},{MOUNT_OPTIONS}\n\n"
        f"[Install]\nWantedBy=sysinit.target\n")


def fstab_line(size_kib: int, path: str) -> str:
    where = path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    return f"hugetlbfs {where} hugetlbfs pagesize={format_kib(size_kib)},{MOUNT_OPTIONS} 0 0"


def has_systemd(root: HostRoot) -> bool:
    """systemd is the running init (sd_booted: /run/systemd/system exists)."""
    return os.path.isdir(root.path("run/systemd/system"))


def persist_unit(size_kib: int, path: str, unit_dir: str) -> str:
    """Write the .mount unit for ``path`` into ``unit_dir``; returns the file written.

    Enabling it (the WantedBy link) is left to ``systemctl enable``, which
    ``hugexml mounts ensure --persist`` runs (``hugexml.cli.mounts``) and checks."""
    unit = os.path.join(unit_dir, unit_name_for_path(path))
    write_text_atomic(unit, render_unit(size_kib, path))
    return unit


def persist_fstab(size_kib: int, path: str, fstab: str) -> str:
    """Add the mount to fstab; an identical line is kept, a different one for the same
    mount point is an error (never rewritten). Returns what was done."""
    line = fstab_line(size_kib, path)
    try:
        with open(fstab, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise HostError(path=fstab, reason=exc.strerror or str(exc)) from exc
    for row in text.splitlines():
        fields = row.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and unescape(fields[1]) == path:
            if fields[:4] == line.split()[:4]:
                return f"{fstab}: already has {line}"
            raise HostError(path=fstab, reason=f"already mounts {path} differently: "
                                               f"'{row.strip()}'; edit it by hand")
    if text and not text.endswith("\n"):
        text += "\n"
    write_text_atomic(fstab, text + "# hugexml: libvirt learns hugetlbfs mounts at daemon start\n"
                + line + "\n")
    return f"{fstab}: added {line}"


def write_text_atomic(path: str, text: str) -> None:
    """Replace a unit file or fstab whole, keeping its mode (0644 when new)."""
    from hugexml.core.fsutil import write_atomic

    try:
        exists = os.path.exists(path)
        write_atomic(path, text.encode("utf-8", "surrogateescape"),
                     mode=None if exists else 0o644, keep_mode=exists, make_dirs=True)
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc
