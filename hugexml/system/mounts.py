"""hugetlbfs mounts: list them, find one per page size, make one, persist it for boot.

The mount table is read from ``<root>/proc/self/mounts`` (``proc/mounts`` as a fallback);
paths in it are the host's paths, octal-escaped by the kernel (``\\040`` for a space). The
page size comes from the ``pagesize=`` option the kernel always prints (``pagesize=2M``,
``pagesize=1024M`` for 1 GiB pages); a line without it means the default size (Hugepagesize
in proc/meminfo).

``ensure_mount`` mounts only on the real root (``/``): under a fake root it refuses and says
what it would run. Every mount hugexml makes is checked through statfs (f_bsize is the page
size on hugetlbfs) and recorded, with the kernel's own time of the mount (the ctime of the
fresh file system's root inode), in ``<state_dir>/mounts.json``: libvirt learns mounts only
when its daemon starts, and hugexml.system.daemon compares the two times.

What the running daemon can see (qemu.conf, daemon start times) is hugexml.system.daemon's;
hugexml.system.mountunits persists mounts (systemd unit / fstab); it imports this module, never the
reverse. This module imports only the standard library and hugexml's small shared modules:
the hook loads it on prepare.
"""
from __future__ import annotations

import errno
import os
import re
import time

from hugexml.core.errors import HostError, InvalidInput
from hugexml.core.root import HostRoot
from hugexml.core.typed import Typed
from hugexml.core.units import UnitError, format_kib, to_kib
from hugexml.host.hostinfo import read_default_page_kib, read_page_sizes_kib

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

RECORD_FILE = "mounts.json"
RECORD_VERSION = 1
MAX_TABLE_BYTES = 4 * 1024 * 1024
MS_NOSUID = 2
MS_NODEV = 4
MOUNT_OPTIONS = "nosuid,nodev"
# Patterns as strings: compiled on first use (re caches them), not at import (hook path).
_OCTAL = r"\\([0-7]{3})"
_PAGESIZE = r"\s*([0-9]{1,20})\s*([kKmMgGtTpPeE]?)"


class Mount(Typed, frozen=True):
    """One hugetlbfs mount: host path (unescaped), page size, the option string."""

    path: str
    page_size_kib: int
    options: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "page_size_kib": self.page_size_kib,
                "page_size": format_kib(self.page_size_kib), "options": self.options}


# --- the mount table ---------------------------------------------------------------------
def unescape(field: str) -> str:
    """The kernel's octal escapes in /proc/self/mounts (space, tab, newline, backslash)."""
    if "\\" not in field:
        return field
    return re.sub(_OCTAL, lambda m: chr(int(m.group(1), 8)), field)


def parse_pagesize_kib(text: str) -> int:
    """``pagesize=`` as the kernel parses it (memparse): a number and K/M/G/... (x1024).

    Trailing characters are ignored like memparse does (``2MB`` is 2 MiB)."""
    m = re.match(_PAGESIZE, text)
    if not m:
        raise UnitError(f"pagesize '{text[:40]}' is not a size")
    size_kib = to_kib(int(m.group(1)), m.group(2) or "b", what="pagesize")
    if size_kib <= 0:
        raise UnitError(f"pagesize '{text[:40]}' is zero")
    return size_kib


def read_table(root: HostRoot) -> list[tuple[str, str, str, str]]:
    """Every mount as (source, path, fstype, options), paths unescaped."""
    for rel in ("proc/self/mounts", "proc/mounts"):
        path = root.path(rel)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:
                text = fh.read(MAX_TABLE_BYTES)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise HostError(path=path, reason=exc.strerror or str(exc)) from exc
        rows = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                rows.append((unescape(fields[0]), unescape(fields[1]), fields[2], fields[3]))
        return rows
    return []


def list_mounts(root: HostRoot) -> list[Mount]:
    """hugetlbfs mounts in table order. A pagesize that cannot be read is a HostError."""
    default_kib: Optional[int] = None
    mounts = []
    for _source, path, fstype, options in read_table(root):
        if fstype != "hugetlbfs":
            continue
        size_kib = None
        for opt in options.split(","):
            if opt.startswith("pagesize="):
                try:
                    size_kib = parse_pagesize_kib(opt[len("pagesize="):])
                except UnitError as exc:
                    raise HostError(path=root.path("proc/self/mounts"),
                                    reason=f"hugetlbfs {path}: {exc}") from exc
        if size_kib is None:
            if default_kib is None:
                default_kib = read_default_page_kib(root) or 0
            size_kib = default_kib
        if size_kib:
            mounts.append(Mount(path, size_kib, options))
    return mounts


def mount_for(mounts: list[Mount], size_kib: int) -> Optional[Mount]:
    """The first mount of that page size (libvirt picks the first one too), or None."""
    for mount in mounts:
        if mount.page_size_kib == size_kib:
            return mount
    return None


def conventional_path(size_kib: int, default_kib: Optional[int]) -> str:
    """/dev/hugepages for the default size, /dev/hugepages1G, /dev/hugepages2M otherwise."""
    if default_kib is not None and size_kib == default_kib:
        return "/dev/hugepages"
    return "/dev/hugepages" + format_kib(size_kib)


# --- the record of mounts hugexml made ---------------------------------------------------
def record_path(state_dir: str) -> str:
    return os.path.join(state_dir, RECORD_FILE)


def read_records(state_dir: str) -> dict[str, dict[str, Any]]:
    """{host path: {"size_kib", "mounted_at", "dev", "ino", "created_dir"}}; {} when none.

    A record that does not parse is ignored (it only sharpens a time judgement)."""
    import json

    try:
        with open(record_path(state_dir), encoding="utf-8") as fh:
            data = json.loads(fh.read(1 << 20))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return {}
    mounts = data.get("mounts")
    if not isinstance(mounts, dict):
        return {}
    return {k: v for k, v in mounts.items() if isinstance(v, dict)
            and isinstance(v.get("mounted_at"), (int, float))}


def _write_records(state_dir: str, records: dict[str, dict[str, Any]]) -> None:
    import json

    from hugexml.core.fsutil import write_atomic

    path = record_path(state_dir)
    blob = json.dumps({"version": RECORD_VERSION, "mounts": records}, indent=1, sort_keys=True)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        write_atomic(path, blob.encode(), mode=0o600)
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc


def record_for(root: HostRoot, state_dir: str, mount: Mount) -> Optional[dict[str, Any]]:
    """hugexml's record of this very mount: same path, same device and root inode.

    hugetlbfs root inodes take numbers from a global counter (get_next_ino), so a later
    mount at the same path has another (dev, ino) and an old record is not believed."""
    rec = read_records(state_dir).get(mount.path)
    if rec is None:
        return None
    try:
        st = os.stat(root.path(mount.path))
    except OSError:
        return None
    if rec.get("dev") != st.st_dev or rec.get("ino") != st.st_ino:
        return None
    return rec


# --- making and removing mounts ----------------------------------------------------------
class MountPlan(Typed, frozen=True):
    size_kib: int
    path: str  # host path
    options: str
    existing: Optional[Mount]

    @property
    def argv(self) -> list[str]:
        return ["mount", "-t", "hugetlbfs", "-o", self.options, "hugetlbfs", self.path]


def plan_mount(root: HostRoot, size_kib: int, path: Optional[str] = None) -> MountPlan:
    """What ensure_mount would do; raises for a size the kernel lacks or a wrong mount."""
    sizes = read_page_sizes_kib(root)
    if size_kib not in sizes:
        raise InvalidInput(reason=f"the kernel has no {format_kib(size_kib)} hugepages "
                                  f"(it has: {', '.join(format_kib(s) for s in sizes) or 'none'})")
    default_kib = read_default_page_kib(root)
    target = os.path.normpath(path) if path else conventional_path(size_kib, default_kib)
    if not target.startswith("/"):
        raise InvalidInput(reason=f"mount path '{target}' is not absolute")
    table = read_table(root)
    mounts = list_mounts(root)
    at_target = [m for m in mounts if m.path == target]
    if at_target and at_target[-1].page_size_kib != size_kib:
        got = format_kib(at_target[-1].page_size_kib)
        raise HostError(path=target, reason=f"is a hugetlbfs mount of {got} pages, not "
                        f"{format_kib(size_kib)}: unmount it or choose another path")
    if not at_target and any(row[1] == target for row in table):
        raise HostError(path=target, reason="is a mount point of another file system")
    existing = at_target[-1] if at_target else (None if path else mount_for(mounts, size_kib))
    options = f"pagesize={format_kib(size_kib)},{MOUNT_OPTIONS}"
    return MountPlan(size_kib, existing.path if existing else target, options, existing)


def _libc_call(name: str, *args: Any) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ensure_mount(root: HostRoot, size_kib: int, path: Optional[str] = None,
                 state_dir: Optional[str] = None) -> Mount:
    """A hugetlbfs mount of ``size_kib`` pages: the existing one, or a new one, verified.

    Only on the real root. A directory this call created is removed again if the mount
    fails; a mount whose statfs block size is not the page size is unmounted and reported."""
    plan = plan_mount(root, size_kib, path)
    if plan.existing is not None:
        return plan.existing
    if not root.is_real:
        raise HostError(path=root.path(plan.path),
                        reason=f"not mounting under a fake root ({root.base}); on the host "
                               f"this runs: {' '.join(plan.argv)}")
    target = plan.path
    created = not os.path.isdir(target)
    try:
        if created:
            os.makedirs(target, mode=0o755)
        _libc_call("mount", b"hugetlbfs", os.fsencode(target), b"hugetlbfs",
                   MS_NOSUID | MS_NODEV, f"pagesize={format_kib(size_kib)}".encode())
    except OSError as exc:
        if created:
            _rmdir_quietly(target)
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EINVAL:
            reason += f" (does the kernel accept pagesize={format_kib(size_kib)}?)"
        raise HostError(path=target, reason=f"mount -t hugetlbfs failed: {reason}") from exc
    try:
        st = os.stat(target)
        bsize = os.statvfs(target).f_bsize
    except OSError as exc:
        raise HostError(path=target, reason=exc.strerror or str(exc)) from exc
    if bsize != size_kib * 1024:
        _undo_mount(target, created)
        raise HostError(path=target, reason=f"mounted with pagesize={format_kib(size_kib)} "
                        f"but statfs reports {bsize} byte pages; unmounted it again")
    mount = next((m for m in reversed(list_mounts(root)) if m.path == target),
                 Mount(target, size_kib, plan.options))
    if state_dir is not None:
        records = read_records(state_dir)
        records[target] = {"size_kib": size_kib, "mounted_at": st.st_ctime,
                           "recorded_at": time.time(), "dev": st.st_dev, "ino": st.st_ino,
                           "created_dir": created}
        try:
            _write_records(state_dir, records)
        except HostError:
            _undo_mount(target, created)
            raise
    return mount


def unmount(root: HostRoot, path: str, state_dir: Optional[str] = None) -> bool:
    """Unmount a hugetlbfs mount (only hugetlbfs, only on the real root). False: not
    mounted. A directory hugexml created for it is removed; its record is dropped."""
    target = os.path.normpath(path)
    if not any(m.path == target for m in list_mounts(root)):
        return False
    if not root.is_real:
        raise HostError(path=root.path(target),
                        reason=f"not unmounting under a fake root ({root.base})")
    records = read_records(state_dir) if state_dir else {}
    try:
        _libc_call("umount2", os.fsencode(target), 0)
    except OSError as exc:
        raise HostError(path=target, reason=f"umount failed: {exc.strerror or exc} "
                                            "(a running guest may be using it)") from exc
    rec = records.pop(target, None)
    if rec and rec.get("created_dir"):
        _rmdir_quietly(target)
    if state_dir and rec is not None:
        _write_records(state_dir, records)
    return True


def _undo_mount(target: str, created: bool) -> None:
    try:
        _libc_call("umount2", os.fsencode(target), 0)
    except OSError:
        return
    if created:
        _rmdir_quietly(target)


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
