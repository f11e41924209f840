"""The libvirt test bed's parts: daemons by PID, guests, mounts, pools, hugexml's state.
How and in what order they are brought up and torn down: see conftest.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Optional

import pytest


def _shared_helpers() -> Any:
    """tests/conftest.py's helpers (no package: load the file by path, not by name)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("hugexml_tests_shared", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared = _shared_helpers()
REQUIRE_REAL: bool = _shared.REQUIRE_REAL
snapshot_pools = _shared.snapshot_pools
hugetlbfs_mounts = _shared.hugetlbfs_mounts

CONN = "qemu:///system"
PREFIX = "hxtest-"
BINARIES = ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64")
DAEMON_NAMES = ("libvirtd", "virtqemud", "virtlogd")
MOUNTS = {2048: "/dev/hugepages", 1048576: "/dev/hugepages1G"}
MOUNT_OPTION = {2048: "2M", 1048576: "1G"}
STATE_DIR = "/run/hugexml"
CONFIG_FILE = "/etc/hugexml/hugexml.conf"
HOOKS_DIR = "/etc/libvirt/hooks"
HOOK_FILE = "/etc/libvirt/hooks/qemu.d/hugexml"
RUN_DIR = "/run/hugexml-e2e"
REPO = Path(__file__).resolve().parents[2]

GUEST_XML = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  {backing}
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/></devices>
  {extra}
</domain>
"""


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_REAL:
        pytest.fail(f"libvirt end-to-end test cannot run: {reason}")
    pytest.skip(reason)


def _proc_daemons() -> list[tuple[int, str]]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm in DAEMON_NAMES and _pid_alive(int(pid)):
            found.append((int(pid), comm))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_pid(pid: int, timeout_s: float = 20.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pool(size_kib: int) -> dict[str, int]:
    base = f"/sys/kernel/mm/hugepages/hugepages-{size_kib}kB"
    return {k: int(Path(f"{base}/{k}_hugepages").read_text())
            for k in ("nr", "free", "resv", "surplus")}


def set_pool(size_kib: int, count: int) -> int:
    path = f"/sys/kernel/mm/hugepages/hugepages-{size_kib}kB/nr_hugepages"
    Path(path).write_text(str(count))
    return int(Path(path).read_text())


def _is_mounted(path: str) -> bool:
    return path in hugetlbfs_mounts()


class LibvirtBed:
    """The running libvirt stack and what it changed on the host."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.pids: dict[str, int] = {}
        self.mounted: list[str] = []  # hugetlbfs mounts we made (to unmount at the end)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HUGEXML_")}
        self.env["LC_ALL"] = "C"

    # --- commands ----------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 120,
            input: Optional[bytes] = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env=self.env, check=False,
                              input=input.decode() if input is not None else None)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def virsh(self, *args: str, check: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("virsh", "-c", CONN, *args, check=check, timeout=timeout)

    def hugexml(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "hugexml", *args, check=check)

    # --- guests ------------------------------------------------------------------------
    def define(self, name: str, memory_mib: int = 128, page_kib: Optional[int] = 2048,
               memfd: bool = False, extra: str = "") -> str:
        """Define PREFIX+name; returns the full name. page_kib None: no hugepages."""
        full = PREFIX + name
        backing = ""
        if page_kib is not None:
            source = "<source type='memfd'/><access mode='shared'/>" if memfd else ""
            backing = (f"<memoryBacking><hugepages><page size='{page_kib}' unit='KiB'/>"
                       f"</hugepages>{source}</memoryBacking>")
        xml = GUEST_XML.format(name=full, uuid=uuidlib.uuid4(), memory_mib=memory_mib,
                               backing=backing, extra=extra)
        path = os.path.join(self.workdir, f"{full}.xml")
        Path(path).write_text(xml)
        self.virsh("define", path)
        return full

    def start(self, name: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.virsh("start", name, check=check)

    def destroy(self, name: str) -> None:
        self.virsh("destroy", name)

    def state(self, name: str) -> str:
        return self.virsh("domstate", name).stdout.strip()

    def uuid(self, name: str) -> str:
        return self.virsh("domuuid", name).stdout.strip()

    def dumpxml(self, name: str) -> str:
        return self.virsh("dumpxml", name).stdout

    def test_domains(self) -> list[str]:
        out = self.virsh("list", "--all", "--name", check=False).stdout
        return [n.strip() for n in out.splitlines() if n.strip().startswith(PREFIX)]

    def remove_all_domains(self) -> None:
        for name in self.test_domains():
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, "--managed-save", check=False)
        self._kill_stray_qemu()

    def _kill_stray_qemu(self) -> None:
        """qemu processes of our guests that outlived their daemon (by PID, ours only)."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"qemu-system-x86_64") and any(
                    arg.startswith(b"guest=" + PREFIX.encode()) for arg in cmdline):
                _stop_pid(int(pid))

    # --- daemons -----------------------------------------------------------------------
    def start_daemons(self) -> None:
        os.makedirs(RUN_DIR, exist_ok=True)
        if "virtlogd" not in self.pids:
            self.pids["virtlogd"] = self._start_daemon("virtlogd")
        self.pids["libvirtd"] = self._start_daemon("libvirtd")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.virsh("version", check=False, timeout=60).returncode == 0:
                return
            if not _pid_alive(self.pids["libvirtd"]):
                raise AssertionError("libvirtd exited during start-up")
            time.sleep(0.1)
        raise AssertionError("libvirtd did not answer within 90 s")

    def _start_daemon(self, name: str) -> int:
        pidfile = os.path.join(RUN_DIR, f"{name}.pid")
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        self.run(name, "-d", "--pid-file", pidfile)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                return int(Path(pidfile).read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.02)
        raise AssertionError(f"{name} wrote no pid file {pidfile}")

    def stop_libvirtd(self) -> None:
        pid = self.pids.pop("libvirtd", None)
        if pid:
            _stop_pid(pid)

    def restart_libvirtd(self) -> None:
        """Stop libvirtd by PID (guests keep running) and start it again."""
        self.stop_libvirtd()
        self.start_daemons()

    def stop_all(self) -> None:
        self.stop_libvirtd()
        pid = self.pids.pop("virtlogd", None)
        if pid:
            _stop_pid(pid)

    # --- hugetlbfs ---------------------------------------------------------------------
    def mount(self, size_kib: int) -> None:
        path = MOUNTS[size_kib]
        if _is_mounted(path):
            return
        os.makedirs(path, exist_ok=True)
        self.run("mount", "-t", "hugetlbfs", "-o", f"pagesize={MOUNT_OPTION[size_kib]}",
                 "hugetlbfs", path)
        if path not in self.mounted:
            self.mounted.append(path)

    def umount(self, size_kib: int) -> None:
        path = MOUNTS[size_kib]
        if _is_mounted(path):
            self.run("umount", path)

    # --- hugexml state -----------------------------------------------------------------
    def ledger(self) -> dict[str, Any]:
        """The state store as a plain dict (tests/statefix.py): guests keyed by NAME."""
        if not os.path.isdir(STATE_DIR):
            return {}
        sys.path.insert(0, str(REPO / "tests"))
        from statefix import snapshot

        return snapshot(STATE_DIR)

    def write_config(self, text: str) -> None:
        os.makedirs(os.path.dirname(CONFIG_FILE), exist_ok=True)
        Path(CONFIG_FILE).write_text(text)

    def remove_config(self) -> None:
        if os.path.exists(CONFIG_FILE):
            os.unlink(CONFIG_FILE)


class _Aside:
    """Move a path out of the way and put it back (or remove what replaced it)."""

    def __init__(self, path: str, backup_dir: str) -> None:
        self.path = path
        self.backup = os.path.join(backup_dir, path.strip("/").replace("/", "__"))
        self.moved = False
        if os.path.lexists(path):
            shutil.move(path, self.backup)
            self.moved = True

    def restore(self) -> None:
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            shutil.rmtree(self.path)
        elif os.path.lexists(self.path):
            os.unlink(self.path)
        if self.moved:
            shutil.move(self.backup, self.path)


