"""hugexml boot: the kernel command line, grub, sysctl.d and the runtime reservation."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest
from autostartfix import autostart, domain
from hypothesis import given, settings
from hypothesis import strategies as st

from hugexml.core.errors import HostError, InvalidInput
from hugexml.core.root import HostRoot
from hugexml.system import boot, grub

M2, G1 = 2048, 1048576

# The kernel's documented syntax (Documentation/admin-guide/kernel-parameters.txt,
# "hugepages=", "hugepagesz=", "default_hugepagesz="; Documentation/admin-guide/mm/
# hugetlbpage.rst): sizes are "size[KMG]"; hugepages is "<integer>" or, node format
# (Linux 5.16, commit b5389086ad7b), "<node>:<integer>[,<node>:<integer>]"; a hugepages=
# applies to the hugepagesz= just before it; default_hugepagesz is given once.
SIZE = r"[0-9]+[KMG]"
COUNT = r"([0-9]+|[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*)"
DOCUMENTED = re.compile(rf"(default_hugepagesz={SIZE} )?(hugepagesz={SIZE} hugepages={COUNT} ?)*\Z")


def host_root(base: Path, nodes=(0, 1), mem_kib=64 << 20, node_kib=32 << 20, osrelease="6.18.0",
              flags="fpu pse pdpe1gb") -> HostRoot:
    for size in (M2, G1):
        (base / f"sys/kernel/mm/hugepages/hugepages-{size}kB").mkdir(parents=True)
    for n in nodes:
        (base / f"sys/devices/system/node/node{n}").mkdir(parents=True)
        (base / f"sys/devices/system/node/node{n}/meminfo").write_text(
            f"Node {n} MemTotal:       {node_kib} kB\nNode {n} MemFree: 1 kB\n")
    (base / "proc/sys/kernel").mkdir(parents=True)
    (base / "proc/sys/kernel/osrelease").write_text(osrelease + "\n")
    (base / "proc/meminfo").write_text(f"MemTotal: {mem_kib} kB\nHugepagesize: 2048 kB\n")
    (base / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    return HostRoot(str(base))


@pytest.mark.parametrize("reserve,default,expect", [
    (["2M:512"], None, "hugepagesz=2M hugepages=512"),
    (["1G:4", "2M:512"], "1G", "default_hugepagesz=1G hugepagesz=1G hugepages=4 "
                               "hugepagesz=2M hugepages=512"),
    (["1G:4@1", "1G:2@0"], None, "hugepagesz=1G hugepages=0:2,1:4"),
    (["2M:100@0 2M:200@1,1G:1"], "2M", "default_hugepagesz=2M hugepagesz=2M hugepages=0:100,1:200 "
                                       "hugepagesz=1G hugepages=1"),
    (["1G:0"], None, "hugepagesz=1G hugepages=0"),
])
def test_kernel_params_follow_the_documented_syntax(reserve, default, expect):
    specs = boot.parse_specs(reserve)
    params = boot.kernel_params(specs, {"1G": G1, "2M": M2, None: None}[default])
    cmdline = " ".join(params)
    assert cmdline == expect
    assert DOCUMENTED.match(cmdline), cmdline
    # every hugepages= right after its hugepagesz=
    for i, p in enumerate(params):
        if p.startswith("hugepages="):
            assert params[i - 1].startswith("hugepagesz=")


@pytest.mark.parametrize("text,match", [
    ("2M", "is not SIZE:COUNT"), ("2M:-1", "is not SIZE:COUNT"), ("2Q:1", "unknown unit"),
    ("0M:1", "must be positive"), ("2M:1@1024", "node 1024 is out of range"),
    ("2M:99999999999", "out of range"), ("2M:1 2M:2", "repeats"),
    ("2M:1@0 2M:2", "both for all nodes and per node"),
])
def test_bad_reservations_are_one_clear_line(text, match):
    with pytest.raises(InvalidInput, match=match):
        boot.parse_specs([text])


def test_host_checks(tmp_path):
    root = host_root(tmp_path / "a")
    assert boot.check_host(root, boot.parse_specs(["2M:512@1"]), None) == []
    with pytest.raises(InvalidInput, match=r"node 2 does not exist \(nodes: 0, 1\)"):
        boot.check_host(root, boot.parse_specs(["2M:1@2"]), None)
    with pytest.raises(InvalidInput, match=r"reserving 31\.0 GiB on node 0 would leave less "
                                           r"than 1\.6 GiB of its 32\.0 GiB"):
        boot.check_host(root, boot.parse_specs(["1G:31@0"]), None)
    with pytest.raises(InvalidInput, match="on the host would leave"):
        boot.check_host(root, boot.parse_specs(["1G:63"]), None)
    old = host_root(tmp_path / "b", osrelease="5.15.0-91-generic")
    with pytest.raises(InvalidInput, match=r"needs Linux 5\.16 or later \(this is 5\.15\)"):
        boot.check_host(old, boot.parse_specs(["2M:1@0"]), None)
    assert boot.check_host(old, boot.parse_specs(["2M:1"]), None) == []


def test_1g_on_a_cpu_without_pdpe1gb_is_refused(tmp_path):
    root = host_root(tmp_path, flags="fpu pse")
    (tmp_path / "sys/kernel/mm/hugepages/hugepages-1048576kB").rmdir()
    with pytest.raises(InvalidInput, match="1G pages need a CPU with pdpe1gb"):
        boot.check_host(root, boot.parse_specs(["1G:1"]), None)


def test_grubby_replaces_old_hugepage_args_and_keeps_the_rest():
    calls: list[list[str]] = []

    def runner(argv):
        calls.append(list(argv))
        out = ('index=0\nkernel="/boot/vmlinuz"\nargs="ro quiet hugepagesz=1G hugepages=2"\n'
               'index=1\nargs="ro hugepages=64"\n') if "--info=ALL" in argv else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    done = grub.apply_grubby(["hugepagesz=2M", "hugepages=512"], runner)
    assert calls[1:] == [
        ["grubby", "--update-kernel=ALL", "--remove-args=hugepagesz=1G hugepages=2 hugepages=64"],
        ["grubby", "--update-kernel=ALL", "--args=hugepagesz=2M hugepages=512"],
    ]
    assert len(done) == 2

    def failing(argv):
        return subprocess.CompletedProcess(argv, 0 if "--info=ALL" in argv else 1, "", "boom")

    with pytest.raises(HostError, match=r"grubby: .*failed: boom"):
        grub.apply_grubby(["hugepagesz=2M", "hugepages=1"], failing)


def test_without_grubby_the_etc_default_grub_edit_is_printed_not_written(tmp_path):
    root = host_root(tmp_path)
    grub_file = tmp_path / "etc/default/grub"
    grub_file.parent.mkdir(parents=True)
    text = ('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
            'GRUB_CMDLINE_LINUX="console=ttyS0 hugepages=16 iommu=pt"\n')
    grub_file.write_text(text)
    edit = grub.grub_default_edit(root, ["hugepagesz=1G", "hugepages=4"],
                                  which=lambda name: "/usr/sbin/update-grub"
                                  if name == "update-grub" else None)
    assert edit == {"file": "/etc/default/grub",
                    "old": 'GRUB_CMDLINE_LINUX="console=ttyS0 hugepages=16 iommu=pt"',
                    "new": 'GRUB_CMDLINE_LINUX="console=ttyS0 iommu=pt hugepagesz=1G hugepages=4"',
                    "regenerate": "update-grub"}
    assert grub_file.read_text() == text
    (tmp_path / "boot/grub2").mkdir(parents=True)
    edit = grub.grub_default_edit(root, ["hugepagesz=1G", "hugepages=4"], which=lambda n: None)
    assert edit["regenerate"] == "grub2-mkconfig -o /boot/grub2/grub.cfg"


def test_sysctl_snippet_only_for_the_default_size_on_the_whole_host(tmp_path):
    assert boot.sysctl_snippet(boot.parse_specs(["2M:512", "1G:2"]), M2).endswith(
        "vm.nr_hugepages = 512\n")
    with pytest.raises(InvalidInput, match="no per-node form"):
        boot.sysctl_snippet(boot.parse_specs(["2M:512@0"]), M2)
    with pytest.raises(InvalidInput, match="no reservation of that size"):
        boot.sysctl_snippet(boot.parse_specs(["1G:2"]), M2)
    path = boot.write_sysctl(HostRoot(str(tmp_path)), "vm.nr_hugepages = 8\n")
    assert Path(path).read_text() == "vm.nr_hugepages = 8\n"


def fake_allocator(tmp_path, state="state", **config):
    from allocfix import make_config
    from fakekernel import FakeKernel

    from hugexml.alloc.allocator import Allocator

    kernel = FakeKernel(tmp_path / "root", nodes=2)
    return kernel, Allocator(kernel.gateway(), str(tmp_path / state), make_config(**config))


def pools(kernel):
    return {(n, s): kernel.pool(n, s).nr for n in (0, 1) for s in (M2, G1)}


def test_apply_runtime_counts_pages_the_kernel_already_has_with_an_empty_ledger(tmp_path):
    # The command line reserved the pools at boot; the ledger (in /run) is empty.
    kernel, alloc = fake_allocator(tmp_path)
    kernel.preset(0, M2, 512)
    kernel.preset(1, G1, 2)
    specs = boot.parse_specs(["2M:512@0 1G:4@1"])
    rows = boot.apply_runtime(specs, alloc)
    assert [(r["pool_pages"], r["adding"]) for r in rows] == [(512, 0), (2, 2)]
    assert rows[1]["add"] == {"1:1048576": 2}
    assert pools(kernel) == {(0, M2): 512, (0, G1): 0, (1, M2): 0, (1, G1): 4}
    writes = kernel.writes()
    # a second run (the service restarted) adds nothing and writes nothing
    rows = boot.apply_runtime(specs, alloc)
    assert [(r["pool_pages"], r["adding"]) for r in rows] == [(512, 0), (4, 0)]
    assert kernel.writes() == writes and pools(kernel)[(1, G1)] == 4


def test_apply_runtime_without_node_targets_the_whole_host_and_never_shrinks(tmp_path):
    kernel, alloc = fake_allocator(tmp_path)
    kernel.preset(0, M2, 300)
    kernel.preset(1, M2, 200)
    kernel.preset(0, G1, 3)
    rows = boot.apply_runtime(boot.parse_specs(["2M:600 1G:1@0"]), alloc)
    assert [(r["pool_pages"], r["adding"]) for r in rows] == [(500, 100), (3, 0)]
    assert kernel.pool(0, M2).nr + kernel.pool(1, M2).nr == 600
    assert kernel.pool(0, G1).nr == 3                     # a smaller target shrinks nothing
    admin = {f"{n}:{s}": b.admin for (n, s), b in alloc.snapshot().journal.pools.items()
             if b.admin}
    assert admin == rows[0]["add"]                        # only what was added is admin's


def test_apply_runtime_goes_on_after_a_failed_item(tmp_path):
    kernel, alloc = fake_allocator(tmp_path)
    rows = boot.apply_runtime(boot.parse_specs(["1G:1@7 2M:16@1"]), alloc)
    assert "error" in rows[0] and "7" in rows[0]["error"]
    assert rows[1]["adding"] == 16 and kernel.pool(1, M2).nr == 16


def test_apply_runtime_dry_run_writes_nothing(tmp_path):
    kernel, alloc = fake_allocator(tmp_path, state="fresh/state")
    kernel.preset(1, G1, 1)
    writes = kernel.writes()
    rows = boot.apply_runtime(boot.parse_specs(["1G:4@1"]), alloc, dry_run=True)
    assert (rows[0]["pool_pages"], rows[0]["adding"]) == (1, 3)
    assert kernel.writes() == writes and kernel.pool(1, G1).nr == 1
    assert not (tmp_path / "fresh").exists()


def test_command_apply_runtime_reads_the_config_and_tops_up(tmp_path, monkeypatch, capsys):
    from hugexml.cli import _alloc

    kernel, _ = fake_allocator(tmp_path)
    kernel.preset(0, M2, 512)
    monkeypatch.setattr(_alloc, "MAKE_GATEWAY", lambda root: kernel.gateway())
    conf = tmp_path / "hugexml.conf"
    conf.write_text("[allocation]\nmargin_min = 0\n[boot]\nreserve = 2M:512@0 1G:4@1\n")
    state = str(tmp_path / "state")
    for _ in range(2):
        assert run_command(["--apply-runtime"], kernel.host_root, str(conf), state) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["2M:512@0: already reserved (512 pages in the pool)",
                   "1G:4@1: added 4 (the pool had 0)",
                   "2M:512@0: already reserved (512 pages in the pool)",
                   "1G:4@1: already reserved (4 pages in the pool)"]
    assert pools(kernel) == {(0, M2): 512, (0, G1): 0, (1, M2): 0, (1, G1): 4}


def run_command(argv, root, config=None, state="/nonexistent-state"):
    from hugexml.cli import boot as cmd
    from hugexml.cli.main import Context

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    ctx = Context(root, state, config or "/nonexistent.conf", bool(config), 0)
    return cmd.run(p.parse_args(argv), ctx)


def test_command_prints_the_cmdline_and_the_grub_edit(tmp_path, capsys):
    root = host_root(tmp_path)
    assert run_command(["--reserve", "1G:2@0", "--reserve", "1G:2@1", "--default-size", "1G",
                        "--apply"], root) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "default_hugepagesz=1G hugepagesz=1G hugepages=0:2,1:2"
    assert '  GRUB_CMDLINE_LINUX="default_hugepagesz=1G hugepagesz=1G hugepages=0:2,1:2"' in out
    with pytest.raises(InvalidInput, match="at least one --reserve"):
        run_command([], root)


def test_command_apply_runtime_with_an_empty_reserve_does_nothing(tmp_path, capsys):
    root = host_root(tmp_path)
    assert run_command(["--apply-runtime"], root) == 0
    assert "nothing to reserve" in capsys.readouterr().out


# The 4-node VM of tests/numavm (Debian's 6.1 kernel), nodes of 2G, 2G, 2G and 3G: MemTotal.
DOC_NODES_KIB = (1997252, 2063960, 2064208, 3048288)


# ... and of tests/numavm/groups.LAYOUT, 2G, 4G, 2G and 4G.
VM_NODES_KIB = (1951980, 4128344, 2064208, 4125744)


def doc_layout(base: Path, nodes_kib: tuple[int, ...] = DOC_NODES_KIB) -> HostRoot:
    root = host_root(base, nodes=(0, 1, 2, 3), mem_kib=sum(nodes_kib), osrelease="6.1.0-57")
    for n, kib in enumerate(nodes_kib):
        (base / f"sys/devices/system/node/node{n}/meminfo").write_text(
            f"Node {n} MemTotal:       {kib} kB\n")
    return root


def test_the_per_node_1g_line_6_1_misplaced_is_refused_by_the_margin(tmp_path):
    # hugepages=0:1,3:2 gave 0/1/1/1 on 6.1: neither node can hold its pages and keep 1G.
    with pytest.raises(InvalidInput, match=r"on node 0 would leave less than 1\.0 GiB"):
        boot.check_host(doc_layout(tmp_path), boot.parse_specs(["1G:1@0 1G:2@3"]), None)


def test_per_node_1g_asks_say_where_the_kernel_may_misplace_them(tmp_path):
    root = doc_layout(tmp_path)
    notes = boot.check_host(root, boot.parse_specs(["1G:1@0 1G:2@3 1G:1@1 2M:64@2"]), None,
                            margin_min_kib=0, margin_percent=0)
    assert any(n.startswith("1G:1@0: node 0 has 1 whole 1G") for n in notes), notes
    assert any(n.startswith("1G:2@3: node 3 has 2 whole 1G") for n in notes), notes
    assert any(n.startswith("1G:1@1: node 1 has 1 whole 1G") for n in notes), notes
    assert notes[-1].endswith("set [boot] reserve = 1G:1@0 1G:2@3 1G:1@1 so "
                              "hugexml-reserve.service tops up each node, and check with "
                              "hugexml doctor")
    # 4G nodes keep a spare GiB for the kernel's own data: no warning, only the service hint
    roomy = boot.check_host(doc_layout(tmp_path / "vm", VM_NODES_KIB),
                            boot.parse_specs(["1G:1@1 1G:1@3"]), None)
    assert [n.split(":")[0] for n in roomy] == ["1G pages", "per-node 1G pages"], roomy
    assert boot.check_host(root, boot.parse_specs(["2M:64@2", "1G:1"]), None) == [
        "1G pages: the kernel takes them from memblock before anything fragments memory; a "
        "smaller runtime reservation would likely fail"]


@pytest.mark.parametrize("cmdline,default,expect", [
    ("hugepagesz=1G hugepages=0:1,3:2", M2, ["1G:1@0", "1G:2@3"]),
    ("default_hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=512", M2, ["2M:4", "2M:512"]),
    ("hugepages=16", M2, ["2M:16"]),
    ("hugepagesz=2M hugepages=1:100 hugepagesz=1G hugepages=2", M2, ["2M:100@1", "1G:2"]),
    ("hugepagesz=1G hugepages=x hugepagesz=5Q hugepages=3 hugepages=0:", M2, []),
    ("hugepages=8", None, []),
])
def test_cmdline_specs_read_the_line_as_the_kernel_does(cmdline, default, expect):
    # a hugepages= before any hugepagesz= is the default size as the kernel had it at boot
    assert [str(s) for s in boot.cmdline_specs(cmdline.split(), default)] == expect


def test_shortfalls_name_node_size_and_source():
    asks = [(s, "[boot] reserve") for s in boot.parse_specs(["1G:1@0 1G:2@3 2M:64"])]
    have = {(G1, 0): 0, (G1, 3): 2, (M2, None): 10}
    short, met = boot.shortfalls(asks, lambda size, node: have[(size, node)])
    assert short == ["node 0 1G: 0 of 1 ([boot] reserve)",
                     "all nodes 2M: 10 of 64 ([boot] reserve)"]
    assert met == ["node 3 1G: 2 of 2 ([boot] reserve)"]


# --- boot --from-guests ------------------------------------------------------------------
def guests_root(tmp_path: Path, nodes: int = 2, mem_kib=16 << 20, osrelease: Optional[str] = None,
                **kernel) -> Path:
    """A fake kernel with ``nodes`` nodes and an empty autostart directory."""
    from fakekernel import FakeKernel

    base = tmp_path / "root"
    FakeKernel(base, nodes=nodes, mem_kib_per_node=mem_kib, **kernel)
    (base / "etc/libvirt/qemu/autostart").mkdir(parents=True)
    (base / "proc/cmdline").write_text("ro quiet\n")
    if osrelease:
        (base / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
        (base / "proc/sys/kernel/osrelease").write_text(osrelease + "\n")
    return base


def from_guests(base: Path, *argv: str, config: Optional[Path] = None,
                capsys=None) -> dict:
    assert run_command(["--from-guests", "--json", *argv], HostRoot(str(base)),
                       str(config) if config else None, str(base / "state")) == 0
    return json.loads(capsys.readouterr().out)


# (guests: (name, xml)), nodes, the [boot] reserve and the kernel command line planned
FROM_GUESTS = {
    "strict, one node each": (
        [("db", domain("db", 4096, G1, "1")), ("web", domain("web", 1024, M2, "0"))], 2,
        "1G:4@1 2M:512@0", "hugepagesz=2M hugepages=0:512 hugepagesz=1G hugepages=1:4"),
    "two guests on one node add up": (
        [("a", domain("a", 1024, M2, "0")), ("b", domain("b", 512, M2, "0"))], 2,
        "2M:768@0", "hugepagesz=2M hugepages=0:768"),
    "unbound: the node with the most room first, spread as needed": (
        [("big", domain("big", 20 << 10, M2))], 2,
        "2M:7680@0 2M:2560@1", "hugepagesz=2M hugepages=0:7680,1:2560"),
    "unbound after a bound guest: the roomier node": (
        [("a", domain("a", 4096, M2, "0")), ("b", domain("b", 1024, M2))], 2,
        "2M:2048@0 2M:512@1", "hugepagesz=2M hugepages=0:2048,1:512"),
    "preferred: its node": (
        [("p", domain("p", 2048, M2, "1", mode="preferred"))], 2,
        "2M:1024@1", "hugepagesz=2M hugepages=1:1024"),
    "interleave: an even share per node": (
        [("i", domain("i", 2050, M2, "0-1", mode="interleave"))], 2,
        "2M:513@0 2M:512@1", "hugepagesz=2M hugepages=0:513,1:512"),
    "guest cells bound to nodes": (
        [("c", domain("c", 3072, G1, cells=((0, 1024, "0"), (1, 2048, "1"))))], 2,
        "1G:1@0 1G:2@1", "hugepagesz=1G hugepages=0:1,1:2"),
    "one node: the whole-host form": (
        [("a", domain("a", 1024, M2)), ("b", domain("b", 2048, G1, "0"))], 1,
        "1G:2 2M:512", "hugepagesz=2M hugepages=512 hugepagesz=1G hugepages=2"),
}


@pytest.mark.parametrize("case", list(FROM_GUESTS))
def test_from_guests_plans_the_demand_per_node_and_size(case, tmp_path, capsys):
    guests, nodes, reserve, cmdline = FROM_GUESTS[case]
    base = guests_root(tmp_path, nodes=nodes)
    for name, xml in guests:
        autostart(base, name, xml)
    out = from_guests(base, capsys=capsys)
    assert (out["reserve"], out["cmdline"]) == (reserve, cmdline)
    assert out["skipped"] == []
    # the kernel reads the printed line back as the same items (what doctor compares)
    assert sorted(str(s) for s in boot.cmdline_specs(out["params"], M2)) == sorted(
        str(s) for s in boot.parse_specs([reserve]))
    unbound = {g["name"] for g in out["guests"] if g["unbound"]}
    assert unbound == {n for n, xml in guests if b"numatune" not in xml}
    assert all(any(f"'{n}' has no <numatune>" in note for note in out["notes"]) for n in unbound)


def test_from_guests_keeps_the_default_size_of_the_running_kernel(tmp_path, capsys):
    base = guests_root(tmp_path)
    (base / "proc/cmdline").write_text("ro default_hugepagesz=1G hugepagesz=1G hugepages=2\n")
    autostart(base, "db", domain("db", 2048, G1, "0"))
    assert from_guests(base, capsys=capsys)["cmdline"] == (
        "default_hugepagesz=1G hugepagesz=1G hugepages=0:2")


def test_from_guests_text_output_and_nothing_to_reserve(tmp_path, capsys):
    base = guests_root(tmp_path)
    assert run_command(["--from-guests"], HostRoot(str(base)), None, str(base / "s")) == 0
    assert capsys.readouterr().out == ("nothing to reserve: no autostart guest asks for "
                                       "hugepages (0 read)\n")
    autostart(base, "db", domain("db", 2048, G1, "1"))
    autostart(base, "web", domain("web", 1024, M2))
    assert run_command(["--from-guests"], HostRoot(str(base)), None, str(base / "s")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == ["hugepagesz=2M hugepages=0:512 hugepagesz=1G hugepages=1:2",
                       "[boot] reserve = 1G:2@1 2M:512@0", "guest db: 1G:2@1",
                       "guest web: 2M:512@0"]
    assert out[-1].startswith("(printed only: --apply to change the boot entries and [boot] "
                              "reserve")


@pytest.mark.parametrize("guests,match", [
    ([("big", domain("big", 16 << 10, G1, "1"))],
     r"^autostart guest 'big' does not fit at boot: node 1: 16 x 1G would leave 0 KiB of its "
     r"16\.0 GiB for the host, below the floor of 1\.0 GiB \(\[allocation\] margin_min, "
     r"margin_percent\)$"),
    ([("a", domain("a", 8 << 10, G1, "1")), ("b", domain("b", 8 << 10, G1, "1"))],
     r"^autostart guest 'b' does not fit at boot: node 1: 8 x 1G would leave 0 KiB of its "
     r"16\.0 GiB for the host, below the floor of 1\.0 GiB; the guests before it take 8\.0 GiB"),
    ([("u", domain("u", 31 << 10, M2))],
     r"^autostart guest 'u' does not fit at boot: node 0-1, 2M pages: needs 15872, room for "
     r"15360 above the nodes' floors after the guests before it"),
])
def test_from_guests_refuses_in_one_line_what_cannot_fit(tmp_path, guests, match, capsys):
    from hugexml.cli.main import main

    base = guests_root(tmp_path)
    for name, xml in guests:
        autostart(base, name, xml)
    conf = tmp_path / "hugexml.conf"
    conf.write_text("[boot]\nreserve = 2M:1@0\n")
    before = conf.read_bytes()
    code = main(["--root", str(base), "--state-dir", str(tmp_path / "s"), "--config", str(conf),
                 "boot", "--from-guests", "--apply", "--into", "config"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and re.search(match, err.split(": ", 1)[1].strip()), err
    assert conf.read_bytes() == before and not (tmp_path / "hugexml.conf.bak").exists()


def test_from_guests_margin_comes_from_the_config(tmp_path, capsys):
    base = guests_root(tmp_path)
    autostart(base, "big", domain("big", 16 << 10, G1, "1"))
    conf = tmp_path / "hugexml.conf"
    conf.write_text("[allocation]\nmargin_min = 0\nmargin_percent = 0\n")
    out = from_guests(base, config=conf, capsys=capsys)
    assert out["reserve"] == "1G:16@1"
    # 16 whole GiB, the top one its own: the kernel cannot hold 16 at boot: [boot] reserve only
    assert out["cmdline"] == "" and out["cmdline_specs"] == []
    assert any(n.startswith("1G:16@1: node 1 can hold 15 x 1G at boot") for n in out["notes"])


def hostile(base: Path, tmp_path: Path, kind: str) -> None:
    qemu = base / "etc/libvirt/qemu"
    if kind == "huge":
        autostart(base, "huge", b"<domain type='kvm'>" + b" " * (16 << 20) + b"</domain>")
    elif kind == "doctype":
        autostart(base, "doctype", b"<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY x SYSTEM "
                                   b"'file:///dev/zero'>]><domain>&x;</domain>")
    elif kind == "entity":
        autostart(base, "entity", b"<domain type='kvm'><name>&x;</name></domain>")
    elif kind == "not a domain":
        autostart(base, "net", b"<network><name>default</name></network>")
    elif kind == "garbage":
        autostart(base, "garbage", b"\xff\xfe\x00\x01 not xml")
    elif kind == "empty":
        autostart(base, "empty", b"")
    elif kind == "dangling":
        autostart(base, "gone", None)
    elif kind == "loop":
        os.symlink("l2.xml", qemu / "l1.xml")
        os.symlink("l1.xml", qemu / "l2.xml")
        autostart(base, "loop", None, "/etc/libvirt/qemu/l1.xml")
    elif kind == "self loop":
        autostart(base, "self", None, "self.xml")
    elif kind == "fifo":
        os.mkfifo(qemu / "fifo.xml")
        autostart(base, "fifo", None)
    elif kind == "directory":
        (qemu / "dir.xml").mkdir()
        autostart(base, "dir", None)
    elif kind == "outside the root":
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "x.xml").write_bytes(domain("x", 1024, M2, "0"))
        os.symlink(str(outside), qemu / "out")
        autostart(base, "outside", None, "/etc/libvirt/qemu/out/x.xml")
    elif kind == "libvirt refuses it":
        autostart(base, "node7", domain("node7", 1024, M2, "7"))
    elif kind == "control characters in the name":
        autostart(base, "evil\x1b[31m", b"<domain")
    else:
        raise AssertionError(kind)


# (kind, what its one line says)
HOSTILE = [
    ("huge", "autostart/huge.xml: /etc/libvirt/qemu/huge.xml is larger than 16 MiB"),
    ("doctype", "autostart/doctype.xml: /etc/libvirt/qemu/doctype.xml: not a readable domain "
                "XML: a DOCTYPE is not allowed in domain XML"),
    ("entity", "autostart/entity.xml: /etc/libvirt/qemu/entity.xml: not a readable domain XML"),
    ("not a domain", "autostart/net.xml: /etc/libvirt/qemu/net.xml: not a readable domain XML: "
                     "root element is <network>, expected <domain>"),
    ("garbage", "autostart/garbage.xml: /etc/libvirt/qemu/garbage.xml: not a readable domain"),
    ("empty", "autostart/empty.xml: /etc/libvirt/qemu/empty.xml: not a readable domain XML: "
              "empty input"),
    ("dangling", "autostart/gone.xml: /etc/libvirt/qemu/gone.xml does not exist (a dangling "
                 "link)"),
    ("loop", "autostart/loop.xml: more than 8 symbolic links from "
             "/etc/libvirt/qemu/autostart/loop.xml (a loop?)"),
    ("self loop", "autostart/self.xml: more than 8 symbolic links"),
    ("fifo", "autostart/fifo.xml: /etc/libvirt/qemu/fifo.xml is not a regular file"),
    ("directory", "autostart/dir.xml: /etc/libvirt/qemu/dir.xml is not a regular file"),
    ("outside the root", "autostart/outside.xml: /etc/libvirt/qemu/out/x.xml resolves outside "
                         "the host root"),
    ("libvirt refuses it", "autostart/node7.xml: domain 'node7': NUMA node 7 is unavailable"),
    ("control characters in the name", "autostart/evil\\x1b[31m.xml: "),
]


@pytest.mark.parametrize("kind,line", HOSTILE, ids=[k for k, _ in HOSTILE])
def test_a_hostile_autostart_entry_is_one_line_and_skipped(kind, line, tmp_path, capsys):
    base = guests_root(tmp_path)
    autostart(base, "good", domain("good", 1024, M2, "1"))
    hostile(base, tmp_path, kind)
    out = from_guests(base, capsys=capsys)
    assert out["reserve"] == "2M:512@1"                 # the good guest is planned
    assert len(out["skipped"]) == 1 and out["skipped"][0].startswith(line), out["skipped"]
    assert "\n" not in out["skipped"][0] and "\x1b" not in out["skipped"][0]
    # text mode: the plan on stdout, the skipped entry as one line on stderr
    assert run_command(["--from-guests"], HostRoot(str(base)), None, str(base / "s")) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("hugepagesz=2M hugepages=1:512\n")
    assert captured.err.splitlines() == [f"hugexml boot: skipped {out['skipped'][0]}"]


@pytest.mark.parametrize("specs,kernel,spare,cmdline,note", [
    ("2M:512@0 1G:2@1", (6, 1), {(1, G1): 2}, "1G:2@1 2M:512@0", None),
    ("2M:512@0 1G:3@1", (6, 1), {(1, G1): 2}, "2M:512@0",
     "1G:3@1: node 1 can hold 2 x 1G at boot"),
    ("2M:512@0 1G:3@1", (5, 15), {(1, G1): 9}, "",
     "Linux 5.15 has no per-node hugepages= (5.16 and later): 1G:3@1 2M:512@0 only in"),
    ("2M:512 1G:3", (5, 15), {}, "1G:3 2M:512", None),
    ("1G:3@1", None, {(1, G1): 3}, "1G:3@1", None),
])
def test_cmdline_split_keeps_only_what_the_kernel_honours(specs, kernel, spare, cmdline, note):
    from hugexml.system.bootplan import cmdline_split

    parsed = sorted(boot.parse_specs([specs]), key=lambda s: (-s.size_kib, s.node or 0))
    on, notes = cmdline_split(parsed, kernel, spare)
    assert " ".join(map(str, on)) == cmdline
    assert (notes == []) if note is None else (len(notes) == 1 and notes[0].startswith(note))


GIB = 1 << 20


@pytest.mark.parametrize("specs,totals,kernel,cma,param", [
    # 1G: all of the reservation, 3/8 of the memory: per node from 5.17
    ("1G:6@0 1G:6@1", {0: 16 * GIB, 1: 16 * GIB}, (6, 1), True, "hugetlb_cma=0:6G,1:6G"),
    ("1G:6@0 1G:6@1", {0: 16 * GIB, 1: 16 * GIB}, (5, 16), True, "hugetlb_cma=12G"),
    ("1G:12", {0: 32 * GIB}, (6, 1), False, "hugetlb_cma=12G"),
    # not 1G-heavy: 1G is less than half of what is pinned
    ("1G:6@0 2M:7000@1", {0: 16 * GIB, 1: 16 * GIB}, (6, 1), True, None),
    # not large: 1G pins less than a quarter of the memory
    ("1G:7", {0: 32 * GIB}, (6, 1), True, None),
    ("2M:9000", {0: 32 * GIB}, (6, 1), True, None),
])
def test_hugetlb_cma_is_offered_for_1g_heavy_reservations(specs, totals, kernel, cma, param):
    from hugexml.system.bootplan import cma_suggestion

    found = cma_suggestion(boot.parse_specs([specs]), totals, kernel, cma)
    assert (found and found["param"]) == param
    if found:
        assert found["replaces"] == " ".join(s for s in specs.split() if s.startswith("1G"))
        assert "movable" in found["why"] and "CONFIG_CMA" in found["why"]
        assert ("this kernel has no CONFIG_CMA" in found["why"]) == (cma is False)


def test_boot_prints_the_hugetlb_cma_suggestion(tmp_path, capsys):
    base = guests_root(tmp_path, osrelease="6.1.0")
    for node in (0, 1):
        autostart(base, f"db{node}", domain(f"db{node}", 6 << 10, G1, str(node)))
    out = from_guests(base, capsys=capsys)
    assert out["hugetlb_cma"]["param"] == "hugetlb_cma=0:6G,1:6G"
    assert run_command(["--from-guests"], HostRoot(str(base)), None, str(base / "s")) == 0
    text = capsys.readouterr().out
    assert ("suggest: hugetlb_cma=0:6G,1:6G in place of 1G:6@0 1G:6@1 on the kernel command "
            "line: 1G pages are 100% of this reservation and 37% of the memory") in text
    # --reserve gets the same offer
    assert run_command(["--reserve", "1G:6@0", "--reserve", "1G:6@1"], HostRoot(str(base))) == 0
    assert "suggest: hugetlb_cma=0:6G,1:6G" in capsys.readouterr().out


# --- [boot] reserve written in place --------------------------------------------------------
V = "1G:2@1 2M:512@0"
SET_KEY = {
    "no file": ("", f"[boot]\nreserve = {V}\n"),
    "no [boot] section": ("# mine\n[allocation]\nmargin_min = 1G\n",
                          f"# mine\n[allocation]\nmargin_min = 1G\n\n[boot]\nreserve = {V}\n"),
    "no final newline": ("[allocation]\nmargin_min = 1G",
                         f"[allocation]\nmargin_min = 1G\n\n[boot]\nreserve = {V}\n"),
    "the key, an inline comment and the next section": (
        "[boot]\nreserve = 2M:1  # old\n[hook]\nlog = none\n",
        f"[boot]\nreserve = {V}  # old\n[hook]\nlog = none\n"),
    "key spelled otherwise, ':' delimiter": ("[boot]\nRESERVE: 2M:1\n", f"[boot]\nRESERVE: {V}\n"),
    "empty value": ("[boot]\nreserve =\n", f"[boot]\nreserve = {V}\n"),
    "continuation lines go with the key, comments after it stay": (
        "[boot]\nreserve = 2M:1@0\n    2M:2@1\n\n    1G:1@0\n\n# after\n[hook]\nlog = none\n",
        f"[boot]\nreserve = {V}\n\n# after\n[hook]\nlog = none\n"),
    "the commented template line stays, the key follows it": (
        "[boot]\n# Pages applied per node\n#reserve =\n\n[hook]\n#log = syslog\n",
        f"[boot]\n# Pages applied per node\n#reserve =\nreserve = {V}\n\n[hook]\n#log = syslog\n"),
    "a section without the key": (
        "[boot]\n# pages at boot\n\n[hook]\nlog = none\n",
        f"[boot]\n# pages at boot\nreserve = {V}\n\n[hook]\nlog = none\n"),
    "CRLF line ends": ("[boot]\r\nreserve = 2M:1\r\n[hook]\r\n",
                       f"[boot]\r\nreserve = {V}\r\n[hook]\r\n"),
    "last line without a newline": ("[boot]\nreserve = 2M:1", f"[boot]\nreserve = {V}"),
}


@pytest.mark.parametrize("case", list(SET_KEY))
def test_set_key_changes_that_key_and_no_other_byte(case):
    from hugexml.core.confedit import set_key
    from hugexml.core.config import parse_config

    text, expect = SET_KEY[case]
    assert set_key(text, "boot", "reserve", V) == expect
    assert parse_config(expect).boot_reserve == V
    assert set_key(expect, "boot", "reserve", V) == expect          # a second run: no change


def test_the_shipped_config_gets_its_key_after_the_template_line():
    from hugexml.core.confedit import set_key
    from hugexml.core.config import DEFAULT_CONFIG_TEXT, parse_config

    new = set_key(DEFAULT_CONFIG_TEXT, "boot", "reserve", V)
    assert new.replace(f"#reserve =\nreserve = {V}\n", "#reserve =\n") == DEFAULT_CONFIG_TEXT
    assert parse_config(new).boot_reserve == V


def test_write_key_backs_up_keeps_the_mode_and_refuses_a_bad_file(tmp_path):
    from hugexml.core.confedit import write_key
    from hugexml.core.errors import ConfigError

    conf = tmp_path / "hugexml.conf"
    old = "# admin's notes\n[release]\nkeep_for = 1G=1h  # long\n"
    conf.write_text(old)
    conf.chmod(0o640)
    done = write_key(str(conf), "boot", "reserve", V, lambda c: c.boot_reserve == V)
    assert done == {"path": str(conf), "changed": True, "backup": f"{conf}.bak", "created": False}
    assert conf.read_text() == old + f"\n[boot]\nreserve = {V}\n"
    assert (tmp_path / "hugexml.conf.bak").read_text() == old
    assert conf.stat().st_mode & 0o777 == 0o640
    (tmp_path / "hugexml.conf.bak").unlink()
    assert write_key(str(conf), "boot", "reserve", V, lambda c: True)["changed"] is False
    assert not (tmp_path / "hugexml.conf.bak").exists()            # nothing written
    bad = "[boot]\nreserve = 2M:1\n[nosuch]\n"
    conf.write_text(bad)
    with pytest.raises(ConfigError, match=r"\[nosuch\]: unknown section"):
        write_key(str(conf), "boot", "reserve", V, lambda c: True)
    assert conf.read_text() == bad
    fresh = tmp_path / "etc/hugexml/hugexml.conf"
    assert write_key(str(fresh), "boot", "reserve", V, lambda c: True)["created"] is True
    assert f"#reserve =\nreserve = {V}\n" in fresh.read_text()


def test_from_guests_apply_writes_boot_reserve_in_place(tmp_path, capsys):
    base = guests_root(tmp_path)
    autostart(base, "db", domain("db", 2048, G1, "1"))
    conf = tmp_path / "hugexml.conf"
    conf.write_text("# keep me\n[allocation]\nmargin_min = 1G   ; my floor\n[boot]\n"
                    "reserve = 2M:64@0   # before the guests\n")
    out = from_guests(base, "--apply", "--into", "config", config=conf, capsys=capsys)
    assert out["config"]["changed"] and "grub" not in out and "grubby" not in out
    assert conf.read_text() == ("# keep me\n[allocation]\nmargin_min = 1G   ; my floor\n"
                                "[boot]\nreserve = 1G:2@1   # before the guests\n")
    # --into both (the default) also gives the boot entries' edit (printed on a fake root)
    out = from_guests(base, "--apply", config=conf, capsys=capsys)
    assert out["config"]["changed"] is False
    assert out["grub"]["new"] == 'GRUB_CMDLINE_LINUX="hugepagesz=1G hugepages=1:2"'


def test_a_plan_from_the_guests_once_booted_is_what_doctor_checks(tmp_path, capsys,
                                                                    monkeypatch):
    """Part 3: the line printed and the [boot] reserve written are read by doctor's
    boot-reserve check as the same asks; after a boot that honoured the line and the
    service's top-up of what it could not carry, the check is ok."""
    from fakekernel import FakeKernel

    from hugexml.cli import _alloc
    from hugexml.system.doctor import Doctor

    base = guests_root(tmp_path, mem_kib=(16 << 20, 4 << 20), used_kib_per_node=0,
                       osrelease="6.1.0")
    autostart(base, "web", domain("web", 1024, M2, "0"))
    autostart(base, "db", domain("db", 4096, G1, "1"))      # node 1 holds 3 at boot: service
    autostart(base, "small", domain("small", 1024, G1, "0"))
    conf = tmp_path / "hugexml.conf"
    conf.write_text("[allocation]\nmargin_min = 0\nmargin_percent = 0\n")
    out = from_guests(base, "--apply", "--into", "config", config=conf, capsys=capsys)
    assert out["reserve"] == "1G:1@0 1G:4@1 2M:512@0"
    assert out["cmdline"] == "hugepagesz=2M hugepages=0:512 hugepagesz=1G hugepages=0:1"
    kernel = FakeKernel.attach(str(base))
    doctor = Doctor(HostRoot(str(base)), str(tmp_path / "state"), daemons=[],
                    gateway=kernel.gateway(), domains=[], config_path=str(conf),
                    config_explicit=True)
    check = doctor.check_boot_reserve()
    assert check.status == "warn" and "node 1 1G: 0 of 4 ([boot] reserve)" in check.message
    # the boot: the kernel takes what the printed line asks, on its nodes
    (base / "proc/cmdline").write_text(f"ro quiet {out['cmdline']}\n")
    for spec in boot.cmdline_specs(out["params"], M2):
        kernel.preset(spec.node, spec.size_kib, spec.count)
    check = doctor.check_boot_reserve()
    assert check.status == "warn" and check.message == (
        "short of the boot-time reservation: node 1 1G: 0 of 4 ([boot] reserve)")
    # hugexml-reserve.service: boot --apply-runtime adds what the line could not carry
    monkeypatch.setattr(_alloc, "MAKE_GATEWAY", lambda root: kernel.gateway())
    assert run_command(["--apply-runtime"], HostRoot(str(base)), str(conf),
                       str(tmp_path / "state")) == 0
    assert "1G:4@1: added 4 (the pool had 0)" in capsys.readouterr().out
    check = doctor.check_boot_reserve()
    assert check.status == "ok", check
    for item in ("node 0 2M: 512 of 512 (kernel command line)", "node 0 1G: 1 of 1 ([boot] "
                 "reserve)", "node 1 1G: 4 of 4 ([boot] reserve)"):
        assert item in check.message


# Per section: lines that hugexml reads in it (comments, blanks and the section's own keys).
_BODY = {
    "allocation": ["margin_min = 2G\n", "demote = no  # inline\n"],
    "boot": ["reserve = 2M:8@0\n", "RESERVE : 1G:1  # inline\n", "reserve =\n",
             "reserve = 2M:8@0\n  2M:4@1\n", "#reserve =\n"],
    "hook": ["log = stderr\n", "#log = syslog\n"],
    "release": ["keep_for = 1G=1h\n"],
}
_ANY = ["# a comment\n", "; another\n", "\n", "   \n"]


@st.composite
def config_texts(draw: Any) -> list[str]:
    """Valid hugexml.conf texts as lines: comments first, then sections in any order, each
    once, with at most one [boot] reserve."""
    lines = draw(st.lists(st.sampled_from(_ANY), max_size=3))
    for section in draw(st.permutations(sorted(_BODY)))[:draw(st.integers(0, len(_BODY)))]:
        lines.append(f"[{section}]\n")
        body = draw(st.lists(st.sampled_from(_BODY[section] + _ANY), max_size=4))
        keys = [b for b in body if not b.lstrip().startswith(("#", ";")) and b.strip()]
        if len({b.split("=")[0].split(":")[0].strip().lower() for b in keys}) < len(keys):
            continue                         # a key twice: not a file hugexml reads
        lines += body
    return "".join(lines).splitlines(keepends=True)


@settings(max_examples=300, deadline=None)
@given(config_texts())
def test_set_key_keeps_every_other_line_in_order(lines):
    """Whatever the file looks like, hugexml reads the new value back, and every line that
    is not the key's own (or its continuation) is still there, in order."""
    from hugexml.core.confedit import set_key
    from hugexml.core.config import parse_config

    text = "".join(lines)
    parse_config(text)                       # the strategy makes only valid files
    new = set_key(text, "boot", "reserve", V)
    assert parse_config(new).boot_reserve == V
    kept = iter(new.splitlines(keepends=True))
    for line in lines:
        if re.match(r"(?i)reserve\s*[=:]|\s+\S", line):
            continue                         # the key's line and its continuation
        assert any(line == other for other in kept), (text, new)


def test_from_guests_an_unreadable_autostart_directory_is_an_error(tmp_path, capsys):
    from hugexml.core.errors import HostError

    base = guests_root(tmp_path)
    (base / "etc/libvirt/qemu/autostart").rmdir()
    (base / "etc/libvirt/qemu/autostart").write_text("not a directory")
    with pytest.raises(HostError, match=r"^/etc/libvirt/qemu/autostart: Not a directory$"):
        run_command(["--from-guests"], HostRoot(str(base)), None, str(base / "s"))


def test_from_guests_says_which_boot_reserve_it_replaces(tmp_path, capsys):
    base = guests_root(tmp_path)
    autostart(base, "db", domain("db", 1024, M2, "1"))
    conf = tmp_path / "hugexml.conf"
    conf.write_text("[boot]\nreserve = 2M:64@0\n")
    out = from_guests(base, config=conf, capsys=capsys)
    assert f"[boot] reserve is '2M:64@0' in {conf} now: --apply replaces it" in "\n".join(
        out["notes"])
    conf.write_text("[boot]\nreserve = 2M:512@1\n")
    assert not any("replaces" in n for n in from_guests(base, config=conf, capsys=capsys)["notes"])
