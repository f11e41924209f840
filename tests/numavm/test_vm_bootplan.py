"""``boot --from-guests`` on the real boot (issue 13, part 5): autostart domains whose demand
is what this VM was booted with (groups.BOOT_RESERVE_CMDLINE) give back exactly the line
/proc/cmdline carries; the ``[boot] reserve`` it writes and that line are what doctor's
``boot-reserve`` check finds in place, and doctor says every autostart guest would start now
(their pages are the free boot-time pages). The VM's /etc is its own overlay: the domain
files are removed afterwards (libvirtd of test_vm_libvirt.py must not autostart them)."""
from __future__ import annotations

import os

import pytest
from groups import G1, M2, boot_cmdline
from vmkit import Vm, domain, pools

pytestmark = pytest.mark.numavm("boot")
QEMU = "/etc/libvirt/qemu"
# name -> (MiB, page size, node): 2M:100@1 2M:64@2 1G:1@1 1G:1@3
GUESTS = {"bp-a": (200, M2, 1), "bp-b": (128, M2, 2), "bp-c": (1024, G1, 1),
          "bp-d": (1024, G1, 3)}


@pytest.fixture
def autostart_guests():
    made = []
    os.makedirs(f"{QEMU}/autostart", exist_ok=True)
    try:
        for name, (mib, size, node) in GUESTS.items():
            path = f"{QEMU}/{name}.xml"
            with open(path, "w") as fh:
                fh.write(domain(name, mib, size, nodeset=str(node)))
            made.append(path)
            os.symlink(path, f"{QEMU}/autostart/{name}.xml")
            made.append(f"{QEMU}/autostart/{name}.xml")
        yield
    finally:
        for path in reversed(made):
            os.unlink(path)


def test_the_plan_from_the_guests_is_the_line_this_kernel_booted_with(vm: Vm, autostart_guests):
    before = pools()
    out = vm.ok("boot", "--from-guests", "--json").json()
    with open("/proc/cmdline") as fh:
        booted = [t for t in fh.read().split() if t.split("=")[0] in (
            "default_hugepagesz", "hugepagesz", "hugepages")]
    assert out["params"] == booted == list(boot_cmdline()), out
    assert out["reserve"] == "1G:1@1 1G:1@3 2M:100@1 2M:64@2" and out["skipped"] == []
    assert out["hugetlb_cma"] is None                  # 2 GiB of 1G on 14 GiB: not 1G-heavy
    applied = vm.ok("boot", "--from-guests", "--apply", "--into", "config", "--json").json()
    assert applied["config"]["changed"] and "grub" not in applied
    checks = {c["name"]: c for c in vm.cli("doctor", "--json").json()["checks"]}
    reserve = checks["boot-reserve"]
    assert reserve["status"] == "ok", reserve
    for spec in ("node 1 2M: 100 of 100", "node 2 2M: 64 of 64", "node 1 1G: 1 of 1",
                 "node 3 1G: 1 of 1"):
        for source in ("[boot] reserve", "kernel command line"):
            assert f"{spec} ({source})" in reserve["message"], reserve
    assert checks["autostart"]["status"] == "ok", checks["autostart"]
    assert checks["autostart"]["message"].startswith(
        "4 autostart guest(s) with hugepages would start now (bp-a, bp-b, bp-c, bp-d)")
    cma = checks["hugetlb-cma"]                        # Debian's 6.1: CONFIG_CMA is off
    assert cma["status"] == "skip" and "no CmaTotal in /proc/meminfo" in cma["message"], cma
    assert pools() == before                           # planning and checking change nothing
