"""Per-guest hugepage usage from a fake /proc tree (numa_maps, cmdline), no real host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hugexml import usage
from hugexml.root import HostRoot

NUMA_MAPS_2M = """\
559a5a400000 default file=/usr/bin/qemu-system-x86_64 mapped=200 N0=200 kernelpagesize_kB=4
7f0000000000 bind:0 file=/dev/hugepages/libvirt/qemu/1-vm2m/qemu_back_mem.pc.ram.A\\040(deleted) \
huge dirty=64 N0=40 N1=24 kernelpagesize_kB=2048
7f1000000000 default anon=512 dirty=512 N0=512 kernelpagesize_kB=4
7f2000000000 default file=/memfd:ram-node1\\040(deleted) huge dirty=2 N1=2 kernelpagesize_kB=1048576
7f3000000000 default huge
"""

DOMAIN_2M = b"""<domstatus state='running' pid='4242'>
  <domain type='kvm' id='1'>
    <name>vm2m</name>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
    <memory unit='MiB'>128</memory>
    <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>
    <vcpu>1</vcpu>
    <os><type arch='x86_64' machine='pc'>hvm</type></os>
  </domain>
</domstatus>
"""


def make_proc(base: Path, pid: int, argv: list[str], numa_maps: str | None) -> None:
    d = base / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    # psutil identifies a process by pid + create time (field 22 of stat).
    fields = ["S"] + ["0"] * 18 + ["100"] + ["0"] * 30
    (d / "stat").write_text(f"{pid} ({os.path.basename(argv[0])[:15]}) " + " ".join(fields) + "\n")
    if numa_maps is not None:
        (d / "numa_maps").write_text(numa_maps)


@pytest.fixture
def fake_root(tmp_path: Path) -> HostRoot:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text("cpu  1 2 3 4\nbtime 1700000000\n")
    meminfo = "MemTotal: 1000000 kB\nHugepagesize:       2048 kB\n"
    (tmp_path / "proc" / "meminfo").write_text(meminfo)
    for size in (2048, 1048576):
        (tmp_path / "sys/kernel/mm/hugepages" / f"hugepages-{size}kB").mkdir(parents=True)
    (tmp_path / "sys/devices/system/node/node0").mkdir(parents=True)
    (tmp_path / "sys/devices/system/node/node1").mkdir(parents=True)
    return HostRoot(str(tmp_path))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/bin/qemu-system-x86_64", "-name", "guest=vm1,debug-threads=on"], ("vm1", None)),
        (
            ["qemu-system-x86_64", "-name", "guest=a,,b,debug-threads=on", "-uuid", "u-1"],
            ("a,b", "u-1"),
        ),
        (["/usr/libexec/qemu-kvm", "-name", "legacy"], ("legacy", None)),
        (["/usr/bin/python3", "-name", "guest=not-qemu"], (None, None)),
        (["/usr/bin/qemu-system-x86_64", "-m", "128"], (None, None)),
        ([], (None, None)),
    ],
)
def test_guest_from_cmdline(argv, expected):
    assert usage.guest_from_cmdline(argv) == expected


def test_parse_numa_maps_counts_only_hugetlb_lines():
    mapped = usage.parse_numa_maps(NUMA_MAPS_2M)
    assert mapped == {(0, 2048): 40, (1, 2048): 24, (1, 1048576): 2}


def test_parse_numa_maps_sums_several_mappings():
    text = (
        "7f00 default file=/dev/hugepages/a huge N0=3 kernelpagesize_kB=2048\n"
        "7f01 default file=/dev/hugepages/b huge N0=5 N2=1 kernelpagesize_kB=2048\n"
    )
    assert usage.parse_numa_maps(text) == {(0, 2048): 8, (2, 2048): 1}


def test_guest_usage_reads_fake_proc_and_flags_mismatches(fake_root: HostRoot):
    pytest.importorskip("hugexml.plan")
    base = Path(fake_root.base)
    make_proc(
        base,
        4242,
        [
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "guest=vm2m,debug-threads=on",
            "-uuid",
            "11111111-2222-3333-4444-555555555555",
        ],
        NUMA_MAPS_2M,
    )
    make_proc(base, 77, ["/usr/sbin/sshd", "-D"], "")
    (base / "run/libvirt/qemu").mkdir(parents=True)
    (base / "run/libvirt/qemu/vm2m.xml").write_bytes(DOMAIN_2M)
    ledger = {
        "guests": {
            "11111111-2222-3333-4444-555555555555": {
                "name": "vm2m",
                "items": [{"node": 0, "page_size_kib": 2048, "pages": 64}],
            }
        }
    }
    result = usage.guest_usage(fake_root, ledger=ledger)
    assert [g.name for g in result] == ["vm2m"]
    g = result[0]
    assert g.pid == 4242
    assert g.mapped == {(0, 2048): 40, (1, 2048): 24, (1, 1048576): 2}
    assert g.demand == {2048: 64}
    assert g.ledger == {(0, 2048): 64}
    text = "\n".join(g.mismatches)
    # 64 x 2M mapped matches the plan, but the stray 1G pages and the node split do not.
    assert "1048576 KiB pages: maps 2, its plan demands 0" in text
    assert "2048 KiB pages: maps" not in text
    assert "node 0, 2048 KiB pages: maps 40, the ledger claims 64" in text
    assert "node 1, 2048 KiB pages: maps 24, the ledger claims 0" in text
    js = g.to_json()
    assert js["mapped"][0] == {"node": 0, "page_size_kib": 2048, "pages": 40}


def test_guest_usage_consistent_guest_has_no_mismatch(fake_root: HostRoot):
    pytest.importorskip("hugexml.plan")
    base = Path(fake_root.base)
    maps = "7f00 bind:0 file=/dev/hugepages/x huge dirty=64 N0=64 kernelpagesize_kB=2048\n"
    make_proc(base, 9, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm2m"], maps)
    (base / "run/libvirt/qemu").mkdir(parents=True)
    (base / "run/libvirt/qemu/vm2m.xml").write_bytes(DOMAIN_2M)
    ledger = {
        "version": 1,
        "guests": {
            "u-1": {
                "name": "vm2m",
                "uuid": "u-1",
                "state": "active",
                "claimed": {"0:2048": 64},
                "added": {"0:2048": 64},
            }
        },
    }
    [g] = usage.guest_usage(fake_root, ledger=ledger)
    assert g.mismatches == []


def test_guest_without_live_xml_or_claim_is_reported_without_comparison(fake_root: HostRoot):
    base = Path(fake_root.base)
    make_proc(
        base,
        10,
        ["/usr/bin/qemu-system-x86_64", "-name", "guest=plain"],
        "7f00 default file=/dev/hugepages/x huge N0=8 kernelpagesize_kB=2048\n",
    )
    [g] = usage.guest_usage(fake_root, ledger={"guests": {}})
    assert g.demand is None and g.ledger is None and g.mismatches == []
    assert g.mapped == {(0, 2048): 8}


def test_process_that_vanished_is_skipped(fake_root: HostRoot):
    base = Path(fake_root.base)
    make_proc(base, 11, ["/usr/bin/qemu-system-x86_64", "-name", "guest=gone"], None)
    assert usage.guest_usage(fake_root, with_plan=False) == []


def test_unreadable_numa_maps_is_one_host_error(fake_root: HostRoot):
    base = Path(fake_root.base)
    make_proc(base, 12, ["/usr/bin/qemu-system-x86_64", "-name", "guest=dir"], None)
    (base / "proc/12/numa_maps").mkdir()  # reading a directory fails with EISDIR
    with pytest.raises(usage.HostError, match="numa_maps"):
        usage.guest_usage(fake_root, with_plan=False)


def test_psutil_procfs_path_is_restored(fake_root: HostRoot):
    import psutil

    usage.qemu_processes(fake_root)
    assert psutil.PROCFS_PATH == "/proc"
