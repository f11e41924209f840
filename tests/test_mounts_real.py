"""Real kernel: hugetlbfs mounts of 2M and 1G made, checked through statfs, and removed;
the daemon start-time reading against psutil; doctor --json on this host."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time

import pytest
from allocfix import skip_or_fail

from hugexml.core.root import HostRoot
from hugexml.system import daemon as dm
from hugexml.system import mounts as mt
from hugexml.system.mountunits import unit_name_for_path

pytestmark = pytest.mark.realkernel
REAL = HostRoot("/")
M2, G1 = 2048, 1048576


@pytest.mark.parametrize("size_kib", [M2, G1])
def test_mount_verify_and_unmount_for_real(real_host, tmp_path, size_kib):
    if size_kib not in mt.read_page_sizes_kib(REAL):
        skip_or_fail(f"this kernel has no {size_kib} KiB pages")
    state = str(tmp_path / "state")
    target = str(tmp_path / f"hp{mt.format_kib(size_kib)}")
    before = time.time()
    mount = mt.ensure_mount(REAL, size_kib, target, state_dir=state)
    try:
        assert mount.path == target and mount.page_size_kib == size_kib
        assert os.statvfs(target).f_bsize == size_kib * 1024
        # the kernel prints the size back: pagesize=2M / pagesize=1024M
        assert mt.mount_for(mt.list_mounts(REAL), size_kib) is not None
        assert [m.page_size_kib for m in mt.list_mounts(REAL) if m.path == target] == [size_kib]
        # idempotent: the second call finds it
        assert mt.ensure_mount(REAL, size_kib, target, state_dir=state).path == target
        rec = mt.read_records(state)[target]
        assert before - 1 <= rec["mounted_at"] <= time.time() + 1 and rec["created_dir"]
        # a daemon that started before this mount cannot see it; one started after can
        old = dm.Daemon(1, "libvirtd", before - 60)
        new = dm.Daemon(2, "libvirtd", time.time() + 60)
        assert not dm.judge(REAL, state, mount, old).visible
        assert dm.judge(REAL, state, mount, new).visible
        # without hugexml's record, the root inode's ctime tells the same
        assert not dm.judge(REAL, str(tmp_path / "no-state"), mount, old).visible
        # libvirt's directory (made at its start) is the other signal
        os.makedirs(os.path.join(target, "libvirt", "qemu"))
        assert dm.judge(REAL, str(tmp_path / "no-state"), mount, old).visible
        os.removedirs(os.path.join(target, "libvirt", "qemu"))
    finally:
        assert mt.unmount(REAL, target, state)
    assert not os.path.exists(target)                 # we made the directory: removed
    assert target not in mt.read_records(state)
    assert all(m.path != target for m in mt.list_mounts(REAL))


def test_a_wrong_size_on_an_existing_mount_is_refused_for_real(real_host, tmp_path):
    target = str(tmp_path / "hugepages1G")
    os.mkdir(target)
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "hugetlbfs", target],
                   check=True)
    try:
        with pytest.raises(mt.HostError, match="is a hugetlbfs mount of 2M pages, not 1G"):
            mt.ensure_mount(REAL, G1, target)
    finally:
        subprocess.run(["umount", target], check=True)


def test_start_time_matches_psutils_create_time():
    import psutil
    for pid in (os.getpid(), 1):
        comm, started = dm.process_start(REAL, pid)
        assert comm == psutil.Process(pid).name()
        assert started == pytest.approx(psutil.Process(pid).create_time(), abs=0.02)


@pytest.mark.parametrize("path", ["/dev/hugepages1G", "/dev/hugepages", "/srv/hp-1g x", "/.hp"])
def test_unit_names_match_systemd_escape(path):
    if not shutil.which("systemd-escape"):
        skip_or_fail("no systemd-escape")
    out = subprocess.run(["systemd-escape", "--path", "--suffix=mount", path],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert unit_name_for_path(path) == out


def test_doctor_json_on_the_real_host(real_host, tmp_path, capsys):
    from hugexml.cli import doctor as cmd
    from hugexml.cli.main import Context

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    ctx = Context(REAL, str(tmp_path / "state"), "/nonexistent.conf", False, 0)
    code = cmd.run(p.parse_args(["--json"]), ctx)
    data = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in data["checks"]}
    assert names == {"cpu-1g", "default-size", "pools", "boot-reserve", "mounts", "qemu.conf",
                     "stale-daemon", "hook", "ledger", "kept", "thp", "fragmentation", "guests",
                     "autostart", "hugetlb-cma"}
    assert code == data["exit_code"] in (0, 1, 2)
    by_name = {c["name"]: c for c in data["checks"]}
    with open("/proc/cpuinfo") as fh:
        has_1g = "pdpe1gb" in fh.read()
    assert by_name["cpu-1g"]["status"] == "ok"
    assert ("pdpe1gb" in by_name["cpu-1g"]["message"]) == has_1g or not has_1g
    for check in data["checks"]:
        if check["status"] in ("warn", "fail"):
            assert check["fix"], check


def test_the_hooks_mount_for_next_start_mounts_for_the_next_daemon_start(real_host, tmp_path):
    """prepare with no 1G mount: the mount is made (at the conventional path) and the line
    says the daemon must restart; afterwards the same check is satisfied for a daemon that
    starts later, and not for the one that was running."""
    if G1 not in mt.read_page_sizes_kib(REAL):
        skip_or_fail("no 1G pages")
    if mt.mount_for(mt.list_mounts(REAL), G1) is not None:
        skip_or_fail("a 1G mount exists already")
    state = str(tmp_path / "state")
    running = dm.Daemon(4242, "libvirtd", time.time() - 60)
    assert dm.mount_problem(REAL, state, G1, daemons=[running]).startswith(
        "no hugetlbfs mount for 1G pages")                     # a query: nothing mounted
    assert mt.mount_for(mt.list_mounts(REAL), G1) is None
    line = dm.mount_for_next_start(REAL, state, G1)            # prepare's explicit step
    made = mt.mount_for(mt.list_mounts(REAL), G1)
    try:
        assert made is not None and made.path == "/dev/hugepages1G"
        assert line == (
            "there was no hugetlbfs mount for 1G pages: hugexml mounted /dev/hugepages1G now; "
            "restart libvirtd so it sees it (libvirt only sees mounts present when it starts) "
            "and run 'hugexml mounts ensure --size 1G --persist' to keep it across reboots; "
            "or use <source type='memfd'/> which needs no mount")
        assert "was mounted after libvirtd (pid 4242) started" in dm.mount_problem(
            REAL, state, G1, daemons=[running])
        restarted = dm.Daemon(4243, "libvirtd", time.time() + 5)
        assert dm.mount_problem(REAL, state, G1, daemons=[restarted]) is None
    finally:
        if made is not None:
            mt.unmount(REAL, made.path, state)
