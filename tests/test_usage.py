"""Per-guest hugepage usage from a fake /proc tree (numa_maps, cmdline), no real host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hugexml.core.root import HostRoot
from hugexml.host import usage

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
    # 64 x 2M mapped matches the plan and the claim in total. The guest is bound to no
    # node, so its 40/24 split over nodes 0 and 1 is no mismatch even though the claim
    # was counted on node 0. The stray 1G pages are in neither the plan nor the ledger.
    assert g.mismatches == [
        "1048576 KiB pages: maps 2, its plan demands 0",
        "1048576 KiB pages: maps 2, the ledger claims 0",
    ]
    js = g.to_json()
    assert js["mapped"][0] == {"node": 0, "page_size_kib": 2048, "pages": 40}


def test_guest_usage_consistent_guest_has_no_mismatch(fake_root: HostRoot):
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


def _domain(numatune: str) -> bytes:
    return DOMAIN_2M.replace(b"<vcpu>", numatune.encode() + b"<vcpu>")


@pytest.mark.parametrize(
    ("numatune", "numa_maps", "claimed", "expected"),
    [
        # strict binding to node 0, pages on node 1: flagged even though totals agree
        (
            "<numatune><memory mode='strict' nodeset='0'/></numatune>",
            "7f00 bind:0 file=/dev/hugepages/x huge N0=60 N1=4 kernelpagesize_kB=2048\n",
            {"0:2048": 64},
            ["4 x 2048 KiB pages on node 1, outside its nodes [0]"],
        ),
        # nodeset without a mode is strict (libvirt's default)
        (
            "<numatune><memory nodeset='1'/></numatune>",
            "7f00 bind:1 file=/dev/hugepages/x huge N0=64 kernelpagesize_kB=2048\n",
            {"1:2048": 64},
            ["64 x 2048 KiB pages on node 0, outside its nodes [1]"],
        ),
        # 'preferred' may fall back to another node: not a mismatch
        (
            "<numatune><memory mode='preferred' nodeset='0'/></numatune>",
            "7f00 prefer:0 file=/dev/hugepages/x huge N0=60 N1=4 kernelpagesize_kB=2048\n",
            {"0:2048": 64},
            [],
        ),
        # interleave over both nodes: any split over them is fine
        (
            "<numatune><memory mode='interleave' nodeset='0-1'/></numatune>",
            "7f00 interleave:0-1 file=/dev/hugepages/x huge N0=30 N1=34 kernelpagesize_kB=2048\n",
            {"0:2048": 32, "1:2048": 32},
            [],
        ),
        # the plan and the mapping agree but the ledger claimed fewer pages
        (
            "",
            "7f00 default file=/dev/hugepages/x huge N0=64 kernelpagesize_kB=2048\n",
            {"0:2048": 48},
            ["2048 KiB pages: maps 64, the ledger claims 48"],
        ),
        # the guest maps fewer pages than its plan and its claim (e.g. a failed prealloc)
        (
            "",
            "7f00 default file=/dev/hugepages/x huge N1=16 kernelpagesize_kB=2048\n",
            {"1:2048": 64},
            [
                "2048 KiB pages: maps 16, its plan demands 64",
                "2048 KiB pages: maps 16, the ledger claims 64",
            ],
        ),
    ],
)
def test_mismatch_rules(fake_root: HostRoot, numatune, numa_maps, claimed, expected):
    base = Path(fake_root.base)
    make_proc(base, 21, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm2m"], numa_maps)
    (base / "run/libvirt/qemu").mkdir(parents=True)
    (base / "run/libvirt/qemu/vm2m.xml").write_bytes(_domain(numatune))
    ledger = {"guests": {"u-1": {"name": "vm2m", "claimed": claimed}}}
    [g] = usage.guest_usage(fake_root, ledger=ledger)
    assert g.mismatches == expected


# --- hugexml status --guests / --prometheus on a fake kernel ----------------------------
STRICT_64M = b"""<domstatus state='running' pid='31'>
  <domain type='kvm' id='3'>
    <name>vm-strict</name>
    <uuid>aaaaaaaa-0000-0000-0000-000000000001</uuid>
    <memory unit='MiB'>64</memory>
    <memoryBacking><hugepages><page size='2' unit='MiB'/></hugepages></memoryBacking>
    <vcpu>1</vcpu>
    <numatune><memory mode='strict' nodeset='1'/></numatune>
    <os><type arch='x86_64' machine='pc'>hvm</type></os>
  </domain>
</domstatus>
"""


class Ctx:
    def __init__(self, root: HostRoot, state_dir: str) -> None:
        self.root = root
        self.state_dir = state_dir
        self.config_path = "/nonexistent/hugexml.conf"
        self.config_explicit = False
        self.verbose = 0


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch):
    """A 2-node fake kernel where the hook reserved 32 x 2M on node 1 for ``vm-strict``,
    the guest started, and qemu faulted its pages in. Returns (kernel, ctx, place_pages)."""
    from allocfix import make_config
    from fakekernel import FakeKernel

    from hugexml.alloc.allocator import Allocator
    from hugexml.cli import _alloc
    from hugexml.core.model import GuestId
    from hugexml.host.hostinfo import read_host_info
    from hugexml.xml.domxml import plan_xml

    fk = FakeKernel(tmp_path / "root", nodes=2)
    monkeypatch.setattr(_alloc, "MAKE_GATEWAY", lambda root: fk.gateway())
    monkeypatch.setattr(_alloc, "load", lambda ctx: make_config())
    base = Path(fk.root)
    (base / "proc/stat").write_text("cpu  1 2 3 4\nbtime 1700000000\n")
    (base / "run/libvirt/qemu").mkdir(parents=True)
    (base / "run/libvirt/qemu/vm-strict.xml").write_bytes(STRICT_64M)
    ctx = Ctx(fk.host_root, str(tmp_path / "state"))
    guest = GuestId("vm-strict", "aaaaaaaa-0000-0000-0000-000000000001")
    alloc = Allocator(fk.gateway(), ctx.state_dir, make_config())
    live = usage.live_domain_xml(fk.host_root, "vm-strict")
    assert live is not None
    plan = plan_xml(live, read_host_info(fk.host_root), "vm-strict")
    assert alloc.reserve(plan, guest)["added"] == {"1:2048": 32}
    alloc.settle(guest)

    def place_pages(numa_nodes: str) -> None:
        line = f"7f00 bind:1 file=/dev/hugepages/libvirt/x huge dirty=32 {numa_nodes} "
        make_proc(base, 31, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm-strict",
                             "-uuid", guest.uuid], line + "kernelpagesize_kB=2048\n")

    return fk, ctx, place_pages


def run_status(ctx: Ctx, argv: list[str], capsys) -> tuple[int, str]:
    import argparse

    from hugexml.cli import status

    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    code = status.run(parser.parse_args(argv), ctx)
    return code, capsys.readouterr().out


def test_status_guests_consistent_guest_exits_0(fake_host, capsys):
    import json

    fk, ctx, place_pages = fake_host
    fk.use(1, 2048, 32)
    place_pages("N1=32")
    code, out = run_status(ctx, ["--guests", "--json"], capsys)
    report = json.loads(out)
    [g] = report["guest_usage"]
    assert code == 0, g
    assert g["name"] == "vm-strict" and g["pid"] == 31
    assert g["mapped"] == [{"node": 1, "page_size_kib": 2048, "pages": 32}]
    assert g["ledger"] == g["mapped"] and g["demand"] == [{"page_size_kib": 2048, "pages": 32}]
    code, out = run_status(ctx, ["--guests"], capsys)
    assert code == 0
    assert "vm-strict (pid 31): maps 32 x 2M on node 1" in out and "MISMATCH" not in out


def test_status_guests_strict_guest_off_its_node_exits_1(fake_host, capsys):
    _fk, ctx, place_pages = fake_host
    place_pages("N0=8 N1=24")  # 8 pages faulted on node 0 despite mode='strict' nodeset='1'
    code, out = run_status(ctx, ["--guests"], capsys)
    assert code == 1
    assert "MISMATCH: 8 x 2048 KiB pages on node 0, outside its nodes [1]" in out


def test_status_prometheus_file_and_stdout_parse(fake_host, capsys, tmp_path):
    parser = pytest.importorskip("prometheus_client.parser")
    fk, ctx, place_pages = fake_host
    fk.use(1, 2048, 32)
    place_pages("N1=32")
    target = tmp_path / "textfile" / "hugexml.prom"
    target.parent.mkdir()
    target.write_text("stale\n")
    code, out = run_status(ctx, ["--prometheus", str(target)], capsys)
    assert code == 0 and out == ""
    assert [p.name for p in target.parent.iterdir()] == ["hugexml.prom"]  # no temp file left

    def values(text: str, family: str) -> dict[tuple[str, ...], float]:
        fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
        return {tuple(sorted(s.labels.values())): s.value for s in fams[family].samples}

    text = target.read_text()
    assert values(text, "hugexml_hugepages_pages")[("1", "2048")] == fk.pool(1, 2048).nr == 32
    assert values(text, "hugexml_hugepages_pages")[("0", "2048")] == 0
    assert values(text, "hugexml_hugepages_free_pages")[("1", "2048")] == 0
    assert values(text, "hugexml_hugepages_added_pages")[("1", "2048")] == 32
    assert values(text, "hugexml_guest_hugepages_pages") == {("1", "2048", "vm-strict"): 32}
    assert values(text, "hugexml_guest_hugepages_mismatch") == {("vm-strict",): 0}
    code, out = run_status(ctx, ["--prometheus"], capsys)
    assert code == 0 and out == text


def test_status_prometheus_flags_mismatch_in_the_metric(fake_host, capsys):
    parser = pytest.importorskip("prometheus_client.parser")
    _fk, ctx, place_pages = fake_host
    place_pages("N1=20")  # fewer than the 32 the plan and the ledger expect
    code, out = run_status(ctx, ["--prometheus", "-"], capsys)
    assert code == 0
    fams = {f.name: f for f in parser.text_string_to_metric_families(out)}
    [sample] = fams["hugexml_guest_hugepages_mismatch"].samples
    assert sample.labels == {"guest": "vm-strict"} and sample.value == 1


@pytest.mark.parametrize("argv", [
    ["--prometheus", "--json"], ["--prometheus", "-", "--guests"], ["--prometheus", ""],
])
def test_status_prometheus_stdout_conflicts_are_one_line(fake_host, capsys, argv):
    from hugexml.core.errors import InvalidInput

    _fk, ctx, _place = fake_host
    with pytest.raises(InvalidInput, match="--prometheus"):
        run_status(ctx, argv, capsys)


def test_status_prometheus_unwritable_file_is_host_error(fake_host, capsys, tmp_path):
    _fk, ctx, _place = fake_host
    with pytest.raises(usage.HostError, match="cannot write metrics"):
        run_status(ctx, ["--prometheus", str(tmp_path / "missing-dir" / "x.prom")], capsys)
