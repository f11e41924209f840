"""The host gateway against the real kernel (root): reads agree with procfs/sysfs, writes
to node 0's pools are read back. The ``real_host`` fixture restores every pool; each test
also puts back what it changed itself."""
from __future__ import annotations

import glob
import os

import pytest

from hugexml.core.root import HostRoot
from hugexml.host.sysfs import HostGateway

pytestmark = pytest.mark.realkernel
GIB_KIB = 1024 * 1024
NODE0 = "/sys/devices/system/node/node0"


def sysfs_int(path: str) -> int:
    with open(path) as fh:
        return int(fh.read().strip())


def pool_file(size_kib: int, name: str) -> str:
    return f"{NODE0}/hugepages/hugepages-{size_kib}kB/{name}"


def meminfo_kib(path: str) -> dict[str, int]:
    out = {}
    with open(path) as fh:
        for line in fh:
            words = line.replace(":", " ").split()
            if words[0] == "Node":
                words = words[2:]
            out[words[0]] = int(words[1])
    return out


@pytest.fixture
def gw(real_host):
    return HostGateway(HostRoot("/"))


def test_reads_agree_with_the_kernel(gw):
    assert gw.numa == os.path.isdir(NODE0)
    nodes = sorted(int(os.path.basename(p)[4:]) for p in glob.glob(
        "/sys/devices/system/node/node[0-9]*"))
    assert list(gw.nodes()) == (nodes or [0])
    sizes = sorted(int(os.path.basename(p)[10:-2]) for p in glob.glob(
        "/sys/kernel/mm/hugepages/hugepages-*kB"))
    assert list(gw.page_sizes_kib()) == sizes and 2048 in sizes
    for size in sizes:
        base = f"/sys/kernel/mm/hugepages/hugepages-{size}kB/"
        pool = gw.global_pool(size)
        assert pool.nr == sysfs_int(base + "nr_hugepages")
        assert pool.free == sysfs_int(base + "free_hugepages")
        assert pool.resv == sysfs_int(base + "resv_hugepages")
        assert pool.overcommit == sysfs_int(base + "nr_overcommit_hugepages")
        node = gw.node_pool(0, size)
        assert node.nr == sysfs_int(pool_file(size, "nr_hugepages"))
        assert node.surplus == sysfs_int(pool_file(size, "surplus_hugepages"))
    meminfo = gw.meminfo()
    real = meminfo_kib("/proc/meminfo")
    assert meminfo["MemTotal"] == real["MemTotal"]
    assert meminfo["Hugepagesize"] == real["Hugepagesize"]
    default = gw.global_pool(meminfo["Hugepagesize"])
    assert meminfo["HugePages_Total"] == default.nr
    assert meminfo["HugePages_Rsvd"] == default.resv
    node0 = gw.node_meminfo(0)
    assert node0["MemTotal"] == meminfo_kib(f"{NODE0}/meminfo")["MemTotal"]
    assert abs(node0["MemFree"] - meminfo_kib(f"{NODE0}/meminfo")["MemFree"]) < 256 * 1024
    assert gw.base_page_kib() == os.sysconf("SC_PAGE_SIZE") // 1024
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
        assert f"[{gw.thp_mode()}]" in fh.read()


def test_buddyinfo_parses_the_real_file(gw):
    with open("/proc/buddyinfo") as fh:
        lines = [ln.split() for ln in fh if ln.strip()]
    info = gw.buddyinfo()
    assert sum(len(zones) for zones in info.values()) == len(lines)
    for words in lines:
        node, zone = int(words[1].rstrip(",")), words[3]
        assert len(info[node][zone]) == len(words) - 4 >= 11
    assert "Normal" in info[0] or "DMA32" in info[0]


def test_buddyinfo_free_memory_close_to_memfree(gw):
    info, node0 = gw.buddyinfo(), gw.node_meminfo(0)
    base = gw.base_page_kib()
    free_kib = sum(count * (base << order) for orders in info[0].values()
                   for order, count in enumerate(orders))
    # The buddy lists hold MemFree minus the per-CPU page lists: close, never far above.
    assert free_kib <= node0["MemFree"] + 64 * 1024
    assert free_kib >= node0["MemFree"] * 0.8


def grow_and_shrink(gw: HostGateway, size_kib: int, more: int) -> None:
    before = gw.node_pool(0, size_kib)
    try:
        got = gw.set_node_nr(0, size_kib, before.nr + more)
        assert got == sysfs_int(pool_file(size_kib, "nr_hugepages"))
        assert got == before.nr + more, (
            f"asked {before.nr + more} x {size_kib} KiB on node 0, got {got}; "
            f"buddyinfo {gw.buddyinfo().get(0)}")
        after = gw.node_pool(0, size_kib)
        assert after.free == before.free + more
        assert gw.global_pool(size_kib).nr >= got
        back = gw.set_node_nr(0, size_kib, before.nr)
        assert back == before.nr == sysfs_int(pool_file(size_kib, "nr_hugepages"))
        assert gw.node_pool(0, size_kib) == before
    finally:
        with open(pool_file(size_kib, "nr_hugepages"), "w") as fh:
            fh.write(str(before.nr))


def test_set_node_nr_2m_grows_and_shrinks(gw):
    grow_and_shrink(gw, 2048, 16)


def test_set_node_nr_1g_grows_and_shrinks(gw):
    if GIB_KIB not in gw.page_sizes_kib():
        pytest.fail("this host has no 1G pages")
    grow_and_shrink(gw, GIB_KIB, 1)


def test_prediction_covers_a_small_real_grow(gw):
    ask = 8
    before = gw.node_pool(0, 2048).nr
    try:
        predicted = gw.allocatable_now(0, 2048)
        got = gw.set_node_nr(0, 2048, before + ask) - before
        assert 0 <= got <= ask
        if predicted >= ask:  # free 2M blocks were there: the kernel must grant all of them
            assert got == ask, f"predicted {predicted}, got {got}"
        assert predicted >= got, f"predicted {predicted}, got {got}"
    finally:
        assert gw.set_node_nr(0, 2048, before) == before


def numa_policies() -> set[str]:
    """The memory policies /proc/self/numa_maps shows (the thread's, for mappings without
    their own): "default", or e.g. "bind:0" while bound."""
    with open("/proc/self/numa_maps") as fh:
        return {line.split()[1] for line in fh if len(line.split()) > 1}


def test_a_bound_write_grows_and_shrinks_node_0_and_restores_the_policy(real_host):
    """The gateway's bound write on the real kernel (hugexml/host/mempolicy.py): set_mempolicy(2)
    through ctypes binds this thread to node 0, nr_hugepages_mempolicy takes the global
    target, the pool moves by a few pages, the policy is MPOL_DEFAULT again; the pool ends
    exactly as found."""
    from hugexml.host import mempolicy

    seen: list[tuple[object, set[str]]] = []

    def spy(nodes):
        mempolicy.set_thread_policy(nodes)
        seen.append((nodes, numa_policies()))

    assert numa_policies() == {"default"}
    gw = HostGateway(HostRoot("/"), mempolicy=spy)
    start = gw.node_pool(0, 2048)
    global_nr = gw.global_pool(2048).nr
    for step in (3, 1, 4, 0):
        nr = gw.set_node_nr_bound(0, 2048, start.persistent + step)
        assert nr == start.nr + step
        assert gw.node_pool(0, 2048) == type(start)(start.nr + step, start.free + step,
                                                    start.surplus)
        assert gw.global_pool(2048).nr == global_nr + step
        assert sysfs_int(pool_file(2048, "nr_hugepages")) == start.nr + step
    assert gw.node_pool(0, 2048) == start
    assert [nodes for nodes, _ in seen] == [(0,), None] * 4
    assert all(policies == ({"bind:0"} if nodes else {"default"}) for nodes, policies in seen)
    assert numa_policies() == {"default"}
