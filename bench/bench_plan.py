#!/usr/bin/env python3
"""Benchmark ``hugexml.planning.plan``: planning libvirt's corpus, as a ratio against lxml parsing.

Plans every domain XML of the libvirt qemuxmlconf corpus (the .args cases plan, the .err
cases are rejected: both paths are timed) ``--rounds`` times, interleaved round by round
with the baseline measured in the same run on the same documents: a bare
``lxml.etree.fromstring`` with the default parser. The headline is the ratio of the median
round times (plan / baseline), then the split between parsing (domxml) and planning (plan,
pure). No absolute times are printed as results.

Usage: bench/bench_plan.py [--rounds 200] [--corpus DIR]. Runs in a few seconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lxml import etree  # noqa: E402

from hugexml.core.errors import HugexmlError  # noqa: E402
from hugexml.core.model import Domain, HostInfo  # noqa: E402
from hugexml.planning.plan import make_plan  # noqa: E402
from hugexml.xml.domxml import load_domain, plan_xml  # noqa: E402

HOST = HostInfo(default_page_kib=2048, page_sizes_kib=(2048, 1048576), nodes=(0, 1, 2, 3),
                auto_nodes=(0, 1, 2, 3))
CORPUS = Path(REPO) / "tests/data/libvirt-qemuxmlconf"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--corpus", default=os.environ.get("HUGEXML_CORPUS", str(CORPUS)))
    args = parser.parse_args()
    paths = sorted(Path(args.corpus).glob("*.xml"))
    if not paths:
        print(f"no domain XML under {args.corpus}", file=sys.stderr)
        return 2
    docs = [p.read_bytes() for p in paths]

    planned = rejected = 0
    parsed: list[Domain] = []
    for data in docs:  # warm imports, count outcomes, keep parsed domains for the pure part
        try:
            parsed.append(load_domain(data))
            plan_xml(data, HOST)
            planned += 1
        except HugexmlError:
            rejected += 1

    def base_round() -> None:
        for data in docs:
            etree.fromstring(data)

    def plan_round() -> None:
        for data in docs:
            try:
                plan_xml(data, HOST)
            except HugexmlError:
                pass

    def parse_round() -> None:
        for data in docs:
            try:
                load_domain(data)
            except HugexmlError:
                pass

    def pure_round() -> None:
        for dom in parsed:
            try:
                make_plan(dom, HOST)
            except HugexmlError:
                pass

    times: dict[str, list[float]] = {"base": [], "plan": [], "parse": [], "pure": []}
    rounds = {"base": base_round, "plan": plan_round, "parse": parse_round, "pure": pure_round}
    for _ in range(args.rounds):  # interleaved, so all see the same machine state
        for name, fn in rounds.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(ts) for name, ts in times.items()}

    print(f"corpus: {len(docs)} domains ({planned} planned, {rejected} rejected as libvirt "
          f"does), avg {sum(map(len, docs)) // len(docs)} bytes; median of {args.rounds} "
          f"interleaved rounds")
    print(f"  plan_xml (parse + plan) / lxml fromstring : {med['plan'] / med['base']:6.2f}x")
    print(f"  load_domain (safe parse + model) / lxml   : {med['parse'] / med['base']:6.2f}x")
    print(f"  make_plan (pure) / lxml fromstring        : {med['pure'] / med['base']:6.2f}x")
    print(f"  share of plan_xml spent in make_plan      : {med['pure'] / med['plan']:6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
