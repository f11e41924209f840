"""The allocator's commands: status, allocate, shrink, reserve, release, reconcile.

Each command module runs as the CLI runs it (``add_arguments`` then ``run(args, ctx)``) on a
simulated 2-node kernel injected through ``hugexml.cli._alloc.MAKE_GATEWAY``: the
in-memory SimKernel, and the sysfs-tree FakeKernel under the command's ``--root`` read and
written by the real HostGateway.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os

import pytest
from allocfix import M2, make_config
from simkernel import make_kernel

from hugexml.cli import _alloc
from hugexml.core.errors import InvalidInput
from hugexml.core.root import HostRoot


class Ctx:
    def __init__(self, tmp_path):
        self.root = HostRoot(str(tmp_path / "root"))
        self.state_dir = str(tmp_path / "state")
        self.config_path = "/nonexistent/hugexml.conf"
        self.config_explicit = False
        self.verbose = 0


@pytest.fixture(params=["sim", "fake"])
def kernel(request, monkeypatch, tmp_path):
    sim = make_kernel(request.param, str(tmp_path / "root"), nodes=2)

    def make_gateway(root):
        assert root.path("") == HostRoot(str(tmp_path / "root")).path("")
        return sim.gw
    monkeypatch.setattr(_alloc, "MAKE_GATEWAY", make_gateway)
    monkeypatch.setattr(_alloc, "load", lambda ctx: make_config())
    return sim


def run(command, argv, tmp_path, capsys):
    module = importlib.import_module(f"hugexml.cli.{command}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    code = module.run(parser.parse_args(argv), Ctx(tmp_path))
    return code, capsys.readouterr().out


def test_allocate_dry_run_then_real(kernel, tmp_path, capsys):
    code, out = run("allocate", ["--size", "2M", "--count", "8", "--node", "1", "--dry-run"],
                    tmp_path, capsys)
    assert code == 0 and out.strip() == "would add: node 1: 8 x 2M"
    assert kernel.nr(1, M2) == 0
    code, out = run("allocate", ["--size", "2M", "--count", "8", "--node", "1", "--json"],
                    tmp_path, capsys)
    assert json.loads(out)["add"] == {"1:2048": 8} and kernel.nr(1, M2) == 8


def test_allocate_dry_run_writes_nothing_on_the_host(kernel, tmp_path, capsys):
    state = tmp_path / "state"
    assert not state.exists()
    code, out = run("allocate", ["--size", "2M", "--count", "8", "--dry-run", "--json"],
                    tmp_path, capsys)
    assert code == 0 and sum(json.loads(out)["add"].values()) == 8
    assert not state.exists()                   # no state dir, no lock file, no ledger
    assert kernel.writes == []
    if hasattr(kernel, "fk"):
        assert kernel.fk.writes() == []         # the sysfs tree saw no write at all
    # with a state dir and a ledger in place, a dry run still only reads them
    run("allocate", ["--size", "2M", "--count", "2", "--node", "0"], tmp_path, capsys)
    def files():
        return {str(p): p.read_bytes() for p in state.rglob("*") if p.is_file()}
    before = files()
    writes = list(kernel.writes)
    code, out = run("allocate", ["--size", "2M", "--count", "4", "--node", "1", "--dry-run"],
                    tmp_path, capsys)
    assert code == 0 and out.strip() == "would add: node 1: 4 x 2M"
    assert files() == before
    assert kernel.writes == writes


def cli(argv, tmp_path, capsys):
    """The whole command line, as a user runs it: (exit code, stdout, stderr)."""
    from hugexml.cli.main import main

    code = main(["--root", str(tmp_path / "root"), "--state-dir", str(tmp_path / "state"),
                 "--config", str(tmp_path / "none.conf"), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_shrink_reports_what_it_could_not_take(kernel, tmp_path, capsys, as_json):
    """A shrink that removes fewer pages than asked exits 1 and says so in one stderr line
    (it used to print only to stdout: exit 1 with an empty stderr, seen in the NUMA VM)."""
    run("allocate", ["--size", "2M", "--count", "6", "--node", "0"], tmp_path, capsys)
    kernel.map(0, M2, 2)
    code, out, err = cli(["shrink", "--size", "2M", "--count", "6", "--node", "0",
                          *(["--json"] if as_json else [])], tmp_path, capsys)
    assert code == 1
    if as_json:
        assert json.loads(out)["removed"] == {"0:2048": 4}
    else:
        assert out == "removed: node 0: 4 x 2M\n"
    assert err == ("hugexml shrink: 2 of 6 x 2M pages on node 0 were not removed: not free, "
                   "reserved, or needed by guests\n")
    assert kernel.nr(0, M2) == 2
    code, out, err = cli(["shrink", "--size", "2M", "--count", "2"], tmp_path, capsys)
    assert (code, err) == (1, "hugexml shrink: 2 of 2 x 2M pages were not removed: not free, "
                              "reserved, or needed by guests\n")


def test_a_failed_pool_write_is_one_stderr_line_naming_node_size_counts(monkeypatch, tmp_path,
                                                                        capsys):
    """An OSError from the kernel in the middle of a bound write (node 1 has surplus pages
    in use, so node 0's shrink writes nr_hugepages_mempolicy) ends the command with one
    line; node 1 and the memory policy are as they were. (The sysfs fake kernel: the
    in-memory one has no sysfs files to fail.)"""
    import errno

    kernel = make_kernel("fake", str(tmp_path / "root"), nodes=2)
    monkeypatch.setattr(_alloc, "MAKE_GATEWAY", lambda root: kernel.gw)
    monkeypatch.setattr(_alloc, "load", lambda ctx: make_config())
    run("allocate", ["--size", "2M", "--count", "4", "--node", "0"], tmp_path, capsys)
    kernel.fk.preset(1, M2, 3)
    kernel.fk.use(1, M2, 3)
    kernel.gw.set_node_nr(1, M2, 0)                 # node 1: 3 surplus pages in use
    node1 = kernel.fk.pool(1, M2)
    kernel.fk.fail_next_write(f"sys/kernel/mm/hugepages/hugepages-{M2}kB/"
                              "nr_hugepages_mempolicy", errno.EBUSY, after=1)
    code, out, err = cli(["shrink", "--size", "2M", "--count", "4", "--node", "0"], tmp_path,
                         capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("hugexml shrink: ") and "nr_hugepages_mempolicy: node 0, 2048 KiB " \
        "pages, pool to 0: node 0 from 4 to 0 persistent pages" in err
    assert os.strerror(errno.EBUSY) in err
    assert kernel.fk.pool(1, M2) == node1 and kernel.fk.io.bound is None
    assert kernel.nr(0, M2) == 4


@pytest.mark.parametrize("argv, words", [
    (["--size", "3Q", "--count", "1"], "--size"),
    (["--size", "2M", "--count", "-1"], "--count -1"),
    (["--size", "2M", "--count", "1", "--node", "4096"], "--node 4096"),
])
def test_bad_arguments_are_one_line_errors(kernel, tmp_path, capsys, argv, words):
    with pytest.raises(InvalidInput) as info:
        run("allocate", argv, tmp_path, capsys)
    assert words in str(info.value)
    assert kernel.writes == []


def test_status_shows_pools_guests_and_json(kernel, tmp_path, capsys):
    from hugexml.alloc.allocator import Allocator
    from hugexml.core.model import DemandItem, GuestId, Plan

    alloc = Allocator(kernel.gw, str(tmp_path / "state"), make_config())
    alloc.reserve(Plan("vm1", None, (), (DemandItem(M2, (1,), 5, "strict"),)), GuestId("vm1"))
    code, out = run("status", ["--json"], tmp_path, capsys)
    status = json.loads(out)
    pool = next(p for p in status["pools"] if p["node"] == 1 and p["size_kib"] == M2)
    assert pool["total"] == 5 and pool["claimed"] == 5 and pool["added_by_hugexml"] == 5
    assert [g["name"] for g in status["guests"]] == ["vm1"]
    code, out = run("status", [], tmp_path, capsys)
    assert code == 0
    assert "  vm1 (name-" in out and "): pending; added node 1: 5 x 2M" in out
    assert out.splitlines()[0].split() == ["node", "size", "total", "free", "claimed", "kept",
                                           "added", "admin", "allocatable"]


@pytest.mark.parametrize("name", ["host.json", "ledger.json", "guests/name-00.json"])
def test_status_reports_a_bad_state_file_and_reconcile_quarantines_it(kernel, tmp_path, capsys,
                                                                      name):
    (tmp_path / "state" / "guests").mkdir(mode=0o700, parents=True)
    (tmp_path / "state" / name).write_text("{oops")
    code, out = run("status", [], tmp_path, capsys)
    assert code == 0 and f"state: {tmp_path}/state/{name}: " in out
    assert "the next change moves it to" in out
    code, out = run("reconcile", ["--json"], tmp_path, capsys)
    (note,) = json.loads(out)["notes"]
    assert f"{name}: " in note and "moved to" in note
    code, out = run("status", ["--json"], tmp_path, capsys)
    status = json.loads(out)
    assert status["state_notes"] == [] and len(status["quarantine"]) == 1


def test_release_unknown_and_known(kernel, tmp_path, capsys):
    code, out, err = cli(["release", "ghost"], tmp_path, capsys)
    assert code == 1 and "ghost: no claim" in out
    assert err == "hugexml release: ghost: no claim to release\n"  # exit 1 says why
    from hugexml.alloc.allocator import Allocator
    from hugexml.core.model import DemandItem, GuestId, Plan

    alloc = Allocator(kernel.gw, str(tmp_path / "state"), make_config())
    alloc.reserve(Plan("vm1", None, (), (DemandItem(M2, (0,), 3, "strict"),)), GuestId("vm1"))
    code, out = run("release", ["vm1", "--json"], tmp_path, capsys)
    assert code == 0 and json.loads(out)["released"] == {"0:2048": 3}
    assert kernel.nr(0, M2) == 0


def test_reserve_command_plans_and_claims(kernel, tmp_path, capsys):
    root = tmp_path / "root"  # the host the planner reads (the FakeKernel's own tree)
    for node in (0, 1):
        (root / f"sys/devices/system/node/node{node}").mkdir(parents=True, exist_ok=True)
    for size in (2048, 1048576):
        (root / f"sys/kernel/mm/hugepages/hugepages-{size}kB").mkdir(parents=True, exist_ok=True)
    if not (root / "proc/meminfo").exists():
        (root / "proc").mkdir()
        (root / "proc/meminfo").write_text("Hugepagesize:       2048 kB\n")
    xml = tmp_path / "vm.xml"
    xml.write_text("""<domain type='kvm'><name>vm9</name><memory unit='MiB'>64</memory>
      <memoryBacking><hugepages/><source type='memfd'/></memoryBacking>
      <numatune><memory mode='strict' nodeset='1'/></numatune></domain>""")
    code, out = run("reserve", [str(xml), "--json"], tmp_path, capsys)
    result = json.loads(out)
    assert code == 0 and result["claimed"] == {"1:2048": 32}
    assert kernel.nr(1, M2) == 32


def test_status_table_reads_at_a_glance(kernel, tmp_path, capsys):
    """One row per node and size: claimed as starting+running, kept with the time left,
    added by hugexml, the admin's own pages; a running guest's claim is not 0."""
    from hugexml.alloc.allocator import Allocator
    from hugexml.core.model import DemandItem, GuestId, Plan

    G1 = 1048576
    kernel.set(0, M2, persistent=4)                           # the admin's
    clock = [1000.0]
    alloc = Allocator(kernel.gw, str(tmp_path / "state"),
                      make_config(keep_for=((G1, 600.0),)), clock=lambda: clock[0])
    alloc.reserve(Plan("run", None, (), (DemandItem(M2, (0,), 10, "strict"),)), GuestId("run"))
    kernel.map(0, M2, 10)
    alloc.settle(GuestId("run"))
    alloc.reserve(Plan("new", None, (), (DemandItem(M2, (0,), 3, "strict"),)), GuestId("new"))
    alloc.reserve(Plan("big", None, (), (DemandItem(G1, (1,), 2, "strict"),)), GuestId("big"))
    alloc.release(GuestId("big"))
    from hugexml.cli import status as status_cmd

    status = status_cmd.collect_status(Ctx(tmp_path))
    lines = status_cmd.render(status, now=clock[0] + 60)
    header = lines[0].split()
    rows = {tuple(line.split()[:2]): dict(zip(header, line.replace(" (", "(").split()))
            for line in lines[1:5]}
    two_m, one_g = rows[("0", "2M")], rows[("1", "1G")]
    assert (two_m["total"], two_m["free"], two_m["claimed"], two_m["kept"], two_m["added"],
            two_m["admin"]) == ("13", "3", "3+10", "0", "9", "4")
    assert (one_g["total"], one_g["free"], one_g["claimed"], one_g["kept"], one_g["added"],
            one_g["admin"]) == ("2", "2", "0", "2(9m)", "2", "0")
    assert any("claimed: starting+running guests; kept: for restarts" in ln for ln in lines)
    assert all(len(ln) <= 100 for ln in lines), lines
