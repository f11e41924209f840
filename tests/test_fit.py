"""The allocator's pure arithmetic (hugexml.planning.fit): availability, placement, margins,
release."""
from __future__ import annotations

import pytest

from hugexml.core.errors import (
    InsufficientPages,
    MarginViolation,
    NoSuchHostNode,
    UnsupportedPageSize,
)
from hugexml.core.model import DemandItem
from hugexml.planning.fit import (
    HostView,
    Margin,
    PoolState,
    available,
    even_split,
    place,
    releasable,
    resv_share,
    spread,
    take_in_order,
)

M2 = 2048
G1 = 1048576
GIB = 1048576
NO_MARGIN = Margin(0, 0)


def view(free, nodes=None, mem_free_gib=None, resv=0, claims=None, nr=None, total_gib=64):
    """free: {node: free 2M pages}; nr defaults to free (nothing in use)."""
    nodes = tuple(sorted(nodes if nodes is not None else free))
    nr = nr or {}
    pools = {(n, M2): PoolState(persistent=nr.get(n, free.get(n, 0)), free=free.get(n, 0))
             for n in nodes}
    pools.update({(n, G1): PoolState(0, 0) for n in nodes})
    mem = mem_free_gib or {}
    return HostView(nodes=nodes, pools=pools, resv={M2: resv, G1: 0},
                    mem_free_kib={n: mem.get(n, 32) * GIB for n in nodes},
                    mem_total_kib={n: total_gib * GIB for n in nodes},
                    claims={(n, M2): c for n, c in (claims or {}).items()})


def item(pages, nodes=None, policy=None, size=M2):
    return DemandItem(page_size_kib=size, host_nodes=nodes, pages=pages, policy=policy)


def nodes_of(pools):
    return {node: pages for (node, _), pages in sorted(pools.items()) if pages}


@pytest.mark.parametrize("case, v, items, claims, grow", [
    ("fits in free pages", view({0: 10}), [item(6)], {0: 6}, {}),
    ("exact shortfall only", view({0: 4}), [item(10)], {0: 10}, {0: 6}),
    ("resv and claims are not available", view({0: 10}, resv=3, claims={0: 5}),
     [item(4)], {0: 4}, {0: 2}),
    ("strict: only listed node", view({0: 50, 1: 0}), [item(8, (1,), "strict")],
     {1: 8}, {1: 8}),
    ("strict set: free pages anywhere in the set first", view({0: 3, 1: 5, 2: 100}),
     [item(10, (0, 1), "strict")], {0: 5, 1: 5}, {0: 2}),
    ("restrictive = strict", view({0: 0, 1: 9}), [item(4, (1,), "restrictive")], {1: 4}, {}),
    ("unbound: most room first", view({0: 0, 1: 0}, mem_free_gib={0: 4, 1: 8}),
     [item(100)], {1: 100}, {1: 100}),
    ("unbound: spreads when one node is full",
     view({0: 0, 1: 0}, mem_free_gib={0: 1, 1: 1}, total_gib=0),
     [item(700)], {0: 512, 1: 188}, {0: 512, 1: 188}),
    ("unbound: free pages on any node first", view({0: 2, 1: 7, 2: 1}), [item(9)],
     {0: 2, 1: 7}, {}),
    ("preferred: first node, then the others", view({0: 0, 1: 3}, mem_free_gib={0: 0, 1: 8}),
     [item(5, (0,), "preferred")], {1: 5}, {1: 2}),
    ("preferred: grows on its node", view({0: 0, 1: 30}), [item(5, (0,), "preferred")],
     {0: 5}, {0: 5}),
    ("interleave: even shares", view({0: 0, 1: 0, 2: 0, 3: 0}),
     [item(10, (0, 1, 2, 3), "interleave")], {0: 3, 1: 3, 2: 2, 3: 2},
     {0: 3, 1: 3, 2: 2, 3: 2}),
    ("interleave uses each node's free pages", view({0: 5, 1: 0}),
     [item(8, (0, 1), "interleave")], {0: 4, 1: 4}, {1: 4}),
    ("two items on one node add up", view({0: 3}), [item(2, (0,)), item(4, (0,))],
     {0: 6}, {0: 3}),
    ("8 nodes, per-cell strict", view(dict.fromkeys(range(8), 1)),
     [item(2, (n,), "strict") for n in range(8)], dict.fromkeys(range(8), 2),
     dict.fromkeys(range(8), 1)),
])
def test_place(case, v, items, claims, grow):
    result = place(items, v, NO_MARGIN, "vm")
    assert nodes_of(result.claims) == claims, case
    assert nodes_of(result.grow) == grow, case
    assert sum(result.claims.values()) == sum(i.pages for i in items)


def test_place_1g_pages_are_their_own_pools():
    v = view({0: 100})
    result = place([item(2, (0,), "strict", size=G1)], v, NO_MARGIN, "vm")
    assert result.grow == {(0, G1): 2}


@pytest.mark.parametrize("v, items, exc, words", [
    (view({0: 0}, mem_free_gib={0: 2}), [item(600, (0,), "strict")], MarginViolation,
     ["node 0", "floor of 3355443 KiB"]),
    (view({0: 0, 1: 0}, mem_free_gib={0: 2, 1: 2}, total_gib=8), [item(2000)], InsufficientPages,
     ["node 0-1", "needs 2000", "1024 more allocatable"]),
    (view({0: 0}), [item(1, (5,), "strict")], NoSuchHostNode, ["NUMA node 5"]),
    (view({0: 0}), [item(1, None, None, size=16)], UnsupportedPageSize, ["16 KiB"]),
])
def test_place_refuses(v, items, exc, words):
    with pytest.raises(exc) as info:
        place(items, v, Margin(GIB, 5), "vm1")
    text = str(info.value)
    assert "domain 'vm1'" in text
    for word in words:
        assert word in text


def test_margin_floor_is_the_larger_of_min_and_percent():
    assert Margin(GIB, 5).floor_kib(64 * GIB) == int(64 * GIB * 0.05)
    assert Margin(GIB, 5).floor_kib(4 * GIB) == GIB
    v = view({0: 0}, mem_free_gib={0: 10})  # 64 GiB node: floor 3.2 GiB
    place([item(3400, (0,))], v, Margin(GIB, 5), "vm")  # leaves 3.36 GiB
    with pytest.raises(MarginViolation):
        place([item(3500, (0,))], v, Margin(GIB, 5), "vm")


def test_margin_counts_every_size_on_the_node():
    v = view({0: 0}, mem_free_gib={0: 4}, total_gib=8)
    with pytest.raises(MarginViolation) as info:
        place([item(2, (0,), size=G1), item(600, (0,))], v, Margin(GIB, 0), "vm")
    assert "taking 2 x 1048576 KiB" in str(info.value)  # 2M pages alone would fit


def test_resv_share_is_conservative():
    v = view({0: 4, 1: 6}, resv=5)
    assert resv_share(v, 0, M2) == 4 and resv_share(v, 1, M2) == 5
    assert available(v, 0, M2) == 0 and available(v, 1, M2) == 1


@pytest.mark.parametrize("free, nr, resv, claims, want, keep, expected", [
    (10, 10, 0, 0, 4, 6, 4),      # all free: what we added goes
    (2, 10, 0, 0, 4, 6, 2),       # only free pages go
    (10, 10, 3, 0, 4, 6, 4),      # resv 3 of 10 free: still 7 unreserved
    (5, 10, 3, 0, 4, 6, 2),       # resv eats free pages
    (10, 10, 0, 8, 4, 6, 2),      # pending claims keep their pages
    (10, 10, 0, 0, 4, 8, 2),      # never below keep (baseline + others)
    (10, 10, 0, 0, 0, 6, 0),
    (0, 0, 0, 0, 4, 0, 0),
])
def test_releasable(free, nr, resv, claims, want, keep, expected):
    v = view({0: free}, nr={0: nr}, resv=resv, claims={0: claims})
    assert releasable(v, 0, M2, want, keep) == expected


def test_spread_adds_pages_and_never_counts_free_ones():
    v = view({0: 50, 1: 0}, mem_free_gib={0: 2, 1: 3})
    assert nodes_of(spread(v, M2, 100, NO_MARGIN, None)) == {1: 100}
    with pytest.raises(InsufficientPages) as info:
        spread(v, M2, 10 ** 6, Margin(GIB, 0), None)
    assert str(info.value).startswith("pool change: node 0-1")


def test_small_helpers():
    assert even_split(10, 4) == [3, 3, 2, 2]
    assert even_split(2, 4) == [1, 1, 0, 0]
    assert take_in_order([("a", 2), ("b", 0), ("c", 5)], 4) == [("a", 2), ("c", 2)]
