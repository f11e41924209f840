"""Allocation of 2,048 x 2M pages on node 0: hugexml against a raw sysfs write, same run.

Alternates (ABBA order), N rounds:
- raw:     write nr+2048 to node0's nr_hugepages, read it back, write nr back, read it back;
- hugexml: Allocator.reserve of a plan needing 2,048 pages on node 0 (lock, ledger intent,
           the same sysfs write, read back, commit), then Allocator.release.
Prints the ratio hugexml/raw (median of the per-round ratios, and their spread); never bare
times. Goal: <= 1.10.

``--kernel auto`` (default): ``real`` when running as root on a host with node 0 2M pools
(/sys/kernel/mm/hugepages/hugepages-2048kB), else ``fake`` with a printed note.
``--kernel real``: the real kernel (root), holding the real-host test lock
(/run/lock/hugexml-tests.lock) so it never runs during another real-host test; node 0's
2M nr_hugepages is restored exactly, even on error. This is the measurement the goal is
about. ``--kernel fake``: both sides go through the same ``FakeSysIO`` of a sysfs-tree
FakeKernel (tests/fakekernel.py) in a temporary directory, so "raw" is a file write and
the ratio only measures hugexml's bookkeeping overhead, not the kernel's allocation.

The margin is set to 0 (2,048 x 2M = 4 GiB may be most of a small test node's free memory);
the margin check itself is still computed. The state dir is on tmpfs (/dev/shm), as
/run/hugexml is on a hypervisor.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
PAGES = 2048
SIZE_KIB = 2048
NR_REL = f"sys/devices/system/node/node0/hugepages/hugepages-{SIZE_KIB}kB/nr_hugepages"
REAL_LOCK = "/run/lock/hugexml-tests.lock"
REAL_POOL = f"/sys/kernel/mm/hugepages/hugepages-{SIZE_KIB}kB"
FAKE_NOTE = ("bench_alloc: fake kernel: 'raw' is a file write in a temp dir, so this ratio only "
             "measures hugexml's bookkeeping overhead, not allocation against sysfs "
             "(run as root on a host with 2M hugepages for the real ratio)")


class Sysfs:
    """Raw reads and writes of node 0's nr_hugepages through a SysIO (the baseline)."""

    def __init__(self, io: Any, path: str) -> None:
        self.io, self.path = io, path

    def read_nr(self) -> int:
        return int(self.io.read_text(self.path))

    def write_nr(self, count: int) -> int:
        self.io.write_text(self.path, f"{count}\n")
        return self.read_nr()


def raw_round(sysfs: Sysfs, base: int) -> float:
    start = time.perf_counter()
    got = sysfs.write_nr(base + PAGES)
    back = sysfs.write_nr(base)
    took = time.perf_counter() - start
    if got != base + PAGES or back != base:
        raise SystemExit(f"raw: kernel granted {got - base} of {PAGES} pages")
    return took


def hugexml_round(alloc: Any, plan: Any, guest: Any) -> float:
    start = time.perf_counter()
    result = alloc.reserve(plan, guest)
    alloc.release(guest)
    took = time.perf_counter() - start
    if result["added"] != {f"0:{SIZE_KIB}": PAGES}:
        raise SystemExit(f"hugexml: added {result['added']}, wanted {PAGES} on node 0")
    return took


@contextmanager
def fake_host() -> Iterator[tuple[Any, Any]]:
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from fakekernel import FakeKernel

    with tempfile.TemporaryDirectory(prefix="hugexml-bench-root-") as root:
        fk = FakeKernel(root, nodes=2, sizes_kib=(SIZE_KIB, 1024 * 1024),
                        mem_kib_per_node=16 * 1024 * 1024)
        yield fk.host_root, fk.io


@contextmanager
def real_host() -> Iterator[tuple[Any, Any]]:
    from hugexml.core.root import HostRoot
    from hugexml.host.sysfs import SysIO

    root = HostRoot("/")
    if os.geteuid() != 0 or not os.path.exists(root.path(NR_REL)):
        raise SystemExit("bench_alloc --kernel real: needs root and node 0 2M hugepages")
    os.makedirs(os.path.dirname(REAL_LOCK), exist_ok=True)
    with open(REAL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # never during another real-host test
        yield root, SysIO()


def pick_kernel(choice: str) -> str:
    """``auto``: the real kernel when it can be measured here (root, 2M pools), else fake."""
    if choice != "auto":
        return choice
    if os.geteuid() == 0 and os.path.isdir(REAL_POOL):
        return "real"
    return "fake"


def measure(root: Any, io: Any, rounds: int) -> tuple[list[float], list[float]]:
    from hugexml.alloc.allocator import Allocator
    from hugexml.core.config import load_config
    from hugexml.core.model import DemandItem, GuestId, Plan
    from hugexml.core.typed import replace
    from hugexml.host.sysfs import HostGateway

    config = replace(load_config("/nonexistent", False), margin_min_kib=0, margin_percent=0)
    plan = Plan(domain="bench", uuid=None, consumers=(),
                demand=(DemandItem(page_size_kib=SIZE_KIB, host_nodes=(0,), pages=PAGES,
                                   policy="strict"),))
    guest = GuestId("bench")
    sysfs = Sysfs(io, root.path(NR_REL))
    tmp_base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    original = sysfs.read_nr()
    raw: list[float] = []
    hx: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hugexml-bench-", dir=tmp_base) as state:
        alloc = Allocator(HostGateway(root, io=io), state, config)
        try:
            rounds_: list[Callable[[], None]] = [
                lambda: raw.append(raw_round(sysfs, original)),
                lambda: hx.append(hugexml_round(alloc, plan, guest))]
            hugexml_round(alloc, plan, guest)  # warm up imports and caches once
            raw_round(sysfs, original)
            for i in range(rounds):  # ABBA order: neither side always runs first
                for run in (rounds_ if i % 2 == 0 else rounds_[::-1]):
                    run()
        finally:
            if sysfs.read_nr() != original:
                sysfs.write_nr(original)
            if sysfs.read_nr() != original:
                print(f"bench_alloc: could not restore {NR_REL} to {original}", file=sys.stderr)
    return raw, hx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--kernel", choices=("auto", "fake", "real"), default="auto")
    args = parser.parse_args(argv)
    kernel = pick_kernel(args.kernel)
    if kernel == "fake":
        print(FAKE_NOTE)
    with (fake_host() if kernel == "fake" else real_host()) as (root, io):
        raw, hx = measure(root, io, args.rounds)
    ratios = sorted(h / r for h, r in zip(hx, raw))
    q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(f"{PAGES} x 2M on node 0, {kernel} kernel, {args.rounds} alternating rounds: "
          f"hugexml reserve+release / raw sysfs grow+shrink = {med:.3f} "
          f"(median; quartiles {q1:.3f}..{q3:.3f}; ratio of medians "
          f"{statistics.median(hx) / statistics.median(raw):.3f}; goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
