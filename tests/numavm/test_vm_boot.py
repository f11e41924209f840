"""Boot-time reservations on a real boot: the VM of this group was booted with the line
``hugexml boot --reserve ... --default-size 2M`` prints (groups.BOOT_RESERVE_CMDLINE).

Here: the command prints exactly that line on this kernel; the kernel placed every page on
its node; ``hugexml doctor`` confirms it, and names what a larger ``[boot] reserve`` lacks;
``hugexml boot --apply-runtime`` (hugexml-reserve.service) tops up exactly that, per node.
"""
from __future__ import annotations

import json

import pytest
from groups import (
    BOOT_DEFAULT_SIZE,
    BOOT_RESERVE_CMDLINE,
    BOOT_RESERVE_CONFIG,
    G1,
    M2,
    boot_cmdline,
)
from vmkit import Vm, pool, pools, read_int, write_text

pytestmark = pytest.mark.numavm("boot")

# What BOOT_RESERVE_CMDLINE asks, per (node, size); every other pool starts empty.
AT_BOOT = {(1, M2): 100, (2, M2): 64, (1, G1): 1, (3, G1): 1}
# What BOOT_RESERVE_CONFIG asks on top of that.
TOP_UP = {(2, M2): 32, (3, G1): 1, (0, M2): 16}


def persistent(node: int, size: int) -> int:
    nr, _free, surplus = pool(node, size)
    return nr - surplus


def doctor(vm: Vm) -> dict:
    result = vm.cli("doctor", "--json")
    checks = {c["name"]: c for c in result.json()["checks"]}
    return checks["boot-reserve"]


def with_reserve(vm: Vm, reserve: str) -> Vm:
    with open(vm.config_path, "a") as fh:
        fh.write(f"[boot]\nreserve = {reserve}\n")
    return vm


def test_boot_prints_the_line_this_kernel_was_booted_with(vm):
    args = [a for spec in BOOT_RESERVE_CMDLINE for a in ("--reserve", spec)]
    out = vm.ok("boot", *args, "--default-size", BOOT_DEFAULT_SIZE).out.splitlines()
    assert out[0] == " ".join(boot_cmdline())
    with open("/proc/cmdline") as fh:
        tokens = fh.read().split()
    assert " ".join(t for t in tokens if t.split("=")[0] in (
        "default_hugepagesz", "hugepagesz", "hugepages")) == out[0]


def test_the_kernel_placed_every_boot_page_on_its_node(numavm_group):
    have = {(n, s): persistent(n, s) for n in range(4) for s in (M2, G1)}
    assert have == {key: AT_BOOT.get(key, 0) for key in have}
    with open("/proc/meminfo") as fh:
        assert "Hugepagesize:       2048 kB" in fh.read()


def test_doctor_confirms_the_command_line_and_boot_reserve(vm):
    check = doctor(with_reserve(vm, " ".join(BOOT_RESERVE_CMDLINE)))
    assert check["status"] == "ok", check
    for (node, size), count in AT_BOOT.items():
        name = "2M" if size == M2 else "1G"
        assert f"node {node} {name}: {count} of {count} ([boot] reserve)" in check["message"]
        assert f"node {node} {name}: {count} of {count} (kernel command line)" in check["message"]


def test_doctor_names_what_boot_reserve_lacks_and_apply_runtime_tops_it_up(vm):
    before = pools()
    with_reserve(vm, BOOT_RESERVE_CONFIG)
    check = doctor(vm)
    assert check["status"] == "warn", check
    for (node, size), more in TOP_UP.items():
        name = "2M" if size == M2 else "1G"
        have = AT_BOOT.get((node, size), 0)
        assert f"node {node} {name}: {have} of {have + more} ([boot] reserve)" in check["message"]
    assert "node 1 2M" not in check["message"]  # met: not named as short
    result = vm.cli("boot", "--apply-runtime", "--json")
    assert result.rc == 0, result.out + result.err
    rows = json.loads(result.out)["reserved"]
    added = {row["spec"]: row["adding"] for row in rows}
    assert added == {"2M:100@1": 0, "2M:96@2": 32, "1G:1@1": 0, "1G:2@3": 1, "2M:16@0": 16}, rows
    for (node, size), count in AT_BOOT.items():
        assert persistent(node, size) == count + TOP_UP.get((node, size), 0)
    for (node, size), count in TOP_UP.items():
        assert persistent(node, size) == AT_BOOT.get((node, size), 0) + count
    assert doctor(vm)["status"] == "ok"
    # the service again (a restart): nothing to add, nothing written
    again = json.loads(vm.ok("boot", "--apply-runtime", "--json").out)["reserved"]
    assert all(row["adding"] == 0 for row in again), again
    # back to the boot state for the other tests (the fixture checks it)
    for node, size in TOP_UP:
        write_text(f"/sys/devices/system/node/node{node}/hugepages/hugepages-{size}kB/"
                   "nr_hugepages", str(AT_BOOT.get((node, size), 0)))
    assert pools() == before
    assert read_int("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages") == 164
