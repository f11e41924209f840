"""The allocator through the CLI and the hook, on a real 4-node kernel (nodes 2G, 4G, 2G, 4G).

Every expectation is read from sysfs directly, never through hugexml; each test leaves every
node's pools as it found them (the ``vm`` fixture checks).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest
from vmkit import G1, M2, NAMES, HugeFile, domain, global_pool, node_meminfo, pool, pools, set_nr

pytestmark = pytest.mark.numavm("runtime")
ALL = (0, 1, 2, 3)


def grown(before: dict, changes: dict) -> dict:
    """``before`` with (node, size) pools grown by free pages."""
    out = dict(before)
    for key, pages in changes.items():
        nr, free, surplus = out[key]
        out[key] = (nr + pages, free + pages, surplus)
    return out


def test_four_real_nodes(vm):
    status = vm.ok("status", "--json").json()
    assert sorted({p["node"] for p in status["pools"]}) == list(ALL)
    assert sorted({p["size_kib"] for p in status["pools"]}) == [M2, G1]


@pytest.mark.parametrize("size,node,count", [(M2, 1, 64), (M2, 2, 48), (M2, 3, 8), (G1, 1, 1),
                                             (G1, 3, 1)])
def test_allocate_then_shrink_on_one_node(vm, size, node, count):
    before = pools()
    args = ("--size", NAMES[size], "--count", str(count), "--node", str(node), "--json")
    assert vm.ok("allocate", *args).json()["add"] == {f"{node}:{size}": count}
    assert pools() == grown(before, {(node, size): count})
    assert vm.ok("shrink", *args).json()["removed"] == {f"{node}:{size}": count}
    assert pools() == before


@pytest.mark.parametrize("size,node,mib", [(M2, 2, 64), (M2, 3, 200), (G1, 1, 1024),
                                           (G1, 3, 1024)])
def test_reserve_and_release_by_hand(vm, size, node, mib):
    before = pools()
    pages = mib * 1024 // size
    path = vm.xml_file("hand", domain("hand", mib, size, nodeset=str(node)))
    result = vm.ok("reserve", path, "--json").json()
    assert result["claimed"] == result["added"] == {f"{node}:{size}": pages}
    assert pools() == grown(before, {(node, size): pages})
    status = vm.ok("status", "--json").json()
    row = next(p for p in status["pools"] if (p["node"], p["size_kib"]) == (node, size))
    assert (row["claimed"], row["added_by_hugexml"]) == (pages, pages)
    assert vm.ok("release", "hand", "--json").json()["released"] == result["added"]
    assert pools() == before


@pytest.mark.parametrize("size,node,mib", [(M2, 1, 32), (M2, 2, 16), (G1, 3, 1024)])
def test_hook_prepare_started_release(vm, size, node, mib):
    before = pools()
    xml = domain("hooked", mib, size, nodeset=str(node))
    result = vm.hook("hooked", "prepare", "begin", xml)
    assert result.rc == 0, result.err
    assert pools() == grown(before, {(node, size): mib * 1024 // size})
    assert vm.hook("hooked", "started", "begin", xml).rc == 0
    assert vm.hook("hooked", "release", "end", xml).rc == 0
    assert pools() == before


def test_installed_hook_file_as_libvirt_runs_it(vm, tmp_path):
    """install-hook into this VM's /etc (an overlay), then run the file libvirt would run:
    its own interpreter line, the default state dir and config, the XML on stdin."""
    conf = "/etc/hugexml/hugexml.conf"  # /etc is the VM's own overlay: the host's is untouched
    for path in (conf, "/run/hugexml"):
        assert not os.path.exists(path), f"{path} exists before the test"
    os.makedirs("/etc/hugexml", exist_ok=True)
    with open(conf, "w") as fh:
        fh.write("[hook]\nlog = stderr\n")
    try:
        vm.ok("install-hook")
        hook = "/etc/libvirt/hooks/qemu.d/hugexml"
        before = pools()
        xml = domain("byfile", 64, M2, nodeset="3").encode()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # libvirt's hooks get a bare env
        run = subprocess.run([hook, "byfile", "prepare", "begin", "-"], input=xml, env=env,
                             capture_output=True, timeout=120)
        assert run.returncode == 0, run.stderr.decode()
        assert pools() == grown(before, {(3, M2): 32})
        run = subprocess.run([hook, "byfile", "release", "end", "-"], input=xml, env=env,
                             capture_output=True, timeout=120)
        assert run.returncode == 0, run.stderr.decode()
        assert pools() == before
    finally:
        vm.cli("uninstall-hook")
        subprocess.run(["rm", "-rf", conf, "/run/hugexml"], check=False)


# (numatune arguments, expected claim {node: pages}) for 96 MiB or two 64 MiB cells of 2M
PLACEMENTS = [
    ("memory strict", dict(mib=96, nodeset="1"), {1: 48}),
    ("memory preferred", dict(mib=96, mode="preferred", nodeset="2"), {2: 48}),
    ("memory interleave", dict(mib=96, mode="interleave", nodeset="1-3"), {1: 16, 2: 16, 3: 16}),
    ("memnode strict", dict(mib=128, cells=((0, 64), (1, 64)),
                            memnodes=((0, "strict", "1"), (1, "strict", "3"))), {1: 32, 3: 32}),
    ("memnode preferred", dict(mib=128, cells=((0, 64), (1, 64)),
                               memnodes=((0, "preferred", "2"), (1, "preferred", "1"))),
     {2: 32, 1: 32}),
    ("memnode interleave", dict(mib=128, cells=((0, 64), (1, 64)),
                                memnodes=((0, "interleave", "1,3"), (1, "strict", "2"))),
     {1: 16, 3: 16, 2: 32}),
]


@pytest.mark.parametrize("label,tune,expect", PLACEMENTS, ids=[p[0] for p in PLACEMENTS])
def test_numatune_placement(vm, label, tune, expect):
    before = pools()
    mib = tune.pop("mib")
    mode = tune.pop("mode", "strict")
    path = vm.xml_file("placed", domain("placed", mib, M2, mode=mode, **tune))
    result = vm.ok("reserve", path, "--json").json()
    want = {f"{n}:{M2}": p for n, p in expect.items()}
    assert result["claimed"] == want
    assert pools() == grown(before, {(n, M2): p for n, p in expect.items()})
    vm.ok("release", "placed")
    assert pools() == before


def test_preferred_spills_to_other_nodes_when_its_node_is_full(vm):
    free_kib = node_meminfo(2)["MemFree"]
    pages = (free_kib - (1 << 20)) // M2 + 128  # 256 MiB more than node 2 may give
    before = pools()
    path = vm.xml_file("spill", domain("spill", pages * 2, M2, mode="preferred", nodeset="2"))
    claimed = vm.ok("reserve", path, "--json").json()["claimed"]
    assert sum(claimed.values()) == pages
    assert 0 < claimed[f"2:{M2}"] < pages
    # node 2 kept its margin (MemFree moves by the per-cpu lists' 2M blocks: 64 MiB slack)
    assert node_meminfo(2)["MemFree"] >= (1 << 20) - 32 * M2
    vm.ok("release", "spill")
    assert pools() == before


def admin_pools() -> None:
    """Pages an admin made by hand on several nodes, so "as before" is not all zero."""
    for node, size, count in ((0, M2, 8), (1, M2, 16), (3, M2, 4), (1, G1, 1)):
        set_nr(node, size, count)


@pytest.mark.parametrize("xml", [
    pytest.param(domain("toobig", 3072, M2, nodeset="2"), id="one-node"),
    pytest.param(domain("toobig", 2048, G1, nodeset="2"), id="one-node-1G"),
    pytest.param(domain("toobig", 3136, M2, cells=((0, 64), (1, 3072)),
                        memnodes=((0, "strict", "1"), (1, "strict", "2"))), id="second-cell"),
    pytest.param(domain("toobig", 3072, M2, mode="interleave", nodeset="1-2"),
                 id="interleave-share"),
])
def test_a_demand_one_node_cannot_meet_changes_nothing(vm, xml):
    admin_pools()
    before = pools()
    globals_before = {s: global_pool(s) for s in (M2, G1)}
    result = vm.cli("reserve", vm.xml_file("toobig", xml))
    assert result.rc != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "node 2" in lines[0], result.err
    assert pools() == before
    assert {s: global_pool(s) for s in (M2, G1)} == globals_before
    assert vm.ok("status", "--json").json()["guests"] == []


def test_the_margin_on_a_small_node(vm):
    free_kib = node_meminfo(2)["MemFree"]
    room = (free_kib - (1 << 20)) // M2  # the default margin: 1G of normal memory stays
    before = pools()
    refused = vm.cli("reserve", vm.xml_file("over", domain("over", (room + 32) * 2, M2,
                                                           nodeset="2")))
    assert refused.rc != 0 and "node 2" in refused.err, refused.err
    assert pools() == before
    one_g = vm.cli("reserve", vm.xml_file("g1", domain("g1", 1024, G1, nodeset="2")))
    assert one_g.rc != 0 and "node 2" in one_g.err, one_g.err
    assert pools() == before
    fits = vm.ok("reserve", vm.xml_file("fits", domain("fits", (room - 32) * 2, M2, nodeset="2")))
    assert fits.rc == 0 and pool(2, M2)[0] == before[(2, M2)][0] + room - 32
    assert node_meminfo(2)["MemFree"] >= (1 << 20) - 32 * M2
    vm.ok("release", "fits")
    assert pools() == before


def test_status_json_equals_sysfs(vm):
    set_nr(1, M2, 20)
    set_nr(3, M2, 10)
    set_nr(3, G1, 1)
    used, reserved = HugeFile(M2), HugeFile(M2)
    try:
        used.touch(1, 6)            # 6 pages in use on node 1
        reserved.reserve(3)         # 3 free pages reserved (resv_hugepages)
        set_nr(1, M2, 2)            # below what is in use: surplus
        status = vm.ok("status", "--json").json()
        seen = set()
        for row in status["pools"]:
            node, size = row["node"], row["size_kib"]
            nr, free, surplus = pool(node, size)
            assert (row["total"], row["free"], row["surplus"]) == (nr, free, surplus), row
            seen.add((node, size))
        assert seen == {(n, s) for n in ALL for s in (M2, G1)}
        for size in (M2, G1):
            real, shown = global_pool(size), status["global_pools"][str(size)]
            assert shown == {"total": real["nr_hugepages"], "free": real["free_hugepages"],
                             "reserved": real["resv_hugepages"],
                             "surplus": real["surplus_hugepages"],
                             "overcommit": real["nr_overcommit_hugepages"]}
        assert status["global_pools"][str(M2)]["reserved"] == 3
        assert pool(1, M2)[2] > 0  # the surplus case really happened
        for node in ALL:
            assert status["memory"][str(node)]["total_kib"] == node_meminfo(node)["MemTotal"]
    finally:
        used.close()
        reserved.close()


def test_32_reserves_at_once_are_counted_exactly(vm):
    before = pools()
    paths = [vm.xml_file(f"c{i}", domain(f"c{i}", 16, M2, nodeset=str(i % 4)))
             for i in range(32)]

    def all_at_once(argvs: list[list[str]]) -> list[int]:
        gate_r, gate_w = os.pipe()
        pids = []
        for argv in argvs:
            pid = os.fork()
            if pid == 0:  # child: wait for the gate, run the command, exit with its code
                code = 70
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    os.close(gate_w)
                    os.read(gate_r, 1)
                    code = vm.cli(*argv).rc
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(gate_r)
        os.write(gate_w, b"x" * len(argvs))
        os.close(gate_w)
        return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]

    assert all_at_once([["reserve", p] for p in paths]) == [0] * 32
    assert pools() == grown(before, {(n, M2): 64 for n in ALL})
    status = vm.ok("status", "--json").json()
    assert len(status["guests"]) == 32
    for row in status["pools"]:
        if row["size_kib"] == M2:
            assert (row["claimed"], row["added_by_hugexml"]) == (64, 64), row
    assert all_at_once([["release", f"c{i}"] for i in range(32)]) == [0] * 32
    assert pools() == before
    assert vm.ok("status", "--json").json()["guests"] == []


@contextlib.contextmanager
def surplus_in_use_on_node_1() -> Iterator[None]:
    """Node 1: 6 pages in use, 4 of them surplus (its pool lowered under them)."""
    set_nr(1, M2, 10)
    used = HugeFile(M2)
    try:
        used.touch(1, 6)
        set_nr(1, M2, 2)
        assert pool(1, M2) == (6, 0, 4)
        yield
    finally:
        used.close()


def test_allocate_on_one_node_while_another_node_has_surplus_pages(vm):
    """Linux before 6.7 makes a node write's count global with nr_hugepages, surplus pages of
    other nodes included (fixed upstream in 6.7): a node write then overshoots by them. And
    no kernel frees node 3's free pages while node 1's surplus pages are in use (min_count):
    the shrink has node 1 lend them as persistent pages for a moment."""
    with surplus_in_use_on_node_1():
        before = pools()
        result = vm.cli("allocate", "--size", "2M", "--count", "4", "--node", "3", "--json")
        after = pools()
        assert result.rc == 0, result.err
        assert after == grown(before, {(3, M2): 4}), f"asked 4 on node 3: {after[(3, M2)]}"
        vm.ok("shrink", "--size", "2M", "--count", "4", "--node", "3")
        assert pools() == before


def test_the_gateway_lands_exactly_while_another_node_has_surplus_pages(vm):
    """HostGateway.set_node_nr on the real kernel, node 1 holding surplus pages in use: grows
    and shrinks of other nodes land on their counts (Linux < 6.7 would miss by node 1's
    surplus, and every kernel keeps free pages while surplus pages are in use), node 1 is
    never changed, and the thread's memory policy is the default again."""
    from hugexml.core.root import HostRoot
    from hugexml.host.sysfs import HostGateway

    with surplus_in_use_on_node_1():
        start = pools()
        gw = HostGateway(HostRoot("/"))
        want = dict(start)
        for node, count in ((3, 4), (3, 0), (3, 2), (3, 1), (0, 3), (2, 5), (3, 0), (0, 0),
                            (2, 1), (2, 0)):
            assert gw.set_node_nr(node, M2, count) == count, (node, count, pools())
            want[(node, M2)] = (count, count, 0)
            assert pools() == want, (node, count)
        with open("/proc/self/numa_maps") as fh:
            assert {line.split()[1] for line in fh} == {"default"}
        assert pools() == start
