"""hugexml.system.mounts on a fake root: the mount table, conventional paths, persistence."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from allocfix import skip_or_fail

from hugexml.core.errors import HostError, InvalidInput
from hugexml.core.root import HostRoot
from hugexml.system.mounts import (
    Mount,
    ensure_mount,
    list_mounts,
    mount_for,
    parse_pagesize_kib,
    plan_mount,
    unmount,
)
from hugexml.system.mountunits import (
    fstab_line,
    persist_fstab,
    persist_unit,
    render_unit,
    unit_name_for_path,
)

M2, G1 = 2048, 1048576


def fake_root(base: Path, table: str, default_kib: int = M2, sizes=(M2, G1)) -> HostRoot:
    (base / "proc/self").mkdir(parents=True, exist_ok=True)
    (base / "proc/self/mounts").write_text(table)
    (base / "proc/meminfo").write_text(f"MemTotal: 8388608 kB\nHugepagesize: {default_kib} kB\n")
    for size in sizes:
        (base / f"sys/kernel/mm/hugepages/hugepages-{size}kB").mkdir(parents=True, exist_ok=True)
    return HostRoot(str(base))


TABLE = (
    "proc /proc proc rw,nosuid 0 0\n"
    "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
    "tmpfs /run tmpfs rw 0 0\n"
    "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\n"
    "none /srv/my\\040pages hugetlbfs rw,relatime 0 0\n"
    "hugetlbfs /dev/hugepages16K hugetlbfs rw,pagesize=16384k 0 0\n"
)


def test_list_mounts_reads_sizes_escapes_and_the_default(tmp_path):
    root = fake_root(tmp_path, TABLE, default_kib=M2)
    mounts = list_mounts(root)
    assert [(m.path, m.page_size_kib) for m in mounts] == [
        ("/dev/hugepages", M2), ("/dev/hugepages1G", G1),
        ("/srv/my pages", M2),               # no pagesize=: Hugepagesize of proc/meminfo
        ("/dev/hugepages16K", 16384),
    ]
    assert mount_for(mounts, G1) == mounts[1]
    assert mount_for(mounts, M2) == mounts[0]          # the first one, as libvirt
    assert mount_for(mounts, 4) is None


def test_list_mounts_falls_back_to_proc_mounts(tmp_path):
    root = fake_root(tmp_path, "")
    os.unlink(tmp_path / "proc/self/mounts")
    (tmp_path / "proc/mounts").write_text("hugetlbfs /hp hugetlbfs rw,pagesize=1G 0 0\n")
    assert list_mounts(root) == [Mount("/hp", G1, "rw,pagesize=1G")]


@pytest.mark.parametrize("text,kib", [
    ("2M", M2), ("1G", G1), ("1024M", G1), ("2048k", M2), ("2048K", M2),
    ("2097152", M2), ("2MB", M2),       # memparse ignores what follows the suffix
    ("64K", 64),
])
def test_pagesize_like_the_kernels_memparse(text, kib):
    assert parse_pagesize_kib(text) == kib


def test_an_unreadable_pagesize_is_one_host_error(tmp_path):
    root = fake_root(tmp_path, "hugetlbfs /x hugetlbfs rw,pagesize=huge 0 0\n")
    with pytest.raises(HostError, match="hugetlbfs /x: pagesize 'huge' is not a size"):
        list_mounts(root)


@pytest.mark.parametrize("default_kib,size_kib,path", [
    (M2, M2, "/dev/hugepages"), (M2, G1, "/dev/hugepages1G"),
    (G1, G1, "/dev/hugepages"), (G1, M2, "/dev/hugepages2M"),
])
def test_conventional_paths(tmp_path, default_kib, size_kib, path):
    root = fake_root(tmp_path, "", default_kib=default_kib)
    plan = plan_mount(root, size_kib)
    assert plan.existing is None and plan.path == path
    assert plan.argv == ["mount", "-t", "hugetlbfs", "-o",
                         f"pagesize={'2M' if size_kib == M2 else '1G'},nosuid,nodev",
                         "hugetlbfs", path]


def test_an_existing_mount_is_used_whatever_its_path(tmp_path):
    root = fake_root(tmp_path, "hugetlbfs /srv/big hugetlbfs rw,pagesize=1024M 0 0\n")
    assert ensure_mount(root, G1) == Mount("/srv/big", G1, "rw,pagesize=1024M")


def test_the_seeds_mistake_a_1g_directory_with_2m_pages_is_refused(tmp_path):
    root = fake_root(tmp_path, "hugetlbfs /dev/hugepages1G hugetlbfs rw,pagesize=2M 0 0\n")
    with pytest.raises(HostError, match="/dev/hugepages1G: is a hugetlbfs mount of 2M pages, "
                                        "not 1G: unmount it"):
        plan_mount(root, G1, "/dev/hugepages1G")


def test_another_file_system_at_the_path_is_refused(tmp_path):
    root = fake_root(tmp_path, "tmpfs /dev/hugepages1G tmpfs rw 0 0\n")
    with pytest.raises(HostError, match="mount point of another file system"):
        plan_mount(root, G1)


def test_a_size_the_kernel_lacks_is_refused(tmp_path):
    root = fake_root(tmp_path, "", sizes=(M2,))
    with pytest.raises(InvalidInput, match=r"the kernel has no 1G hugepages \(it has: 2M\)"):
        plan_mount(root, G1)


def test_a_fake_root_is_never_mounted_but_says_what_it_would_run(tmp_path):
    root = fake_root(tmp_path, "")
    with pytest.raises(HostError, match=r"not mounting under a fake root .* mount -t hugetlbfs "
                                        r"-o pagesize=1G,nosuid,nodev hugetlbfs /dev/hugepages1G"):
        ensure_mount(root, G1, state_dir=str(tmp_path / "state"))
    assert not (tmp_path / "dev").exists() and not (tmp_path / "state").exists()
    # unmount of something that is not mounted: nothing to do
    assert unmount(root, "/dev/hugepages1G") is False


@pytest.mark.parametrize("path,name", [
    ("/dev/hugepages1G", "dev-hugepages1G.mount"),
    ("/dev/hugepages", "dev-hugepages.mount"),
    ("/srv/hp-1g", "srv-hp\\x2d1g.mount"),
    ("/srv/my pages/", "srv-my\\x20pages.mount"),
    ("//dev//hugepages2M", "dev-hugepages2M.mount"),
])
def test_unit_names_follow_systemd_escape(path, name):
    assert unit_name_for_path(path) == name


def test_persist_unit_writes_an_ordered_mount_unit(tmp_path):
    unit = persist_unit(G1, "/dev/hugepages1G", str(tmp_path / "etc/systemd/system"))
    assert unit == str(tmp_path / "etc/systemd/system/dev-hugepages1G.mount")
    text = Path(unit).read_text()
    assert text == render_unit(G1, "/dev/hugepages1G")
    for line in ("Before=sysinit.target libvirtd.service virtqemud.service", "What=hugetlbfs",
                 "Where=/dev/hugepages1G", "Type=hugetlbfs", "Options=pagesize=1G,nosuid,nodev",
                 "WantedBy=sysinit.target"):
        assert line in text.splitlines()


def test_persist_fstab_adds_once_and_never_rewrites_a_foreign_line(tmp_path):
    fstab = tmp_path / "etc/fstab"
    fstab.parent.mkdir(parents=True)
    fstab.write_text("/dev/sda1 / ext4 defaults 0 1")          # no final newline
    assert "added" in persist_fstab(G1, "/dev/hugepages1G", str(fstab))
    assert "already has" in persist_fstab(G1, "/dev/hugepages1G", str(fstab))
    lines = fstab.read_text().splitlines()
    assert lines[0] == "/dev/sda1 / ext4 defaults 0 1"
    assert lines[-1] == fstab_line(G1, "/dev/hugepages1G") == (
        "hugetlbfs /dev/hugepages1G hugetlbfs pagesize=1G,nosuid,nodev 0 0")
    before = fstab.read_text()
    with pytest.raises(HostError, match="already mounts /dev/hugepages1G differently"):
        persist_fstab(M2, "/dev/hugepages1G", str(fstab))
    assert fstab.read_text() == before


def run_mounts(argv, root, state):
    import argparse

    from hugexml.cli import mounts as cmd
    from hugexml.cli.main import Context

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(argv), Context(root, state, "/nonexistent.conf", False, 0))


def test_mounts_command_lists_sizes_without_a_mount(tmp_path, capsys):
    import json

    root = fake_root(tmp_path, "hugetlbfs /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n")
    assert run_mounts(["--json"], root, str(tmp_path / "state")) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["path"] for m in data["mounts"]] == ["/dev/hugepages"]
    assert data["missing_sizes_kib"] == [G1]
    assert run_mounts([], root, str(tmp_path / "state")) == 0
    out = capsys.readouterr().out
    assert "hugexml mounts ensure --size 1G --persist" in out


@pytest.mark.parametrize("systemd", [True, False])
def test_mounts_ensure_persist_writes_a_unit_or_an_fstab_line(tmp_path, capsys, systemd):
    root = fake_root(tmp_path, "hugetlbfs /dev/hugepages1G hugetlbfs rw,pagesize=1024M 0 0\n")
    if systemd:
        (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert run_mounts(["ensure", "--size", "1G", "--persist"], root, str(tmp_path / "s")) == 0
    assert "already mounted: 1G at /dev/hugepages1G" in capsys.readouterr().out
    unit = tmp_path / "etc/systemd/system/dev-hugepages1G.mount"
    fstab = tmp_path / "etc/fstab"
    assert unit.exists() is systemd and fstab.exists() is not systemd
    if not systemd:
        assert fstab_line(G1, "/dev/hugepages1G") in fstab.read_text().splitlines()


def _real_size_or_skip() -> int:
    from hugexml.host.hostinfo import read_page_sizes_kib

    sizes = read_page_sizes_kib(HostRoot("/"))
    if M2 not in sizes:
        skip_or_fail("no 2M hugepages on this kernel")
    return M2


def test_a_failed_mount_removes_the_directory_it_made_and_records_nothing(tmp_path, monkeypatch):
    import errno

    import hugexml.system.mounts as mt

    size_kib = _real_size_or_skip()
    calls = []

    def refuse(name, *args):
        calls.append(name)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(mt, "_libc_call", refuse)
    target = tmp_path / "hp"
    with pytest.raises(HostError, match=r"mount -t hugetlbfs failed: Invalid argument \(does the "
                                        r"kernel accept pagesize=2M\?\)"):
        ensure_mount(HostRoot("/"), size_kib, str(target), state_dir=str(tmp_path / "state"))
    assert calls == ["mount"] and not target.exists() and not (tmp_path / "state").exists()


def test_a_mount_whose_statfs_disagrees_is_undone(tmp_path, monkeypatch):
    import hugexml.system.mounts as mt

    size_kib = _real_size_or_skip()
    calls = []
    monkeypatch.setattr(mt, "_libc_call", lambda name, *args: calls.append(name))
    target = tmp_path / "hp"          # nothing is really mounted: statfs sees tmp's blocks
    with pytest.raises(HostError, match=r"but statfs reports [0-9]+ byte pages; unmounted it"):
        ensure_mount(HostRoot("/"), size_kib, str(target), state_dir=str(tmp_path / "state"))
    assert calls == ["mount", "umount2"] and not target.exists()
    assert not (tmp_path / "state").exists()


def test_persist_reports_a_failing_systemctl_instead_of_persisted(tmp_path, monkeypatch):
    """The unit is written, but if systemd does not take it, --persist says so (one line)
    instead of reporting the mount as persisted."""
    import subprocess
    from types import SimpleNamespace

    from hugexml.cli import mounts as cmd
    from hugexml.core.errors import HostError
    from hugexml.system import mountunits as mu

    monkeypatch.setattr(mu, "has_systemd", lambda root: True)
    root = SimpleNamespace(is_real=True, path=lambda *parts: str(tmp_path.joinpath(*parts)))
    calls = []

    def failing(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1 if "enable" in argv else 0, "",
                                           "Failed to enable unit: Unit file is masked.\n")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(HostError) as info:
        cmd._persist(SimpleNamespace(root=root), 1048576, "/dev/hugepages1G")
    assert "written, but systemctl enable dev-hugepages1G.mount failed (exit 1): " \
           "Failed to enable unit: Unit file is masked." in str(info.value)
    assert calls[-1] == ["systemctl", "enable", "dev-hugepages1G.mount"]
