"""Allocation of 2,048 x 2M pages on node 0: hugexml against a raw sysfs write, same run.

Alternates (ABBA order), N rounds:
- raw:     write nr+2048 to node0's nr_hugepages, read it back, write nr back;
- hugexml: Allocator.reserve of a plan needing 2,048 pages on node 0 (lock, ledger intent,
           the same sysfs write, read back, commit), then Allocator.release.
Prints the ratio of the medians (goal <= 1.10). Real kernel, root only; restores every
node-0 pool count exactly, even on error.

The margin is set to 0 for the benchmark (2,048 x 2M = 4 GiB may be most of a small test
node's free memory); the margin check itself is still computed. The state dir is on tmpfs
(/dev/shm), as /run/hugexml is on a hypervisor.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

PAGES = 2048
SIZE_KIB = 2048
NR = f"/sys/devices/system/node/node0/hugepages/hugepages-{SIZE_KIB}kB/nr_hugepages"


def read_nr() -> int:
    with open(NR) as fh:
        return int(fh.read())


def write_nr(count: int) -> int:
    with open(NR, "w") as fh:
        fh.write(str(count))
    return read_nr()


def raw_round(base: int) -> float:
    start = time.perf_counter()
    got = write_nr(base + PAGES)
    back = write_nr(base)
    took = time.perf_counter() - start
    if got != base + PAGES or back != base:
        raise SystemExit(f"raw: kernel granted {got - base} of {PAGES} pages")
    return took


def hugexml_round(alloc, plan, guest) -> float:
    start = time.perf_counter()
    result = alloc.reserve(plan, guest)
    alloc.release(guest)
    took = time.perf_counter() - start
    if result["added"] != {f"0:{SIZE_KIB}": PAGES}:
        raise SystemExit(f"hugexml: added {result['added']}, wanted {PAGES} on node 0")
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists(NR):
        print("bench_alloc: needs root and node 0 2M hugepages in sysfs", file=sys.stderr)
        return 2
    from hugexml.config import load_config
    from hugexml.host import HostGateway

    from hugexml.alloc import Allocator
    from hugexml.model import DemandItem, GuestId, Plan
    from hugexml.root import HostRoot

    config = dataclasses.replace(load_config("/nonexistent", False), margin_min_kib=0,
                                 margin_percent=0)
    plan = Plan(domain="bench", uuid=None, consumers=(),
                demand=(DemandItem(page_size_kib=SIZE_KIB, host_nodes=(0,), pages=PAGES,
                                   policy="strict"),))
    guest = GuestId("bench")
    tmp_base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    original = read_nr()
    raw: list[float] = []
    hx: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hugexml-bench-", dir=tmp_base) as state:
        alloc = Allocator(HostGateway(HostRoot("/")), state, config)
        try:
            # the pool may hold free pages of others: hugexml would use them, raw would not
            base = original
            hugexml_round(alloc, plan, guest)  # warm up imports and caches once
            for i in range(args.rounds):  # ABBA order: neither side always runs first
                if i % 2:
                    hx.append(hugexml_round(alloc, plan, guest))
                    raw.append(raw_round(base))
                else:
                    raw.append(raw_round(base))
                    hx.append(hugexml_round(alloc, plan, guest))
        finally:
            if read_nr() != original:
                write_nr(original)
            if read_nr() != original:
                print(f"bench_alloc: could not restore {NR} to {original}", file=sys.stderr)
    raw_ms, hx_ms = statistics.median(raw) * 1e3, statistics.median(hx) * 1e3
    print(f"2048 x 2M on node 0, {args.rounds} alternating rounds: raw sysfs {raw_ms:.1f} ms, "
          f"hugexml reserve+release {hx_ms:.1f} ms, ratio hugexml/raw {hx_ms / raw_ms:.3f} "
          f"(goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
