"""hugexml doctor on a fake root: each problem reported with the right status and fix."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from autostartfix import autostart, domain
from fakekernel import write_hugetlbfs_mounts

from hugexml.core.model import Consumer, Plan
from hugexml.core.root import HostRoot
from hugexml.system.checks import FAIL, OK, SKIP, WARN, Check, exit_code
from hugexml.system.daemon import Daemon
from hugexml.system.doctor import Doctor

sys.path.insert(0, str(Path(__file__).parent))
from simkernel import SimKernel

M2, G1 = 2048, 1048576
NAMES = ["guests", "cpu-1g", "default-size", "pools", "boot-reserve", "mounts", "qemu.conf",
         "stale-daemon", "hook", "ledger", "kept", "thp", "fragmentation", "autostart",
         "hugetlb-cma"]


class FakeHost:
    def __init__(self, base: Path, pdpe1gb: bool = True, nodes: int = 2) -> None:
        self.base = base
        self.root = HostRoot(str(base))
        self.state = str(base / "run/hugexml")
        self.sim = SimKernel(nodes=nodes)
        for size in (M2, G1):
            (base / f"sys/kernel/mm/hugepages/hugepages-{size}kB").mkdir(parents=True)
        for n in range(nodes):
            (base / f"sys/devices/system/node/node{n}").mkdir(parents=True)
        thp = base / "sys/kernel/mm/transparent_hugepage"
        thp.mkdir(parents=True)
        (thp / "enabled").write_text("always [madvise] never\n")
        (thp / "defrag").write_text("always defer defer+madvise [madvise] never\n")
        (base / "proc/self").mkdir(parents=True)
        (base / "proc/meminfo").write_text("MemTotal: 67108864 kB\nHugepagesize: 2048 kB\n")
        (base / "proc/cmdline").write_text("ro quiet\n")
        flags = "fpu pse pdpe1gb" if pdpe1gb else "fpu pse"
        (base / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        self.daemons: list[Daemon] = []
        self.mounts({"/dev/hugepages": "2M", "/dev/hugepages1G": "1024M"})
        self.install_hook()

    def mounts(self, table: dict[str, str]) -> None:
        write_hugetlbfs_mounts(self.base, table)

    def install_hook(self, mode: int = 0o755) -> Path:
        hook = self.base / "etc/libvirt/hooks/qemu.d/hugexml"
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text("#!/usr/bin/python3 -I\nfrom hugexml.qemuhook.dispatch import main\n")
        hook.chmod(mode)
        return hook

    def doctor(self, domains=(), planner=None) -> dict[str, Check]:
        doc = Doctor(self.root, self.state, daemons=self.daemons, gateway=self.sim,
                     domains=list(domains), planner=planner or fake_plan)
        checks = doc.run()
        assert [c.name for c in checks] == [*NAMES[1:], "guests"]
        return {c.name: c for c in checks}


def fake_plan(xml: bytes, host, source: str) -> Plan:
    """Stand-in for hugexml.xml.domxml.plan_xml (the doctor is under test, not the planner): one
    2 GiB consumer of the page size and source the guest() XML below names."""
    m = re.search(rb"<name>([^<]+)</name>.*<page size='([0-9]+)'", xml)
    name, size_kib = m.group(1).decode(), int(m.group(2))
    source_type = "memfd" if b"memfd" in xml else "file"
    consumer = Consumer("memory", None, None, 2 << 20, size_kib, (2 << 20) // size_kib, None,
                        None, source_type, False)
    return Plan(name, None, (consumer,))


def guest(name: str, size_kib: int, memfd: bool = False) -> tuple[str, bytes]:
    source = "<source type='memfd'/>" if memfd else ""
    return name, (f"<domain type='kvm'><name>{name}</name><memory unit='GiB'>2</memory>"
                  f"<memoryBacking><hugepages><page size='{size_kib}' unit='KiB'/></hugepages>"
                  f"{source}</memoryBacking><vcpu>1</vcpu><os><type>hvm</type></os>"
                  "</domain>").encode()


@pytest.fixture
def host(tmp_path):
    return FakeHost(tmp_path / "root")


def test_a_well_set_up_host_is_all_ok(host):
    checks = host.doctor()
    bad = {n: c.line() for n, c in checks.items() if c.status not in (OK, SKIP)}
    assert bad == {}
    assert exit_code(list(checks.values())) == 0
    assert checks["pools"].message == ("node 0: 2M 0/0 free, 1G 0/0 free; "
                                       "node 1: 2M 0/0 free, 1G 0/0 free")


def test_missing_1g_mount_warns_with_the_fix(host):
    host.mounts({"/dev/hugepages": "2M"})
    check = host.doctor()["mounts"]
    assert check.status == WARN
    assert check.fix == ("hugexml mounts ensure --size 1G --persist, then restart libvirtd "
                         "(it sees mounts only at start)")


def test_missing_1g_mount_fails_when_a_file_backed_guest_needs_it(host):
    host.mounts({"/dev/hugepages": "2M"})
    checks = host.doctor([guest("db1", G1), guest("web", M2)])
    assert checks["mounts"].status == FAIL and "1G for db1" in checks["mounts"].message
    assert checks["guests"].status == FAIL
    assert "db1: no 1G hugetlbfs mount libvirt can use" in checks["guests"].message
    # a memfd guest needs no mount
    assert host.doctor([guest("db2", G1, memfd=True)])["mounts"].status == WARN


def test_qemu_conf_naming_an_unmounted_path_fails(host):
    host.mounts({"/dev/hugepages": "2M"})
    conf = host.base / "etc/libvirt/qemu.conf"
    conf.write_text('hugetlbfs_mount = ["/dev/hugepages", "/dev/hugepages1G"]\n')
    check = host.doctor()["qemu.conf"]
    assert check.status == FAIL
    assert check.message.endswith("libvirtd will refuse to start: not a hugetlbfs mount: "
                                  "'/dev/hugepages1G'")
    assert "remove it from hugetlbfs_mount" in check.fix


def test_qemu_conf_leaving_out_a_mounted_size(host):
    (host.base / "etc/libvirt/qemu.conf").write_text('hugetlbfs_mount = "/dev/hugepages"\n')
    check = host.doctor()["qemu.conf"]
    assert check.status == WARN and "leaves out the mounted 1G pages" in check.message
    assert check.fix == "add the 1G mount to hugetlbfs_mount and restart libvirtd"


def test_1g_guest_on_a_cpu_without_pdpe1gb_fails(tmp_path):
    host = FakeHost(tmp_path / "root", pdpe1gb=False)
    assert host.doctor()["cpu-1g"].status == OK           # nobody asks for 1G
    check = host.doctor([guest("big", G1)])["cpu-1g"]
    assert check.status == FAIL
    assert check.message == "guest big needs 1G pages but the CPU has no pdpe1gb"
    assert "--page-size 2M" in check.fix


def test_stale_daemon_is_reported_with_the_restart(host):
    # libvirt made its directory in the 2M mount when it started; the 1G one came later
    (host.base / "dev/hugepages/libvirt/qemu").mkdir(parents=True)
    host.daemons = [Daemon(4242, "libvirtd", time.time() - 3600)]
    checks = host.doctor()
    check = checks["stale-daemon"]
    assert check.status == WARN
    assert check.message == ("hugetlbfs /dev/hugepages1G (1G) was mounted after libvirtd "
                             "(pid 4242) started: it cannot use it")
    assert check.fix == "restart libvirtd so it sees it"
    # the hook, installed after the daemon started, was not discovered either
    assert checks["hook"].status == WARN and checks["hook"].fix == "restart libvirtd"
    assert exit_code(list(checks.values())) == 1


def test_a_late_dropin_is_discovered_when_another_qemu_hook_enabled_qemu_d(host):
    other = host.base / "etc/libvirt/hooks/qemu.d/00-admin"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    between = os.stat(other).st_ctime + 0.05
    time.sleep(0.1)
    hook = host.install_hook()                                   # after the daemon started
    assert os.stat(other).st_ctime < between < os.stat(hook).st_ctime
    host.daemons = [Daemon(1, "libvirtd", between)]
    assert host.doctor()["hook"].status == OK                    # 00-admin enabled qemu.d
    other.chmod(0o644)                                           # not a hook: not an enabler
    assert host.doctor()["hook"].status == WARN


def test_stale_daemon_fails_when_a_guest_needs_the_unseen_size(host):
    host.daemons = [Daemon(7, "virtqemud", time.time() - 3600)]
    checks = host.doctor([guest("db1", G1)])
    assert checks["stale-daemon"].status == FAIL
    assert exit_code(list(checks.values())) == 2


def test_hook_missing_or_not_executable(host):
    hook = host.install_hook(mode=0o644)
    check = host.doctor()["hook"]
    assert check.status == FAIL and check.fix == f"chmod 0755 {hook}"
    hook.unlink()
    assert host.doctor()["hook"].fix == "hugexml install-hook"


def test_state_that_disagrees_with_the_kernel_asks_for_reconcile(host):
    os.makedirs(host.state)
    journal = {"schema": 2, "pools": {"0:2048": {"baseline": 4, "unreleased": 6}}}
    Path(host.state, "host.json").write_text(json.dumps(journal))
    check = host.doctor()["ledger"]
    assert check.status == WARN and check.fix.startswith("hugexml reconcile")
    assert "node 0 2M: kernel 0, books 10" in check.message
    host.sim.set(0, M2, persistent=10)
    assert host.doctor()["ledger"].status == OK
    Path(host.state, "host.json").write_text("{not json")
    check = host.doctor()["ledger"]
    assert check.status == WARN and "host journal unreadable" in check.message
    assert Path(host.state, "host.json").read_text() == "{not json"   # doctor moves nothing


def test_thp_defrag_always_warns(host):
    (host.base / "sys/kernel/mm/transparent_hugepage/defrag").write_text("[always] madvise never\n")
    (host.base / "sys/kernel/mm/transparent_hugepage/enabled").write_text("[always] never\n")
    assert host.doctor()["thp"].status == WARN


def test_cmdline_hugepagesz_without_count_warns(host):
    (host.base / "proc/cmdline").write_text("ro hugepagesz=1G quiet\n")
    assert host.doctor()["default-size"].status == WARN


def test_cmdline_default_size_the_kernel_ignored_warns(host):
    (host.base / "proc/cmdline").write_text("default_hugepagesz=1G hugepagesz=1G hugepages=2\n")
    check = host.doctor()["default-size"]
    assert check.status == WARN and "ignored default_hugepagesz=1G" in check.message
    (host.base / "proc/meminfo").write_text("Hugepagesize: 1048576 kB\n")
    assert host.doctor()["default-size"].status == OK


def test_with_the_real_planner_a_1g_guest_needs_a_1g_mount(host):
    from hugexml.xml import domxml

    host.mounts({"/dev/hugepages": "2M"})
    checks = host.doctor([guest("db1", G1)], planner=domxml.plan_xml)
    assert checks["mounts"].status == FAIL and checks["guests"].status == FAIL


def test_fragmentation_reports_what_each_node_could_give(host):
    host.sim.set(0, M2, cap=3)                 # node 0's buddyinfo: 3 free order-9 blocks
    host.sim.mem_free[0] = 5 * G1 + 7 * M2     # 1G is above the largest order: MemFree bounds it
    host.sim.mem_free[1] = G1 - 1
    check = host.doctor()["fragmentation"]
    assert check.status == OK
    assert check.message == ("node 0 could give 3 x 2M, at most 5 x 1G after compaction now; "
                             "node 1 could give 0 x 2M, at most 0 x 1G after compaction now")
    # a guest needs 1G pages and node 1 could not give one even after compaction
    check = host.doctor([guest("db1", G1)])["fragmentation"]
    assert check.status == WARN and check.fix == ("reserve 1G pages at boot: hugexml boot "
                                                  "--reserve 1G:N@1 --apply")
    host.sim.mem_free[1] = 3 * G1              # every node has room: no warning
    assert host.doctor([guest("db1", G1)])["fragmentation"].status == OK


def test_guests_check_skips_without_libvirt(host, monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)     # import fails
    doc = Doctor(host.root, host.state, daemons=[], gateway=host.sim)
    (check,) = [c for c in doc.run() if c.name == "guests"]
    assert check.status == SKIP and "libvirt-python" in check.message


def test_doctor_command_json_has_every_check_and_the_exit_code(host, capsys, monkeypatch):
    from hugexml.cli import doctor as cmd
    from hugexml.cli.main import Context

    monkeypatch.setitem(sys.modules, "libvirt", None)
    host.mounts({"/dev/hugepages": "2M"})
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    ctx = Context(host.root, host.state, "/nonexistent.conf", False, 0)
    code = cmd.run(p.parse_args(["--json"]), ctx)
    data = json.loads(capsys.readouterr().out)
    assert sorted(c["name"] for c in data["checks"]) == sorted(NAMES)
    assert code == data["exit_code"] >= 1       # the 1G mount is missing
    assert all(c["status"] in (OK, WARN, FAIL, SKIP) for c in data["checks"])


def test_kept_pages_are_listed_with_their_window(host):
    import json as json_mod
    import time

    os.makedirs(host.state)
    journal = {"schema": 2, "pools": {"1:1048576": {"baseline": 0, "kept": [
        [2, time.time() + 600], [1, None]]}}}
    Path(host.state, "host.json").write_text(json_mod.dumps(journal))
    check = host.doctor()["kept"]
    assert check.status == OK
    assert check.message.startswith("kept for restarts: node 1 1G: 2 (1") and \
        "min left); node 1 1G: 1 (for ever)" in check.message


def test_boot_reserve_names_each_node_and_size_the_kernel_did_not_place(tmp_path):
    """Linux 6.1 with nodes of 2G/2G/2G/3G and hugepages=0:1,3:2 made 1G pools of 0/1/1/1
    (tests/numavm found it): doctor names node 0 and node 3, the command line and the config."""
    from fakekernel import FakeKernel

    fk = FakeKernel(tmp_path / "root", nodes=4, mem_kib_per_node=3 << 20)
    for node in (1, 2, 3):
        fk.preset(node, G1, 1)
    (tmp_path / "root/proc/cmdline").write_text("ro quiet hugepagesz=1G hugepages=0:1,3:2\n")
    (tmp_path / "root/proc/meminfo").write_text("Hugepagesize:       2048 kB\n")
    conf = tmp_path / "hugexml.conf"
    conf.write_text("[boot]\nreserve = 1G:1@0 1G:2@3 2M:0@1\n")
    doc = Doctor(fk.host_root, str(tmp_path / "state"), daemons=[], gateway=fk.gateway(),
                 domains=[], config_path=str(conf), config_explicit=True)
    check = doc.check_boot_reserve()
    assert check.status == WARN and "hugexml boot --apply-runtime" in (check.fix or "")
    assert check.message == (
        "short of the boot-time reservation: node 0 1G: 0 of 1 ([boot] reserve); "
        "node 3 1G: 1 of 2 ([boot] reserve); node 0 1G: 0 of 1 (kernel command line); "
        "node 3 1G: 1 of 2 (kernel command line)")
    fk.preset(0, G1, 1)
    fk.preset(3, G1, 2)
    check = doc.check_boot_reserve()
    assert check.status == OK and "node 3 1G: 2 of 2 (kernel command line)" in check.message
    (tmp_path / "root/proc/cmdline").write_text("ro quiet\n")
    conf.write_text("[boot]\n")
    assert doc.check_boot_reserve() == Check("boot-reserve", OK, (
        "no boot-time reservation ([boot] reserve empty, no hugepages= on the kernel command "
        "line)"))


# --- autostart guests: would each start now? --------------------------------------------
class AutostartHost:
    """A fake kernel (2 nodes of 8 GiB, 7.5 GiB free each), a 2M mount, autostart domains
    as files, hugexml.conf and a state dir: doctor as on a real host."""

    def __init__(self, tmp_path: Path, config: str = "") -> None:
        from fakekernel import FakeKernel

        self.base = tmp_path / "root"
        self.kernel = FakeKernel(self.base, nodes=2, mem_kib_per_node=8 * G1)
        (self.base / "etc/libvirt/qemu/autostart").mkdir(parents=True)
        self.conf = tmp_path / "hugexml.conf"
        self.conf.write_text(config)
        self.state = str(tmp_path / "state")

    def doctor(self) -> Doctor:
        return Doctor(self.kernel.host_root, self.state, daemons=[],
                      gateway=self.kernel.gateway(), domains=[], config_path=str(self.conf),
                      config_explicit=True)

    def lines(self) -> list[tuple[str, str]]:
        from hugexml.system.doctor_boot import check_autostart

        return [(c.status, c.message) for c in check_autostart(self.doctor())]

    def allocator(self) -> Any:
        from hugexml.alloc.allocator import Allocator
        from hugexml.core.config import load_config

        return Allocator(self.kernel.gateway(), self.state, load_config(str(self.conf), True))

    def keep_1g(self, node: int) -> None:
        """A stopped guest's 1G page, kept for its window."""
        from allocfix import guest as gid
        from allocfix import plan as mkplan

        a = self.allocator()
        a.reserve(mkplan("old", (1, (node,), "strict", G1)), gid("old"))
        assert a.release(gid("old"))["kept"] == {f"{node}:{G1}": 1}


def _none(h: AutostartHost) -> None:
    pass


def _two_2m(h: AutostartHost) -> None:
    autostart(h.base, "a", domain("a", 1024, M2, "0"))
    autostart(h.base, "b", domain("b", 2048, M2))


def _1g_none_free(h: AutostartHost) -> None:
    autostart(h.base, "db", domain("db", 2048, G1, "1"))


def _1g_boot_pages(h: AutostartHost) -> None:
    h.kernel.preset(1, G1, 2)
    autostart(h.base, "db", domain("db", 2048, G1, "1"))


def _1g_kept(h: AutostartHost) -> None:
    h.keep_1g(1)
    autostart(h.base, "db", domain("db", 1024, G1, "1"))


def _second_finds_them_taken(h: AutostartHost) -> None:
    h.kernel.preset(1, G1, 2)
    autostart(h.base, "a", domain("a", 2048, G1, "1"))
    autostart(h.base, "b", domain("b", 1024, G1, "0-1"))


def _demote(pages: int) -> Any:
    def setup(h: AutostartHost) -> None:
        h.keep_1g(0)        # node 0: 6.5 GiB free, all of it the floor: no room to grow
        h.conf.write_text("[allocation]\nmargin_min = 6656M\nmargin_percent = 0\n"
                          "[release]\nkeep_for = 1G=10m\n")
        autostart(h.base, "small", domain("small", pages * 2, M2, "0"))
    return setup


def _interleave_short(h: AutostartHost) -> None:
    h.kernel.consume_memory(1, 7 * G1)      # node 1: 0.5 GiB free, under its 1 GiB floor
    autostart(h.base, "il", domain("il", 2048, M2, "0-1", mode="interleave"))


def _no_1g_mount(h: AutostartHost) -> None:
    h.kernel.preset(0, G1, 1)
    autostart(h.base, "file1g", domain("file1g", 1024, G1, "0", memfd=False))


def _running(h: AutostartHost) -> None:
    autostart(h.base, "db", domain("db", 2048, G1, "1"))
    status = h.base / "run/libvirt/qemu"
    status.mkdir(parents=True)
    (status / "db.pid").write_text("4242")
    (h.base / "proc/4242").mkdir(parents=True)


def _starting(h: AutostartHost) -> None:
    from allocfix import guest as gid
    from allocfix import plan as mkplan

    autostart(h.base, "db", domain("db", 1024, M2, "1"))
    h.allocator().reserve(mkplan("db", (512, (1,), "strict", M2)), gid("db"))


def _hostile(h: AutostartHost) -> None:
    autostart(h.base, "gone", None)
    autostart(h.base, "node7", domain("node7", 1024, M2, "7"))
    autostart(h.base, "ok", domain("ok", 1024, M2, "0"))


AUTOSTART = {
    "no autostart domains": (_none, [(OK, "no autostart domains (")]),
    "2M guests the kernel can add within the margin": (
        _two_2m, [(OK, "2 autostart guest(s) with hugepages would start now (a, b)")]),
    "1G: none free, and never counted from MemFree": (_1g_none_free, [(
        FAIL, "guest 'db' would not start now: 1G: only 0 of 2 pages can be supplied on node 1 "
              "now (free 0, kept 0, allocatable 0; MemFree allows up to 6 more, not a promise: "
              "not counted)")]),
    "1G: boot-time pages free": (_1g_boot_pages, [(OK, "1 autostart guest(s) with hugepages "
                                                       "would start now (db)")]),
    "1G: a kept page": (_1g_kept, [(OK, "would start now (db)")]),
    "the second guest finds the pages taken": (_second_finds_them_taken, [(
        FAIL, "guest 'b' would not start now: 1G: only 0 of 1 pages can be supplied on nodes "
              "0-1 now (free 2, kept 0, allocatable 0; MemFree allows up to 10 more, not a "
              "promise: not counted; 2 already counted for the guests before it or this "
              "guest's other memory)")]),
    "2M beyond the margin: a kept 1G page split": (_demote(512), [(
        OK, "1 autostart guest(s) with hugepages would start now (small); with 1 x 1G on node 0 "
            "split by demote")]),
    "2M beyond the margin and the kept page": (_demote(513), [(
        FAIL, "guest 'small' would not start now: 2M: only 0 of 513 pages can be supplied on "
              "node 0 now (free 0, kept 0, allocatable 0 within the margin, 3328 without)")]),
    "interleave: each node its share": (_interleave_short, [(
        FAIL, "guest 'il' would not start now: 2M: only 0 of 512 pages can be supplied on node 1 "
              "now (free 0, kept 0, allocatable 0 within the margin, 256 without)")]),
    "a file-backed size without a mount": (_no_1g_mount, [(
        FAIL, "guest 'file1g' would not start now: no hugetlbfs mount for 1G pages: run "
              "'hugexml mounts ensure --size 1G --persist'")]),
    "a running guest is not judged": (_running, [(OK, "0 autostart guest(s) with hugepages "
                                                      "would start now; running or starting: db")]),
    "a starting guest (pending claim) is not judged": (
        _starting, [(OK, "running or starting: db")]),
    "entries libvirt cannot start": (_hostile, [
        (WARN, "autostart/gone.xml: /etc/libvirt/qemu/gone.xml does not exist (a dangling "
               "link): libvirt cannot autostart it"),
        (FAIL, "autostart/node7.xml: domain 'node7': NUMA node 7 is unavailable (host nodes: "
               "0,1): libvirt would not start it")]),
}


@pytest.mark.parametrize("case", list(AUTOSTART))
def test_autostart_says_which_guest_would_not_start_now(case, tmp_path):
    setup, expect = AUTOSTART[case]
    h = AutostartHost(tmp_path, "[release]\nkeep_for = 1G=10m\n")
    setup(h)
    before = h.kernel.counters()
    got = h.lines()
    assert len(got) == len(expect), got
    for (status, message), (want_status, want) in zip(got, expect):
        assert status == want_status and want in message, (status, message)
    assert h.kernel.counters() == before            # doctor changes nothing


def test_autostart_lines_join_the_doctor_run_with_a_fix(tmp_path):
    h = AutostartHost(tmp_path)
    _hostile(h)
    _1g_none_free(h)
    checks = h.doctor().run()
    mine = [c for c in checks if c.name == "autostart"]
    assert [c.status for c in mine] == [WARN, FAIL, FAIL]
    assert all(c.fix for c in mine)
    assert "hugexml boot --from-guests --apply" in mine[-1].fix
    assert exit_code(checks) == 2


# --- hugetlb_cma ---------------------------------------------------------------------------
@pytest.mark.parametrize("meminfo,cmdline,status,says", [
    ("", "ro", SKIP, "this kernel has no CMA (no CmaTotal in /proc/meminfo: CONFIG_CMA is off)"),
    ("", "ro hugetlb_cma=4G", SKIP, "hugetlb_cma=4G is on the kernel command line but this "
                                    "kernel has no CMA"),
    ("CmaTotal: 0 kB\nCmaFree: 0 kB\n", "ro", OK,
     "no hugetlb_cma= (CmaTotal 0, CmaFree 0, other CMA users included): hugetlb_cma= sets a "
     "region aside at boot that movable allocations"),
    ("CmaTotal: 4194304 kB\nCmaFree: 3145728 kB\n", "ro hugetlb_cma=0:4G", OK,
     "hugetlb_cma=0:4G is active (CmaTotal 4G, CmaFree 3G): 1G pages at runtime come from that "
     "area"),
    ("CmaTotal: 0 kB\nCmaFree: 0 kB\n", "ro hugetlb_cma=512M", WARN,
     "hugetlb_cma=512M is on the kernel command line but the kernel set no CMA area aside"),
])
def test_hugetlb_cma_informs_and_never_warns_by_default(host, meminfo, cmdline, status, says):
    (host.base / "proc/meminfo").write_text("MemTotal: 67108864 kB\nHugepagesize: 2048 kB\n"
                                            + meminfo)
    (host.base / "proc/cmdline").write_text(cmdline + "\n")
    check = host.doctor()["hugetlb-cma"]
    assert check.status == status and says in check.message, check.message
    if status == OK:
        assert "needs CONFIG_CMA" in check.message and "page cache" in check.message
    assert (check.fix is not None) == (status == WARN)


def test_hugetlb_cma_points_at_the_boot_plan_when_autostart_guests_need_1g(tmp_path):
    from hugexml.system.doctor_boot import check_hugetlb_cma

    h = AutostartHost(tmp_path)
    _1g_none_free(h)
    meminfo = h.base / "proc/meminfo"
    meminfo.write_text(meminfo.read_text() + "CmaTotal: 0 kB\nCmaFree: 0 kB\n")
    check = check_hugetlb_cma(h.doctor())
    assert check.status == OK and check.message.endswith(
        "the autostart guests need 2 x 1G: hugexml boot --from-guests says whether "
        "hugetlb_cma= would suit them")


def test_autostart_when_the_directory_cannot_be_read(tmp_path):
    h = AutostartHost(tmp_path)
    (h.base / "etc/libvirt/qemu/autostart").rmdir()
    (h.base / "etc/libvirt/qemu/autostart").write_text("")
    assert h.lines() == [(WARN, "/etc/libvirt/qemu/autostart: Not a directory: the autostart "
                                "guests are not checked")]
