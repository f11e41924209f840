"""hugexml.system.daemon: qemu.conf, daemon discovery, and which mounts the running daemon sees."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fakekernel import write_hugetlbfs_mounts

from hugexml.core.errors import ConfigError
from hugexml.core.root import HostRoot
from hugexml.system import daemon as dm
from hugexml.system.mounts import list_mounts

M2, G1 = 2048, 1048576
BTIME = 1_700_000_000
TICK = os.sysconf("SC_CLK_TCK")


class Root:
    """A fake root: mount table, mount point directories, qemu.conf, processes."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = HostRoot(str(base))
        self.state = str(base / "run/hugexml")
        (base / "proc/self").mkdir(parents=True)
        (base / "proc/stat").write_text(f"cpu 1 2 3\nbtime {BTIME}\nprocesses 9\n")
        (base / "proc/meminfo").write_text("Hugepagesize: 2048 kB\n")
        self.mounts({})

    def mounts(self, table: dict[str, str]) -> None:
        write_hugetlbfs_mounts(self.base, table)

    def process(self, pid: int, comm: str, started: float, state: str = "S") -> None:
        ticks = round((started - BTIME) * TICK)
        rest = [state, "1"] + ["0"] * 17 + [str(ticks), "0", "0"]
        (self.base / f"proc/{pid}").mkdir(parents=True)
        (self.base / f"proc/{pid}/stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")

    def qemu_conf(self, text: str) -> None:
        (self.base / "etc/libvirt").mkdir(parents=True, exist_ok=True)
        (self.base / "etc/libvirt/qemu.conf").write_text(text)


@pytest.fixture
def host(tmp_path):
    return Root(tmp_path / "root")


# --- qemu.conf ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,expect", [
    ("", None),
    ("# hugetlbfs_mount = \"/dev/hugepages\"\n", None),
    ('hugetlbfs_mount = "/dev/hugepages"\n', ["/dev/hugepages"]),
    ("hugetlbfs_mount = '/dev/hugepages1G/'\n", ["/dev/hugepages1G"]),
    ('user = "qemu"\nhugetlbfs_mount = ["/dev/hugepages", # default size\n'
     '                   "/dev/hugepages1G"]\nsecurity_driver = [ "none" ]\n',
     ["/dev/hugepages", "/dev/hugepages1G"]),
    ('hugetlbfs_mount = []\n', []),
    ('hugetlbfs_mount = """/hp"""\nhugetlbfs_mount = "/ignored"\n', ["/hp"]),  # first wins
    ('max_files = 32768 ; hugetlbfs_mount = "/a"\n', ["/a"]),
])
def test_qemu_conf_hugetlbfs_mount(host, text, expect):
    host.qemu_conf(text)
    assert dm.hugetlbfs_mount_setting(host.root) == expect


@pytest.mark.parametrize("text,match", [
    ('hugetlbfs_mount = ["/a", "/b"\n', "hugetlbfs_mount: unterminated list"),
    ('hugetlbfs_mount = \n', "hugetlbfs_mount: missing value"),
    ('hugetlbfs_mount = [1]\n', "hugetlbfs_mount: must be a string"),
    ('hugetlbfs_mount "/a"\n', "expected 'name = value'"),
    ('hugetlbfs_mount = "/a\n', "line 1: cannot parse"),
])
def test_a_broken_qemu_conf_is_one_config_error(host, text, match):
    host.qemu_conf(text)
    with pytest.raises(ConfigError, match=match):
        dm.hugetlbfs_mount_setting(host.root)


# --- daemons -----------------------------------------------------------------------------
def test_find_daemons_by_comm_with_start_time(host):
    host.process(100, "libvirtd", BTIME + 50.5)
    host.process(200, "bash", BTIME + 10)
    host.process(300, "virtqemud", BTIME + 70)
    host.process(400, "libvirtd-extra", BTIME + 1)
    found = dm.find_daemons(host.root)
    assert [(d.pid, d.name) for d in found] == [(100, "libvirtd"), (300, "virtqemud")]
    assert found[0].started == pytest.approx(BTIME + 50.5, abs=1.0 / TICK)


@pytest.mark.parametrize("state, counted", [("S", True), ("R", True), ("D", True),
                                            ("Z", False), ("X", False)])
def test_an_exited_daemon_is_not_running(host, state, counted):
    """A zombie (exited, not yet reaped) or dead libvirtd runs no hooks and sees no mounts."""
    host.process(100, "virtqemud", BTIME + 5, state=state)
    assert [d.pid for d in dm.find_daemons(host.root)] == ([100] if counted else [])
    assert dm.process_start(host.root, 100)[0] == "virtqemud"  # still a process


def test_quick_discovery_uses_a_pidfile_that_names_a_daemon(host):
    host.process(100, "libvirtd", BTIME + 5)
    host.process(300, "virtqemud", BTIME + 7)
    (host.base / "run").mkdir()
    (host.base / "run/virtqemud.pid").write_text("300\n")
    (host.base / "run/libvirtd.pid").write_text("200\n")        # stale: no such process
    assert [d.pid for d in dm.find_daemons(host.root, quick=True)] == [300]
    assert [d.pid for d in dm.find_daemons(host.root)] == [100, 300]


# --- visibility and the hook's line ------------------------------------------------------
def test_no_mount_at_all_names_the_command_the_restart_and_memfd(host):
    line = dm.mount_problem(host.root, host.state, G1, daemons=[])
    assert line == (
        "no hugetlbfs mount for 1G pages: run 'hugexml mounts ensure --size 1G --persist' and "
        "restart libvirtd (libvirt only sees mounts present when it starts); or use "
        "<source type='memfd'/> which needs no mount")
    assert dm.libvirt_visible_sizes(host.root, host.state, daemons=[]) == set()


def test_a_mount_older_than_the_daemon_is_fine(host):
    host.mounts({"/dev/hugepages": "2M", "/dev/hugepages1G": "1024M"})
    later = dm.Daemon(42, "libvirtd", time.time() + 60)       # started after the mounts
    for size in (M2, G1):
        assert dm.mount_problem(host.root, host.state, size, daemons=[later]) is None
    assert dm.libvirt_visible_sizes(host.root, host.state, daemons=[later]) == {M2, G1}


def test_stale_daemon_a_mount_made_after_it_started(host):
    host.mounts({"/dev/hugepages": "2M", "/dev/hugepages1G": "1024M"})
    # libvirt made its directory in the 2M mount when it started: that one it knows
    (host.base / "dev/hugepages/libvirt/qemu").mkdir(parents=True)
    host.process(4242, "libvirtd", time.time() - 3600)
    assert dm.mount_problem(host.root, host.state, M2) is None
    assert dm.mount_problem(host.root, host.state, G1) == (
        "hugetlbfs /dev/hugepages1G (1G) was mounted after libvirtd (pid 4242) started: "
        "restart libvirtd so it sees it; or use <source type='memfd'/> which needs no mount")
    assert dm.libvirt_visible_sizes(host.root, host.state) == {M2}
    report = dm.mount_report(host.root, host.state)
    seen = {r["path"]: r["seen_by"]["4242"]["visible"] for r in report["mounts"]}
    assert seen == {"/dev/hugepages": True, "/dev/hugepages1G": False}


def test_hugexmls_own_record_decides_when_it_matches_the_mount(host):
    host.mounts({"/dev/hugepages1G": "1G"})
    st = os.stat(host.base / "dev/hugepages1G")
    started = time.time() + 600     # the directory's ctime alone would say "visible"
    os.makedirs(host.state)
    record = {"version": 1, "mounts": {"/dev/hugepages1G": {
        "size_kib": G1, "mounted_at": started + 30, "dev": st.st_dev, "ino": st.st_ino}}}
    Path(host.state, "mounts.json").write_text(json.dumps(record))
    d = dm.Daemon(7, "virtqemud", started)
    assert "was mounted after virtqemud (pid 7) started" in dm.mount_problem(
        host.root, host.state, G1, daemons=[d])
    # a record of another mount at that path (other inode) is not believed
    record["mounts"]["/dev/hugepages1G"]["ino"] = st.st_ino + 1
    Path(host.state, "mounts.json").write_text(json.dumps(record))
    assert dm.mount_problem(host.root, host.state, G1, daemons=[d]) is None


def test_qemu_conf_leaving_out_the_mounted_size(host):
    host.mounts({"/dev/hugepages": "2M", "/dev/hugepages1G": "1024M"})
    host.qemu_conf('hugetlbfs_mount = "/dev/hugepages"\n')
    d = dm.Daemon(9, "libvirtd", time.time() + 60)
    assert dm.mount_problem(host.root, host.state, G1, daemons=[d]) == (
        "hugetlbfs /dev/hugepages1G (1G) is not listed in hugetlbfs_mount of "
        "/etc/libvirt/qemu.conf: add it and restart libvirtd; or use <source type='memfd'/> "
        "which needs no mount")
    assert dm.libvirt_visible_sizes(host.root, host.state, daemons=[d]) == {M2}


def test_qemu_conf_naming_an_unmounted_path(host):
    host.mounts({"/dev/hugepages": "2M"})
    host.qemu_conf('hugetlbfs_mount = ["/dev/hugepages", "/dev/hugepages1G"]\n')
    line = dm.mount_problem(host.root, host.state, G1, daemons=[])
    assert line.startswith("no hugetlbfs mount for 1G pages: run 'hugexml mounts ensure "
                           "--size 1G --persist', list it in hugetlbfs_mount of "
                           "/etc/libvirt/qemu.conf and restart libvirtd")
    report = dm.mount_report(host.root, host.state, daemons=[])
    assert report["qemu_conf"]["not_mounted"] == ["/dev/hugepages1G"]


def test_the_hooks_no_op_path_does_not_import_psutil(host):
    import subprocess
    import sys

    host.mounts({"/dev/hugepages1G": "1G"})
    host.process(5, "libvirtd", BTIME + 1)
    code = ("import sys; from hugexml.core.root import HostRoot; from hugexml.system.daemon import "
            f"mount_problems; r = mount_problems(HostRoot({str(host.base)!r}), '/nonexistent', "
            f"[{G1}]); assert 'psutil' not in sys.modules and 'lxml' not in sys.modules; "
            "print(r[1048576])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("hugetlbfs /dev/hugepages1G (1G) was mounted after libvirtd")


def test_mount_problems_scans_for_the_daemon_once_for_all_sizes(host, monkeypatch):
    host.mounts({"/dev/hugepages": "2M"})
    host.process(5, "libvirtd", BTIME + 1)
    scans = []
    real_find = dm.find_daemons
    monkeypatch.setattr(dm, "find_daemons", lambda *a, **k: scans.append(1) or real_find(*a, **k))
    problems = dm.mount_problems(host.root, host.state, [M2, G1])
    assert len(scans) == 1
    one_by_one = [dm.mount_problem(host.root, host.state, size) for size in (M2, G1)]
    assert list(problems.values()) == [p for p in one_by_one if p] and len(problems) == 2
    assert dm.mount_problems(host.root, host.state, []) == {}


def test_mounts_listed_match_the_table(host):
    host.mounts({"/a": "2M"})
    assert [m.path for m in list_mounts(host.root)] == ["/a"]


def test_mount_problem_is_a_query_and_mounting_is_a_separate_step(host):
    line = dm.mount_problem(host.root, host.state, G1, daemons=[])
    assert line.startswith("no hugetlbfs mount for 1G pages: run 'hugexml mounts ensure")
    assert dm.mount_for_next_start(host.root, host.state, G1) is None  # never under a fake root
    assert not (host.base / "dev").exists() and not os.path.exists(host.state)
