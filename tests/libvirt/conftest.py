"""A real libvirtd + virtlogd + qemu with the hugexml hook, brought up as
../shared/docs/libvirt-testbed.md says, and torn down to the host as it was found.

The module fixture ``testbed`` takes the real-host lock, refuses to touch a libvirt daemon
it did not start, installs the hook with ``hugexml install-hook`` BEFORE starting the daemon
(libvirt discovers hooks and hugetlbfs mounts only at daemon start), mounts 2M and 1G
hugetlbfs, and starts the daemons with pid files. The hook runs with libvirt's environment
(HOME, LC_ALL, PATH only), so it uses the real defaults /run/hugexml and
/etc/hugexml/hugexml.conf: both are moved aside first and put back afterwards.
Everything is stopped by PID. The function fixture ``bed`` resets the host between tests.
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from libvirt_bed import (
    BINARIES,
    CONFIG_FILE,
    HOOK_FILE,
    HOOKS_DIR,
    MOUNTS,
    RUN_DIR,
    STATE_DIR,
    LibvirtBed,
    _Aside,
    _is_mounted,
    _pid_alive,
    _proc_daemons,
    _skip_or_fail,
    hugetlbfs_mounts,
    set_pool,
    snapshot_pools,
)


@pytest.fixture(scope="module")
def testbed(real_host_lock):
    """Per test module, not per session: when the module ends, daemons, mounts and the hook
    are gone, so real-kernel tests in other modules never meet this test bed."""
    missing = [b for b in BINARIES if not shutil.which(b, path=os.environ.get("PATH", "")
                                                      + ":/usr/sbin:/sbin")]
    if missing:
        _skip_or_fail(f"libvirt/qemu not installed (missing {', '.join(missing)}); "
                      "run scripts/setup")
    if not os.path.exists("/dev/kvm"):
        _skip_or_fail("no /dev/kvm")
    running = _proc_daemons()
    if running:
        _skip_or_fail("a libvirt daemon this suite did not start is running ("
                      + ", ".join(f"{n} pid {p}" for p, n in running)
                      + "); the suite brings up its own and leaves that one alone")
    pools = snapshot_pools()
    mounts_before = hugetlbfs_mounts()
    mount_dirs_before = {p for p in MOUNTS.values() if os.path.isdir(p)}
    workdir = tempfile.mkdtemp(prefix="hugexml-e2e-")
    os.chmod(workdir, 0o755)
    backups = [_Aside(STATE_DIR, workdir), _Aside(CONFIG_FILE, workdir)]
    made_dirs = [d for d in (HOOKS_DIR, HOOKS_DIR + "/qemu.d", "/etc/hugexml")
                 if not os.path.isdir(d)]
    kvm = os.stat("/dev/kvm")
    bed = LibvirtBed(workdir)
    try:
        os.chown("/dev/kvm", -1, grp.getgrnam("kvm").gr_gid)
        os.chmod("/dev/kvm", 0o660)
        os.makedirs(HOOKS_DIR + "/qemu.d", exist_ok=True)
        os.makedirs("/etc/hugexml", exist_ok=True)
        installed = json.loads(bed.hugexml("install-hook", "--json").stdout)
        assert installed["installed"] == HOOK_FILE, installed
        bed.mount(2048)
        bed.mount(1048576)
        bed.start_daemons()
        yield bed
    finally:
        bed.remove_all_domains()
        bed.stop_all()
        bed._kill_stray_qemu()
        for path in sorted(hugetlbfs_mounts() - mounts_before, reverse=True):
            subprocess.run(["umount", path], check=False)
        for path in sorted(set(MOUNTS.values()) - mount_dirs_before):
            try:  # made by bed.mount or by the hook's prepare (hugexml.system.mounts.ensure_mount)
                os.rmdir(path)
            except OSError:
                pass
        bed.hugexml("uninstall-hook", check=False)
        for aside in backups:
            aside.restore()
        for d in reversed(made_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass
        os.chown("/dev/kvm", -1, kvm.st_gid)
        os.chmod("/dev/kvm", stat.S_IMODE(kvm.st_mode))
        for path in sorted(pools, key=lambda p: p.startswith("/sys/kernel")):
            Path(path).write_text(pools[path])
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        leftover = {p: v for p, v in snapshot_pools().items() if pools.get(p) != v}
        assert not leftover, f"hugepage pools not restored: {leftover}"


@pytest.fixture
def bed(testbed: LibvirtBed):
    """The test bed in its default state (empty pools, 2M+1G mounted and known to the
    daemon, default config, empty ledger); put back into it after the test."""
    _reset(testbed)
    yield testbed
    _reset(testbed)


def _reset(bed: LibvirtBed) -> None:
    bed.remove_all_domains()
    bed.remove_config()
    from hugexml.core.root import HostRoot
    from hugexml.system.daemon import libvirt_visible_sizes

    need_restart = not _pid_alive(bed.pids.get("libvirtd", 0))
    for size_kib in MOUNTS:
        if not _is_mounted(MOUNTS[size_kib]):
            bed.mount(size_kib)
            need_restart = True
    if not need_restart and libvirt_visible_sizes(HostRoot("/"), STATE_DIR) != set(MOUNTS):
        need_restart = True   # e.g. a mount the hook made after this daemon started
    if need_restart:
        bed.restart_libvirtd()
    for size_kib in MOUNTS:
        set_pool(size_kib, 0)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    """The differential test's numbers (seeds, domains, disagreements by kind, time)."""
    import sys

    summary = getattr(sys.modules.get("test_differential"), "SUMMARY", None)
    if not summary:
        return
    terminalreporter.write_sep("-", "hugexml against libvirt 9.0 (test_differential)")
    for label, numbers in summary.items():
        shown = {k: v for k, v in numbers.items() if k != "libvirt_refusals"}
        terminalreporter.write_line(f"{label}: {shown}")
