"""The running libvirt daemon and the hugetlbfs mounts it can use.

libvirt (qemuStateInitialize) scans hugetlbfs mounts once, when its daemon starts, keeping
those listed in qemu.conf ``hugetlbfs_mount`` (all of them when unset), and creates
``<mount>/libvirt/qemu`` in each. A mount made later stays invisible until the daemon
restarts, so a mount is usable by the running daemon when it existed at the daemon's start.

How "existed at start" is judged, best signal first (``judge``):
1. hugexml's own record (``<state_dir>/mounts.json``, same device and root inode): the
   kernel's time of the mount, compared with the daemon's start;
2. ``<mount>/libvirt/qemu`` exists: a libvirt daemon created it at its start, so the mount
   predates that start (a remount would be a new, empty file system);
3. the ctime of the mount's root inode: set when the file system was mounted and only
   moved forward since, so ctime before the daemon's start proves the mount is older;
4. otherwise: mounted after the daemon started (stale daemon).
Times within START_SLACK_S of the start are not trusted (btime has whole seconds).

Daemons are found through procfs under the injectable root (comm ``libvirtd`` or
``virtqemud``), start time = btime + starttime ticks: the same computation as psutil's
``Process.create_time()`` (the real-host test checks they agree), without psutil's ~50 ms
import on the hook's path. In the hook the daemon is the hook's parent process.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence

from hugexml.core.errors import ConfigError
from hugexml.core.root import HostRoot
from hugexml.core.typed import Typed
from hugexml.core.units import format_kib
from hugexml.system.mounts import Mount, list_mounts, record_for

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

DAEMONS = ("virtqemud", "libvirtd")
PIDFILES = ("run/virtqemud.pid", "run/libvirtd.pid")
QEMU_CONF = "etc/libvirt/qemu.conf"
START_SLACK_S = 1.0
MAX_CONF_BYTES = 1 << 20
MEMFD_HINT = "or use <source type='memfd'/> which needs no mount"


class Daemon(Typed, frozen=True):
    pid: int
    name: str
    started: float  # epoch seconds

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "started": self.started}


# --- daemons -----------------------------------------------------------------------------
def _boot_time(root: HostRoot) -> Optional[float]:
    try:
        with open(root.path("proc/stat"), encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _process_stat(root: HostRoot, pid: int,
                  boot: Optional[float]) -> Optional[tuple[str, str, float]]:
    """(comm, state, start time in epoch seconds) from <root>/proc/<pid>/stat, or None: btime
    plus the starttime field (22) in clock ticks, as psutil's create_time() computes it."""
    try:
        with open(root.path("proc", str(pid), "stat"), encoding="ascii", errors="replace") as fh:
            stat = fh.read(4096)
    except OSError:
        return None
    comm = stat[stat.find("(") + 1:stat.rfind(")")]
    boot = _boot_time(root) if boot is None else boot
    try:
        fields = stat[stat.rfind(")") + 2:].split()
        state, ticks = fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None
    if boot is None:
        return None
    return comm, state, boot + ticks / os.sysconf("SC_CLK_TCK")


def process_start(root: HostRoot, pid: int,
                  boot: Optional[float] = None) -> Optional[tuple[str, float]]:
    """(comm, start time in epoch seconds) of a process, or None."""
    found = _process_stat(root, pid, boot)
    return None if found is None else (found[0], found[2])


def read_process(root: HostRoot, pid: int, boot: Optional[float] = None) -> Optional[Daemon]:
    """A running libvirt daemon's pid, name and start time, or None for any other process
    and for a daemon that has exited (zombie ``Z`` or dead ``X``: it runs no hooks)."""
    found = _process_stat(root, pid, boot)
    if found is None or found[0] not in DAEMONS or found[1] in ("Z", "X", "x"):
        return None
    return Daemon(pid, found[0], found[2])


def find_daemons(root: HostRoot, quick: bool = False) -> list[Daemon]:
    """Running libvirtd/virtqemud. ``quick`` (the hook): the parent process when it is one,
    else the pidfiles, and only then a scan of every process."""
    boot = _boot_time(root)
    if quick:
        if root.is_real:
            parent = read_process(root, os.getppid(), boot)
            if parent is not None:
                return [parent]
        found = []
        for rel in PIDFILES:
            try:
                with open(root.path(rel), encoding="ascii") as fh:
                    pid = int(fh.read(32).strip())
            except (OSError, ValueError):
                continue
            daemon = read_process(root, pid, boot)
            if daemon is not None:
                found.append(daemon)
        if found:
            return found
    try:
        pids = [int(p) for p in os.listdir(root.path("proc")) if p.isdigit()]
    except OSError:
        return []
    daemons = [d for d in (read_process(root, pid, boot) for pid in sorted(pids)) if d]
    return daemons


# --- qemu.conf ---------------------------------------------------------------------------
_TOKEN = (r'"""(.*?)"""|"([^"\n]*)"|\'([^\'\n]*)\'|([A-Za-z_][A-Za-z0-9_.]*)'
           r'|([-+]?[0-9]+)|(\[|\]|,|=|;)|(#[^\n]*)|(\s+)')  # compiled on use


def parse_libvirt_conf(text: str, path: str) -> dict[str, Any]:
    """libvirt's conf syntax (virconf): ``name = value`` with strings ("..", '..' or
    triple-quoted), integers and lists of those; ``#`` comments. First entry wins, as
    virConfGetValue returns the first match."""
    tokens: list[tuple[str, Any]] = []
    pos = 0
    token = re.compile(_TOKEN, re.S)
    while pos < len(text):
        m = token.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise ConfigError(path=path, key=f"line {line}", reason="cannot parse")
        pos = m.end()
        if m.group(7) is not None or (m.group(8) is not None and "\n" not in m.group(8)):
            continue
        if m.group(8) is not None:
            tokens.append(("nl", None))
        elif m.group(4) is not None:
            tokens.append(("name", m.group(4)))
        elif m.group(5) is not None:
            tokens.append(("int", int(m.group(5))))
        elif m.group(6) is not None:
            tokens.append((m.group(6), None))
        else:
            value = next(g for g in (m.group(1), m.group(2), m.group(3)) if g is not None)
            tokens.append(("str", value))
    result: dict[str, Any] = {}
    i = 0

    def value_at(j: int, key: str) -> tuple[Any, int]:
        while j < len(tokens) and tokens[j][0] == "nl":
            j += 1
        if j >= len(tokens):
            raise ConfigError(path=path, key=key, reason="missing value")
        kind, val = tokens[j]
        if kind in ("str", "int"):
            return val, j + 1
        if kind != "[":
            raise ConfigError(path=path, key=key, reason="expected a string, number or list")
        items: list[Any] = []
        j += 1
        while True:
            while j < len(tokens) and tokens[j][0] == "nl":
                j += 1
            if j < len(tokens) and tokens[j][0] == "]":
                return items, j + 1
            item, j = value_at(j, key)
            if isinstance(item, list):
                raise ConfigError(path=path, key=key, reason="nested lists")
            items.append(item)
            while j < len(tokens) and tokens[j][0] == "nl":
                j += 1
            if j < len(tokens) and tokens[j][0] == ",":
                j += 1
            elif j >= len(tokens) or tokens[j][0] != "]":
                raise ConfigError(path=path, key=key, reason="unterminated list")

    while i < len(tokens):
        kind, val = tokens[i]
        if kind in ("nl", ";"):
            i += 1
            continue
        if kind != "name" or i + 1 >= len(tokens) or tokens[i + 1][0] != "=":
            raise ConfigError(path=path, key=str(val), reason="expected 'name = value'")
        value, i = value_at(i + 2, val)
        result.setdefault(val, value)
    return result


def hugetlbfs_mount_setting(root: HostRoot) -> Optional[list[str]]:
    """qemu.conf ``hugetlbfs_mount`` as a list of paths; None when unset (all mounts)."""
    path = root.path(QEMU_CONF)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(MAX_CONF_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(path=path, key="hugetlbfs_mount",
                          reason=exc.strerror or str(exc)) from exc
    if "hugetlbfs_mount" not in text:
        return None  # cheap: no need to parse the rest
    value = parse_libvirt_conf(text, path).get("hugetlbfs_mount")
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(path=path, key="hugetlbfs_mount",
                          reason="must be a string or a list of strings")
    return [os.path.normpath(v) for v in values if v]


def allowed_mounts(mounts: Sequence[Mount], setting: Optional[list[str]]) -> list[Mount]:
    """The mounts libvirt uses under this qemu.conf setting."""
    if setting is None:
        return list(mounts)
    return [m for m in mounts if m.path in setting]


# --- visibility --------------------------------------------------------------------------
class Judgement(Typed, frozen=True):
    visible: bool
    signal: str  # which evidence decided


def judge(root: HostRoot, state_dir: str, mount: Mount, daemon: Daemon) -> Judgement:
    """Did ``mount`` exist when ``daemon`` started? (See the module docstring.)"""
    start = daemon.started
    rec = record_for(root, state_dir, mount)
    if rec is not None:
        at = float(rec["mounted_at"])
        if at < start - START_SLACK_S:
            return Judgement(True, "hugexml mounted it before the daemon started")
        if at > start + START_SLACK_S:
            return Judgement(False, "hugexml mounted it after the daemon started")
    host_dir = root.path(mount.path)
    if os.path.isdir(os.path.join(host_dir, "libvirt", "qemu")):
        return Judgement(True, "libvirt created libvirt/qemu in it when it started")
    try:
        ctime = os.stat(host_dir).st_ctime
    except OSError:
        return Judgement(True, "cannot stat the mount point: assumed visible")
    if ctime < start - START_SLACK_S:
        return Judgement(True, "its root is unchanged since before the daemon started")
    return Judgement(False, "no libvirt/qemu directory in it and its root changed after "
                            "the daemon started")


def libvirt_visible_sizes(root: HostRoot, state_dir: str, *,
                          mounts: Optional[Sequence[Mount]] = None,
                          daemons: Optional[Sequence[Daemon]] = None) -> set[int]:
    """Page sizes (KiB) with a mount the running daemon(s) can use; with no daemon running,
    those the next daemon start will see. A size counts when every running daemon sees one
    of its mounts."""
    mounts = list_mounts(root) if mounts is None else list(mounts)
    usable = allowed_mounts(mounts, hugetlbfs_mount_setting(root))
    if not usable:
        return set()
    daemons = find_daemons(root, quick=True) if daemons is None else list(daemons)
    sizes = set()
    for size_kib in {m.page_size_kib for m in usable}:
        of_size = [m for m in usable if m.page_size_kib == size_kib]
        if all(any(judge(root, state_dir, m, d).visible for m in of_size) for d in daemons):
            sizes.add(size_kib)
    return sizes


def mount_problem(root: HostRoot, state_dir: str, size_kib: int, *,
                  mounts: Optional[Sequence[Mount]] = None,
                  daemons: Optional[Sequence[Daemon]] = None,
                  memfd_hint: bool = True) -> Optional[str]:
    """None when the running daemon has a mount of this page size; else ONE line with the
    fix. A query: reads the mount table and qemu.conf, and looks for the daemon only when a
    mount exists whose visibility must be judged. (Making a missing mount is
    ``mount_for_next_start``, a separate step.)"""
    size = format_kib(size_kib)
    tail = f"; {MEMFD_HINT}" if memfd_hint else ""
    mounts = list_mounts(root) if mounts is None else list(mounts)
    of_size = [m for m in mounts if m.page_size_kib == size_kib]
    setting = hugetlbfs_mount_setting(root)
    usable = allowed_mounts(of_size, setting)
    if not usable:
        need_daemon = daemons
        if need_daemon is None:
            need_daemon = find_daemons(root, quick=True)
        name = need_daemon[0].name if need_daemon else "libvirtd"
        if of_size:
            return (f"hugetlbfs {of_size[0].path} ({size}) is not listed in hugetlbfs_mount "
                    f"of /{QEMU_CONF}: add it and restart {name}{tail}")
        conf = (f", list it in hugetlbfs_mount of /{QEMU_CONF}" if setting is not None else "")
        return (f"no hugetlbfs mount for {size} pages: run 'hugexml mounts ensure --size "
                f"{size} --persist'{conf} and restart {name} (libvirt only sees mounts present "
                f"when it starts){tail}")
    daemons = find_daemons(root, quick=True) if daemons is None else list(daemons)
    for daemon in daemons:
        if not any(judge(root, state_dir, m, daemon).visible for m in usable):
            return (f"hugetlbfs {usable[0].path} ({size}) was mounted after {daemon.name} "
                    f"(pid {daemon.pid}) started: restart {daemon.name} so it sees it{tail}")
    return None


def mount_problems(root: HostRoot, state_dir: str,
                   sizes_kib: Sequence[int]) -> dict[int, str]:
    """``mount_problem`` per page size that has one, reading the mount table and scanning
    /proc for the daemon once (the hook's prepare: every guest start with hugepages)."""
    if not sizes_kib:
        return {}
    mounts = list_mounts(root)
    daemons = find_daemons(root, quick=True)
    problems = {size_kib: mount_problem(root, state_dir, size_kib, mounts=mounts,
                                        daemons=daemons) for size_kib in sizes_kib}
    return {size: line for size, line in problems.items() if line}


def mount_for_next_start(root: HostRoot, state_dir: str, size_kib: int) -> Optional[str]:
    """The hook's prepare, when a file-backed page size has no hugetlbfs mount at all: mount
    one at the conventional path now (real host only; allowed by qemu.conf's
    ``hugetlbfs_mount``), so that the daemon's NEXT start sees it. This start still fails:
    the line says so and what to do. None when nothing was mounted (a mount of the size
    exists, a fake root, qemu.conf lists other paths); a failure is part of the line."""
    if not root.is_real or any(m.page_size_kib == size_kib for m in list_mounts(root)):
        return None
    setting = hugetlbfs_mount_setting(root)
    daemons = find_daemons(root, quick=True)
    name = daemons[0].name if daemons else "libvirtd"
    size = format_kib(size_kib)
    made, failed = _mount_now(root, state_dir, size_kib, setting)
    if made is None:
        if not failed:
            return None
        return (f"no hugetlbfs mount for {size} pages{failed}: run 'hugexml mounts ensure "
                f"--size {size} --persist' and restart {name}; {MEMFD_HINT}")
    return (f"there was no hugetlbfs mount for {size} pages: hugexml mounted {made.path} now; "
            f"restart {name} so it sees it (libvirt only sees mounts present when it starts) "
            f"and run 'hugexml mounts ensure --size {size} --persist' to keep it across "
            f"reboots; {MEMFD_HINT}")


def _mount_now(root: HostRoot, state_dir: str, size_kib: int,
               setting: Optional[list[str]]) -> tuple[Optional[Mount], str]:
    """(the mount made, "") or (None, " (mounting it failed: ...)")."""
    from hugexml.core.errors import HugexmlError
    from hugexml.host.hostinfo import read_default_page_kib
    from hugexml.system.mounts import conventional_path, ensure_mount

    path = conventional_path(size_kib, read_default_page_kib(root))
    if setting is not None and path not in setting:
        return None, ""
    try:
        return ensure_mount(root, size_kib, path, state_dir=state_dir), ""
    except HugexmlError as exc:
        return None, f" (mounting it failed: {exc})"


def mount_report(root: HostRoot, state_dir: str, *,
                 mounts: Optional[Sequence[Mount]] = None,
                 daemons: Optional[Sequence[Daemon]] = None) -> dict[str, Any]:
    """For ``hugexml mounts`` and doctor: every mount, qemu.conf, and what each daemon sees."""
    mounts = list_mounts(root) if mounts is None else list(mounts)
    daemons = find_daemons(root) if daemons is None else list(daemons)
    setting = hugetlbfs_mount_setting(root)
    rows = []
    for mount in mounts:
        row = mount.to_json()
        row["allowed_by_qemu_conf"] = setting is None or mount.path in setting
        row["seen_by"] = {}
        for daemon in daemons:
            verdict = judge(root, state_dir, mount, daemon)
            row["seen_by"][str(daemon.pid)] = {"visible": verdict.visible, "why": verdict.signal}
        rows.append(row)
    mounted = {m.path for m in mounts}
    return {
        "mounts": rows,
        "qemu_conf": {"path": root.path(QEMU_CONF), "hugetlbfs_mount": setting,
                      "not_mounted": [p for p in (setting or []) if p not in mounted]},
        "daemons": [d.to_json() for d in daemons],
    }
