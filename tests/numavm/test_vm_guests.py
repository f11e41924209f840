"""``status --guests`` on a real qemu: started inside the VM from ``hugexml qemu-args``, paused
(``-S``) with its two cells bound to host nodes 1 and 3; its preallocated hugepages must be
reported on exactly those nodes, next to its claim and its plan."""
from __future__ import annotations

import os
import subprocess
import time

import pytest
from vmkit import M2, domain, pools

pytestmark = pytest.mark.numavm("runtime")
LIVE = "/run/libvirt/qemu"  # where libvirt keeps a running guest's live XML (the VM's tmpfs)


def huge_pages_mapped(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/numa_maps") as fh:
            return sum(int(w.partition("=")[2]) for line in fh if " huge " in line
                       for w in line.split() if w[:1] == "N" and w[1:2].isdigit())
    except FileNotFoundError:
        return -1


def test_status_guests_shows_a_real_qemu_on_its_nodes(vm, tmp_path):
    name = "realq"
    xml = domain(name, 128, M2, cells=((0, 64), (1, 64)),
                 memnodes=((0, "strict", "1"), (1, "strict", "3")))
    path = vm.xml_file(name, xml)
    before = pools()
    claimed = vm.ok("reserve", path, "--json").json()["claimed"]
    assert claimed == {f"1:{M2}": 32, f"3:{M2}": 32}
    memory = vm.ok("qemu-args", path, "--json").json()
    argv = ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine",
            "pc,accel=tcg", "-smp", "2", "-name", f"guest={name},debug-threads=on",
            *memory["argv"]]
    os.makedirs(LIVE, exist_ok=True)
    with open(f"{LIVE}/{name}.xml", "w") as fh:
        fh.write(f"<domstatus state='paused'>\n{xml}\n</domstatus>\n")
    log = open(tmp_path / "qemu.log", "w")
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while huge_pages_mapped(qemu.pid) < 64:
            assert qemu.poll() is None, (tmp_path / "qemu.log").read_text()
            assert time.monotonic() < deadline, f"qemu mapped {huge_pages_mapped(qemu.pid)}"
            time.sleep(0.5)
        result = vm.cli("status", "--guests", "--json")
        usage = [g for g in result.json()["guest_usage"] if g["name"] == name]
        assert len(usage) == 1, result.out
        guest = usage[0]
        pages = [{"node": 1, "page_size_kib": M2, "pages": 32},
                 {"node": 3, "page_size_kib": M2, "pages": 32}]
        assert guest["mapped"] == pages, guest
        assert guest["ledger"] == pages, guest
        assert guest["demand"] == [{"page_size_kib": M2, "pages": 64}], guest
        assert guest["mismatches"] == [] and guest["pid"] == qemu.pid
        assert result.rc == 0
        text = vm.ok("status", "--guests").out
        assert f"{name}" in text and "node 1: 32 x 2M" in text and "node 3: 32 x 2M" in text, text
    finally:
        qemu.kill()
        qemu.wait()
        log.close()
        os.unlink(f"{LIVE}/{name}.xml")
    vm.ok("release", name)
    assert pools() == before
