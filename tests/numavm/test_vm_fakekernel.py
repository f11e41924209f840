"""The fake kernel checked against the real one: every scenario of kernelscenarios.SCENARIOS
runs on the VM's 4-node kernel and on a FakeKernel with the same nodes' MemTotal and MemFree,
and every counter must change the same way (MemFree within a tolerance: the real kernel's
own allocations move it too). A difference is the fake's bug: fix tests/fakekernel.py.
"""
from __future__ import annotations

import pytest
from kernelscenarios import SCENARIOS, Driver, FakeDriver, differences, fake_like, run
from vmkit import G1, HugeFile, bound_to, node_meminfo, nodes, pools, restore, write_text

pytestmark = pytest.mark.numavm("runtime")
# MemFree is not exact on a real kernel: the per-cpu lists keep freed 2M blocks (MemFree does
# not count them) and hand them out again (MemFree does not move), a 1G grow drains them, and
# the kernel's own allocations move it too. Seen on 6.1: 20 of a 50-page grow came from the
# per-cpu lists; a 1G grow took 1002 MiB off MemFree. The fake counts every page exactly.
MEMFREE_TOL_KIB = 128 * 1024  # per-cpu lists cache 2M blocks: 72 MiB seen on 6.1
SHORT_TOL_KIB = 96 * 1024


class RealDriver(Driver):
    root = "/"

    def __init__(self) -> None:
        self.held: dict[str, HugeFile] = {}

    def node(self, node: int, size: int, count: int) -> None:
        write_text(f"/sys/devices/system/node/node{node}/hugepages/hugepages-{size}kB/"
                   "nr_hugepages", f"{count}\n")

    def glob(self, size: int, count: int) -> None:
        write_text(f"/sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages", f"{count}\n")

    def bound(self, node: int, size: int, count: int) -> None:
        with bound_to(node):
            write_text(f"/sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages_mempolicy",
                       f"{count}\n")

    def use(self, node: int, size: int, pages: int, tag: str) -> None:
        self.held[tag] = HugeFile(size)
        self.held[tag].touch(node, pages)

    def unuse(self, tag: str) -> None:
        self.held.pop(tag).close()

    def reserve(self, size: int, pages: int, tag: str) -> None:
        self.held[tag] = HugeFile(size)
        self.held[tag].reserve(pages)

    unreserve = unuse

    def demote(self, node: int, size: int, pages: int) -> None:
        write_text(f"/sys/devices/system/node/node{node}/hugepages/hugepages-{size}kB/demote",
                   f"{pages}\n")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fake_and_real_kernel_agree(numavm_group, tmp_path, name):
    steps = SCENARIOS[name]
    before = pools()
    all_nodes = nodes()
    info = [node_meminfo(n) for n in all_nodes]
    real_driver = RealDriver()
    try:
        real = run(real_driver, steps, len(all_nodes))
    finally:
        for held in real_driver.held.values():
            held.close()
        restore(before)
    fk = fake_like(str(tmp_path / "fake"), [i["MemTotal"] for i in info],
                   [i["MemFree"] for i in info], _version())
    fake = run(FakeDriver(fk), steps, len(all_nodes))
    problems = []
    for i, (step, r, f) in enumerate(zip(steps, real, fake)):
        tol = SHORT_TOL_KIB if any(s[0] == "short" for s in steps[:i + 1]) else MEMFREE_TOL_KIB
        if step[0] == "short":  # compare the grant, then the rest
            key = f"node{step[1]} {step[2]}"
            grant_r, grant_f = r[key][0], f[key][0]
            # 2M: within the tolerance. 1G: the fake's whole-GiB model is an upper bound
            # (seen: 2 of 2 on a 4G node); fragmentation may leave the real kernel fewer.
            wrong = (not 1 <= grant_r <= grant_f) if step[2] >= G1 else (
                abs(grant_r - grant_f) * step[2] > tol)
            if wrong:
                problems.append(f"step {i} {step}: real granted {grant_r}, fake {grant_f}")
            continue
        problems += [f"step {i} {step}: {d}" for d in differences(r, f, tol)]
    assert not problems, f"{name}: the fake kernel differs from Linux {_release()}:\n" + \
        "\n".join(problems)
    assert pools() == before


def _release() -> str:
    with open("/proc/sys/kernel/osrelease") as fh:
        return fh.read().strip()


def _version() -> tuple[int, int]:
    major, minor = _release().split(".")[:2]
    return int(major), int(minor)
