"""hugexml apply against the real libvirtd of the test bed (tests/libvirt/conftest.py).

Defined guests are rewritten through libvirt-python: an explicit 2M rewrite, auto, --undo,
--all over a mix (auto leaves a guest no size can be supplied for on normal pages, largest
refuses it), backups on disk, a running guest left alone until its
restart, and a 2M guest started after apply that really maps 2M pages.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

import pytest
from libvirt_bed import REQUIRE_REAL, _skip_or_fail
from lxml import etree

pytestmark = pytest.mark.libvirt
if REQUIRE_REAL:  # CI: libvirt-python missing is a collection error, never a skip
    importlib.import_module("libvirt")
else:
    pytest.importorskip("libvirt", reason="libvirt-python (pip install '.[libvirt]')")

CONN = "qemu:///system"


def inactive_backing(bed, name: str) -> list[tuple[str, str]]:
    """(size, unit) of each <page> in the persistent definition."""
    xml = bed.virsh("dumpxml", "--inactive", name).stdout
    root = etree.fromstring(xml.encode())
    return [(p.get("size"), p.get("unit")) for p in root.findall("./memoryBacking/hugepages/page")]


def live_backing(bed, name: str) -> list[tuple[str, str]]:
    root = etree.fromstring(bed.virsh("dumpxml", name).stdout.encode())
    return [(p.get("size"), p.get("unit")) for p in root.findall("./memoryBacking/hugepages/page")]


def apply(bed, backup_dir: Path, *args: str, check: bool = True):
    return bed.hugexml(
        "apply", "--connect", CONN, "--backup-dir", str(backup_dir), *args, check=check
    )


def free_pages(size_kib: int) -> int:
    return int(Path(f"/sys/kernel/mm/hugepages/hugepages-{size_kib}kB/free_hugepages").read_text())


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def test_2m_rewrite_auto_and_undo_with_backups(bed, tmp_path):
    backups = tmp_path / "backups"
    plain = bed.define("apply-plain", memory_mib=128, page_kib=None)
    gig = bed.define("apply-gig", memory_mib=1024, page_kib=None)
    before = bed.virsh("dumpxml", "--inactive", "--security-info", plain).stdout

    out = apply(bed, backups, plain, "--page-size", "2M")
    assert out.returncode == 0, out.stderr
    assert f"--- {plain} (defined)" in out.stdout and "+    <hugepages>" in out.stdout
    assert inactive_backing(bed, plain) == [("2048", "KiB")]
    [backup] = list(backups.iterdir())
    assert backup.name.startswith(f"{plain}-{bed.uuid(plain)}-")
    # The backup is libvirt's XMLDesc byte for byte; virsh prints it followed by a newline.
    assert backup.read_text() + "\n" == before
    assert oct(backup.stat().st_mode & 0o777) == "0o600"

    # auto: 1 GiB of RAM; the pools are empty and nothing is kept, so no 1G page can be
    # promised (MemFree is only an upper bound): 2M, and the note says why.
    out = apply(bed, backups, gig, "--page-size", "auto", "--json")
    report = json.loads(out.stdout)
    assert report["summary"]["changed"] == [gig]
    assert inactive_backing(bed, gig) == [("2048", "KiB")]
    assert report["results"][0]["notes"][0].startswith(
        "memory (1G): 2M pages: 1G: only 0 of 1 pages can be supplied on node 0 now (free 0, "
        "kept 0, allocatable 0; MemFree allows up to "), report["results"][0]["notes"]

    # Running it again changes nothing and writes no backup.
    again = json.loads(apply(bed, backups, gig, "--page-size", "auto", "--json").stdout)
    assert again["summary"]["unchanged"] == [gig]
    assert len(list(backups.iterdir())) == 2

    # largest: the largest size that divides, whatever the host can supply -> one 1G page.
    out = apply(bed, backups, gig, "--page-size", "largest", "--json")
    assert json.loads(out.stdout)["summary"]["changed"] == [gig]
    assert inactive_backing(bed, gig) == [("1048576", "KiB")]
    assert len(list(backups.iterdir())) == 3

    # --undo restores the definition byte for byte and marks the backup used.
    out = apply(bed, backups, "--undo", plain)
    assert out.returncode == 0 and "restored from" in out.stdout
    assert inactive_backing(bed, plain) == []
    assert bed.virsh("dumpxml", "--inactive", "--security-info", plain).stdout == before
    assert backup.with_name(backup.name + ".undone").exists()
    out = apply(bed, backups, "--undo", plain, check=False)
    assert out.returncode == 1 and "no hugexml backup" in out.stderr


def test_all_over_a_mix_refuses_what_does_not_fit(bed, tmp_path):
    names = bed.virsh("list", "--all", "--name").stdout.split()
    if any(not n.startswith("hxtest-") for n in names):
        _skip_or_fail("this libvirtd has domains the suite did not define; --all would "
                      "touch them")
    backups = tmp_path / "backups"
    plain = bed.define("mix-plain", memory_mib=256, page_kib=None)
    done = bed.define("mix-2m", memory_mib=128, page_kib=2048)
    odd = bed.define("mix-odd", memory_mib=3, page_kib=None)  # 3 MiB: no hugepage divides it
    # More RAM than this host has: its plan can never fit.
    mem_kib = int(
        Path("/sys/devices/system/node/node0/meminfo").read_text().split("MemTotal:")[1].split()[0]
    )
    too_big = bed.define("mix-huge", memory_mib=(mem_kib // 1024 // 1024 + 4) * 1024, page_kib=None)
    # largest would give the huge guest a plan that can never fit: refused, nothing defined
    out = apply(bed, backups, "--all", "--page-size", "largest", "--dry-run", "--json",
                check=False)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["summary"]["refused"] == [too_big]
    refused = next(r for r in report["results"] if r["name"] == too_big)
    assert f"domain '{too_big}': refused" in refused["message"]
    assert not backups.exists()
    # auto counts only what the host can supply: no hugepage size can be supplied for the
    # huge guest, so it stays on normal pages (unchanged), and the note says why
    out = apply(bed, backups, "--all", "--page-size", "auto", "--json", check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    s = report["summary"]
    assert plain in s["changed"] and too_big in s["unchanged"]
    assert {done, odd} <= set(s.get("unchanged", []) + s.get("changed", []))
    huge = next(r for r in report["results"] if r["name"] == too_big)
    assert "no host page size that divides" in huge["notes"][0] and \
        "can be supplied now" in huge["notes"][0], huge["notes"]
    assert inactive_backing(bed, too_big) == []  # left exactly as it was
    assert inactive_backing(bed, plain) == [("2048", "KiB")]  # 256 MiB: 2M divides, 1G not
    assert len(list(backups.iterdir())) == len(s["changed"])


def test_running_guest_untouched_until_restart_then_really_gets_2m_pages(bed, tmp_path):
    from hugexml.core.root import HostRoot
    from hugexml.host.usage import guest_usage

    backups = tmp_path / "backups"
    name = bed.define("run-plain", memory_mib=128, page_kib=None)
    bed.start(name)
    pid = qemu_pid(name)
    out = apply(bed, backups, name, "--page-size", "2M")
    assert out.returncode == 0 and "takes effect at its next start" in out.stdout
    # The running guest: same process, live XML without hugepages, no hugetlb mapping.
    assert bed.state(name) == "running" and qemu_pid(name) == pid
    assert live_backing(bed, name) == []
    assert inactive_backing(bed, name) == [("2048", "KiB")]
    [usage] = [u for u in guest_usage(HostRoot("/"), with_plan=False) if u.name == name]
    assert usage.mapped == {}

    # Restart: the new definition applies and qemu maps 64 x 2M pages.
    bed.destroy(name)
    free_before = free_pages(2048)
    bed.start(name)
    assert live_backing(bed, name) == [("2048", "KiB")]
    cmdline = Path(f"/proc/{qemu_pid(name)}/cmdline").read_bytes()
    assert b"/dev/hugepages" in cmdline
    deadline = time.monotonic() + 10
    while True:
        [usage] = [u for u in guest_usage(HostRoot("/")) if u.name == name]
        if usage.mapped or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert usage.mapped == {(0, 2048): 64}
    assert usage.demand == {2048: 64}
    nr = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text())
    assert nr - free_pages(2048) >= 64, (nr, free_pages(2048), free_before)
    assert os.path.exists(f"/proc/{qemu_pid(name)}")
