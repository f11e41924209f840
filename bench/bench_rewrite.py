#!/usr/bin/env python3
"""Benchmark ``hugexml rewrite``: batch throughput and per-process cost, as ratios.

1. Batch: rewrite N generated domains (0-4 guest cells of mixed sizes, comments, tabs or
   spaces, CRLF or LF, with or without a <memoryBacking>) in one process with
   ``--page-size auto``. Reported as domains/s next to the baseline measured in the same
   run on the same documents: a bare lxml parse + serialise (``etree.fromstring`` +
   ``etree.tostring``), and the ratio between the two.
2. Per process: R runs of ``python -m hugexml rewrite FILE`` next to R runs of
   ``python -c 'import lxml.etree'`` with the same interpreter, interleaved; the ratio of the
   medians is the headline.

Usage: bench/bench_rewrite.py [--domains 10000] [--runs 50] [--seed 1]. Goal: >= 2,000
domains/s in batch. Runs in well under a minute.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hugexml.core.model import HostInfo  # noqa: E402
from hugexml.planning.pagesize import Pick  # noqa: E402
from hugexml.xml.rewrite import rewrite_xml  # noqa: E402

HOST = HostInfo(default_page_kib=2048, page_sizes_kib=(2048, 1048576), nodes=(0, 1, 2, 3))
CELL_MIB = (512, 1024, 1536, 2048, 3072, 4096, 1025)


def make_domain(rng: random.Random, i: int) -> bytes:
    unit = rng.choice(["  ", "    ", "\t"])
    nl = rng.choice(["\n", "\n", "\r\n"])
    ncells = rng.choice([0, 0, 1, 2, 2, 4])
    cells = [rng.choice(CELL_MIB) for _ in range(ncells)]
    memory = sum(cells) or rng.choice(CELL_MIB)
    out = [f"<domain type='kvm' id='{i}'>"]

    def add(depth: int, text: str) -> None:
        if rng.random() < 0.15:
            out.append(f"{unit * depth}<!-- generated line {len(out)} -->")
        out.append(unit * depth + text)

    add(1, f"<name>bench-{i}</name>")
    add(1, f"<uuid>00000000-0000-4000-8000-{i:012d}</uuid>")
    add(1, "<description>it&apos;s a benchmark &amp; more</description>")
    add(1, f"<memory unit='MiB'>{memory}</memory>")
    add(1, f"<currentMemory unit='MiB'>{memory}</currentMemory>")
    if rng.random() < 0.5:
        add(1, "<memoryBacking>")
        add(2, rng.choice(["<hugepages/>", "<hugepages><page size='2' unit='M'/></hugepages>"]))
        if rng.random() < 0.5:
            add(2, "<nosharepages/>")
        add(1, "</memoryBacking>")
    add(1, f"<vcpu placement='static'>{max(1, ncells)}</vcpu>")
    if ncells:
        add(1, "<numatune>")
        add(2, "<memory mode='strict' nodeset='0-1'/>")
        add(1, "</numatune>")
    add(1, "<os>")
    add(2, "<type arch='x86_64' machine='pc-q35-7.2'>hvm</type>")
    add(2, "<boot dev='hd'/>")
    add(1, "</os>")
    add(1, "<features><acpi/><apic/></features>")
    if ncells:
        add(1, "<cpu mode='host-passthrough'>")
        add(2, "<numa>")
        for c, mib in enumerate(cells):
            add(3, f"<cell id='{c}' cpus='{c}' memory='{mib}' unit='MiB'/>")
        add(2, "</numa>")
        add(1, "</cpu>")
    add(1, "<clock offset='utc'/>")
    add(1, "<devices>")
    add(2, "<emulator>/usr/bin/qemu-system-x86_64</emulator>")
    for d in range(rng.randint(1, 3)):
        add(2, "<disk type='file' device='disk'>")
        add(3, "<driver name='qemu' type='qcow2'/>")
        add(3, f"<source file='/var/lib/libvirt/images/bench-{i}-{d}.qcow2'/>")
        add(3, f"<target dev='vd{chr(97 + d)}' bus='virtio'/>")
        add(2, "</disk>")
    add(2, "<interface type='network'><source network='default'/><model type='virtio'/>"
           "</interface>")
    add(2, "<console type='pty'/>")
    add(1, "</devices>")
    out.append("</domain>")
    return (nl.join(out) + nl).encode()


def batch(docs: list[bytes]) -> tuple[float, float, int]:
    from lxml import etree

    t0 = time.perf_counter()
    for data in docs:
        etree.tostring(etree.fromstring(data))
    baseline = time.perf_counter() - t0
    changed = 0
    t0 = time.perf_counter()
    for data in docs:
        changed += rewrite_xml(data, page_size=Pick.AUTO, host=HOST).changed
    rewrite = time.perf_counter() - t0
    return rewrite, baseline, changed


def fake_root(base: str) -> str:
    root = os.path.join(base, "root")
    os.makedirs(os.path.join(root, "proc"))
    with open(os.path.join(root, "proc", "meminfo"), "w") as fh:
        fh.write("Hugepagesize:       2048 kB\n")
    for size in (2048, 1048576):
        os.makedirs(os.path.join(root, f"sys/kernel/mm/hugepages/hugepages-{size}kB"))
        os.makedirs(os.path.join(root, f"sys/devices/system/node/node0/hugepages/"
                                       f"hugepages-{size}kB"))
    return root


def per_process(doc: bytes, runs: int) -> tuple[float, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        root = fake_root(tmp)
        path = os.path.join(tmp, "vm.xml")
        with open(path, "wb") as fh:
            fh.write(doc)
        ours = [sys.executable, "-m", "hugexml", "--root", root, "rewrite", path,
                "--page-size", "auto"]
        base = [sys.executable, "-c", "import lxml.etree"]
        t_ours, t_base = [], []
        for _ in range(runs):  # interleaved, so both see the same machine state
            for cmd, sink in ((base, t_base), (ours, t_ours)):
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                sink.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    docs = [make_domain(rng, i) for i in range(args.domains)]
    rewrite_xml(docs[0], page_size=Pick.AUTO, host=HOST)  # warm imports

    rewrite_s, baseline_s, changed = batch(docs)
    rate = len(docs) / rewrite_s
    base_rate = len(docs) / baseline_s
    print(f"batch: {len(docs)} domains ({changed} changed), avg {sum(map(len, docs)) // len(docs)}"
          f" bytes")
    print(f"  hugexml rewrite --page-size auto : {rate:9.0f} domains/s")
    print(f"  baseline lxml parse + serialise  : {base_rate:9.0f} domains/s (same run)")
    print(f"  ratio rewrite/baseline time      : {rewrite_s / baseline_s:9.2f}x")
    print(f"  goal >= 2000 domains/s           : {'met' if rate >= 2000 else 'NOT met'}")

    ours, base = per_process(docs[1], args.runs)
    print(f"per process: median of {args.runs} interleaved runs each")
    print(f"  python -m hugexml rewrite FILE / python -c 'import lxml.etree' : "
          f"{ours / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
