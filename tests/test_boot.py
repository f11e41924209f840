"""hugexml boot: the kernel command line, grub, sysctl.d and the runtime reservation."""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from hugexml import boot
from hugexml.errors import HostError, InvalidInput
from hugexml.root import HostRoot

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

    done = boot.apply_grubby(["hugepagesz=2M", "hugepages=512"], runner)
    assert calls[1:] == [
        ["grubby", "--update-kernel=ALL", "--remove-args=hugepagesz=1G hugepages=2 hugepages=64"],
        ["grubby", "--update-kernel=ALL", "--args=hugepagesz=2M hugepages=512"],
    ]
    assert len(done) == 2

    def failing(argv):
        return subprocess.CompletedProcess(argv, 0 if "--info=ALL" in argv else 1, "", "boom")

    with pytest.raises(HostError, match=r"grubby: .*failed: boom"):
        boot.apply_grubby(["hugepagesz=2M", "hugepages=1"], failing)


def test_without_grubby_the_etc_default_grub_edit_is_printed_not_written(tmp_path):
    root = host_root(tmp_path)
    grub = tmp_path / "etc/default/grub"
    grub.parent.mkdir(parents=True)
    text = ('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
            'GRUB_CMDLINE_LINUX="console=ttyS0 hugepages=16 iommu=pt"\n')
    grub.write_text(text)
    edit = boot.grub_default_edit(root, ["hugepagesz=1G", "hugepages=4"],
                                  which=lambda name: "/usr/sbin/update-grub"
                                  if name == "update-grub" else None)
    assert edit == {"file": "/etc/default/grub",
                    "old": 'GRUB_CMDLINE_LINUX="console=ttyS0 hugepages=16 iommu=pt"',
                    "new": 'GRUB_CMDLINE_LINUX="console=ttyS0 iommu=pt hugepagesz=1G hugepages=4"',
                    "regenerate": "update-grub"}
    assert grub.read_text() == text
    (tmp_path / "boot/grub2").mkdir(parents=True)
    edit = boot.grub_default_edit(root, ["hugepagesz=1G", "hugepages=4"], which=lambda n: None)
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

    from hugexml.alloc import Allocator

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
    from hugexml.commands import _alloc

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
    from hugexml.cli import Context
    from hugexml.commands import boot as cmd

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
