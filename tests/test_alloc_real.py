"""The allocator on the real kernel (root): reserve, settle, release 2M and 1G pages on node 0
through Allocator(HostGateway(HostRoot('/'))), checked against the kernel's own counters.

The ``real_host`` fixture restores every pool afterwards. A pool the admin had before (made
here by a raw sysfs write) must never be shrunk by hugexml.
"""
from __future__ import annotations

import pytest
from allocfix import G1, M2, guest, make_config, plan, skip_or_fail

from hugexml.alloc.allocator import Allocator
from hugexml.core.errors import PoolShort
from hugexml.core.root import HostRoot

pytestmark = pytest.mark.realkernel


def sysfs(size_kib: int, name: str, node: int = 0) -> str:
    return f"/sys/devices/system/node/node{node}/hugepages/hugepages-{size_kib}kB/{name}"


def read(size_kib: int, name: str) -> int:
    with open(sysfs(size_kib, name)) as fh:
        return int(fh.read())


def write_nr(size_kib: int, count: int) -> int:
    with open(sysfs(size_kib, "nr_hugepages"), "w") as fh:
        fh.write(str(count))
    return read(size_kib, "nr_hugepages")


def allocator(tmp_path, **config) -> Allocator:
    from hugexml.host.sysfs import HostGateway

    settings = dict(margin_min_kib=256 * 1024, margin_percent=0, retries=2, timeout_s=20)
    return Allocator(HostGateway(HostRoot("/")), str(tmp_path / "state"),
                     make_config(**dict(settings, **config)))


def test_2m_pages_reserve_settle_release(real_host, tmp_path):
    alloc = allocator(tmp_path)
    admin = write_nr(M2, read(M2, "nr_hugepages") + 8)  # the admin's pool: 8 free pages
    free = read(M2, "free_hugepages")
    result = alloc.reserve(plan("real2m", (40, (0,), "strict")), guest("real2m"))
    added = result["added"].get("0:2048", 0)
    assert added == 40 - free  # exactly the shortfall, the admin's free pages used first
    assert read(M2, "nr_hugepages") == admin + added
    assert read(M2, "free_hugepages") == free + added
    assert alloc.settle(guest("real2m"))["state"] == "active"
    released = alloc.release(guest("real2m"))
    assert released["released"] == result["added"]
    assert read(M2, "nr_hugepages") == admin  # the admin's pool is never shrunk
    assert alloc.snapshot().guests == {}


def test_1g_page_reserve_release(real_host, tmp_path):
    # 1 GiB contiguous: compact and drop the page cache between attempts (a test host)
    alloc = allocator(tmp_path, retries=4, drop_caches=True)
    before = read(G1, "nr_hugepages")
    free = read(G1, "free_hugepages")
    try:
        result = alloc.reserve(plan("real1g", (free + 1, (0,), "strict", G1)), guest("real1g"))
    except PoolShort as exc:  # the kernel could not find 1 GiB contiguous: all or nothing
        assert read(G1, "nr_hugepages") == before
        assert "needed 1 more" in str(exc)
        skip_or_fail(f"no contiguous 1 GiB on node 0 right now: {exc}")
    assert result["added"] == {"0:1048576": 1}
    assert read(G1, "nr_hugepages") == before + 1
    alloc.release(guest("real1g"))
    assert read(G1, "nr_hugepages") == before


def test_admin_allocate_and_shrink_on_node0(real_host, tmp_path):
    alloc = allocator(tmp_path)
    before = read(M2, "nr_hugepages")
    assert alloc.allocate_admin(M2, 16, 0)["add"] == {"0:2048": 16}
    assert read(M2, "nr_hugepages") == before + 16
    alloc.reserve(plan("realvm", (read(M2, "free_hugepages"), (0,), "strict")), guest("realvm"))
    # every free page is promised to the pending guest: shrink finds nothing to take
    assert alloc.shrink_admin(M2, 16, 0)["removed"] == {}
    alloc.release(guest("realvm"))
    assert alloc.shrink_admin(M2, 16, 0)["removed"] == {"0:2048": 16}
    assert read(M2, "nr_hugepages") == before
