"""The host gateway (hugexml/host/sysfs.py) on the fake kernel: every read, every write read back,
every OSError converted, every path under the injectable root, hostile sysfs contents."""
from __future__ import annotations

import builtins
import errno
import os

import pytest
from fakekernel import GIB_KIB, FakeKernel

from hugexml.core.errors import HostError, InvalidInput
from hugexml.core.root import HostRoot
from hugexml.host.kernel import (
    MAX_COUNTER,
    GlobalPool,
    NodePool,
    page_order,
    parse_buddyinfo,
    parse_meminfo,
    predict_allocatable,
)
from hugexml.host.sysfs import HostGateway
from hugexml.system import mounts as mounts_mod

MIB = 1024
NODE = "sys/devices/system/node"
GLOBAL = "sys/kernel/mm/hugepages"


def pool_rel(node: int, size_kib: int, name: str) -> str:
    return f"{NODE}/node{node}/hugepages/hugepages-{size_kib}kB/{name}"


@pytest.fixture
def fk(tmp_path):
    return FakeKernel(tmp_path / "root", nodes=2)


@pytest.fixture
def gw(fk):
    return fk.gateway()


def overwrite(fk: FakeKernel, rel: str, text: str) -> None:
    """Put raw (possibly hostile) contents into a fake sysfs/procfs file."""
    with open(os.path.join(fk.root, rel), "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(text)


# --- reads -----------------------------------------------------------------------------
def test_topology(gw):
    assert gw.numa
    assert gw.nodes() == (0, 1)
    assert gw.page_sizes_kib() == (2048, GIB_KIB)


def test_topology_8_nodes(tmp_path):
    gw = FakeKernel(tmp_path, nodes=8, sizes_kib=(2048,)).gateway()
    assert gw.nodes() == tuple(range(8))
    assert gw.page_sizes_kib() == (2048,)


def test_node_pool_reads_nr_free_surplus(fk, gw):
    fk.preset(0, 2048, 10)
    fk.use(0, 2048, 3)
    fk.preset(1, GIB_KIB, 2)
    assert gw.node_pool(0, 2048) == NodePool(nr=10, free=7, surplus=0)
    assert gw.node_pool(0, 2048).used == 3
    assert gw.node_pool(1, 2048) == NodePool(0, 0, 0)
    assert gw.node_pool(1, GIB_KIB) == NodePool(2, 2, 0)
    assert gw.node_pool(0, GIB_KIB) == NodePool(0, 0, 0)


def test_global_pool_sums_nodes_and_reports_resv(fk, gw):
    fk.preset(0, 2048, 10)
    fk.preset(1, 2048, 4)
    fk.reserve(2048, 5)
    fk.use(1, 2048, 1)
    pool = gw.global_pool(2048)
    assert pool == GlobalPool(nr=14, free=13, resv=5, surplus=0, overcommit=0)
    assert pool.unreserved_free == 8
    assert gw.global_pool(GIB_KIB) == GlobalPool(0, 0, 0, 0, 0)


def test_node_meminfo_and_meminfo(fk, gw):
    fk.preset(1, GIB_KIB, 3)
    info1 = gw.node_meminfo(1)
    assert info1["MemTotal"] == 16 * GIB_KIB
    assert info1["MemFree"] == fk.mem_free_kib(1) == 16 * GIB_KIB - 512 * MIB - 3 * GIB_KIB
    assert gw.node_meminfo(0)["MemFree"] == 16 * GIB_KIB - 512 * MIB
    fk.preset(0, 2048, 6)
    info = gw.meminfo()
    assert info["HugePages_Total"] == 6  # the default size, counted, not kB
    assert info["Hugepagesize"] == 2048
    assert info["MemTotal"] == 32 * GIB_KIB
    assert info["MemFree"] == fk.mem_free_kib(0) + fk.mem_free_kib(1)


def test_buddyinfo_matches_the_fake_memory(fk, gw):
    fk.set_cap(1, 2048, 7)
    fk.consume_memory(0, 3)  # an odd-sized leftover ends in order 0
    info = gw.buddyinfo()
    assert sorted(info) == [0, 1]
    for node in (0, 1):
        orders = info[node]["Normal"]
        assert len(orders) == 11
        free_kib = sum(count * (4 << order) for order, count in enumerate(orders))
        assert fk.mem_free_kib(node) - 4 < free_kib <= fk.mem_free_kib(node)
    assert info[1]["Normal"][9] == 7 and info[1]["Normal"][10] == 0


def test_mounts_under_the_fake_root(fk):
    fk.set_mounts([("/dev/hugepages", 2048), ("/dev/hugepages1G", GIB_KIB)])
    found = mounts_mod.list_mounts(fk.host_root)
    assert [(m.path, m.page_size_kib) for m in found] == [("/dev/hugepages", 2048),
                                                         ("/dev/hugepages1G", GIB_KIB)]
    fk.set_mounts([])
    assert mounts_mod.list_mounts(fk.host_root) == []


@pytest.mark.parametrize("mode", ["always", "madvise", "never"])
def test_thp_mode(tmp_path, mode):
    assert FakeKernel(tmp_path, nodes=1, thp=mode).gateway().thp_mode() == mode


def test_thp_missing_is_none_garbage_is_none(fk, gw):
    overwrite(fk, "sys/kernel/mm/transparent_hugepage/enabled", "what\n")
    assert gw.thp_mode() is None
    os.unlink(os.path.join(fk.root, "sys/kernel/mm/transparent_hugepage/enabled"))
    assert gw.thp_mode() is None


def test_missing_pool_size_names_path_and_size(gw):
    with pytest.raises(HostError) as info:
        gw.node_pool(0, 64)
    assert "hugepages-64kB/nr_hugepages" in str(info.value)
    assert "no 64 KiB pages" in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(HostError, match="no NUMA node 5"):
        gw.node_meminfo(5)


@pytest.mark.parametrize("node", [-1, 1024, True, "0", 1.0])
def test_bad_node_is_invalid_input(gw, node):
    with pytest.raises(InvalidInput, match="NUMA node"):
        gw.node_pool(node, 2048)


@pytest.mark.parametrize("size", [0, -2048, 32 * GIB_KIB, True, "2048"])
def test_bad_size_is_invalid_input(gw, size):
    with pytest.raises(InvalidInput, match="hugepage size"):
        gw.node_pool(0, size)


# --- set_node_nr -----------------------------------------------------------------------
def test_set_node_nr_grows_and_shrinks_one_node(fk, gw):
    fk.preset(1, 2048, 5)
    assert gw.set_node_nr(0, 2048, 8) == 8
    assert gw.node_pool(0, 2048) == NodePool(8, 8, 0)
    assert gw.node_pool(1, 2048) == NodePool(5, 5, 0)  # the other node is untouched
    assert fk.mem_free_kib(0) == 16 * GIB_KIB - 512 * MIB - 8 * 2048
    assert gw.set_node_nr(0, 2048, 3) == 3
    assert gw.node_pool(0, 2048) == NodePool(3, 3, 0)
    assert fk.writes() == [(pool_rel(0, 2048, "nr_hugepages"), "8"),
                           (pool_rel(0, 2048, "nr_hugepages"), "3")]


def test_set_node_nr_returns_a_short_grant(fk, gw):
    fk.preset(0, 2048, 2)
    fk.short_grant(0, 2048, 3)
    assert gw.set_node_nr(0, 2048, 30) == 5
    assert gw.node_pool(0, 2048).nr == 5
    fk.set_cap(1, GIB_KIB, 9)  # "asked 30 x 1G, got 9"
    assert gw.set_node_nr(1, GIB_KIB, 16) == 9


def test_set_node_nr_grant_bounded_by_memory(fk, gw):
    # 16 GiB node, 512 MiB in use: 15 whole 1G pages fit, the 16th does not.
    assert gw.max_pages(0, GIB_KIB) == 16
    assert gw.set_node_nr(0, GIB_KIB, 16) == 15
    assert fk.mem_free_kib(0) == 512 * MIB


def test_set_node_nr_shrink_keeps_pages_in_use(fk, gw):
    fk.preset(0, 2048, 10)
    fk.use(0, 2048, 4)
    assert gw.set_node_nr(0, 2048, 0) == 4  # nr includes the surplus, as in the kernel
    assert gw.node_pool(0, 2048) == NodePool(nr=4, free=0, surplus=4)


@pytest.mark.parametrize("count", [-1, True, 2.0, "8", None])
def test_set_node_nr_rejects_non_counts(fk, gw, count):
    with pytest.raises(InvalidInput, match="is not a count"):
        gw.set_node_nr(0, 2048, count)
    assert fk.writes() == []


def test_set_node_nr_rejects_more_than_the_node_memory(fk, gw):
    with pytest.raises(InvalidInput, match=r"exceeds the node's memory \(8192 pages\)"):
        gw.set_node_nr(1, 2048, 8193)
    assert fk.writes() == []


# --- every OSError -> HostError from exc, naming the path ------------------------------
READS = [
    ("nodes", lambda g: g.nodes(), None),
    ("node_pool nr", lambda g: g.node_pool(1, 2048), pool_rel(1, 2048, "nr_hugepages")),
    ("node_pool free", lambda g: g.node_pool(1, 2048), pool_rel(1, 2048, "free_hugepages")),
    ("node_pool surplus", lambda g: g.node_pool(0, GIB_KIB),
     pool_rel(0, GIB_KIB, "surplus_hugepages")),
    ("global resv", lambda g: g.global_pool(2048), f"{GLOBAL}/hugepages-2048kB/resv_hugepages"),
    ("global overcommit", lambda g: g.global_pool(GIB_KIB),
     f"{GLOBAL}/hugepages-{GIB_KIB}kB/nr_overcommit_hugepages"),
    ("node_meminfo", lambda g: g.node_meminfo(1), f"{NODE}/node1/meminfo"),
    ("meminfo", lambda g: g.meminfo(), "proc/meminfo"),
    ("buddyinfo", lambda g: g.buddyinfo(), "proc/buddyinfo"),
    ("thp", lambda g: g.thp_mode(), "sys/kernel/mm/transparent_hugepage/enabled"),
    ("set_node_nr readback", lambda g: g.set_node_nr(0, 2048, 4),
     pool_rel(0, 2048, "nr_hugepages")),
]


@pytest.mark.parametrize("err", [errno.EIO, errno.EACCES, errno.ENOENT])
@pytest.mark.parametrize("name,call,rel", [r for r in READS if r[2]], ids=[r[0] for r in READS
                                                                          if r[2]])
def test_read_oserror_becomes_host_error(fk, gw, name, call, rel, err):
    fk.fail_next_read(rel, err)
    if name == "thp" and err == errno.ENOENT:
        assert call(gw) is None  # no THP in this kernel: not an error
        return
    with pytest.raises(HostError) as info:
        call(gw)
    exc = info.value
    assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == err
    assert os.path.join(fk.root, rel) in str(exc)
    assert os.strerror(err) in str(exc)
    assert "\n" not in str(exc)


def test_thp_enoent_from_io_means_no_thp(fk, gw):
    fk.fail_next_read("sys/kernel/mm/transparent_hugepage/enabled", errno.ENOENT)
    assert gw.thp_mode() is None


def test_listdir_oserror_becomes_host_error(fk, gw, monkeypatch):
    real = os.listdir

    def listdir(path):
        if path == os.path.join(fk.root, NODE):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(HostError, match="Permission denied") as info:
        gw.nodes()
    assert os.path.join(fk.root, NODE) in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


WRITES = [
    ("set_node_nr", lambda g: g.set_node_nr(1, GIB_KIB, 2), pool_rel(1, GIB_KIB, "nr_hugepages")),
    ("compact", lambda g: g.compact(1), f"{NODE}/node1/compact"),
    ("drop_caches", lambda g: g.drop_caches(), "proc/sys/vm/drop_caches"),
]


@pytest.mark.parametrize("err", [errno.EIO, errno.EBUSY, errno.EACCES])
@pytest.mark.parametrize("name,call,rel", WRITES, ids=[w[0] for w in WRITES])
def test_write_oserror_becomes_host_error(fk, gw, name, call, rel, err):
    before = fk.counters()
    fk.fail_next_write(rel, err)
    with pytest.raises(HostError) as info:
        call(gw)
    exc = info.value
    assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == err
    assert os.path.join(fk.root, rel) in str(exc) and os.strerror(err) in str(exc)
    assert "\n" not in str(exc)
    assert fk.counters() == before and fk.writes() == []
    call(gw)  # one-shot fault: the next write goes through
    assert [w[0] for w in fk.writes()] == [rel]


def test_write_to_a_missing_pool_is_host_error(tmp_path):
    fk = FakeKernel(tmp_path, nodes=1, sizes_kib=(2048,))
    gw = fk.gateway()
    with pytest.raises(HostError, match="no node 0 or no 1048576 KiB pages"):
        gw.set_node_nr(0, GIB_KIB, 1)


def test_compact_without_trigger_does_nothing(tmp_path):
    fk = FakeKernel(tmp_path, nodes=2, compact_file=False)
    assert fk.gateway().compact(1) is False
    assert fk.compactions(1) == 0 and fk.writes() == []


def test_compact_and_drop_caches_write_the_triggers(tmp_path):
    fk = FakeKernel(tmp_path, nodes=2, cache_kib_per_node=GIB_KIB)
    gw = fk.gateway()
    assert gw.compact(1) is True and fk.compactions(1) == 1 and fk.compactions(0) == 0
    free = fk.mem_free_kib(0)
    gw.drop_caches()
    assert fk.mem_free_kib(0) == free + GIB_KIB
    assert fk.conf()["drop_caches"] == [1]
    with pytest.raises(InvalidInput, match="drop_caches level 4"):
        gw.drop_caches(4)


# --- the injectable root ---------------------------------------------------------------
def test_nothing_outside_the_root_is_touched(fk, gw, monkeypatch):
    seen: list[str] = []
    real_open, real_os_open, real_listdir, real_stat = builtins.open, os.open, os.listdir, os.stat

    def rec(path):
        if isinstance(path, (str, bytes, os.PathLike)):
            seen.append(os.fsdecode(path))

    def fake_open(file, *a, **k):
        rec(file)
        return real_open(file, *a, **k)

    def fake_os_open(path, *a, **k):
        rec(path)
        return real_os_open(path, *a, **k)

    def fake_listdir(path="."):
        rec(path)
        return real_listdir(path)

    def fake_stat(path, *a, **k):
        rec(path)
        return real_stat(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "listdir", fake_listdir)
    monkeypatch.setattr(os, "stat", fake_stat)
    gw.nodes(), gw.page_sizes_kib(), gw.node_pool(1, 2048), gw.global_pool(GIB_KIB)
    gw.meminfo(), gw.node_meminfo(0), gw.buddyinfo(), gw.thp_mode()
    gw.allocatable_now(1, 2048), gw.allocatable_if_compacted(0, GIB_KIB)
    gw.set_node_nr(1, 2048, 3), gw.compact(0), gw.drop_caches()
    mounts_mod.list_mounts(fk.host_root)
    assert seen, "the spies saw nothing: the test would pass vacuously"
    outside = [p for p in seen if not (os.path.isabs(p) and
                                       os.path.commonpath([p, fk.root]) == fk.root)]
    assert outside == []


def shadow_root(base) -> HostRoot:
    """A plain tree whose values no real host has: 3 nodes, a 64 KiB size, odd counts."""
    files = {"proc/meminfo": "MemTotal: 999 kB\nHugePages_Total: 77\nHugepagesize: 64 kB\n",
             "proc/buddyinfo": "Node 2, zone Movable 1 2 3 4 5\n",
             "sys/kernel/mm/transparent_hugepage/enabled": "always madvise [never]\n"}
    for node in (0, 1, 2):
        files[f"{NODE}/node{node}/meminfo"] = (f"Node {node} MemTotal: {1000000 + node} kB\n"
                                               f"Node {node} MemFree: {500 + node} kB\n")
        for size in (64, 2048):
            for i, name in enumerate(("nr_hugepages", "free_hugepages", "surplus_hugepages")):
                files[pool_rel(node, size, name)] = f"{100 * node + size % 1000 + i}\n"
    for size in (64, 2048):
        for i, name in enumerate(("nr_hugepages", "free_hugepages", "resv_hugepages",
                                  "surplus_hugepages", "nr_overcommit_hugepages")):
            files[f"{GLOBAL}/hugepages-{size}kB/{name}"] = f"{size + i}\n"
    for rel, text in files.items():
        path = os.path.join(str(base), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
    return HostRoot(str(base))


def test_plain_sysio_reads_the_shadow_root_not_the_host(tmp_path):
    gw = HostGateway(shadow_root(tmp_path))  # the real SysIO, not the fake's
    assert gw.nodes() == (0, 1, 2)
    assert gw.page_sizes_kib() == (64, 2048)
    assert gw.node_pool(2, 64) == NodePool(264, 265, 266)
    assert gw.global_pool(2048) == GlobalPool(2048, 2049, 2050, 2051, 2052)
    assert gw.node_meminfo(1) == {"MemTotal": 1000001, "MemFree": 501}
    assert gw.meminfo()["HugePages_Total"] == 77
    assert gw.buddyinfo() == {2: {"Movable": [1, 2, 3, 4, 5]}}
    assert gw.thp_mode() == "never"
    assert gw.base_page_kib() == 4
    # The plain SysIO writes in place (one write(2), no O_CREAT) and reads back. (No
    # surplus pages on other nodes, or the change would be a bound write: none on this root.)
    with open(gw.root.path(GLOBAL, "hugepages-64kB/surplus_hugepages"), "w") as fh:
        fh.write(f"{gw.node_pool(0, 64).surplus}\n")
    assert gw.set_node_nr(0, 64, 15) == 15
    assert gw.compact(0) is False  # no compact attribute in this tree: nothing written


def test_plain_sysio_never_creates_a_missing_attribute(tmp_path):
    root = shadow_root(tmp_path)
    path = root.path(pool_rel(1, 2048, "nr_hugepages"))
    os.unlink(path)
    with pytest.raises(HostError, match="No such file") as info:
        HostGateway(root).set_node_nr(1, 2048, 1)
    assert path in str(info.value) and not os.path.exists(path)


def test_kernel_without_numa_sysfs_has_one_global_node(tmp_path):
    root = shadow_root(tmp_path)
    os.rename(root.path(NODE), root.path("sys/devices/system/gone"))
    gw = HostGateway(root)
    assert not gw.numa and gw.nodes() == (0,)
    assert gw.node_pool(0, 2048) == NodePool(2048, 2049, 2051)  # the global files
    assert gw.node_meminfo(0)["HugePages_Total"] == 77
    for call in (lambda: gw.node_pool(1, 2048), lambda: gw.node_meminfo(1)):
        with pytest.raises(HostError, match="no NUMA node 1"):
            call()


# --- hostile sysfs contents ------------------------------------------------------------
@pytest.mark.parametrize("text", ["abc\n", "", "\n", "-1\n", "+5\n", "1_000\n", "1e3\n", "5 6\n",
                                  "0x10\n", "\x00\n", "\u0663\n", "9" * 30 + "\n",
                                  str(MAX_COUNTER + 1) + "\n", "7" * 5000])
def test_hostile_counter_is_one_line_host_error(fk, gw, text):
    rel = pool_rel(1, 2048, "free_hugepages")
    overwrite(fk, rel, text)
    with pytest.raises(HostError) as info:
        gw.node_pool(1, 2048)
    msg = str(info.value)
    assert msg.startswith(os.path.join(fk.root, rel) + ": expected a count")
    assert "\n" not in msg and len(msg) < len(fk.root) + 200


def test_largest_kernel_counter_is_accepted(fk, gw):
    overwrite(fk, f"{GLOBAL}/hugepages-2048kB/nr_overcommit_hugepages", f"{MAX_COUNTER}\n")
    assert gw.global_pool(2048).overcommit == MAX_COUNTER


@pytest.mark.parametrize("text", [
    "Node 1 MemFree: " + "9" * 30 + " kB\n",
    "Node 1 MemTotal: 18446744073709551616 kB\n",
])
def test_hostile_node_meminfo(fk, gw, text):
    rel = f"{NODE}/node1/meminfo"
    overwrite(fk, rel, text)
    with pytest.raises(HostError, match="out of range") as info:
        gw.node_meminfo(1)
    assert os.path.join(fk.root, rel) in str(info.value) and "\n" not in str(info.value)


def test_meminfo_skips_lines_it_cannot_read(fk, gw):
    overwrite(fk, f"{NODE}/node1/meminfo", "garbage\nNode 1 MemFree: 12 kB\n: 5\n")
    assert gw.node_meminfo(1) == {"MemFree": 12}


@pytest.mark.parametrize("text,why", [
    ("Node 0, zone Normal 1 2 x\n", "unexpected line"),
    ("hello\n", "unexpected line"),
    ("Node 0, zone Normal " + " ".join(["1"] * 65) + "\n", "implausible"),
    ("Node 4096, zone Normal 1 2\n", "implausible"),
    ("Node 0, zone Normal 1 " + "9" * 25 + "\n", "expected a count"),
    ("Node 0, zone Normal 1 2 " + "\x00" * 10 + "\n", "unexpected line"),
])
def test_hostile_buddyinfo(fk, gw, text, why):
    overwrite(fk, "proc/buddyinfo", text)
    with pytest.raises(HostError, match=why) as info:
        gw.buddyinfo()
    msg = str(info.value)
    assert msg.startswith(os.path.join(fk.root, "proc/buddyinfo") + ": ")
    assert "\n" not in msg and len(msg) < len(fk.root) + 200
    assert isinstance(info.value.__cause__, ValueError)


def test_set_node_nr_refuses_when_memtotal_missing(fk, gw):
    overwrite(fk, f"{NODE}/node0/meminfo", "Node 0 MemFree: 100 kB\n")
    with pytest.raises(HostError, match="no MemTotal line"):
        gw.set_node_nr(0, 2048, 1)
    assert fk.writes() == []


# --- prediction from buddyinfo ---------------------------------------------------------
def row(**counts: int) -> list[int]:
    """An 11-order buddyinfo row (x86: orders 0-10) with e.g. o9=3."""
    out = [0] * 11
    for key, value in counts.items():
        out[int(key[1:])] = value
    return out


THIS_HOST_NORMAL = [734, 424, 283, 554, 589, 379, 260, 100, 29, 1, 1162]
PREDICT = [
    # orders, page KiB, base KiB, expected pages
    ("empty", row(), 2048, 4, 0),
    ("one 2M block", row(o9=1), 2048, 4, 1),
    ("a 4M block splits in two", row(o10=1), 2048, 4, 2),
    ("small blocks never merge", row(o0=10 ** 6, o8=1000), 2048, 4, 0),
    ("mixed", row(o8=5, o9=3, o10=4), 2048, 4, 3 + 8),
    ("real row", THIS_HOST_NORMAL, 2048, 4, 1 + 2 * 1162),
    ("1G above max order", row(o10=10 ** 6), GIB_KIB, 4, 0),
    ("1G from a 19-order row", [0] * 18 + [3], GIB_KIB, 4, 3),
    ("1G from order 19", [0] * 19 + [2], GIB_KIB, 4, 4),
    ("4M page is order 10", row(o9=7, o10=2), 4096, 4, 2),
    ("64K base pages", [0] * 5 + [6, 1], 2048, 64, 8),
    ("negative counts ignored", row(o9=-5, o10=1), 2048, 4, 2),
    ("short row", [1, 2, 3], 2048, 4, 0),
]


@pytest.mark.parametrize("orders,page_kib,base_kib,expected", [p[1:] for p in PREDICT],
                         ids=[p[0] for p in PREDICT])
def test_predict_allocatable(orders, page_kib, base_kib, expected):
    assert predict_allocatable(orders, page_kib, base_kib) == expected


@pytest.mark.parametrize("page_kib,base_kib", [(3000, 4), (2048, 3), (0, 4), (6144, 4),
                                               (2048, 0)])
def test_page_order_rejects_non_powers(page_kib, base_kib):
    with pytest.raises(ValueError):
        page_order(page_kib, base_kib)


def test_page_order_table():
    assert [page_order(k) for k in (4, 64, 2048, 4096, GIB_KIB)] == [0, 4, 9, 10, 18]


def test_parse_buddyinfo_real_format():
    text = ("Node 0, zone      DMA      0      0      0      0      0      0      0      0"
            "      1      1      3 \nNode 0, zone   Normal    734    424 \n"
            "Node 1, zone   Normal 1 2 3\n\n")
    assert parse_buddyinfo(text) == {0: {"DMA": [0] * 8 + [1, 1, 3], "Normal": [734, 424]},
                                     1: {"Normal": [1, 2, 3]}}


def test_prediction_matches_what_the_fake_grants(fk, gw):
    fk.set_cap(1, 2048, 7)
    assert gw.allocatable_now(1, 2048) == 7
    assert gw.allocatable_now(1, GIB_KIB) == 0  # above the largest buddy order
    assert gw.set_node_nr(1, 2048, 100) == 7
    assert gw.allocatable_now(1, 2048) == 0
    free_2m_blocks = (16 * GIB_KIB - 512 * MIB) // 2048
    assert gw.allocatable_now(0, 2048) == free_2m_blocks
    assert gw.allocatable_if_compacted(0, GIB_KIB) == 15
    assert gw.allocatable_now(7, 2048) == 0  # a node buddyinfo does not list


@pytest.mark.parametrize("grow", [True, False])
def test_a_node_write_lands_on_its_count_on_kernels_before_6_7(tmp_path, grow):
    """Linux < 6.7 counts other nodes' surplus pages into a node write (the fake's
    node_write_counts_surplus, checked against Debian's 6.1 in tests/numavm): with surplus
    pages on other nodes the gateway writes nr_hugepages_mempolicy bound to the node, so
    the node gets exactly what was asked (more in tests/test_host_mempolicy.py)."""
    from fakekernel import FakeKernel

    fk = FakeKernel(tmp_path / "root", nodes=4, node_write_counts_surplus=True)
    fk.preset(1, 2048, 10)
    fk.use(1, 2048, 6)
    gw = fk.gateway()
    gw.set_node_nr(1, 2048, 2)             # node 1: 6 pages in use, 4 of them surplus
    assert tuple(fk.pool(1, 2048)) == (6, 0, 4)
    if not grow:
        fk.preset(3, 2048, 8)
    assert gw.set_node_nr(3, 2048, 4) == 4
    assert fk.pool(3, 2048).nr == 4 and tuple(fk.pool(1, 2048)) == (6, 0, 4)


@pytest.mark.parametrize("text, expected", [
    ("MemTotal:       16314108 kB\nMemFree:         1234 kB\n",
     {"MemTotal": 16314108, "MemFree": 1234}),
    ("Node 0 MemFree:  1024 kB\nNode 0 HugePages_Total:     4\n",
     {"MemFree": 1024, "HugePages_Total": 4}),
    ("Active(anon):   12 kB\nHugePages_Surp:        0\n", {"Active(anon)": 12,
                                                           "HugePages_Surp": 0}),
    # unreadable lines are skipped, not guessed at
    ("MemFree 12 kB\nMemFree:12 kB\nMemFree: -1 kB\nMemFree: 12 MB\nMem-Free: 1\n: 5\n"
     "MemFree: ٣ kB\nNode x MemFree: 3 kB\n\n", {}),
])
def test_parse_meminfo(text: str, expected: dict) -> None:
    assert parse_meminfo(text) == expected


def test_parse_meminfo_refuses_a_value_no_counter_holds() -> None:
    with pytest.raises(ValueError, match=r"MemFree: value '1{20}"):
        parse_meminfo("MemFree: " + "1" * 25 + " kB\n")
