"""Demote on this machine's real kernel (Linux >= 5.16): a kept 1G page serves a 2M start
that the normal-memory margin would refuse, with no compaction; an admin's 1G page is never
split. Pools are put back afterwards (the ``real_host`` fixture)."""
from __future__ import annotations

import pytest
from allocfix import G1, M2, guest, make_config, plan, skip_or_fail

from hugexml.alloc.allocator import Allocator
from hugexml.core.errors import MarginViolation
from hugexml.core.root import HostRoot
from hugexml.host.sysfs import HostGateway

pytestmark = pytest.mark.realkernel


def gateway() -> HostGateway:
    gw = HostGateway(HostRoot("/"))
    if G1 not in gw.page_sizes_kib() or gw.demote_size(0, G1) != M2:
        skip_or_fail("no 1G pages or no demote file on node 0 (Linux >= 5.16)")
    return gw


def margin_leaving_room(gw: HostGateway, room_kib: int) -> int:
    """A margin floor that leaves ``room_kib`` of node 0's free memory for pool growth."""
    return int(gw.node_meminfo(0)["MemFree"]) - room_kib


def test_a_kept_1g_page_is_split_for_a_2m_start_the_margin_would_refuse(real_host, tmp_path):
    gw = gateway()
    state = str(tmp_path / "state")
    keep = make_config(keep_for=((G1, 600.0),), margin_percent=0, margin_min_kib=0)
    first = Allocator(gw, state, keep)
    first.reserve(plan("big", (1, (0,), "strict", G1)), guest("big"))
    if first.release(guest("big"))["kept"] != {f"0:{G1}": 1}:
        skip_or_fail("the kernel granted no 1G page")
    g1, m2 = gw.node_pool(0, G1).nr, gw.node_pool(0, M2).nr
    messages: list[str] = []
    tight = make_config(keep_for=((G1, 600.0),), margin_percent=0,
                        margin_min_kib=margin_leaving_room(gw, 300 * 1024))
    alloc = Allocator(gw, state, tight, progress=messages.append)
    result = alloc.reserve(plan("small", (m2 + 512, (0,), "strict", M2)), guest("small"))
    assert result["demoted"] == {f"0:{G1}": 1}, result
    assert gw.node_pool(0, G1).nr == g1 - 1 and gw.node_pool(0, M2).nr == m2 + 512
    assert result["added"] == {} and not any("compaction" in m for m in messages), messages
    alloc.release(guest("small"))
    assert gw.node_pool(0, M2).nr == m2


def test_an_admins_1g_page_is_never_split(real_host, tmp_path):
    gw = gateway()
    if gw.set_node_nr(0, G1, gw.node_pool(0, G1).nr + 1) < 1:
        skip_or_fail("the kernel granted no 1G page")
    g1 = gw.node_pool(0, G1).nr                     # the admin's page: hugexml never saw it
    tight = make_config(margin_percent=0, margin_min_kib=margin_leaving_room(gw, 300 * 1024))
    alloc = Allocator(gw, str(tmp_path / "state"), tight)
    with pytest.raises(MarginViolation):
        alloc.reserve(plan("small", (512, (0,), "strict", M2)), guest("small"))
    assert gw.node_pool(0, G1).nr == g1
