"""End to end with libvirt inside the VM: libvirtd with the installed hugexml hook starts a
2-cell guest (TCG, paused) whose cells are bound to host nodes 1 and 3. The boot group's VM
has 2M pages reserved at boot on node 1 (free) and none on node 3: the hook claims node 1's
free pages, adds exactly the missing ones on node 3, qemu maps them there, and destroying the
guest gives back exactly what was added.

libvirt here is Debian 12's monolithic libvirtd 9.0; it starts in about a minute under TCG.
Its qemu.conf runs qemu as root without cgroups or namespaces (the VM has neither), and every
node has a vCPU: libvirt binds qemu's preallocation threads to the memory's node.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from vmkit import M2, pool, pools, read_int, write_text

pytestmark = pytest.mark.numavm("boot")
URI = "qemu:///system"
QEMU_CONF = """
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
stdio_handler = "file"
namespaces = [ ]
cgroup_controllers = [ ]
security_driver = "none"
"""
GUEST = """<domain type='qemu'>
  <name>e2e</name>
  <memory unit='MiB'>128</memory>
  <vcpu>2</vcpu>
  <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages>
    <source type='memfd'/></memoryBacking>
  <numatune><memnode cellid='0' mode='strict' nodeset='1'/>
    <memnode cellid='1' mode='strict' nodeset='3'/></numatune>
  <cpu><numa><cell id='0' cpus='0' memory='64' unit='MiB'/>
    <cell id='1' cpus='1' memory='64' unit='MiB'/></numa></cpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
"""


def virsh(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def libvirtd(vm, tmp_path):
    """virtlogd and libvirtd of this VM, with the hugexml hook installed before they start
    (libvirt finds hooks only at start); stopped by PID afterwards."""
    with open("/etc/libvirt/qemu.conf", "a") as fh:  # the VM's own /etc overlay
        fh.write(QEMU_CONF)
    os.makedirs("/etc/hugexml", exist_ok=True)
    write_text("/etc/hugexml/hugexml.conf", "[hook]\nlog = stderr\n")
    for path in ("/var/log/libvirt/qemu", "/var/lib/libvirt/qemu", "/var/cache/libvirt"):
        os.makedirs(path, exist_ok=True)
    vm.ok("install-hook")
    pids = []
    try:
        for daemon in ("virtlogd", "libvirtd"):
            subprocess.run([daemon, "-d"], check=True, timeout=120)
            pids.append(read_int(f"/run/{daemon}.pid"))
        deadline = time.monotonic() + 300
        while virsh("version", timeout=300).returncode != 0:
            assert time.monotonic() < deadline, "libvirtd did not answer within 300 s"
            time.sleep(2)
        yield
    finally:
        virsh("destroy", "e2e")
        virsh("undefine", "e2e")
        for pid in reversed(pids):
            os.kill(pid, signal.SIGTERM)
        vm.cli("uninstall-hook")
        subprocess.run(["rm", "-rf", "/etc/hugexml/hugexml.conf", "/run/hugexml"], check=False)


def test_a_libvirt_guest_bound_to_nodes_1_and_3(vm, libvirtd, tmp_path):
    before = pools()
    path = tmp_path / "e2e.xml"
    path.write_text(GUEST)
    assert virsh("define", str(path)).returncode == 0
    started = virsh("start", "e2e", "--paused")
    log = ""
    if os.path.exists("/var/log/libvirt/qemu/e2e.log"):
        with open("/var/log/libvirt/qemu/e2e.log") as fh:
            log = fh.read()[-3000:]
    assert started.returncode == 0, started.stderr + log
    nr1, free1, _ = before[(1, M2)]
    assert pool(1, M2) == (nr1, free1 - 32, 0)            # boot pages of node 1 claimed
    assert pool(3, M2)[0] == before[(3, M2)][0] + 32      # the missing ones added on node 3
    assert pool(3, M2)[1] == before[(3, M2)][1]
    status = vm.cli("--state-dir", "/run/hugexml", "status", "--guests", "--json")
    usage = [g for g in status.json()["guest_usage"] if g["name"] == "e2e"]
    pages = [{"node": 1, "page_size_kib": M2, "pages": 32},
             {"node": 3, "page_size_kib": M2, "pages": 32}]
    assert usage and usage[0]["mapped"] == pages and usage[0]["ledger"] == pages, status.out
    assert usage[0]["mismatches"] == [] and status.rc == 0, usage
    guests = status.json()["guests"]
    assert [g["name"] for g in guests] == ["e2e"] and guests[0]["state"] == "active", guests
    assert virsh("destroy", "e2e").returncode == 0
    deadline = time.monotonic() + 60
    while pools() != before:                              # the release hook ran
        assert time.monotonic() < deadline, f"pools not given back: {pools()} != {before}"
        time.sleep(1)
