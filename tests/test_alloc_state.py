"""Hypothesis state machine: random interleavings of guest lifecycles, crashes and admin changes.

"Others" (an admin's echo, another tool) also write nr_hugepages behind hugexml's back
(``external_admin_write``): the model keeps ``outside``, the pages that are not hugexml's
(found at start, plus external growth, minus external shrinks of free unclaimed pages).
Others shrink only their own free pages: a shrink that takes a page hugexml added, followed
by a grow before any reconcile, leaves counts the kernel cannot tell apart from no change
at all (pages have no owner in sysfs), so no bookkeeping could attribute it.

Invariants after every step:
- hugexml never frees a page it did not add: the pages the ledger says hugexml holds in a
  pool are at most the kernel's pages minus ``outside``, so every page added by others
  survives every later release, expire, reconcile and admin shrink;
- no page leaked: with no external shrink on a pool, kernel pages = ``outside`` + hugexml's
  ledger pages exactly; after external shrinks hugexml may only under-count its own pages,
  by at most what was shrunk (it charges an unexplained deficit to itself first);
- reconcile reports exactly the difference between the kernel and the ledger in every pool
  it tracks (unexplained growth joins the baseline, a deficit is clamped), and afterwards
  the ledger explains the kernel; it never changes a live guest's claim;
- the baseline recorded for a pool is never above the pages that are not hugexml's;
- no surplus page ever appears: hugexml never asked the kernel to shrink below the pages in
  use or reserved (which is how a running guest's pages would be "taken");
- every pending guest's promised pages are free right now, so it can map them when it starts;
- a failed transaction leaves every count as it was; no intent survives the next run.

Time passes (``time_passes``): 1G pages a stopped guest gave up are kept for a window, then
owed back; a start short of 2M pages may split kept or owed 1G pages (demote).

A rule also breaks the state files as a bad disk, a bug or a hand edit would: a guest's
record corrupted, truncated, deleted or given a field of the wrong type (``break_record``),
or the host journal itself (``break_journal``). A lost record never leaks its pages (the
journal's per-pool guest total makes them owed back) and never lets hugexml free a page it
did not add. A lost journal is rebuilt from the records and the kernel: the pages it alone
knew (admin, kept, owed) are counted as others' from then on, never freed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import hypothesis.strategies as st
from allocfix import G1, M2, guest, make_config, plan
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from simkernel import GIB, Crash, make_kernel
from statefix import snapshot

from hugexml.alloc.allocator import Allocator
from hugexml.core.errors import HugexmlError

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


def pk_of(pool: tuple[int, int]) -> str:
    return f"{pool[0]}:{pool[1]}"


def pool_of(pk: str) -> tuple[int, int]:
    node, size = pk.split(":")
    return int(node), int(size)


def count(data: dict, bucket: str, pk: str) -> int:
    return int(data[bucket].get(pk, 0))


def expected(data: dict, pk: str) -> int:
    return sum(count(data, b, pk) for b in ("baseline", "admin", "kept", "unreleased",
                                            "guests_total"))


def held(data: dict, pk: str) -> int:
    """Pages the books say hugexml holds in a pool (everything but the baseline)."""
    return expected(data, pk) - count(data, "baseline", pk)


def tracked(data: dict) -> set[str]:
    return {pk for b in ("baseline", "admin", "kept", "unreleased", "guests_total")
            for pk in data[b]}


def pending_claims(data: dict, pk: str) -> int:
    return sum(r["claimed"].get(pk, 0) for r in data["guests"].values()
               if r["state"] == "pending")


def deficit_rank(bucket: str) -> int:
    """Where a bucket comes in the order a deficit is charged (recovery.sync)."""
    if bucket.startswith("guest:"):
        return 3
    return {"unreleased": 0, "kept": 2, "admin": 4, "baseline": 5}[bucket]


def bucket_count(data: dict, bucket: str, pk: str) -> int:
    if bucket.startswith("guest:"):
        return data["guests"][bucket[6:]]["added"].get(pk, 0)
    return count(data, bucket, pk)


BREAKS = ("garbage", "truncate", "delete", "wrong-type", "directory")


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
        # pages that are not hugexml's, and how many of them others use, per pool
        self.outside = {pool: p.persistent for pool, p in self.kernel.pools.items()}
        self.outside_used = {pool: p.used for pool, p in self.kernel.pools.items()}
        self.shrunk = dict.fromkeys(self.outside, 0)  # pages others shrank, per pool
        # 1G pages of stopped guests stay for a 10 minute keep window (time_passes ends it);
        # demote splits kept or owed 1G pages when a node is short of 2M pages
        self.config = make_config(margin_min_kib=GIB, margin_percent=5, retries=1,
                                  keep_for=((G1, 600.0),), pending_timeout_s=7 * 86400)
        self.now = 1000.0
        self.alloc = self.new_process()
        self.state = dict.fromkeys(GUESTS, "stopped")  # stopped | pending | active
        self.mapped: dict[str, dict[tuple[int, int], int]] = {g: {} for g in GUESTS}
        self.lost: set[str] = set()  # guests whose record a break_record destroyed

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def new_process(self) -> Allocator:
        return Allocator(self.kernel.gw, self.dir, self.config, clock=lambda: self.now)

    @rule(seconds=st.sampled_from((0.0, 30.0, 599.0, 601.0, 900.0)))
    def time_passes(self, seconds: float) -> None:
        """Keep windows end: the next session owes those pages back (given back if free)."""
        self.now += seconds

    def counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        return {pool: (p.persistent, p.surplus) for pool, p in self.kernel.pools.items()}

    def ledger(self) -> dict:
        return snapshot(self.dir)

    # --- guest lifecycle -------------------------------------------------------------
    @rule(g=st.sampled_from(GUESTS), items=st.lists(demand_item, min_size=1, max_size=3))
    def prepare(self, g: str, items: list) -> None:
        if self.state[g] == "active":
            return
        before, record = self.counts(), self.ledger()["guests"].get(g)
        demotes = len(self.kernel.demotes)
        try:
            self.alloc.reserve(plan(g, *items), guest(g))
        except HugexmlError:
            # a failed reserve changes nothing, but for owned idle 1G pages it split first
            # (demote cannot be undone): the 1G pool lost them, the 2M pool may hold them
            split: dict[tuple[int, int], int] = {}
            for node, size, k in self.kernel.demotes[demotes:]:
                split[(node, size)] = split.get((node, size), 0) + k
            after = self.counts()
            for pool, (nr, surplus) in before.items():
                node, size = pool
                gone = split.get(pool, 0)
                into = split.get((node, G1), 0) * (G1 // M2) if size == M2 else 0
                assert after[pool][1] == surplus, "a failed reserve made surplus pages"
                assert nr - gone <= after[pool][0] <= nr - gone + into, (
                    "a failed reserve changed the pools", pool, before[pool], after[pool])
            if g not in self.lost:
                assert self.ledger()["guests"].get(g) == record
            return
        self.state[g] = "pending"
        self.lost.discard(g)

    @precondition(lambda self: any(s == "pending" and g not in self.lost
                                   for g, s in self.state.items()))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        g = data.draw(st.sampled_from([g for g, s in self.state.items()
                                       if s == "pending" and g not in self.lost]))
        claimed = self.ledger()["guests"][g]["claimed"]
        for pk, pages in claimed.items():  # qemu maps the promised pages
            pool = pool_of(pk)
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
        self.lost.discard(g)

    # --- broken state files ----------------------------------------------------------------
    @precondition(lambda self: any(s != "stopped" and g not in self.lost
                                   for g, s in self.state.items()))
    @rule(data=st.data(), how=st.sampled_from(BREAKS))
    def break_record(self, data: st.DataObject, how: str) -> None:
        g = data.draw(st.sampled_from([g for g, s in self.state.items()
                                       if s != "stopped" and g not in self.lost]))
        path = os.path.join(self.dir, "guests", self.ledger()["guests"][g]["key"] + ".json")
        text = open(path, "rb").read()
        os.unlink(path)
        if how == "garbage":
            open(path, "wb").write(os.urandom(64))
        elif how == "truncate":
            open(path, "wb").write(text[:len(text) // 2])
        elif how == "wrong-type":
            raw = json.loads(text)
            raw["updated"] = "soon"
            open(path, "w").write(json.dumps(raw))
        elif how == "directory":
            os.mkdir(path)
        self.lost.add(g)  # the guest itself runs on (or stays prepared) regardless

    @rule(how=st.sampled_from(("garbage", "delete")))
    def break_journal(self, how: str) -> None:
        """The host journal lost: the next session rebuilds it from the records and the
        kernel. What it alone knew (admin, kept and owed pages) is others' from then on."""
        path = os.path.join(self.dir, "host.json")
        if not os.path.exists(path):
            return
        self.alloc.tidy()  # records lost earlier: their pages are owed back first
        before = self.ledger()
        os.unlink(path)
        if how == "garbage":
            open(path, "wb").write(os.urandom(64))
        counts = self.counts()
        self.alloc.tidy()  # the rebuild
        assert self.counts() == counts, "rebuilding the books changed a pool"
        for pool in self.kernel.pools:
            pk = pk_of(pool)
            self.outside[pool] += sum(count(before, b, pk) for b in ("admin", "kept",
                                                                      "unreleased"))

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
        data, pk = self.ledger(), pk_of((node, size))
        owed = count(data, "admin", pk) + count(data, "unreleased", pk) + count(data, "kept", pk)
        self.alloc.shrink_admin(size, int(owed * frac), node)  # never more than hugexml's

    @rule()
    def reconcile(self) -> None:
        self.checked_reconcile()

    def checked_reconcile(self) -> dict:
        """reconcile, checking its report against the ledger and the kernel before it ran."""
        self.alloc.tidy()  # quarantine and balance first: the report below is sync's alone
        before = self.ledger()
        claims = {g: dict(r["claimed"]) for g, r in before["guests"].items()
                  if r["state"] in ("pending", "active")}
        pools = self.kernel.pools
        gaps = {pk: pools[pool_of(pk)].persistent - expected(before, pk)
                for pk in tracked(before)}
        report = self.alloc.reconcile()
        grown, clamped = report.get("unexplained_growth", {}), report.get("clamped", {})
        for pk, gap in gaps.items():
            assert grown.get(pk, 0) == max(gap, 0), (pk, gap, report)
            assert sum(clamped.get(pk, {}).values()) == max(-gap, 0), (pk, gap, report)
        assert set(grown) | set(clamped) <= {pk for pk, gap in gaps.items() if gap}, report
        for pk, taken in clamped.items():  # a deficit is hugexml's first: owed back, kept,
            names = list(taken)            # guests', admin; others' pages (baseline) last
            assert names == sorted(names, key=deficit_rank), (pk, report)
            for name in names[:-1]:
                if not name.startswith("guest:"):
                    assert taken[name] == bucket_count(before, name, pk), (pk, name, report)
            if "baseline" in taken:
                assert sum(taken.values()) - taken["baseline"] == held(before, pk)
        after = self.ledger()
        for g, claimed in claims.items():  # a live guest's promise survives any difference
            assert after["guests"][g]["claimed"] == claimed, (g, report)
        for pk in tracked(after):  # the books explain the kernel again
            pool = pool_of(pk)
            nr = self.kernel.pools[pool].persistent
            assert expected(after, pk) == nr, (pk, report)
            if not self.shrunk[pool]:
                assert count(after, "baseline", pk) == self.outside[pool], (pk, report)
        return report

    # --- others write nr_hugepages behind hugexml's back ---------------------------------
    @rule(node=st.integers(0, NODES - 1), size=st.sampled_from(SIZES),
          delta=st.integers(-12, 12), reconcile_now=st.booleans())
    def external_admin_write(self, node: int, size: int, delta: int,
                             reconcile_now: bool) -> None:
        """``echo N > .../nodeN/hugepages/hugepages-SkB/nr_hugepages`` by someone else: grow,
        or shrink by free pages that are neither claimed by a pending guest nor hugexml's."""
        pool, pk = (node, size), pk_of((node, size))
        p, data = self.kernel.pools[pool], self.ledger()
        if delta < 0:  # others shrink only their own free pages that nobody was promised
            spare = min(p.free - p.resv - pending_claims(data, pk),
                        self.outside[pool] - self.outside_used[pool])
            delta = -min(-delta, max(spare, 0))
        if delta == 0:
            return
        nr = p.persistent  # SimKernel's pools are live objects: keep the count
        gap_before = nr - expected(data, pk)
        if delta > 0:  # the gateway refuses a pool larger than the node's memory
            delta = min(delta, self.kernel.gw.max_pages(node, size) - nr)
            if delta <= 0:
                return
        self.kernel.gw.set_node_nr(node, size, nr + delta)  # as the admin's echo
        after = self.kernel.pools[pool]
        assert after.surplus == 0
        changed = after.persistent - nr  # the kernel may grant fewer (cap, memory)
        assert changed == delta if delta < 0 else 0 <= changed <= delta
        self.outside[pool] += changed
        self.shrunk[pool] += max(0, -changed)
        if reconcile_now and changed and not self.lost and not data["notes"]:
            in_books = pk in tracked(self.ledger())
            report = self.checked_reconcile()
            if in_books:
                gap = gap_before + changed
                assert report.get("unexplained_growth", {}).get(pk, 0) == max(gap, 0), report
                assert sum(report.get("clamped", {}).get(pk, {}).values()) == max(-gap, 0)

    # --- invariants ----------------------------------------------------------------------
    @invariant()
    def pages_add_up(self) -> None:
        data = self.ledger()
        assert data["intent"] is None
        for pool, p in self.kernel.pools.items():
            pk = pk_of(pool)
            mine = p.persistent - self.outside[pool]  # what hugexml really holds there
            assert mine >= 0, f"{pk}: hugexml freed {-mine} pages it did not add"
            books = held(data, pk)
            assert books <= mine, f"{pk}: the books claim {books} pages, hugexml added {mine}"
            assert books >= mine - self.shrunk[pool], f"{pk}: {mine - books} pages leaked"
            if pk in data["baseline"] and not self.shrunk[pool]:
                assert data["baseline"][pk] <= self.outside[pool], f"baseline of {pk} grew"

    @invariant()
    def nothing_taken_from_users(self) -> None:
        for pool, p in self.kernel.pools.items():
            assert p.surplus == 0, f"{pool}: pages in use were pushed into surplus"

    @invariant()
    def promises_can_be_kept(self) -> None:
        data = self.ledger()
        for pool, p in self.kernel.pools.items():
            assert p.free - p.resv >= pending_claims(data, pk_of(pool)), pool

    @invariant()
    def ledger_knows_every_running_guest(self) -> None:
        guests = self.ledger()["guests"]
        for g, s in self.state.items():
            if s != "stopped" and g not in self.lost:
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
