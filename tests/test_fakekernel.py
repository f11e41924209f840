"""The fake kernel behaves like mm/hugetlb.c where the other tests rely on it.

Writes go through ``fk.io.write_text`` (what the gateway calls), and the results are read
from the fake's own files, so these tests pin the fake, not the gateway.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from fakekernel import GIB_KIB, FakeKernel

from hugexml.host.kernel import NodePool, parse_buddyinfo, parse_meminfo

MIB = 1024
NODE = "sys/devices/system/node"
GLOBAL = "sys/kernel/mm/hugepages"


def node_nr(node: int, size_kib: int) -> str:
    return f"{NODE}/node{node}/hugepages/hugepages-{size_kib}kB/nr_hugepages"


def write(fk: FakeKernel, rel: str, value: str) -> None:
    fk.io.write_text(os.path.join(fk.root, rel), value)


def read(fk: FakeKernel, rel: str) -> str:
    with open(os.path.join(fk.root, rel)) as fh:
        return fh.read()


@pytest.fixture
def fk(tmp_path):
    return FakeKernel(tmp_path, nodes=2, mem_kib_per_node=4 * GIB_KIB)


def free_kib(fk: FakeKernel, node: int) -> int:
    return fk.mem_free_kib(node)


START_FREE = 4 * GIB_KIB - 512 * MIB


def test_grow_takes_memory_and_adds_free_pages(fk):
    write(fk, node_nr(0, 2048), "10\n")
    assert fk.pool(0, 2048) == NodePool(10, 10, 0)
    assert fk.pool(1, 2048) == NodePool(0, 0, 0)
    assert free_kib(fk, 0) == START_FREE - 10 * 2048
    assert free_kib(fk, 1) == START_FREE


def test_files_agree_with_the_counters(fk):
    write(fk, node_nr(0, 2048), "10")
    write(fk, node_nr(1, 2048), "4")
    write(fk, node_nr(1, GIB_KIB), "1")
    fk.reserve(2048, 3)
    assert read(fk, node_nr(1, 2048)) == "4\n"
    assert read(fk, f"{GLOBAL}/hugepages-2048kB/nr_hugepages") == "14\n"
    assert read(fk, f"{GLOBAL}/hugepages-2048kB/resv_hugepages") == "3\n"
    assert read(fk, f"{GLOBAL}/hugepages-{GIB_KIB}kB/free_hugepages") == "1\n"
    node1 = parse_meminfo(read(fk, f"{NODE}/node1/meminfo"))
    assert node1["MemFree"] == START_FREE - 4 * 2048 - GIB_KIB
    assert node1["HugePages_Total"] == 4  # default size only
    meminfo = parse_meminfo(read(fk, "proc/meminfo"))
    assert meminfo["HugePages_Total"] == 14 and meminfo["HugePages_Rsvd"] == 3
    assert meminfo["Hugetlb"] == 14 * 2048 + GIB_KIB
    assert meminfo["MemFree"] == free_kib(fk, 0) + free_kib(fk, 1)


def test_global_write_spreads_over_nodes(fk):
    write(fk, f"{GLOBAL}/hugepages-2048kB/nr_hugepages", "9\n")
    assert fk.pool(0, 2048).nr + fk.pool(1, 2048).nr == 9
    assert abs(fk.pool(0, 2048).nr - fk.pool(1, 2048).nr) <= 1


def test_node_write_keeps_other_nodes(fk):
    fk.preset(1, 2048, 6)
    write(fk, node_nr(0, 2048), "3")
    write(fk, node_nr(0, 2048), "1")
    assert fk.pool(1, 2048) == NodePool(6, 6, 0)
    assert fk.pool(0, 2048) == NodePool(1, 1, 0)


def test_shrinking_below_in_use_becomes_surplus(fk):
    write(fk, node_nr(0, 2048), "10")
    fk.use(0, 2048, 6)
    write(fk, node_nr(0, 2048), "2")
    # 4 free pages went back; 4 in-use pages above the target are now surplus.
    assert fk.pool(0, 2048) == NodePool(nr=6, free=0, surplus=4)
    assert free_kib(fk, 0) == START_FREE - 6 * 2048
    fk.unuse(0, 2048, 6)  # surplus pages are freed on unmap, the rest go to the free list
    assert fk.pool(0, 2048) == NodePool(nr=2, free=2, surplus=0)
    assert free_kib(fk, 0) == START_FREE - 2 * 2048


def test_growing_turns_surplus_back_into_persistent_pages(fk):
    write(fk, node_nr(0, 2048), "10")
    fk.use(0, 2048, 6)
    write(fk, node_nr(0, 2048), "0")
    assert fk.pool(0, 2048) == NodePool(6, 0, 6)
    write(fk, node_nr(0, 2048), "8")
    assert fk.pool(0, 2048) == NodePool(nr=8, free=2, surplus=0)
    assert free_kib(fk, 0) == START_FREE - 8 * 2048


def test_reserved_pages_are_never_freed(fk):
    write(fk, node_nr(0, 2048), "10")
    fk.reserve(2048, 4)
    write(fk, node_nr(0, 2048), "0")
    pool = fk.pool(0, 2048)
    assert pool.nr - pool.surplus == 0  # persistent count went to the target ...
    assert pool.free == 4 and fk.resv(2048) == 4  # ... but the reserved pages stay
    fk.use(0, 2048, 4, reserved=True)
    assert fk.resv(2048) == 0 and fk.pool(0, 2048).free == 0


def test_reserve_and_use_are_bounded(fk):
    write(fk, node_nr(1, 2048), "3")
    with pytest.raises(ValueError):
        fk.reserve(2048, 4)
    fk.reserve(2048, 2)
    with pytest.raises(ValueError):
        fk.reserve(2048, 2)  # only 1 unreserved free page left
    with pytest.raises(ValueError):
        fk.use(1, 2048, 4)
    with pytest.raises(ValueError):
        fk.unuse(1, 2048, 1)  # nothing in use yet


def test_grant_capped_by_free_memory(fk):
    write(fk, node_nr(0, 2048), "4096")  # 8 GiB asked of a node with 3.5 GiB free
    assert fk.pool(0, 2048).nr == START_FREE // 2048
    assert free_kib(fk, 0) == 0
    write(fk, node_nr(1, GIB_KIB), "4")
    assert fk.pool(1, GIB_KIB).nr == 3  # 3.5 GiB free: three whole 1G pages
    assert free_kib(fk, 1) == 512 * MIB


def test_min_free_keeps_memory_back(tmp_path):
    fk = FakeKernel(tmp_path, nodes=1, mem_kib_per_node=4 * GIB_KIB, min_free_kib=GIB_KIB)
    write(fk, node_nr(0, GIB_KIB), "4")
    assert fk.pool(0, GIB_KIB).nr == 2


def test_cap_limits_fresh_pages_and_freeing_raises_it(fk):
    fk.set_cap(0, 2048, 5)
    write(fk, node_nr(0, 2048), "20")
    assert fk.pool(0, 2048).nr == 5
    write(fk, node_nr(0, 2048), "2")  # 3 pages freed: 3 blocks back in the buddy lists
    write(fk, node_nr(0, 2048), "20")
    assert fk.pool(0, 2048).nr == 5


def test_buddyinfo_shows_what_the_cap_allows(fk):
    fk.set_cap(0, 2048, 5)
    orders = parse_buddyinfo(read(fk, "proc/buddyinfo"))[0]["Normal"]
    assert orders[9] == 5 and orders[10] == 0
    uncapped = parse_buddyinfo(read(fk, "proc/buddyinfo"))[1]["Normal"]
    assert sum(c * (4 << o) for o, c in enumerate(uncapped)) == START_FREE


def test_compaction_raises_the_cap(fk):
    fk.set_cap(1, GIB_KIB, 1)
    fk.set_compact_cap(1, GIB_KIB, 3)
    write(fk, node_nr(1, GIB_KIB), "3")
    assert fk.pool(1, GIB_KIB).nr == 1
    write(fk, f"{NODE}/node1/compact", "1")
    assert fk.compactions(1) == 1
    write(fk, node_nr(1, GIB_KIB), "3")
    assert fk.pool(1, GIB_KIB).nr == 3


def test_short_grant_is_one_shot(fk):
    fk.short_grant(0, 2048, 2)
    write(fk, node_nr(0, 2048), "10")
    assert fk.pool(0, 2048).nr == 2
    write(fk, node_nr(0, 2048), "10")
    assert fk.pool(0, 2048).nr == 10


def test_drop_caches_frees_the_page_cache(tmp_path):
    fk = FakeKernel(tmp_path, nodes=2, mem_kib_per_node=4 * GIB_KIB, cache_kib_per_node=GIB_KIB)
    write(fk, node_nr(0, GIB_KIB), "4")
    assert fk.pool(0, GIB_KIB).nr == 2
    write(fk, "proc/sys/vm/drop_caches", "1")
    write(fk, node_nr(0, GIB_KIB), "4")
    assert fk.pool(0, GIB_KIB).nr == 3
    assert fk.conf()["drop_caches"] == [1]


@pytest.mark.parametrize("value", ["abc", "-1", "", " 5", "5 ", "0x5", "\u0665"])
def test_bad_numbers_are_einval_and_change_nothing(fk, value):
    before = fk.counters()
    with pytest.raises(OSError) as info:
        write(fk, node_nr(0, 2048), value)
    assert info.value.errno == errno.EINVAL
    assert fk.counters() == before and fk.writes() == []


def test_missing_and_read_only_attributes(fk):
    with pytest.raises(FileNotFoundError):
        write(fk, node_nr(5, 2048), "1")
    with pytest.raises(PermissionError):
        write(fk, f"{NODE}/node0/hugepages/hugepages-2048kB/free_hugepages", "1")
    with pytest.raises(ValueError, match="outside the fake root"):
        fk.io.read_text("/proc/meminfo")


def test_injected_faults_after_and_times(fk):
    fk.fail_next_write(node_nr(0, 2048), errno.ENOMEM, times=2, after=1)
    write(fk, node_nr(0, 2048), "1")
    for _ in range(2):
        with pytest.raises(OSError) as info:
            write(fk, node_nr(0, 2048), "2")
        assert info.value.errno == errno.ENOMEM
    write(fk, node_nr(0, 2048), "3")
    assert fk.pool(0, 2048).nr == 3
    assert fk.writes() == [(node_nr(0, 2048), "1"), (node_nr(0, 2048), "3")]
    fk.fail_next_read("proc/meminfo", errno.EIO)
    with pytest.raises(OSError):
        fk.io.read_text(os.path.join(fk.root, "proc/meminfo"))
    assert "MemFree" in fk.io.read_text(os.path.join(fk.root, "proc/meminfo"))


def test_preset_is_boot_time_pages(fk):
    fk.preset(1, GIB_KIB, 2)
    assert fk.pool(1, GIB_KIB) == NodePool(2, 2, 0)
    assert free_kib(fk, 1) == START_FREE - 2 * GIB_KIB


def test_another_process_sees_the_same_kernel(fk):
    code = ("import os, sys; sys.path[:0] = sys.argv[3:]; from fakekernel import FakeKernel; "
            "k = FakeKernel.attach(sys.argv[1]); "
            "k.io.write_text(os.path.join(k.root, sys.argv[2]), '7'); "
            "print(k.pool(1, 2048).nr)")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code, fk.root, node_nr(1, 2048), here,
                          os.path.dirname(here)], cwd=here,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "7"
    assert fk.pool(1, 2048) == NodePool(7, 7, 0)
    with pytest.raises(FileNotFoundError):
        FakeKernel.attach(os.path.join(fk.root, "sys"))


# --- what the real 4-node kernel showed (tests/numavm/test_vm_fakekernel.py, Linux 6.1) ------
def test_a_reservation_that_goes_away_frees_unused_surplus_pages(fk):
    write(fk, node_nr(1, 2048), "10")
    fk.reserve(2048, 4)
    write(fk, node_nr(1, 2048), "0")
    assert fk.pool(1, 2048) == NodePool(4, 4, 4)  # reserved: kept, as surplus
    fk.unreserve(2048, 4)                         # return_unused_surplus_pages
    assert fk.pool(1, 2048) == NodePool(0, 0, 0) and fk.resv(2048) == 0
    assert free_kib(fk, 1) == START_FREE
    with pytest.raises(ValueError):
        fk.unreserve(2048, 1)


def test_global_writes_follow_the_kernels_node_cursors(tmp_path):
    fk = FakeKernel(tmp_path, nodes=4, mem_kib_per_node=4 * GIB_KIB)
    write(fk, node_nr(2, 2048), "1")   # the alloc cursor follows node writes: now node 2
    write(fk, node_nr(2, 2048), "0")   # ... and so does the free cursor
    write(fk, node_nr(1, 2048), "6")
    write(fk, f"{GLOBAL}/hugepages-2048kB/nr_hugepages", "10")   # +4 from node 1 on
    assert [fk.pool(n, 2048).nr for n in range(4)] == [1, 7, 1, 1]
    write(fk, f"{GLOBAL}/hugepages-2048kB/nr_hugepages", "7")    # -3 from node 2 on
    assert [fk.pool(n, 2048).nr for n in range(4)] == [0, 7, 0, 0]


def test_node_writes_count_other_nodes_surplus_before_linux_6_7(tmp_path):
    fk = FakeKernel(tmp_path, nodes=4, mem_kib_per_node=4 * GIB_KIB,
                    node_write_counts_surplus=True)
    write(fk, node_nr(1, 2048), "10")
    fk.use(1, 2048, 6)
    write(fk, node_nr(1, 2048), "2")
    assert fk.pool(1, 2048) == NodePool(6, 0, 4)
    write(fk, node_nr(3, 2048), "4")   # 4 + (6 - 0) against 2 persistent: 8 fresh pages
    assert fk.pool(3, 2048) == NodePool(8, 8, 0)
    write(fk, node_nr(3, 2048), "0")   # 0 + (14 - 8) = 6 against 10: 4 stay
    assert fk.pool(3, 2048) == NodePool(4, 4, 0)


def test_1g_pages_only_from_whole_gibs_the_node_does_not_use(tmp_path):
    fk = FakeKernel(tmp_path, nodes=2, mem_kib_per_node=4 * GIB_KIB, used_kib_per_node=0,
                    gigantic_whole_gib=True)
    write(fk, node_nr(1, GIB_KIB), "8")
    assert fk.pool(1, GIB_KIB).nr == 3       # the top GiB holds the node's own data
    write(fk, node_nr(0, GIB_KIB), "8")
    assert fk.pool(0, GIB_KIB).nr == 2       # and node 0's lowest the kernel


def test_demote_turns_a_free_1g_page_into_512_free_2m_pages_on_its_node(fk):
    write(fk, node_nr(1, GIB_KIB), "2")
    after_grow = free_kib(fk, 1)
    assert read(fk, f"{NODE}/node1/hugepages/hugepages-{GIB_KIB}kB/demote_size") == "2048kB\n"
    write(fk, f"{NODE}/node1/hugepages/hugepages-{GIB_KIB}kB/demote", "1")
    assert fk.pool(1, GIB_KIB) == NodePool(1, 1, 0)
    assert fk.pool(1, 2048) == NodePool(512, 512, 0)
    assert fk.pool(0, 2048) == NodePool(0, 0, 0) and free_kib(fk, 1) == after_grow
    fk.reserve(GIB_KIB, 1)                   # the last free 1G page is reserved: kept
    write(fk, f"{NODE}/node1/hugepages/hugepages-{GIB_KIB}kB/demote", "1")
    assert fk.pool(1, GIB_KIB) == NodePool(1, 1, 0)
    assert not os.path.exists(os.path.join(fk.root, NODE, "node1/hugepages/hugepages-2048kB",
                                           "demote"))  # the smallest size has none


def test_the_scenario_table_runs_on_the_fake(tmp_path):
    """tests/numavm runs it on both kernels; here every step at least runs, and ends where the
    real kernel ended: nothing left in any pool."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "numavm"))
    from kernelscenarios import SCENARIOS, FakeDriver, fake_like, run

    nodes_kib = [1951980, 4128344, 2064208, 4125744]
    for i, (name, steps) in enumerate(SCENARIOS.items()):
        fk = fake_like(str(tmp_path / str(i)), nodes_kib, [k - 64 * MIB for k in nodes_kib],
                       (6, 1))
        last = run(FakeDriver(fk), steps, 4)[-1]
        left = {k: v for k, v in last.items() if isinstance(v, tuple) and any(v)}
        assert left == {}, f"{name}: {left}"
