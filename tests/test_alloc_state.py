"""Hypothesis state machine: random interleavings of guest lifecycles, crashes and admin changes.

Invariants after every step:
- the kernel's pages in every pool = the pool hugexml found + what the ledger says hugexml
  holds there (added for guests, admin pages, kept, owed back): no page leaked or lost;
- the baseline recorded for a pool is what was there before hugexml: never shrunk;
- no surplus page ever appears: hugexml never asked the kernel to shrink below the pages in
  use or reserved (which is how a running guest's pages would be "taken");
- every pending guest's promised pages are free right now, so it can map them when it starts;
- a failed transaction leaves every count as it was; no intent survives the next run.
"""
from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
from allocfix import G1, M2, guest, make_config, plan
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from simkernel import GIB, Crash, make_kernel

from hugexml import ledger as lg
from hugexml.alloc import Allocator
from hugexml.errors import HugexmlError

NODES = 3
GUESTS = ("g0", "g1", "g2", "g3")
SIZES = (M2, G1)
POLICIES = (None, "strict", "preferred", "interleave")

demand_item = st.tuples(
    st.integers(min_value=0, max_value=40),                      # pages
    st.one_of(st.none(), st.lists(st.integers(0, NODES - 1), min_size=1, max_size=3,
                                  unique=True)),                 # host nodes
    st.sampled_from(POLICIES),
    st.sampled_from((M2, M2, M2, G1)),
)


class AllocatorMachine(RuleBasedStateMachine):
    KIND = "sim"  # the in-memory SimKernel; FakeKernelMachine: sysfs tree + real HostGateway

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="hugexml-state-")
        self.root = tempfile.mkdtemp(prefix="hugexml-root-")
        self.kernel = make_kernel(self.KIND, self.root, nodes=NODES, mem_total_kib=16 * GIB,
                                  mem_free_kib=6 * GIB)
        # the admin's pools before hugexml: some pages, some of them in use
        for node in range(NODES):
            self.kernel.set(node, M2, persistent=4 * node, used=node)
        self.kernel.set(1, G1, persistent=1)
        self.kernel.set(2, M2, cap=30)  # fragmentation: node 2 grants 30 more pages
        self.kernel.set(0, G1, cap=2)
        self.init = {pool: p.persistent for pool, p in self.kernel.pools.items()}
        self.config = make_config(margin_min_kib=GIB, margin_percent=5, retries=1)
        self.alloc = self.new_process()
        self.state = dict.fromkeys(GUESTS, "stopped")  # stopped | pending | active
        self.mapped: dict[str, dict[tuple[int, int], int]] = {g: {} for g in GUESTS}

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def new_process(self) -> Allocator:
        return Allocator(self.kernel.gw, self.dir, self.config, clock=lambda: 1000.0)

    def counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        return {pool: (p.persistent, p.surplus) for pool, p in self.kernel.pools.items()}

    def ledger(self) -> lg.Ledger_t:
        return lg.Ledger(self.dir).read()

    # --- guest lifecycle -------------------------------------------------------------
    @rule(g=st.sampled_from(GUESTS), items=st.lists(demand_item, min_size=1, max_size=3))
    def prepare(self, g: str, items: list) -> None:
        if self.state[g] == "active":
            return
        before, record = self.counts(), self.ledger()["guests"].get(g)
        try:
            self.alloc.reserve(plan(g, *items), guest(g))
        except HugexmlError:
            assert self.counts() == before, "a failed reserve changed the pools"
            assert self.ledger()["guests"].get(g) == record
            return
        self.state[g] = "pending"

    @precondition(lambda self: any(s == "pending" for s in self.state.values()))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        g = data.draw(st.sampled_from([g for g, s in self.state.items() if s == "pending"]))
        claimed = self.ledger()["guests"][g]["claimed"]
        for pk, pages in claimed.items():  # qemu maps the promised pages
            pool = lg.parse_pool_key(pk)
            self.kernel.map(*pool, pages)
            self.mapped[g][pool] = pages
        self.alloc.settle(guest(g))
        self.state[g] = "active"

    @rule(g=st.sampled_from(GUESTS))
    def stop(self, g: str) -> None:
        for pool, pages in self.mapped[g].items():
            self.kernel.unmap(*pool, pages)
        self.mapped[g] = {}
        self.alloc.release(guest(g))  # libvirt calls release for failed starts too
        self.state[g] = "stopped"

    # --- kill -9 in the middle of a transaction --------------------------------------------
    @rule(g=st.sampled_from(GUESTS), at=st.integers(1, 3),
          op=st.sampled_from(("reserve", "release")),
          items=st.lists(demand_item, min_size=1, max_size=2))
    def crash(self, g: str, at: int, op: str, items: list) -> None:
        if self.state[g] == "active":
            return
        self.kernel.crash_on_write = len(self.kernel.writes) + at
        try:
            if op == "reserve":
                self.alloc.reserve(plan(g, *items), guest(g))
            else:
                self.alloc.release(guest(g))
        except (Crash, HugexmlError):
            pass
        self.kernel.crash_on_write, self.kernel.dead = None, False
        self.alloc = self.new_process()  # the dead process's object is gone
        self.alloc.release(guest(g))  # libvirt: the start failed / the release is retried
        self.state[g] = "stopped"

    # --- admin changes and reconcile -----------------------------------------------------
    @rule(size=st.sampled_from(SIZES), count=st.integers(0, 20),
          node=st.one_of(st.none(), st.integers(0, NODES - 1)))
    def admin_allocate(self, size: int, count: int, node: int | None) -> None:
        before = self.counts()
        try:
            self.alloc.allocate_admin(size, count, node)
        except HugexmlError:
            assert self.counts() == before

    @rule(size=st.sampled_from(SIZES), node=st.integers(0, NODES - 1), frac=st.floats(0, 1))
    def admin_shrink(self, size: int, node: int, frac: float) -> None:
        data, pk = self.ledger(), lg.pool_key(node, size)
        owed = (lg.count(data["admin"], pk) + lg.count(data["unreleased"], pk)
                + lg.count(data["kept"], pk) + lg.guest_added(data, pk, ("releasing",)))
        self.alloc.shrink_admin(size, int(owed * frac), node)  # never more than hugexml's

    @rule()
    def reconcile(self) -> None:
        self.alloc.reconcile()

    # --- invariants ----------------------------------------------------------------------
    @invariant()
    def pages_add_up(self) -> None:
        data = self.ledger()
        assert data["intent"] is None
        for pool, p in self.kernel.pools.items():
            pk = lg.pool_key(*pool)
            assert p.persistent == self.init[pool] + lg.hugexml_pages(data, pk), pk
            if pk in data["baseline"]:
                assert data["baseline"][pk] == self.init[pool], f"baseline of {pk} changed"

    @invariant()
    def nothing_taken_from_users(self) -> None:
        for pool, p in self.kernel.pools.items():
            assert p.surplus == 0, f"{pool}: pages in use were pushed into surplus"

    @invariant()
    def promises_can_be_kept(self) -> None:
        data = self.ledger()
        for pool, p in self.kernel.pools.items():
            assert p.free - p.resv >= lg.pending_claims(data, lg.pool_key(*pool)), pool

    @invariant()
    def ledger_knows_every_running_guest(self) -> None:
        guests = self.ledger()["guests"]
        for g, s in self.state.items():
            if s != "stopped":
                assert guests[g]["state"] == s


AllocatorMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestAllocatorMachine = AllocatorMachine.TestCase


class FakeKernelMachine(AllocatorMachine):
    """The same rules and invariants on the sysfs-tree FakeKernel through the real HostGateway
    (every count read from and written to files, every write read back)."""

    KIND = "fake"


FakeKernelMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestFakeKernelMachine = FakeKernelMachine.TestCase
