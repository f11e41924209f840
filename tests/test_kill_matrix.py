"""kill -9 at every step: every state write and every kernel call of every operation.

A process dies (``Crash``, a BaseException nothing in hugexml catches) at the k-th step of
an operation; its gateway and its store die with it. The next process runs ``reconcile``,
the guests stop, one more ``reconcile`` runs, and then:

- no intent survives, and the books explain the kernel in every pool they track;
- no page is stolen: every pool holds at least the pages that were not hugexml's;
- no page leaked: every pool is back at exactly those pages.

Each operation runs on the in-memory SimKernel and on the sysfs-tree FakeKernel behind the
real HostGateway. Real SIGKILLs of a process in the middle of a slow grow are at the end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from allocfix import G1, M2, guest, make_config, plan
from simkernel import Crash, make_kernel
from statefix import snapshot

from hugexml.alloc.allocator import Allocator
from hugexml.alloc.ledger import Store
from hugexml.core.errors import HugexmlError

STORE_STEPS = ("write_journal", "write_guest", "delete_guest", "quarantine")


class Dying:
    """Counts steps (state writes, kernel calls); the k-th raises Crash and every later one
    of this process raises Crash too."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at, self.steps, self.dead = kill_at, 0, False

    def step(self) -> None:
        if self.dead:
            raise Crash("a killed process")
        self.steps += 1
        if self.kill_at is not None and self.steps >= self.kill_at:
            self.dead = True
            raise Crash(f"killed at step {self.steps}")


def dying_process(kernel, state_dir: str, dying: Dying, monkeypatch) -> Allocator:
    gw = kernel.gw
    for name in ("node_pool", "global_pool", "node_meminfo", "set_node_nr", "compact",
                 "compact_all", "demote"):
        real = getattr(gw, name)

        def wrapped(*args, _real=real, **kwargs):
            dying.step()
            return _real(*args, **kwargs)

        monkeypatch.setattr(gw, name, wrapped)
    for name in STORE_STEPS:
        real = getattr(Store, name)

        def wrapped_store(self, *args, _real=real, **kwargs):
            dying.step()
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Store, name, wrapped_store)
    return Allocator(gw, state_dir, make_config(retries=1), clock=lambda: 1000.0)


# (name, setup before the kill, the operation that is killed)
def _reserve(a):
    return a.reserve(plan("vm", (8, (0,), "strict"), (4, (1,), "strict", G1)), guest("vm"))


def _release(a):
    return a.release(guest("old"))


def _admin(a):
    return a.allocate_admin(M2, 6, 1)


def _shrink(a):
    return a.shrink_admin(M2, 5, None)


def _reconcile(a):
    return a.reconcile()


def _demote(a):
    """A 2M start on node 1, where no fresh 2M page is to be had: a kept 1G page is split."""
    return a.reserve(plan("vm", (100, (1,), "strict")), guest("vm"))


OPERATIONS = {"reserve": _reserve, "release": _release, "allocate": _admin,
              "shrink": _shrink, "reconcile": _reconcile, "demote": _demote}


def setup_demote(kernel, state_dir: str) -> None:
    """One 1G page a stopped guest left in its keep window on node 1; node 1 fragmented."""
    alloc = Allocator(kernel.gw, state_dir, make_config(keep_for=((G1, 600.0),)),
                      clock=lambda: 1000.0)
    alloc.reserve(plan("big", (1, (1,), "strict", G1)), guest("big"))
    alloc.release(guest("big"))
    kernel.set(1, M2, cap=0)


def setup(kernel, state_dir: str, name: str = "") -> None:
    """The host before the operation: an admin's pages, a running guest, an owed page."""
    kernel.set(0, M2, persistent=3)                    # not hugexml's
    alloc = Allocator(kernel.gw, state_dir, make_config(), clock=lambda: 1000.0)
    alloc.reserve(plan("old", (5, (0,), "strict")), guest("old"))
    alloc.allocate_admin(M2, 2, 1)
    alloc.reserve(plan("run", (4, (1,), "strict")), guest("run"))
    kernel.map(1, M2, 4)
    alloc.settle(guest("run"))
    alloc.reserve(plan("gone", (2, (1,), "strict")), guest("gone"))
    kernel.map(1, M2, 2)             # its pages still mapped when it is released:
    alloc.release(guest("gone"))     # owed back, given back once free
    kernel.unmap(1, M2, 2)
    if name == "demote":
        setup_demote(kernel, state_dir)


def cases():
    for kind in ("sim", "fake"):
        for name in OPERATIONS:
            yield kind, name


def count_steps(tmp_path, kind, name, monkeypatch) -> int:
    kernel = make_kernel(kind, str(tmp_path / "count-root"), nodes=2)
    state = str(tmp_path / "count-state")
    setup(kernel, state, name)
    dying = Dying(None)
    with monkeypatch.context() as m:
        OPERATIONS[name](dying_process(kernel, state, dying, m))
    return dying.steps


def finish_and_check(kernel, state_dir: str, outside: dict) -> None:
    alloc = Allocator(kernel.gw, state_dir, make_config(), clock=lambda: 2000.0)
    alloc.reconcile()
    data = snapshot(state_dir)
    assert data["intent"] is None
    for pool, p in kernel.pools.items():
        assert p.persistent >= outside[pool], f"{pool}: a page that was not hugexml's freed"
    kernel.unmap(1, M2, 4)                               # the guests stop
    for g in ("vm", "old", "run"):
        alloc.release(guest(g))
    for pk, pages in snapshot(state_dir)["admin"].items():   # the admin takes back his own
        node, size = map(int, pk.split(":"))
        alloc.shrink_admin(size, pages, node)
    alloc.reconcile()
    for pool, p in kernel.pools.items():
        assert p.persistent == outside[pool], f"{pool}: {p.persistent - outside[pool]} leaked"
    assert snapshot(state_dir)["guests"] == {}


@pytest.mark.parametrize("kind,name", list(cases()))
def test_a_kill_at_every_step_is_recovered(tmp_path, monkeypatch, kind, name):
    steps = count_steps(tmp_path, kind, name, monkeypatch)
    assert steps >= 3
    for k in range(1, steps + 1):
        root, state = str(tmp_path / f"root{k}"), str(tmp_path / f"state{k}")
        kernel = make_kernel(kind, root, nodes=2)
        setup(kernel, state, name)
        outside = {pool: 0 for pool in kernel.pools}
        outside[(0, M2)] = 3
        dying = Dying(k)
        with monkeypatch.context() as m:
            try:
                OPERATIONS[name](dying_process(kernel, state, dying, m))
            except (Crash, HugexmlError):
                pass
        kernel.dead = False
        finish_and_check(kernel, state, outside)


# --- real SIGKILLs ------------------------------------------------------------------------
WORKER = r"""
import sys
sys.path[:0] = [sys.argv[1]]
from fakekernel import FakeKernel
from allocfix import guest, make_config, plan
from hugexml.alloc.allocator import Allocator
fk = FakeKernel.attach(sys.argv[2])
alloc = Allocator(fk.gateway(), sys.argv[3], make_config(retries=0, timeout_s=60,
                                                        lock_timeout_s=120))
print("ready", flush=True)
alloc.reserve(plan("vm", (12, (0,), "strict", 1048576), (40, (1,), "strict")), guest("vm"))
print("done", flush=True)
"""


@pytest.mark.parametrize("delay_ms", [5, 40, 120, 400, 900])
def test_a_real_sigkill_during_a_slow_grow_is_recovered(tmp_path, delay_ms):
    from fakekernel import FakeKernel

    fk = FakeKernel(tmp_path / "root", nodes=2, mem_kib_per_node=64 * 1048576)
    fk.set_grant_delay(G1, 0.08)  # ~1 s for 12 x 1G: the kill lands inside the grow
    state = str(tmp_path / "state")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", WORKER, here, str(tmp_path / "root"), state],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(delay_ms / 1000)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    if delay_ms >= 120:  # the grow had begun: its intent is on disk, pages half added
        assert snapshot(state)["intent"] is not None
    alloc = Allocator(fk.gateway(), state, make_config())
    report = alloc.reconcile()
    json.dumps(report)  # a report is plain data
    alloc.release(guest("vm"))
    alloc.reconcile()
    assert fk.pool(0, G1).nr == 0 and fk.pool(1, M2).nr == 0, report
    assert snapshot(state)["intent"] is None
