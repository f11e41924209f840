"""A node's pool change that the node's own file cannot say, on the fake kernel: Linux before
6.7 counts other nodes' surplus pages into a node write, and every kernel keeps free pages
while surplus pages are in use anywhere (set_max_huge_pages' min_count). The gateway then
writes nr_hugepages_mempolicy bound to the node (hugexml/host/mempolicy.py). Both kernel rules
are checked against Debian's 6.1 in tests/numavm (kernelscenarios.py, test_vm_pools.py).
"""
from __future__ import annotations

import errno
import os

import hypothesis.strategies as st
import pytest
from fakekernel import GIB_KIB, FakeKernel
from hypothesis import HealthCheck, given, settings

from hugexml.core.errors import HostError
from hugexml.core.root import HostRoot
from hugexml.host import mempolicy
from hugexml.host.sysfs import HostGateway

M2 = 2048
MEMPOLICY = f"sys/kernel/mm/hugepages/hugepages-{M2}kB/nr_hugepages_mempolicy"
PRE_6_7 = pytest.mark.parametrize("pre_6_7", [True, False], ids=["linux<6.7", "linux>=6.7"])


def kernel(tmp_path, pre_6_7: bool, nodes: int = 4) -> FakeKernel:
    return FakeKernel(tmp_path / "root", nodes=nodes, mem_kib_per_node=4 * GIB_KIB,
                      node_write_counts_surplus=pre_6_7)


def pools(fk: FakeKernel) -> list[tuple[int, int, int]]:
    return [tuple(fk.pool(n, M2)) for n in range(len(fk.conf()["nodes"]))]


def surplus_in_use(fk: FakeKernel, node: int, pages: int, used: int) -> None:
    """``node`` holds ``pages`` pages, ``used`` of them in use, all of those surplus (an
    admin lowered the pool under a guest), as the kernel leaves it."""
    fk.preset(node, M2, pages)
    fk.use(node, M2, used)
    with fk.io.locked() as kern:  # a global write of 0 restricted to the node: surplus
        kern.set_max(M2, kern.persistent(M2) - pages, None, [node])
        kern.store()


def mempolicy_writes(fk: FakeKernel) -> list[str]:
    return [value for rel, value in fk.writes() if rel == MEMPOLICY]


@PRE_6_7
def test_shrink_below_another_nodes_surplus_lands_exactly(tmp_path, pre_6_7):
    """Node 1: 6 pages in use, all surplus. Node 3's 4 free pages: no node write can free
    them (min_count counts node 1's in-use surplus); node 1 lends its surplus as persistent
    for a moment and gets it back."""
    fk = kernel(tmp_path, pre_6_7)
    surplus_in_use(fk, 1, 6, 6)
    gw = fk.gateway()
    assert gw.set_node_nr(3, M2, 4) == 4
    assert pools(fk) == [(0, 0, 0), (6, 0, 6), (0, 0, 0), (4, 4, 0)]
    assert gw.set_node_nr(3, M2, 1) == 1
    assert pools(fk) == [(0, 0, 0), (6, 0, 6), (0, 0, 0), (1, 1, 0)]
    assert gw.set_node_nr(3, M2, 0) == 0
    assert pools(fk) == [(0, 0, 0), (6, 0, 6), (0, 0, 0), (0, 0, 0)]
    assert fk.io.bound is None and fk.io.binds[-1] is None
    assert set(fk.io.binds) == {(1,), (3,), None}   # bound to the node and to the lender


@PRE_6_7
@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 9])
def test_grow_from_nothing_lands_exactly_with_surplus_elsewhere(tmp_path, pre_6_7, count):
    """Before 6.7 the node write overshoots by node 1's 4 surplus pages; below 4 the node
    file cannot even say the correction."""
    fk = kernel(tmp_path, pre_6_7)
    fk.preset(1, M2, 10)
    fk.use(1, M2, 6)
    gw = fk.gateway()
    assert gw.set_node_nr(1, M2, 2) == 6
    assert gw.set_node_nr(3, M2, count) == count
    assert pools(fk) == [(0, 0, 0), (6, 0, 4), (0, 0, 0), (count, count, 0)]
    free_kib = fk.mem_free_kib(3)
    assert gw.set_node_nr(3, M2, 0) == 0 and fk.mem_free_kib(3) == free_kib + count * M2
    assert fk.io.bound is None


@PRE_6_7
def test_the_bound_path_only_while_other_nodes_hold_surplus_pages(tmp_path, pre_6_7):
    """Without surplus pages on other nodes a node write lands (its own surplus included):
    the node file alone. With them, before 6.7 the node write would miss (a shrink could
    even turn this node's own surplus pages in use into persistent ones and free as many
    free pages more), so the change goes bound at once, on any kernel: the version cannot
    be told from sysfs, and the bound write is exact on both."""
    fk = kernel(tmp_path, pre_6_7)
    gw = fk.gateway()
    fk.preset(0, M2, 3)
    fk.use(0, M2, 3)                               # in use, not surplus
    assert gw.set_node_nr(1, M2, 8) == 8 and gw.set_node_nr(1, M2, 2) == 2
    assert gw.set_node_nr(0, M2, 1) == 3           # below in-use: surplus, as the kernel does
    assert pools(fk)[0] == (3, 0, 2)
    assert gw.set_node_nr(0, M2, 2) == 3           # its own surplus back: still the node file
    assert mempolicy_writes(fk) == [] and fk.io.binds == []
    assert gw.set_node_nr(0, M2, 1) == 3
    assert gw.set_node_nr(1, M2, 6) == 6           # node 0's surplus: bound
    assert gw.set_node_nr(1, M2, 4) == 4
    assert pools(fk) == [(3, 0, 2), (4, 4, 0), (0, 0, 0), (0, 0, 0)]
    assert len(mempolicy_writes(fk)) == 2 and fk.io.binds == [(1,), None, (1,), None]


def test_the_plain_path_is_one_write(tmp_path):
    fk = kernel(tmp_path, pre_6_7=True)
    gw = fk.gateway()
    gw.set_node_nr(2, M2, 5)
    gw.set_node_nr(2, M2, 1)
    assert [value for _, value in fk.writes()] == ["5", "1"]


def test_other_nodes_never_change(tmp_path):
    """Lending relabels only: a lender's nr, free and surplus end as they were, and no page
    of any other node is added or freed."""
    fk = kernel(tmp_path, pre_6_7=True)
    surplus_in_use(fk, 0, 5, 5)
    surplus_in_use(fk, 1, 3, 3)
    fk.preset(2, M2, 7)                            # free persistent pages: never a lender
    gw = fk.gateway()
    others = [fk.pool(n, M2) for n in (0, 1, 2)]
    mem = [fk.mem_free_kib(n) for n in (0, 1, 2)]
    assert gw.set_node_nr(3, M2, 12) == 12
    assert gw.set_node_nr(3, M2, 0) == 0
    assert [fk.pool(n, M2) for n in (0, 1, 2)] == others
    assert [fk.mem_free_kib(n) for n in (0, 1, 2)] == mem
    assert 2 not in [b[0] for b in fk.io.binds if b]   # node 2 has free pages: no lender


def test_free_pages_no_lender_can_unblock_stay_persistent(tmp_path):
    """Surplus pages in use on node 1 and none that could lend (its pool has free pages
    too): node 3 frees what the kernel lets it, the rest stays persistent instead of
    turning into free surplus pages."""
    fk = kernel(tmp_path, pre_6_7=False)
    fk.preset(3, M2, 4)
    fk.preset(1, M2, 1)                            # a free page on node 1
    with fk.io.locked() as kern:                   # ... and 2 surplus pages in use there
        kern.pools[f"1:{M2}"] = [3, 1, 2]
        kern.store()
    gw = fk.gateway()
    assert gw.set_node_nr(3, M2, 0) == 1           # the kernel frees free - resv - surplus = 3
    assert pools(fk)[3] == (1, 1, 0) and pools(fk)[1] == (3, 1, 2)


def test_reserved_pages_are_not_lent_around(tmp_path):
    """Reserved pages stay (the kernel makes them surplus, freed when the reservation
    goes): only what surplus pages block is unblocked by lending."""
    fk = kernel(tmp_path, pre_6_7=False)
    surplus_in_use(fk, 1, 2, 2)
    fk.preset(3, M2, 4)
    fk.reserve(M2, 3)
    gw = fk.gateway()
    assert gw.set_node_nr(3, M2, 0) == 3           # 1 freed; 3 reserved stay (surplus)
    assert pools(fk)[3] == (3, 3, 3) and pools(fk)[1] == (2, 0, 2)
    fk.unreserve(M2, 3)
    assert pools(fk)[3] == (0, 0, 0)


# --- failures: the policy is always restored, the lenders too, one line naming it all ----
def blocked(tmp_path) -> tuple[FakeKernel, HostGateway]:
    fk = kernel(tmp_path, pre_6_7=True)
    surplus_in_use(fk, 1, 4, 4)
    fk.preset(3, M2, 4)
    return fk, fk.gateway()


@pytest.mark.parametrize("after", [0, 1, 2], ids=["lend", "shrink", "give back"])
@pytest.mark.parametrize("err", [errno.EIO, errno.EINVAL, errno.ENOMEM])
def test_a_failed_bound_write_restores_the_policy_and_the_lenders(tmp_path, after, err):
    fk, gw = blocked(tmp_path)
    before = pools(fk)
    fk.fail_next_write(MEMPOLICY, err, after=after)
    with pytest.raises(HostError) as info:
        gw.set_node_nr(3, M2, 0)
    msg = str(info.value)
    assert "\n" not in msg and os.strerror(err) in msg
    assert msg.startswith(os.path.join(fk.root, MEMPOLICY) + ": node 3, 2048 KiB pages, pool "
                          "to 0: node ")
    assert "persistent pages (global target " in msg
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == err
    assert fk.io.bound is None and fk.io.binds[-1] is None
    if after < 2:
        assert pools(fk) == before                    # the lender counts its surplus again
    else:                                             # the give-back failed: node 3 shrank,
        assert pools(fk)[3] == (0, 0, 0)              # node 1 still lends, and the line
        assert pools(fk)[1] == (4, 0, 0)              # says so
        assert "node 1 from 4 to 0 persistent pages" in msg


def test_a_refused_bind_is_one_line_and_writes_nothing(tmp_path):
    fk = kernel(tmp_path, pre_6_7=True)
    surplus_in_use(fk, 1, 4, 4)
    fk.preset(3, M2, 4)
    calls = []

    def refuse(nodes):
        calls.append(nodes)
        if nodes is not None:
            raise OSError(errno.EINVAL, "Invalid argument")

    gw = HostGateway(fk.host_root, io=fk.io, mempolicy=refuse)
    with pytest.raises(HostError) as info:
        gw.set_node_nr(3, M2, 0)
    msg = str(info.value)
    assert "node 3, 2048 KiB pages, pool to 0: node 1 from 0 to 4 persistent pages" in msg
    assert "binding the memory policy: Invalid argument" in msg and "\n" not in msg
    assert isinstance(info.value.__cause__, OSError)
    assert mempolicy_writes(fk) == [] and calls == [(1,), None]
    assert pools(fk)[1] == (4, 0, 4) and pools(fk)[3] == (4, 4, 0)


def test_no_policy_to_bind_under_a_plain_sysio_on_another_root(tmp_path):
    """The real set_mempolicy(2) only for the real root: a fake tree read with the plain
    SysIO says so instead of binding this process."""
    fk, _ = blocked(tmp_path)
    gw = HostGateway(HostRoot(fk.root))             # plain SysIO: no set_mempolicy of its own
    assert gw.memory_binder() is None
    assert HostGateway(HostRoot("/")).memory_binder() is mempolicy.set_thread_policy
    with pytest.raises(HostError, match="no memory policy to bind under a root other than /"):
        gw.set_node_nr_bound(3, M2, 0)


def test_syscall_numbers_and_masks():
    assert mempolicy.syscall_number("x86_64") == 238
    assert mempolicy.syscall_number("aarch64") == 237
    with pytest.raises(OSError) as info:
        mempolicy.syscall_number("s390x")
    assert info.value.errno == errno.ENOSYS and "s390x" in str(info.value)
    mask = mempolicy.node_mask((0, 3, 64, 1023))
    assert len(mask) == 16 and mask[0] == 0b1001 and mask[1] == 1 and mask[15] == 1 << 63
    for bad in (-1, 1024, True):
        with pytest.raises(OSError):
            mempolicy.node_mask((bad,))


def test_a_thread_policy_on_an_unknown_architecture_fails_cleanly(tmp_path, monkeypatch):
    fk, _ = blocked(tmp_path)
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "6.1", "#1",
                                                              "riscv32")))
    gw = HostGateway(HostRoot(fk.root), io=fk.io, mempolicy=mempolicy.set_thread_policy)
    with pytest.raises(HostError, match="no syscall number known for riscv32") as info:
        gw.set_node_nr(3, M2, 0)
    assert info.value.__cause__.errno == errno.ENOSYS and mempolicy_writes(fk) == []


# --- invariants over generated pools ----------------------------------------------------
# per node: free pages, pages in use, how many of those are surplus
NODE_STATE = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pre_6_7=st.booleans(), states=st.lists(NODE_STATE, min_size=3, max_size=3),
       resv=st.integers(0, 3), node=st.integers(0, 2), count=st.integers(0, 16))
def test_a_node_change_never_touches_other_nodes_and_lands_when_it_can(
        tmp_path_factory, pre_6_7, states, resv, node, count):
    """Whatever the pools: other nodes end exactly as they were; the node lands on
    ``count`` when growing, and when shrinking as far as its free, unreserved pages go; no
    free page of the node becomes surplus; the policy is MPOL_DEFAULT again."""
    fk = kernel(tmp_path_factory.mktemp("k"), pre_6_7, nodes=3)
    with fk.io.locked() as kern:
        for n, (free, used, surplus) in enumerate(states):
            surplus = min(surplus, used)              # surplus pages are pages in use
            kern.pools[f"{n}:{M2}"] = [free + used, free, surplus]
            kern.mem[n]["MemFree"] -= (free + used) * M2
        kern.resv[M2] = min(resv, sum(s[0] for s in states))
        kern.store()
    before = {n: fk.pool(n, M2) for n in range(3)}
    mine, pools_before = before[node], fk.gateway().global_pool(M2)
    fk.gateway().set_node_nr(node, M2, count)
    after = {n: fk.pool(n, M2) for n in range(3)}
    assert {n: p for n, p in after.items() if n != node} == \
        {n: p for n, p in before.items() if n != node}
    now = after[node]
    persistent = mine.nr - mine.surplus
    # A free page turns surplus only as the kernel keeps a reserved page it was asked to free
    # (echo N with resv > free - N: the page goes when its reservation does), never otherwise.
    reserved_asked = max(0, min(persistent - count, mine.free)
                         - max(0, pools_before.free - pools_before.resv))
    assert now.surplus - (now.nr - now.free) <= (
        max(0, mine.surplus - (mine.nr - mine.free)) + reserved_asked)
    if count >= persistent:
        assert now.nr - now.surplus == count
    else:
        lendable = sum(p.surplus for n, p in before.items() if n != node and not p.free)
        free_pages = min(persistent - count, mine.free, pools_before.free - pools_before.resv)
        blocked = free_pages - (pools_before.free - pools_before.resv - pools_before.surplus)
        if blocked <= lendable:
            assert mine.free - now.free == max(0, free_pages)    # freed all it may
    assert fk.io.bound is None
