"""The keep window and demote, on the SimKernel and on the sysfs FakeKernel through the real
HostGateway: 1G pages a stopped guest gave up stay for the next start, go back when the
window ends or a start needs the memory, and larger owned pages split into 2M ones before
any compaction. An admin's page is never kept, demoted or given back.
"""
from __future__ import annotations

import pytest
from allocfix import G1, M2, guest, make_config, plan
from simkernel import GIB, make_kernel
from statefix import snapshot

from hugexml.alloc.allocator import Allocator
from hugexml.core.errors import MarginViolation

WINDOW = ((G1, 600.0), (M2, 0.0))  # the default: 1G=10m 2M=0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sim", "fake"])
def kernel(request, tmp_path):
    return make_kernel(request.param, str(tmp_path / "root"), nodes=2,
                       mem_total_kib=16 * GIB, mem_free_kib=12 * GIB)


def alloc(kernel, tmp_path, clock, **config):
    config.setdefault("keep_for", WINDOW)
    return Allocator(kernel.gw, str(tmp_path / "state"), make_config(**config), clock=clock)


def run_guest(a, kernel, name, pages, node, size=G1):
    """prepare, started, stop: the guest's pages mapped while it runs."""
    result = a.reserve(plan(name, (pages, (node,), "strict", size)), guest(name))
    kernel.map(node, size, pages)
    a.settle(guest(name))
    kernel.unmap(node, size, pages)
    return result, a.release(guest(name))


def test_a_restarted_1g_guest_gets_its_kept_pages_back_without_the_kernel(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock)
    _, released = run_guest(a, kernel, "vm", 2, 1)
    assert released["kept"] == {f"1:{G1}": 2} and released["released"] == {}
    assert kernel.nr(1, G1) == 2
    writes = len(kernel.writes)
    for _ in range(3):                           # shut down and started again, 3 times
        clock.now += 60
        result, _ = run_guest(a, kernel, "vm", 2, 1)
        assert result["added"] == {}             # no kernel growth needed
    assert len(kernel.writes) == writes and kernel.nr(1, G1) == 2
    # another guest on that node takes the kept pages first, the record owns them now
    a.reserve(plan("other", (1, (1,), "strict", G1)), guest("other"))
    data = snapshot(tmp_path / "state")
    assert data["guests"]["other"]["added"] == {f"1:{G1}": 1}
    assert data["kept"] == {f"1:{G1}": 1} and kernel.nr(1, G1) == 2


def test_kept_pages_go_back_when_the_window_ends(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock, keep_for=((G1, 2.0),))
    run_guest(a, kernel, "vm", 2, 0)
    assert kernel.nr(0, G1) == 2
    clock.now += 1
    assert a.tidy() == {} and kernel.nr(0, G1) == 2    # still within the window
    clock.now += 2
    report = a.reconcile()
    assert report["keep_ended"] == {f"0:{G1}": 2} and report["released"] == {f"0:{G1}": 2}
    assert kernel.nr(0, G1) == 0 and snapshot(tmp_path / "state")["kept"] == {}


def test_policy_keep_is_for_ever_and_a_zero_window_gives_back_at_once(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock, release_policy="keep")
    run_guest(a, kernel, "vm", 1, 0)
    clock.now += 10 * 365 * 86400
    a.reconcile()
    assert kernel.nr(0, G1) == 1
    b = Allocator(kernel.gw, str(tmp_path / "b"), make_config(keep_for=((G1, 0.0),)),
                  clock=clock)
    _, released = run_guest(b, kernel, "vm2", 1, 1)
    assert released["released"] == {f"1:{G1}": 1} and kernel.nr(1, G1) == 0


def margin_host(kernel, node: int = 0) -> None:
    """The node has 2 GiB of normal memory left above... less than a 512 x 2M grow needs:
    a 1 GiB floor, 1.5 GiB free."""
    kernel.mem_free[node] = int(1.5 * GIB)


def test_demote_serves_a_2m_start_the_margin_would_refuse(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock)
    run_guest(a, kernel, "big", 1, 0)                     # one kept 1G page on node 0
    margin_host(kernel)
    kernel.set(0, M2, persistent=10)                      # 10 free 2M pages (the admin's)
    before = len(kernel.compactions)
    result = a.reserve(plan("small", (522, (0,), "strict", M2)), guest("small"))
    assert result["demoted"] == {f"0:{G1}": 1}
    assert kernel.nr(0, G1) == 0 and kernel.nr(0, M2) == 10 + 512
    assert len(kernel.compactions) == before               # no compaction
    data = snapshot(tmp_path / "state")
    assert data["guests"]["small"]["added"] == {f"0:{M2}": 512}
    assert data["kept"] == {} and data["unreleased"] == {}
    kernel.map(0, M2, 522)
    a.settle(guest("small"))
    kernel.unmap(0, M2, 522)
    a.release(guest("small"))                              # 2M: no window, back at once
    assert kernel.nr(0, M2) == 10


def test_an_admins_1g_page_is_never_demoted(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock)
    kernel.set(0, G1, persistent=1)                       # the admin's, free
    margin_host(kernel)
    with pytest.raises(MarginViolation):
        a.reserve(plan("small", (512, (0,), "strict", M2)), guest("small"))
    assert kernel.nr(0, G1) == 1 and kernel.demotes == []
    assert kernel.nr(0, M2) == 0


def test_demote_fills_a_short_grant_before_any_compaction(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock)
    run_guest(a, kernel, "big", 1, 1)                     # kept 1G on node 1
    kernel.set(1, M2, cap=0)                               # no fresh 2M page to be had
    result = a.reserve(plan("small", (100, (1,), "strict", M2)), guest("small"))
    assert result["added"] == {f"1:{M2}": 100} and result["demoted"] == {f"1:{G1}": 1}
    assert kernel.compactions == [] and kernel.nr(1, M2) == 512
    data = snapshot(tmp_path / "state")
    assert data["unreleased"] == {f"1:{M2}": 412}          # split beyond the need: owed back
    a.tidy()
    assert kernel.nr(1, M2) == 100                         # the 412 free ones went back


def test_demote_happens_only_on_the_node_that_needs_it(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock)
    run_guest(a, kernel, "a", 1, 0)
    run_guest(a, kernel, "b", 1, 1)
    margin_host(kernel, 1)
    a.reserve(plan("small", (512, (1,), "strict", M2)), guest("small"))
    assert kernel.nr(0, G1) == 1 and kernel.nr(1, G1) == 0
    assert [d[:2] for d in kernel.demotes if d[2]] == [(1, G1)]


def test_kept_pages_of_another_size_go_back_when_a_start_needs_the_memory(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock, demote=False)
    run_guest(a, kernel, "big", 1, 0)                     # kept 1G, demote off
    margin_host(kernel)
    a.reserve(plan("small", (300, (0,), "strict", M2)), guest("small"))
    assert kernel.nr(0, G1) == 0 and kernel.nr(0, M2) == 300


META = ("<metadata><hx:keep xmlns:hx='https://hugexml.dev/xmlns/domain/1' for='{}'/>"
        "</metadata>")


@pytest.mark.parametrize("value, keep_s", [("forever", -1.0), ("0", 0.0), ("90s", 90.0),
                                           ("2h", 7200.0), ("1.5m", 90.0)])
def test_a_guest_sets_its_own_keep_window_in_its_metadata(value, keep_s):
    from hugexml.xml.domxml import plan_xml

    xml = (b"<domain><name>v</name><memory unit='GiB'>1</memory><memoryBacking><hugepages>"
           b"<page size='1' unit='G'/></hugepages></memoryBacking>"
           + META.format(value).encode() + b"</domain>")
    assert plan_xml(xml, None).keep_s == keep_s


@pytest.mark.parametrize("value", ["soon", "-1", "31d", "", "1e9"])
def test_a_bad_keep_window_in_the_metadata_is_one_line(value):
    from hugexml.core.errors import InvalidDomain
    from hugexml.xml.domxml import plan_xml

    xml = (b"<domain><name>v</name><memory unit='GiB'>1</memory>"
           + META.format(value).encode() + b"</domain>")
    with pytest.raises(InvalidDomain) as info:
        plan_xml(xml, None)
    assert str(info.value).startswith("domain 'v': <metadata> hugexml keep for=")


def test_the_guests_own_window_wins_over_the_config(kernel, tmp_path):
    clock = Clock()
    a = alloc(kernel, tmp_path, clock, keep_for=((G1, 0.0),))   # the host gives back at once
    a.reserve(plan("pinned", (1, (0,), "strict", G1)), guest("pinned"), keep_s=-1.0)
    a.reserve(plan("short", (1, (1,), "strict", G1)), guest("short"), keep_s=60.0)
    a.release(guest("pinned"))
    a.release(guest("short"))
    assert kernel.nr(0, G1) == 1 and kernel.nr(1, G1) == 1
    clock.now += 3600
    a.reconcile()
    assert kernel.nr(0, G1) == 1 and kernel.nr(1, G1) == 0       # for ever vs 60 s
