"""One table of hugetlb scenarios, run on the fake kernel (tests/fakekernel.py) and on the
real 4-node kernel of the numavm VM (tests/numavm/test_vm_fakekernel.py): where the two
disagree, the fake is wrong. Also run on the fake alone everywhere (tests/test_fakekernel.py),
with the real kernel's answers the VM gave written into the table.

A scenario is a list of steps; after each step every counter hugexml reads is observed
(per-node nr/free/surplus of both sizes, the global pools, the node meminfo and /proc/meminfo
hugepage lines, MemFree per node) and compared as a change from the scenario's start.
Steps:
  ("node", NODE, SIZE, COUNT)       write a node's nr_hugepages
  ("global", SIZE, COUNT)           write the global nr_hugepages
  ("bound", NODE, SIZE, COUNT)      write nr_hugepages_mempolicy bound to NODE (MPOL_BIND)
  ("use", NODE, SIZE, PAGES, TAG)   a guest faults PAGES on NODE (a hugetlbfs file)
  ("unuse", TAG)                    it unmaps and deletes the file: the pages are freed
  ("reserve", SIZE, PAGES, TAG)     a mapping reserves PAGES without touching them
  ("unreserve", TAG)                the mapping goes away
  ("demote", NODE, SIZE, PAGES)     write the node's ``demote`` (1G -> 2M pages)
  ("short", NODE, SIZE, COUNT)      ask more than the node holds: compared with a tolerance
"""
from __future__ import annotations

import os
from typing import Any

M2, G1 = 2048, 1 << 20
NODE = "sys/devices/system/node"
GLOBAL = "sys/kernel/mm/hugepages"

SCENARIOS: dict[str, list[tuple]] = {
    "grow one node": [("node", 1, M2, 50), ("node", 1, M2, 0)],
    "grow then shrink": [("node", 1, M2, 50), ("node", 1, M2, 10), ("node", 1, M2, 0)],
    "1G on one node": [("node", 3, G1, 1), ("node", 3, G1, 0)],
    "shrink below in-use: surplus": [
        ("node", 1, M2, 10), ("use", 1, M2, 6, "a"), ("node", 1, M2, 2), ("unuse", "a"),
        ("node", 1, M2, 0)],
    "grow turns surplus back": [
        ("node", 1, M2, 10), ("use", 1, M2, 6, "a"), ("node", 1, M2, 0), ("node", 1, M2, 8),
        ("unuse", "a"), ("node", 1, M2, 0)],
    "reserved pages stay, then go": [
        ("node", 3, M2, 10), ("reserve", M2, 4, "r"), ("node", 3, M2, 0), ("unreserve", "r")],
    "reserve, use some, shrink": [
        ("node", 2, M2, 8), ("reserve", M2, 5, "r"), ("use", 2, M2, 2, "u"), ("node", 2, M2, 1),
        ("unuse", "u"), ("unreserve", "r"), ("node", 2, M2, 0)],
    "node writes keep other nodes": [
        ("node", 1, M2, 6), ("node", 3, M2, 3), ("node", 3, M2, 1), ("node", 1, M2, 0),
        ("node", 3, M2, 0)],
    "global write after a node write": [
        ("node", 2, M2, 1), ("node", 2, M2, 0),            # the kernel's next node: 2
        ("node", 1, M2, 6), ("global", M2, 10), ("global", M2, 7), ("global", M2, 0)],
    "demote one 1G page": [
        ("node", 3, G1, 1), ("demote", 3, G1, 1), ("node", 3, M2, 0), ("node", 3, G1, 0)],
    "demote keeps reserved pages": [
        ("node", 1, G1, 1), ("reserve", G1, 1, "r"), ("demote", 1, G1, 1), ("unreserve", "r"),
        ("node", 1, G1, 0)],
    "node write while another node has surplus": [
        ("node", 1, M2, 10), ("use", 1, M2, 6, "a"), ("node", 1, M2, 2), ("node", 3, M2, 4),
        ("node", 3, M2, 0), ("unuse", "a"), ("node", 1, M2, 0), ("node", 3, M2, 0)],
    # nr_hugepages_mempolicy: a global persistent target, pages added and freed only on the
    # bound node (the host gateway's bound writes, hugexml/host/mempolicy.py)
    "bound writes change only the bound node": [
        ("node", 1, M2, 6), ("bound", 3, M2, 10), ("bound", 1, M2, 8), ("bound", 3, M2, 4),
        ("node", 1, M2, 0)],
    # surplus pages in use on node 1 keep node 3's free pages (min_count): a bound shrink
    # turns them into free surplus pages; counted back, node 1 lends its surplus pages as
    # persistent ones for a moment, node 3 shrinks, node 1 takes them back
    "bound shrink below another node's surplus": [
        ("node", 1, M2, 10), ("use", 1, M2, 6, "a"), ("node", 1, M2, 2), ("bound", 3, M2, 6),
        ("bound", 3, M2, 2), ("bound", 3, M2, 6), ("bound", 1, M2, 10), ("bound", 3, M2, 6),
        ("bound", 1, M2, 2), ("unuse", "a"), ("node", 1, M2, 0)],
    "short grant, 2M": [("short", 2, M2, 4096), ("node", 2, M2, 0)],
    "short grant, 1G": [("short", 1, G1, 8), ("node", 1, G1, 0)],
}


def read(root: str, rel: str) -> int:
    with open(os.path.join(root, rel), encoding="ascii") as fh:
        return int(fh.read().strip())


def meminfo(root: str, rel: str) -> dict[str, int]:
    out = {}
    with open(os.path.join(root, rel), encoding="ascii") as fh:
        for line in fh:
            words = line.replace(":", " ").split()
            if words and words[0] == "Node":
                words = words[2:]
            if len(words) >= 2 and words[1].isdigit():
                out[words[0]] = int(words[1])
    return out


HP_LINES = ("HugePages_Total", "HugePages_Free", "HugePages_Surp")


def observe(root: str, nodes: int) -> dict[str, Any]:
    """Every counter hugexml reads, from a real or fake root."""
    obs: dict[str, Any] = {}
    for size in (M2, G1):
        for n in range(nodes):
            base = f"{NODE}/node{n}/hugepages/hugepages-{size}kB/"
            obs[f"node{n} {size}"] = tuple(read(root, base + f) for f in (
                "nr_hugepages", "free_hugepages", "surplus_hugepages"))
        base = f"{GLOBAL}/hugepages-{size}kB/"
        obs[f"global {size}"] = tuple(read(root, base + f) for f in (
            "nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages"))
    for n in range(nodes):
        info = meminfo(root, f"{NODE}/node{n}/meminfo")
        obs[f"node{n} meminfo"] = tuple(info[k] for k in HP_LINES)
        obs[f"node{n} MemFree"] = info["MemFree"]
    info = meminfo(root, "proc/meminfo")
    obs["meminfo"] = tuple(info[k] for k in (*HP_LINES, "HugePages_Rsvd", "Hugetlb"))
    return obs


def delta(now: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in now.items():
        if isinstance(value, tuple):
            out[key] = tuple(a - b for a, b in zip(value, start[key]))
        else:
            out[key] = value - start[key]
    return out


def differences(real: dict[str, Any], fake: dict[str, Any], memfree_tol_kib: int) -> list[str]:
    """What the fake got wrong, counters exact, MemFree within the tolerance."""
    out = []
    for key in sorted(real):
        a, b = real[key], fake[key]
        if key.endswith("MemFree"):
            if abs(a - b) > memfree_tol_kib:
                out.append(f"{key}: real {a:+} kB, fake {b:+} kB")
        elif a != b:
            out.append(f"{key}: real {a}, fake {b}")
    return out


class Driver:
    """The actions of a scenario step; subclasses act on the real or the fake kernel."""

    root = "/"

    def node(self, node: int, size: int, count: int) -> None: ...
    def glob(self, size: int, count: int) -> None: ...
    def bound(self, node: int, size: int, count: int) -> None: ...
    def use(self, node: int, size: int, pages: int, tag: str) -> None: ...
    def unuse(self, tag: str) -> None: ...
    def reserve(self, size: int, pages: int, tag: str) -> None: ...
    def unreserve(self, tag: str) -> None: ...
    def demote(self, node: int, size: int, pages: int) -> None: ...

    def step(self, step: tuple) -> None:
        kind, args = step[0], step[1:]
        if kind in ("node", "short"):
            self.node(*args)
        elif kind == "global":
            self.glob(*args)
        else:
            getattr(self, kind)(*args)


def run(driver: Driver, steps: list[tuple], nodes: int) -> list[dict[str, Any]]:
    """Each step's observation, as a change from the start."""
    start = observe(driver.root, nodes)
    out = []
    for step in steps:
        driver.step(step)
        out.append(delta(observe(driver.root, nodes), start))
    return out


class FakeDriver(Driver):
    def __init__(self, fk: Any) -> None:
        self.fk = fk
        self.root = fk.root
        self.held: dict[str, tuple[str, int, int, int]] = {}

    def _write(self, rel: str, value: int) -> None:
        self.fk.io.write_text(os.path.join(self.fk.root, rel), f"{value}\n")

    def node(self, node: int, size: int, count: int) -> None:
        self._write(f"{NODE}/node{node}/hugepages/hugepages-{size}kB/nr_hugepages", count)

    def glob(self, size: int, count: int) -> None:
        self._write(f"{GLOBAL}/hugepages-{size}kB/nr_hugepages", count)

    def bound(self, node: int, size: int, count: int) -> None:
        self.fk.io.set_mempolicy((node,))
        try:
            self._write(f"{GLOBAL}/hugepages-{size}kB/nr_hugepages_mempolicy", count)
        finally:
            self.fk.io.set_mempolicy(None)

    def use(self, node: int, size: int, pages: int, tag: str) -> None:
        self.fk.use(node, size, pages)
        self.held[tag] = ("use", node, size, pages)

    def unuse(self, tag: str) -> None:
        _, node, size, pages = self.held.pop(tag)
        self.fk.unuse(node, size, pages)

    def reserve(self, size: int, pages: int, tag: str) -> None:
        self.fk.reserve(size, pages)
        self.held[tag] = ("reserve", -1, size, pages)

    def unreserve(self, tag: str) -> None:
        _, _node, size, pages = self.held.pop(tag)
        self.fk.unreserve(size, pages)

    def demote(self, node: int, size: int, pages: int) -> None:
        self._write(f"{NODE}/node{node}/hugepages/hugepages-{size}kB/demote", pages)


def fake_like(tmp: str, totals_kib: list[int], free_kib: list[int],
              release: tuple[int, int]) -> Any:
    """A FakeKernel with the given nodes' MemTotal and MemFree (e.g. the VM's), modelling
    the given kernel release (major, minor)."""
    from fakekernel import FakeKernel

    used = [t - f for t, f in zip(totals_kib, free_kib)]
    return FakeKernel(tmp, nodes=len(totals_kib), mem_kib_per_node=totals_kib,
                      used_kib_per_node=used, node_write_counts_surplus=release < (6, 7),
                      gigantic_whole_gib=True)
