"""Demote per node on the real 4-node kernel (issue 13, part 6): with a kept 1G page on two
nodes and a margin that refuses growing node 3's 2M pool, a 2M start on node 3 splits node
3's kept page, and only that one: node 3's 1G pool drops by 1, its 2M pool grows by 512, no
page is added, every other pool (node 1's kept page included) stays as it was."""
from __future__ import annotations

import pytest
from vmkit import G1, M2, Vm, domain, node_meminfo, pool, pools

pytestmark = pytest.mark.numavm("runtime")
KEEP = {"release__keep_for": "1G=10m"}


def test_demote_splits_a_kept_page_only_on_the_node_that_needs_it(vm, tmp_path):
    work = tmp_path / "demote"
    work.mkdir()
    state = str(work)           # one state dir and config for both Vms below
    keep = Vm(state, **KEEP)
    for node in (1, 3):
        name = f"big{node}"
        path = keep.xml_file(name, domain(name, 1024, G1, nodeset=str(node)))
        assert keep.ok("reserve", path, "--json").json()["added"] == {f"{node}:{G1}": 1}
        assert keep.ok("release", name, "--json").json()["kept"] == {f"{node}:{G1}": 1}
    held = pools()
    status = {(p["node"], p["size_kib"]): p for p in keep.ok("status", "--json").json()["pools"]}
    assert status[(1, G1)]["kept"] == status[(3, G1)]["kept"] == 1
    # node 3's floor: all but 300 MiB of its free memory, so 512 x 2M (1 GiB) cannot grow
    floor_kib = node_meminfo(3)["MemFree"] - 300 * 1024
    tight = Vm(state, margin=f"{floor_kib}K", allocation__margin_percent="0", **KEEP)
    pages = pool(3, M2)[1] + 512                      # 512 more than node 3 has free
    path = tight.xml_file("small", domain("small", pages * 2, M2, nodeset="3"))
    result = tight.ok("reserve", path, "--json").json()
    assert result["demoted"] == {f"3:{G1}": 1}, result
    assert result["added"] == {} and result["claimed"] == {f"3:{M2}": pages}, result
    after = pools()
    assert after[(3, G1)][0] == held[(3, G1)][0] - 1
    assert after[(3, M2)][0] == held[(3, M2)][0] + 512
    assert {k: v for k, v in after.items() if k not in ((3, G1), (3, M2))} == \
        {k: v for k, v in held.items() if k not in ((3, G1), (3, M2))}
    status = {(p["node"], p["size_kib"]): p for p in tight.ok("status", "--json").json()["pools"]}
    assert status[(1, G1)]["kept"] == 1 and status[(3, G1)]["kept"] == 0
    tight.ok("release", "small")                      # 2M: no window, back at once
    assert pool(3, M2)[0] == held[(3, M2)][0]
