"""32 processes reserving at once on a fake 8-node host: all end consistent.

Each process is a separate interpreter with its own Allocator (tests/alloc_worker.py); they
meet only in the state dir (flock + ledger) and the fake kernel. Afterwards the kernel's
pools hold exactly the pages the ledger says were added, every claim is backed by a page,
and nothing was allocated twice.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from simkernel import GIB, FileSimKernel

from hugexml.alloc.ledger import Store
from hugexml.planning.records import PoolBook

HERE = Path(__file__).resolve().parent
WORKER = HERE / "alloc_worker.py"
NODES = 8
PROCS = 32


def _make_host(kind: str, root: Path):
    if kind == "sim":
        kernel = FileSimKernel(str(root / "sim.json"), nodes=NODES, sizes=(2048,),
                               mem_total_kib=64 * GIB, mem_free_kib=32 * GIB)
        kernel.save()
        return lambda: FileSimKernel.open(str(root / "sim.json"))
    from fakekernel import FakeKernel, FakeSysIO

    from hugexml.core.root import HostRoot
    from hugexml.host.sysfs import HostGateway

    FakeKernel(root, nodes=NODES, sizes_kib=(2048,), mem_kib_per_node=64 * GIB)
    return lambda: HostGateway(HostRoot(str(root)), io=FakeSysIO.from_root(str(root)))


def _job(i: int) -> tuple[str, int, str, bool]:
    if i % 4 == 0:
        nodes = "any"
    elif i % 4 == 3:
        nodes = f"{i % NODES},{(i + 1) % NODES}"
    else:
        nodes = str(i % NODES)
    return f"vm{i:02d}", 3 + (i * 7) % 29, nodes, i % 5 == 4


@pytest.mark.parametrize("kind", ["sim", "fake"])
def test_32_processes_reserve_at_once(tmp_path, kind):
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    open_gateway = _make_host(kind, root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    procs = []
    for i in range(PROCS):
        name, pages, nodes, release = _job(i)
        argv = [sys.executable, str(WORKER), kind, str(root), str(state), name, str(pages), nodes]
        procs.append((name, pages, release, subprocess.Popen(
            argv + (["release"] if release else []), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env)))
    results = {}
    for name, pages, _release, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results[name] = json.loads(out)
        assert "error" not in results[name], results[name]
        assert sum(results[name]["claimed"].values()) == pages
    state_ = Store(str(state)).load(repair=False)
    gw = open_gateway()
    live = {name for name, _, release, _ in procs if not release}
    assert {r.name for r in state_.guests.values()} == live and state_.notes == []
    assert state_.journal.intent is None
    for node in range(NODES):
        pool_ = (node, 2048)
        pool = gw.node_pool(node, 2048)
        book = state_.journal.pools.get(pool_, PoolBook())
        added = sum(r.added.get(pool_, 0) for r in state_.guests.values())
        claimed = sum(r.claimed.get(pool_, 0) for r in state_.guests.values())
        assert book.unreleased == 0 and book.guests == added
        # nothing was there before: every page is one hugexml added for a live guest ...
        assert pool.nr == added == book.hugexml_pages, pool_
        # ... and every page is promised exactly once (no double allocation, none missing)
        assert claimed == pool.nr == pool.free, pool_
