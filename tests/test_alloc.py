"""The allocator on a simulated kernel: placement, transactions, claims, releases, recovery."""
from __future__ import annotations

import errno
import os
import time

import pytest
from allocfix import G1, M2, guest, make_config, plan
from simkernel import GIB, Crash, make_kernel
from statefix import quarantined, snapshot

from hugexml.alloc.allocator import Allocator
from hugexml.alloc.ledger import Store
from hugexml.core.errors import (
    HostError,
    InsufficientPages,
    LockTimeout,
    MarginViolation,
    NoSuchHostNode,
    PoolShort,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["sim", "fake"])
def new_kernel(request, tmp_path):
    """Every test runs twice: on the in-memory SimKernel, and on the sysfs-tree FakeKernel
    through the real HostGateway (paths, parsing, writes read back)."""
    made = []

    def new(**kwargs):
        made.append(make_kernel(request.param, str(tmp_path / f"root{len(made)}"), **kwargs))
        return made[-1]
    return new


def make(kernel, tmp_path, clock=None, **config):
    return Allocator(kernel.gw, str(tmp_path / "state"), make_config(**config),
                     clock=clock or Clock())


def counts(kernel, size=M2):
    return {n: kernel.nr(n, size) for n in kernel.node_ids}


def ledger(tmp_path):
    return snapshot(tmp_path / "state")


# --- placement on 2, 4 and 8 nodes -------------------------------------------------------
PLACEMENT = [
    # (nodes, free pages before {node: n}, mem_free GiB {node: g}, demand items, added {node: n})
    (2, {}, {}, [(8, (1,), "strict")], {1: 8}),
    (2, {0: 5}, {}, [(8, (0,), "strict")], {0: 3}),
    (2, {0: 100}, {}, [(8, (1,), "strict")], {1: 8}),
    (2, {}, {0: 10, 1: 12}, [(8, None, None)], {1: 8}),
    (2, {0: 6}, {}, [(8, None, None)], {1: 2}),  # node 1 has more room
    (2, {1: 3}, {}, [(5, (0,), "preferred")], {0: 5}),
    (4, {}, {}, [(10, (0, 1, 2, 3), "interleave")], {0: 3, 1: 3, 2: 2, 3: 2}),
    (4, {2: 4}, {}, [(8, (1, 2), "interleave")], {1: 4}),
    (4, {}, {0: 10, 1: 10, 2: 14, 3: 10}, [(16, (0, 2), "strict")], {2: 16}),
    (4, {}, {}, [(4, (3,), "restrictive"), (4, (1,), "strict")], {1: 4, 3: 4}),
    (8, {}, {}, [(2, (n,), "strict") for n in range(8)], dict.fromkeys(range(8), 2)),
    (8, {5: 64}, {}, [(64, None, None)], {}),
    (8, {}, {n: 2 + n for n in range(8)}, [(600, None, None)], {7: 600}),
    # the room above the floor (1 GiB here) on the fullest node, then the next
    (8, {}, {n: 2 for n in range(8)}, [(1000, None, None)], {0: 512, 1: 488}),
]


@pytest.mark.parametrize("nodes, free, mem, items, added", PLACEMENT)
def test_placement_adds_exactly_the_shortfall(new_kernel, tmp_path, nodes, free, mem, items,
                                              added):
    kernel = new_kernel(nodes=nodes, mem_total_kib=16 * GIB, mem_free_kib=12 * GIB)
    for node, pages in free.items():
        kernel.set(node, M2, persistent=pages)
    for node, gib in mem.items():
        kernel.mem_free[node] = gib * GIB
    before = counts(kernel)
    result = make(kernel, tmp_path).reserve(plan("vm", *items), guest("vm"))
    after = counts(kernel)
    grown = {n: after[n] - before[n] for n in after if after[n] != before[n]}
    assert grown == added
    assert sum(result["claimed"].values()) == sum(i[0] for i in items)
    assert result["added"] == {f"{n}:{M2}": p for n, p in added.items()}
    rec = ledger(tmp_path)["guests"]["vm"]
    assert rec["state"] == "pending" and rec["added"] == result["added"]


def test_pending_claims_are_counted(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    kernel.set(0, M2, persistent=10)
    alloc = make(kernel, tmp_path)
    assert alloc.reserve(plan("a", (8, (0,), "strict")), guest("a"))["added"] == {}
    # a's 8 pages are still free (qemu has not mapped them) but promised: b must add 6
    assert alloc.reserve(plan("b", (8, (0,), "strict")), guest("b"))["added"] == {"0:2048": 6}
    assert kernel.nr(0, M2) == 16


def test_active_guests_pages_are_the_kernels_business(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("a", (8, (0,), "strict")), guest("a"))
    kernel.map(0, M2, 8)
    assert alloc.settle(guest("a"))["state"] == "active"
    alloc.reserve(plan("b", (4, (0,), "strict")), guest("b"))
    assert kernel.nr(0, M2) == 12


def test_resv_is_not_available(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    kernel.set(0, M2, persistent=10, resv=7)
    make(kernel, tmp_path).reserve(plan("a", (5, (0,), "strict")), guest("a"))
    assert kernel.nr(0, M2) == 12


def test_reserve_is_idempotent(new_kernel, tmp_path):
    kernel = new_kernel(nodes=2)
    alloc = make(kernel, tmp_path)
    p = plan("vm", (6, (1,), "strict"), uuid="0F5E7C1A-0000-4000-8000-000000000001")
    first = alloc.reserve(p, guest("vm", p.uuid))
    second = alloc.reserve(p, guest("vm", p.uuid))
    assert first["added"] == {"1:2048": 6} and second["added"] == {}
    assert kernel.nr(1, M2) == 6
    data = ledger(tmp_path)
    assert [g["key"] for g in data["guests"].values()] == ["0f5e7c1a-0000-4000-8000-000000000001"]
    # a bigger demand extends the claim by the difference only
    alloc.reserve(plan("vm", (9, (1,), "strict")), guest("vm", p.uuid))
    assert kernel.nr(1, M2) == 9
    assert ledger(tmp_path)["guests"]["vm"]["added"] == {"1:2048": 9}


def test_1g_pages(new_kernel, tmp_path):
    kernel = new_kernel(nodes=2)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("big", (2, (1,), "strict", G1), (4, (1,), "strict")), guest("big"))
    assert kernel.nr(1, G1) == 2 and kernel.nr(1, M2) == 4
    alloc.release(guest("big"))
    assert kernel.nr(1, G1) == 0 and kernel.nr(1, M2) == 0


# --- all or nothing ---------------------------------------------------------------------
def test_short_grant_rolls_every_pool_back(new_kernel, tmp_path):
    kernel = new_kernel(nodes=4)
    kernel.set(0, M2, persistent=3)
    kernel.set(2, M2, cap=5)  # fragmentation: node 2 can add only 5 pages
    alloc = make(kernel, tmp_path, retries=2)
    before = {k: (p.persistent, p.surplus) for k, p in kernel.pools.items()}
    demand = plan("vm", (10, (0,), "strict"), (10, (1,), "strict"), (10, (2,), "strict"),
                  (10, (3,), "strict"))
    with pytest.raises(PoolShort) as info:
        alloc.reserve(demand, guest("vm"))
    text = str(info.value)
    assert "domain 'vm': node 2, 2048 KiB pages: needed 10 more, the kernel granted 5" in text
    assert "buddyinfo" in text
    assert {k: (p.persistent, p.surplus) for k, p in kernel.pools.items()} == before
    # retried config.retries times: the node compacted, then the whole host (-1)
    assert kernel.compactions == [2, -1]
    assert "Tried: demote (0 x 2048 KiB pages split from larger pages hugexml owns), " \
           "compaction of node 2, compaction of the whole host." in text
    assert "What would help: fewer pages on this node; pages reserved at boot" in text
    if hasattr(kernel, "fk"):  # the real gateway wrote the fake's sysfs files
        assert kernel.fk.compactions(2) == 1
        assert kernel.fk.conf()["compactions"]["all"] == 1
        assert [t for rel, t in kernel.fk.writes() if rel.startswith(
            "sys/devices/system/node/node2/hugepages/hugepages-2048kB/nr_hugepages")][-1] == "0"
    data = ledger(tmp_path)
    assert data["guests"] == {} and data["intent"] is None and data["unreleased"] == {}


def test_compaction_can_save_a_short_grant(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    kernel.set(0, G1, cap=1)
    kernel.cap_after_compact[0] = 10
    messages = []
    alloc = Allocator(kernel.gw, str(tmp_path / "s"), make_config(), progress=messages.append)
    alloc.reserve(plan("vm", (4, (0,), "strict", G1)), guest("vm"))
    assert kernel.nr(0, G1) == 4
    assert any("compaction of node 0" in m for m in messages)


def test_timeout_bounds_the_retries(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    kernel.set(0, G1, cap=0)
    alloc = make(kernel, tmp_path, retries=100, timeout_s=0.0)
    with pytest.raises(PoolShort):
        alloc.reserve(plan("vm", (4, (0,), "strict", G1)), guest("vm"))
    assert len(kernel.compactions) == 0


def test_margin_violation_changes_nothing(new_kernel, tmp_path):
    kernel = new_kernel(nodes=2, mem_total_kib=8 * GIB, mem_free_kib=2 * GIB)
    alloc = make(kernel, tmp_path)
    with pytest.raises(MarginViolation) as info:
        alloc.reserve(plan("vm", (600, (1,), "strict")), guest("vm"))
    assert "floor of 1048576 KiB" in str(info.value)
    assert kernel.writes == []
    with pytest.raises(InsufficientPages):
        alloc.reserve(plan("vm", (2000, None, None)), guest("vm"))
    assert kernel.writes == []


def test_unknown_node_is_refused(new_kernel, tmp_path):
    with pytest.raises(NoSuchHostNode):
        make(new_kernel(nodes=2), tmp_path).reserve(plan("vm", (1, (4,), "strict")), guest("vm"))


NR = "sys/devices/system/node/node{}/hugepages/hugepages-2048kB/nr_hugepages"


@pytest.mark.parametrize("kind, rel", [
    ("write", NR.format(1)),  # node 0 grew, then node 1's write fails (EIO)
    ("read", NR.format(0)),   # node 0's write went through, its read-back fails
])
def test_sysfs_failure_mid_transaction_rolls_back(tmp_path, monkeypatch, kind, rel):
    """Faults injected in the fake sysfs: the real gateway turns the OSError into HostError
    (from the OSError) and the allocator puts every pool back."""
    kernel = make_kernel("fake", str(tmp_path / "root"), nodes=2)
    if kind == "write":
        kernel.fk.fail_next_write(rel, errno.EIO)
    else:  # armed by the write itself: the read-back right after it fails
        real_write, armed = kernel.fk.io.write_text, []

        def write(path, text):
            real_write(path, text)
            if path.endswith(rel) and not armed:
                armed.append(path)
                kernel.fk.fail_next_read(rel, errno.EIO)
        monkeypatch.setattr(kernel.fk.io, "write_text", write)
    alloc = make(kernel, tmp_path)
    with pytest.raises(HostError) as info:
        alloc.reserve(plan("vm", (4, (0,), "strict"), (4, (1,), "strict")), guest("vm"))
    assert str(info.value).startswith(str(tmp_path / "root" / rel))
    assert isinstance(info.value.__cause__, OSError)
    assert counts(kernel) == {0: 0, 1: 0}
    assert (NR.format(0), "4") in kernel.fk.writes()  # it did grow node 0 first
    data = ledger(tmp_path)
    assert data["guests"] == {} and data["intent"] is None and data["unreleased"] == {}


# --- release -------------------------------------------------------------------------
def test_release_leaves_the_baseline(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    kernel.set(0, M2, persistent=10, used=10)  # the admin's pool, all in use
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("vm", (5, (0,), "strict")), guest("vm"))
    assert kernel.nr(0, M2) == 15
    kernel.unmap(0, M2, 10)  # the admin's guests stop: 15 free pages now
    result = alloc.release(guest("vm"))
    assert result["released"] == {"0:2048": 5}
    assert kernel.nr(0, M2) == 10
    assert ledger(tmp_path)["baseline"] == {}  # hugexml holds nothing there any more


def test_release_never_frees_other_guests_pages(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("a", (6, (0,), "strict")), guest("a"))
    alloc.reserve(plan("b", (4, (0,), "strict")), guest("b"))
    kernel.map(0, M2, 6)
    alloc.settle(guest("a"))
    # b never started: its claim goes, its 4 pages go, a's 6 stay
    assert alloc.release(guest("b"))["released"] == {"0:2048": 4}
    assert kernel.nr(0, M2) == 6
    # a is released while qemu still holds its pages: nothing is freed, it is owed
    result = alloc.release(guest("a"))
    assert result["released"] == {} and result["unreleased"] == {"0:2048": 6}
    assert kernel.nr(0, M2) == 6 and kernel.pools[(0, M2)].surplus == 0
    kernel.unmap(0, M2, 6)
    assert alloc.reconcile()["released"] == {"0:2048": 6}
    assert kernel.nr(0, M2) == 0 and ledger(tmp_path)["guests"] == {}


def test_release_keeps_pages_pending_guests_were_promised(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("a", (6, (0,), "strict")), guest("a"))
    kernel.set(0, M2, persistent=10)  # admin adds 4 by hand
    alloc.reserve(plan("b", (4, (0,), "strict")), guest("b"))  # b is promised those 4
    assert alloc.release(guest("a"))["released"] == {"0:2048": 6}
    assert kernel.nr(0, M2) == 4


def test_release_policy_keep(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path, release_policy="keep")
    alloc.reserve(plan("a", (6, (0,), "strict")), guest("a"))
    result = alloc.release(guest("a"))
    assert result["kept"] == {"0:2048": 6} and result["released"] == {}
    assert kernel.nr(0, M2) == 6 and ledger(tmp_path)["kept"] == {"0:2048": 6}
    alloc.reserve(plan("b", (6, (0,), "strict")), guest("b"))  # reuses the kept pages
    assert kernel.nr(0, M2) == 6


def test_release_by_name_uuid_and_unknown(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    uuid = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
    alloc.reserve(plan("vm", (2, (0,), "strict"), uuid=uuid), guest("vm", uuid))
    assert alloc.release(guest("nobody"))["guest"] is None
    assert alloc.release(guest(uuid.upper()))["guest"] == uuid
    assert kernel.nr(0, M2) == 0


def test_stale_pending_claims_expire(new_kernel, tmp_path, clock):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path, clock=clock, pending_timeout_s=60)
    alloc.reserve(plan("a", (6, (0,), "strict")), guest("a"))
    clock.now += 61
    report = alloc.reconcile()
    assert report["expired"] == ["a"] and report["released"] == {"0:2048": 6}
    assert kernel.nr(0, M2) == 0


# --- admin pages ----------------------------------------------------------------------
def test_admin_pages_survive_guest_releases(new_kernel, tmp_path):
    kernel = new_kernel(nodes=2, mem_free_kib=8 * GIB)
    alloc = make(kernel, tmp_path)
    dry = alloc.allocate_admin(M2, 100, None, dry_run=True)
    assert dry["add"] == {"0:2048": 100} and kernel.writes == []
    alloc.allocate_admin(M2, 100, 1)
    alloc.reserve(plan("vm", (150, (1,), "strict")), guest("vm"))
    assert kernel.nr(1, M2) == 150  # 100 admin pages free, 50 added
    alloc.release(guest("vm"))
    assert kernel.nr(1, M2) == 100
    assert ledger(tmp_path)["admin"] == {"1:2048": 100}


def test_shrink_admin_never_takes_claimed_or_used_pages(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    kernel.set(0, M2, persistent=20)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("a", (5, (0,), "strict")), guest("a"))  # pending: 5 promised
    alloc.reserve(plan("b", (5, (0,), "strict")), guest("b"))
    kernel.map(0, M2, 5)
    alloc.settle(guest("b"))
    result = alloc.shrink_admin(M2, 100, None)
    assert result["removed"] == {"0:2048": 10}  # 20 - 5 promised - 5 in use
    assert kernel.nr(0, M2) == 10
    assert alloc.shrink_admin(M2, 1, 0)["removed"] == {}


def test_allocate_admin_all_or_nothing(new_kernel, tmp_path):
    kernel = new_kernel(nodes=2, mem_free_kib=4 * GIB)
    kernel.set(1, M2, cap=3)
    alloc = make(kernel, tmp_path, margin_min_kib=0, margin_percent=0, retries=0)
    with pytest.raises(PoolShort) as info:
        alloc.allocate_admin(M2, 3000, None)
    assert str(info.value).startswith("pool change: node 1")
    assert counts(kernel) == {0: 0, 1: 0}


# --- crashes, corruption, outside changes ------------------------------------------------
@pytest.mark.parametrize("crash_at", range(1, 12))
def test_kill_during_reserve_is_recovered(new_kernel, tmp_path, crash_at):
    kernel = new_kernel(nodes=2)
    kernel.set(0, M2, persistent=4)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("old", (4, (0,), "strict")), guest("old"))
    kernel.calls, kernel.fail_at, kernel.exc = 0, crash_at, Crash()
    try:
        alloc.reserve(plan("vm", (8, (0,), "strict"), (8, (1,), "strict")), guest("vm"))
    except Crash:
        pass
    kernel.dead, kernel.fail_at = False, None
    survivor = make(kernel, tmp_path)  # the next process
    survivor.reconcile()
    data = ledger(tmp_path)
    assert data["intent"] is None
    if "vm" in data["guests"]:  # the crash came after the commit
        assert counts(kernel) == {0: 12, 1: 8}
    else:
        assert counts(kernel) == {0: 4, 1: 0}
        assert data["guests"]["old"]["claimed"] == {"0:2048": 4}


def test_kill_between_sysfs_write_and_commit(new_kernel, tmp_path, monkeypatch):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    real_write = Store.write_journal
    writes = []

    def write(self, journal):
        writes.append(1)
        if len(writes) == 2:  # the commit, after the intent and the kernel writes
            raise Crash()
        real_write(self, journal)

    monkeypatch.setattr(Store, "write_journal", write)
    with pytest.raises(Crash):
        alloc.reserve(plan("vm", (8, (0,), "strict")), guest("vm"))
    monkeypatch.setattr(Store, "write_journal", real_write)
    assert kernel.nr(0, M2) == 8 and ledger(tmp_path)["intent"]["op"] == "grow"
    report = make(kernel, tmp_path).reconcile()
    assert report["recovered"]["pools"] == {"0:2048": {"added_then_owed_back": 8}}
    assert kernel.nr(0, M2) == 0


def test_kill_during_release_shrink(new_kernel, tmp_path):
    kernel = new_kernel(nodes=2)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("vm", (8, (0,), "strict"), (8, (1,), "strict")), guest("vm"))
    # the shrink of node 0 happens, then the process dies before node 1
    kernel.crash_on_write = len(kernel.writes) + 2
    with pytest.raises(Crash):
        alloc.release(guest("vm"))
    kernel.dead = False
    make(kernel, tmp_path).reconcile()
    assert counts(kernel) == {0: 0, 1: 0}
    data = ledger(tmp_path)
    assert data["guests"] == {} and data["unreleased"] == {} and data["baseline"] == {}


def test_a_corrupt_journal_is_quarantined_and_rebuilt_from_the_records(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    kernel.set(0, M2, persistent=3)  # the admin's
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("vm", (5, (0,), "strict")), guest("vm"))
    assert kernel.nr(0, M2) == 5
    (tmp_path / "state" / "host.json").write_text("{broken")
    alloc.reserve(plan("other", (1, (0,), "strict")), guest("other"))  # nobody is blocked
    assert "host journal unreadable" in " ".join(alloc.report["notes"])
    assert [q for q in quarantined(tmp_path / "state") if "host.json" in q]
    data = ledger(tmp_path)
    assert data["guests"]["vm"]["added"] == {"0:2048": 2}
    assert data["baseline"] == {"0:2048": 3}  # rebuilt: the kernel's pages no record names
    assert data["guests"]["other"]["added"] == {"0:2048": 1}  # vm's pending claim held
    alloc.release(guest("vm"))
    alloc.release(guest("other"))
    assert kernel.nr(0, M2) == 3  # every page hugexml added given back, no admin page taken


def test_a_corrupt_guest_record_affects_only_that_guest(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("vm", (4, (0,), "strict")), guest("vm"))
    alloc.reserve(plan("ok", (2, (0,), "strict")), guest("ok"))
    key = ledger(tmp_path)["guests"]["vm"]["key"]
    (tmp_path / "state" / "guests" / f"{key}.json").write_text(
        '{"schema": 2, "name": "vm", "state": "pending", "updated": "soon"}')
    alloc.settle(guest("ok"))
    assert ledger(tmp_path)["guests"]["ok"]["state"] == "active"
    assert quarantined(tmp_path / "state") and "vm" not in ledger(tmp_path)["guests"]
    assert ledger(tmp_path)["unreleased"] == {"0:2048": 4}  # vm's pages: owed back
    alloc.release(guest("ok"))
    assert kernel.nr(0, M2) == 0


def test_reconcile_clamps_and_reports_outside_changes(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("a", (6, (0,), "strict")), guest("a"))
    alloc.release(guest("a"))
    alloc.reserve(plan("b", (6, (0,), "strict")), guest("b"))
    kernel.set(0, M2, persistent=2)  # someone shrank the pool by hand
    report = alloc.reconcile()
    assert report["clamped"] == {"0:2048": {"guest:b": 4}}
    kernel.set(0, M2, persistent=9)  # and grew it: not ours, never freed
    assert alloc.reconcile()["unexplained_growth"] == {"0:2048": 7}
    alloc.release(guest("b"))
    assert kernel.nr(0, M2) == 7


def test_lock_timeout(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path, lock_timeout_s=0.2)
    with Store(str(tmp_path / "state")).lock():
        with pytest.raises(LockTimeout):
            alloc.reserve(plan("vm", (2, (0,), "strict")), guest("vm"))
    assert kernel.writes == []


def test_a_start_waiting_behind_a_slow_grow_outlasts_it_with_the_default_ratio(tmp_path):
    """One try of a slow 1G grow can outlast [allocation] timeout (the deadline is checked
    between tries): the default lock wait, scaled down here, must cover it."""
    import threading

    from fakekernel import FakeKernel

    from hugexml.core.config import Config

    fk = FakeKernel(tmp_path / "root", nodes=1, mem_kib_per_node=64 * GIB)
    fk.set_grant_delay(G1, 0.12)  # 4 pages: ~0.5 s in one write, beyond timeout_s
    timeout_s = 0.3
    lock_s = timeout_s * Config().lock_timeout_s / Config().timeout_s
    state = str(tmp_path / "state")

    def allocator():
        return Allocator(fk.gateway(), state, make_config(timeout_s=timeout_s, retries=0,
                                                          lock_timeout_s=lock_s))
    errors: list = []

    def big():
        try:
            allocator().reserve(plan("big", (4, (0,), "strict", G1)), guest("big"))
        except Exception as exc:
            errors.append(exc)
    slow = threading.Thread(target=big)
    slow.start()
    deadline = time.monotonic() + 5
    while not os.path.exists(os.path.join(state, "host.json")):
        assert time.monotonic() < deadline
        time.sleep(0.005)  # the slow grow wrote its intent: it holds the lock, adds pages
    try:
        allocator().reserve(plan("small", (2, (0,), "strict")), guest("small"))
    except Exception as exc:  # recorded, asserted below (after the slow grow ends)
        errors.append(exc)
    slow.join()
    assert errors == []
    assert fk.pool(0, G1).nr == 4 and fk.pool(0, M2).nr == 2


def test_snapshot_needs_no_lock(new_kernel, tmp_path):
    kernel = new_kernel(nodes=1)
    alloc = make(kernel, tmp_path)
    alloc.reserve(plan("vm", (2, (0,), "strict")), guest("vm"))
    with Store(str(tmp_path / "state")).lock():
        assert [r.state for r in alloc.snapshot().guests.values()] == ["pending"]
