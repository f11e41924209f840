#!/usr/bin/env python3
"""How many runtime 1G pages each step of hugexml's short-grant path wins on this host.

The steps are the ones ``hugexml.alloc.txn.PoolTxn`` takes after a short grant (demote serves
smaller sizes, not 1G itself): ask, compact the node, compact the whole host, drop the page
cache and compact again. Each step asks the kernel for ``--want`` 1G pages on the node and
reports how many more it holds than after the step before. Counts, not times: the ratios
are to the first ask in the same run. Root only; it takes the real-host test lock and puts
the pool back as it found it.

    .venv/bin/python bench/bench_fragmentation.py [--node 0] [--want 16] [--json]
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys

G1 = 1048576
LOCK = "/run/lock/hugexml-tests.lock"


def main() -> int:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from hugexml.core.root import HostRoot
    from hugexml.host.sysfs import HostGateway

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--want", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gw = HostGateway(HostRoot("/"))
    if G1 not in gw.page_sizes_kib():
        print("no 1G pages on this kernel", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = gw.node_pool(args.node, G1).nr
        target = start + args.want
        rows = []
        try:
            steps = [("ask", lambda: None),
                     (f"compact node {args.node}", lambda: gw.compact(args.node)),
                     ("compact the whole host", gw.compact_all),
                     ("drop_caches + compact", lambda: (gw.drop_caches(1), gw.compact_all()))]
            have = start
            for name, step in steps:
                step()
                now = gw.set_node_nr(args.node, G1, target)
                rows.append({"step": name, "pages": now - start, "won": now - have})
                have = now
        finally:
            gw.set_node_nr(args.node, G1, start)
    free_gib = gw.node_meminfo(args.node)["MemFree"] / 1048576
    if args.json:
        print(json.dumps({"node": args.node, "want": args.want, "mem_free_gib": free_gib,
                          "steps": rows}, indent=2))
        return 0
    print(f"node {args.node}: asked for {args.want} x 1G with {free_gib:.1f} GiB free")
    first = rows[0]["pages"] or 1
    for row in rows:
        print(f"  {row['step']:<26} {row['pages']:>3} pages (+{row['won']}), "
              f"{row['pages'] / first:.2f}x the first ask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
