"""refit_for_host: the migrate/restore filter, on fake hosts (2 nodes, only 2M, no mounts).

Each case states the whole expected document: the filter may change only what does not fit,
and the result must plan cleanly on the target host (no unsupported size, no missing node).
"""
from __future__ import annotations

from typing import Optional

import pytest

from hugexml.core.model import HostInfo
from hugexml.planning.plan import make_plan
from hugexml.xml.domxml import load_domain
from hugexml.xml.refit import refit_for_host

M2, G1 = 2048, 1048576
ONLY_2M = HostInfo(default_page_kib=M2, page_sizes_kib=(M2,), nodes=(0, 1))
BOTH = HostInfo(default_page_kib=M2, page_sizes_kib=(M2, G1), nodes=(0, 1))
NO_HUGEPAGES = HostInfo(default_page_kib=None, page_sizes_kib=(), nodes=(0,))

GUEST_1G = b"""<domain type='kvm'>
  <name>g1</name>
  <memory unit='GiB'>4</memory>
  <memoryBacking>
    <hugepages>
      <page size='1' unit='G'/>
    </hugepages>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type>hvm</type>
  </os>
</domain>
"""

NUMA = b"""<domain type='kvm'>
  <name>numa</name>
  <maxMemory slots='4' unit='GiB'>16</maxMemory>
  <memory unit='GiB'>4</memory>
  <memoryBacking>
    <hugepages>
      <page size='1048576' unit='KiB' nodeset='0'/>
      <page size='2048' unit='KiB' nodeset='1'/>
    </hugepages>
  </memoryBacking>
  <numatune>
    <memory mode="strict" nodeset="0-3"/>  <!-- all four -->
    <memnode cellid='0' mode='strict' nodeset='3'/>
    <memnode cellid='1' mode='preferred' nodeset='1,3'/>
  </numatune>
  <vcpu>2</vcpu>
  <cpu>
    <numa>
      <cell id='0' cpus='0' memory='2' unit='GiB'/>
      <cell id='1' cpus='1' memory='1025' unit='MiB'/>
    </numa>
  </cpu>
  <devices>
    <memory model='dimm'>
      <source>
        <pagesize unit='G'>1</pagesize>
        <nodemask>2-3</nodemask>
      </source>
      <target>
        <size unit='GiB'>1</size>
        <node>0</node>
      </target>
    </memory>
    <memory model='dimm'>
      <source>
        <nodemask>0,3</nodemask>
      </source>
      <target>
        <size unit='MiB'>512</size>
        <node>1</node>
      </target>
    </memory>
  </devices>
</domain>
"""


def plans_cleanly(data: bytes, host: HostInfo) -> dict[Optional[int], Optional[int]]:
    plan = make_plan(load_domain(data, "refit"), host)  # raises on what does not fit
    return {c.guest_cell: c.page_size_kib for c in plan.consumers if c.kind in ("cell", "memory")}


def test_missing_size_becomes_the_largest_dividing_one() -> None:
    result = refit_for_host(GUEST_1G, ONLY_2M, None, "g1")
    assert result.changed
    assert result.data == GUEST_1G.replace(b"<page size='1' unit='G'/>",
                                           b"<page size='2048' unit='KiB'/>")
    assert result.notes == ["memory (4G): no 1G pages on this host; now 2M pages (the largest "
                            "host page size (2M) that divides 4G)"]
    assert plans_cleanly(result.data, ONLY_2M) == {None: M2}


def test_fitting_guest_passes_through_byte_for_byte() -> None:
    result = refit_for_host(GUEST_1G, BOTH, frozenset({M2, G1}), "g1")
    assert result.data is GUEST_1G and not result.changed and result.notes == []


def test_unmounted_size_moves_to_a_mounted_one() -> None:
    result = refit_for_host(GUEST_1G, BOTH, frozenset({M2}), "g1")
    assert result.data == GUEST_1G.replace(b"<page size='1' unit='G'/>",
                                           b"<page size='2048' unit='KiB'/>")
    assert result.notes == ["memory (4G): no hugetlbfs mount for 1G pages that the libvirt daemon "
                            "knows; now 2M pages (the largest host page size (2M) that divides "
                            "4G)"]
    # no mount list: no opinion on mounts
    assert not refit_for_host(GUEST_1G, BOTH, None, "g1").changed


def test_memfd_needs_no_mount_and_the_source_never_changes() -> None:
    memfd = GUEST_1G.replace(b"    <access", b"    <source type='memfd'/>\n    <access")
    result = refit_for_host(memfd, BOTH, frozenset(), "g1")
    assert result.data is memfd and not result.changed
    # file-backed with no mount at all: normal pages, still file-backed (libvirt's ABI check
    # refuses a restore whose memory source differs from the saved one)
    file_backed = GUEST_1G.replace(b"    <access", b"    <source type='file'/>\n    <access")
    result = refit_for_host(file_backed, BOTH, frozenset(), "g1")
    assert result.data == file_backed.replace(
        b"    <hugepages>\n      <page size='1' unit='G'/>\n    </hugepages>\n", b"")
    assert load_domain(result.data, "g1").source == "file"
    assert plans_cleanly(result.data, BOTH) == {None: None}


def test_numa_guest_refitted_to_two_nodes_and_2m() -> None:
    result = refit_for_host(NUMA, ONLY_2M, frozenset({M2}), "numa")
    expected = NUMA.replace(
        b"      <page size='1048576' unit='KiB' nodeset='0'/>\n"
        b"      <page size='2048' unit='KiB' nodeset='1'/>\n",
        b"      <page size='2048' unit='KiB'/>\n",  # both cells agree: one master page
    ).replace(
        b'<memory mode="strict" nodeset="0-3"/>', b'<memory mode="strict" nodeset="0-1"/>'
    ).replace(
        b"\n    <memnode cellid='0' mode='strict' nodeset='3'/>", b""
    ).replace(
        b"nodeset='1,3'", b"nodeset='1'"
    ).replace(
        b"<pagesize unit='G'>1</pagesize>\n        <nodemask>2-3</nodemask>",
        b"<pagesize unit='KiB'>2048</pagesize>",
    ).replace(b"<nodemask>0,3</nodemask>", b"<nodemask>0</nodemask>")
    assert result.data.decode() == expected.decode()
    assert plans_cleanly(result.data, ONLY_2M) == {0: M2, 1: M2}
    plan = make_plan(load_domain(result.data, "numa"), ONLY_2M)
    assert [c.page_size_kib for c in plan.consumers if c.kind == "dimm"] == [M2, M2]
    assert all(set(c.host_nodes or ()) <= {0, 1} for c in plan.consumers)
    assert not refit_for_host(result.data, ONLY_2M, frozenset({M2}), "numa").changed


def test_binding_with_no_node_left_is_removed() -> None:
    data = NUMA.replace(b"nodeset='1,3'", b"nodeset='3'").replace(b'nodeset="0-3"',
                                                                    b'nodeset="2-3"')
    host = HostInfo(default_page_kib=M2, page_sizes_kib=(M2, G1), nodes=(0, 1))
    result = refit_for_host(data, host, None, "numa")
    assert b"<numatune>" not in result.data and b"memnode" not in result.data
    assert "binding removed" in result.notes[0]
    plans_cleanly(result.data, host)


def test_a_size_that_divides_nothing_falls_back_to_normal_pages() -> None:
    data = GUEST_1G.replace(b"<memory unit='GiB'>4</memory>", b"<memory unit='MiB'>4097</memory>")
    result = refit_for_host(data, ONLY_2M, None, "g1")
    assert b"<hugepages>" not in result.data and b"<access mode='shared'/>" in result.data
    assert plans_cleanly(result.data, ONLY_2M) == {None: None}


@pytest.mark.parametrize("host, changed", [(BOTH, False), (NO_HUGEPAGES, True)])
def test_bare_hugepages_follow_the_default(host: HostInfo, changed: bool) -> None:
    data = GUEST_1G.replace(b"<hugepages>\n      <page size='1' unit='G'/>\n    </hugepages>",
                            b"<hugepages/>")
    result = refit_for_host(data, host, None, "g1")
    assert result.changed is changed
    if changed:
        assert b"hugepages" not in result.data
        assert result.notes[0].startswith("memory (4G): no default hugepage size on this host")
    plans_cleanly(result.data, host)


def test_other_roots_pass_through() -> None:
    data = b"<domstatus state='paused'><domain type='kvm'><name>x</name></domain></domstatus>"
    result = refit_for_host(data, ONLY_2M, frozenset(), "save")
    assert result.data is data and not result.changed


def test_crlf_and_comments_survive_a_refit() -> None:
    data = NUMA.replace(b"\n", b"\r\n")
    result = refit_for_host(data, ONLY_2M, frozenset({M2}), "numa")
    assert b"\n" not in result.data.replace(b"\r\n", b"")
    assert b"<!-- all four -->" in result.data
    assert result.data.replace(b"\r\n", b"\n") == refit_for_host(NUMA, ONLY_2M, frozenset({M2}),
                                                                 "numa").data


# --- invariants over generated guests and hosts (hypothesis) -------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SIZES = (M2, G1)


@st.composite
def guest_and_host(draw: st.DrawFn) -> tuple[bytes, HostInfo, Optional[frozenset[int]]]:
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    ncells = draw(st.integers(0, 3))
    cells = [draw(st.sampled_from([1024, 1025, 2048, 3072])) for _ in range(ncells)]
    lines = ["<domain type='kvm'>", "  <name>gen</name>", "  <vcpu>4</vcpu>",
             "  <maxMemory slots='4' unit='GiB'>64</maxMemory>" if ncells else "",
             f"  <memory unit='MiB'>{sum(cells) or draw(st.sampled_from([1024, 1025, 4096]))}"
             "</memory>"]
    page = draw(st.sampled_from(["bare", "2M", "1G", "split", "none"]))
    if page != "none":
        lines.append("  <memoryBacking>")
        if page == "bare":
            lines.append("    <hugepages/>")
        elif page == "split" and ncells >= 2:
            lines += ["    <hugepages>", "      <page size='1' unit='G' nodeset='0'/>",
                      "      <page size='2' unit='M' nodeset='1'/>", "    </hugepages>"]
        else:
            size = M2 if page == "2M" else G1
            lines += ["    <hugepages>", f"      <page size='{size}'/>", "    </hugepages>"]
        if draw(st.booleans()):
            lines.append("    <source type='file'/>")
        lines.append("  </memoryBacking>")
    if ncells:
        lines.append("  <numatune>")
        nodeset = draw(st.sampled_from(["0-3", "2", "1,3"]))
        lines.append(f"    <memory mode='strict' nodeset='{nodeset}'/>")
        for cell in range(ncells):
            if draw(st.booleans()):
                nodes = draw(st.sampled_from(["0", "3", "1-2"]))
                lines.append(f"    <memnode cellid='{cell}' mode='strict' nodeset='{nodes}'/>")
        lines.append("  </numatune>")
        lines += ["  <cpu>", "    <numa>"]
        lines += [f"      <cell id='{i}' cpus='{i}' memory='{mib}' unit='MiB'/>"
                  for i, mib in enumerate(cells)]
        lines += ["    </numa>", "  </cpu>", "  <devices>"]
        for _ in range(draw(st.integers(0, 2))):
            lines += ["    <memory model='dimm'>", "      <source>"]
            if draw(st.booleans()):
                lines.append(f"        <pagesize unit='KiB'>{draw(st.sampled_from(SIZES))}"
                             "</pagesize>")
            lines.append(f"        <nodemask>{draw(st.sampled_from(['0', '2-3', '1']))}"
                         "</nodemask>")
            lines += ["      </source>", "      <target>",
                      f"        <size unit='MiB'>{draw(st.sampled_from([512, 1024]))}</size>",
                      f"        <node>{draw(st.integers(0, ncells - 1))}</node>",
                      "      </target>", "    </memory>"]
        lines.append("  </devices>")
    lines.append("</domain>")
    data = nl.join(lines).encode()
    sizes = tuple(draw(st.sets(st.sampled_from(SIZES))))
    host = HostInfo(default_page_kib=(M2 if M2 in sizes else sizes[0]) if sizes else None,
                    page_sizes_kib=tuple(sorted(sizes)),
                    nodes=tuple(range(draw(st.integers(1, 4)))))
    mounts = draw(st.one_of(st.none(), st.sets(st.sampled_from(SIZES)).map(frozenset)))
    return data, host, mounts


@settings(max_examples=300, deadline=None)
@given(guest_and_host())
def test_refit_always_fits_the_host(case: tuple[bytes, HostInfo, Optional[frozenset[int]]]
                                    ) -> None:
    data, host, mounts = case
    result = refit_for_host(data, host, mounts, "gen")
    plan = make_plan(load_domain(result.data, "gen"), host)  # no size or node it lacks
    if mounts is not None:
        for consumer in plan.consumers:
            if consumer.page_size_kib and consumer.source == "file":
                assert consumer.page_size_kib in mounts
    again = refit_for_host(result.data, host, mounts, "gen")
    assert not again.changed and again.data == result.data
    assert result.changed == (result.data != data) and (result.notes != []) == result.changed
    newline = b"\r\n" if b"\r\n" in data else b"\n"
    assert result.data.count(b"\n") == result.data.count(newline)


def test_a_refit_libvirt_would_refuse_is_not_made() -> None:
    """Dropping the <memory> binding (its node is gone) would leave a memnode under the
    automatic placement <vcpu placement='auto'> implies: libvirt refuses that, so refit
    raises and the hook prints the input as it was (fail open)."""
    from hugexml.core.errors import InvalidDomain

    data = NUMA.replace(b'<memory mode="strict" nodeset="0-3"/>',
                        b'<memory mode="strict" nodeset="3"/>').replace(
        b"<vcpu>2</vcpu>", b"<vcpu placement='auto'>2</vcpu>")
    make_plan(load_domain(data, "numa"), HostInfo(default_page_kib=M2, page_sizes_kib=(M2, G1),
                                                  nodes=(0, 1, 2, 3)))  # valid where it was
    with pytest.raises(InvalidDomain, match="Per-node binding is not compatible with "
                                            "automatic NUMA placement"):
        refit_for_host(data, BOTH, None, "numa")


# --- what the host can supply now ------------------------------------------------------------
from supplyfix import supply_table  # noqa: E402

from hugexml.planning.tally import HostSupply, PoolSupply  # noqa: E402

GIB = 1048576
BOTH_MOUNTED = frozenset({M2, G1})


NO_1G = supply_table({(0, G1): (0, 0, 0, 8), (1, G1): (0, 0, 0, 8)})


def test_a_size_the_host_cannot_supply_now_moves_down() -> None:
    """A 4 x 1G guest restored where no 1G page is free or kept: 1G exists and is mounted,
    but MemFree's bound is no promise, so 2M."""
    result = refit_for_host(GUEST_1G, BOTH, BOTH_MOUNTED, "g1", supply=NO_1G)
    assert result.data == GUEST_1G.replace(b"<page size='1' unit='G'/>",
                                           b"<page size='2048' unit='KiB'/>")
    assert result.notes == [
        "memory (4G): 1G: only 0 of 4 pages can be supplied on nodes 0-1 now (free 0, kept 0, "
        "allocatable 0; MemFree allows up to 16 more, not a promise: not counted); now 2M pages "
        "(the largest host page size (2M) that divides 4G and can be supplied now: 2048 pages "
        "on nodes 0-1 (free 0, kept 0, allocatable 10000))"]
    assert plans_cleanly(result.data, BOTH) == {None: M2}
    # refitted once, it fits: the same bytes the second time
    again = refit_for_host(result.data, BOTH, BOTH_MOUNTED, "g1", supply=NO_1G)
    assert again.data is result.data and not again.changed


def test_kept_pages_let_a_restored_guest_keep_its_size() -> None:
    kept = supply_table({(0, G1): (1, 3, 0)})
    result = refit_for_host(GUEST_1G, BOTH, BOTH_MOUNTED, "g1", supply=kept)
    assert result.data is GUEST_1G and not result.changed and result.notes == []


def test_nothing_to_supply_means_normal_pages() -> None:
    empty = supply_table({(n, M2): (0, 0, 100) for n in (0, 1)})
    result = refit_for_host(GUEST_1G, BOTH, BOTH_MOUNTED, "g1", supply=empty)
    assert b"hugepages" not in result.data and plans_cleanly(result.data, BOTH) == {None: None}
    assert result.notes == [
        "memory (4G): 1G: only 0 of 4 pages can be supplied on nodes 0-1 now (free 0, kept 0, "
        "allocatable 0); now normal pages (2M: only 200 of 2048 pages can be supplied on nodes "
        "0-1 now (free 0, kept 0, allocatable 200); no host page size that divides 4G can be "
        "supplied now)"]


def test_an_unmounted_size_moves_to_a_mounted_one_that_can_be_supplied() -> None:
    result = refit_for_host(GUEST_1G, BOTH, frozenset({M2}), "g1", supply=NO_1G)
    assert plans_cleanly(result.data, BOTH) == {None: M2}
    assert result.notes[0].startswith("memory (4G): no hugetlbfs mount for 1G pages that the "
                                      "libvirt daemon knows; now 2M pages (the largest host page "
                                      "size (2M) that divides 4G and can be supplied now: ")


def test_a_devices_own_size_is_refitted_when_it_cannot_be_supplied() -> None:
    """NUMA on two nodes with both sizes: cell 0 (2G, node 3 gone: any node) takes node 0's
    two free 1G pages; the dimm's own 1G page (nodemask 2-3 gone: any node) finds none left;
    the other dimm borrows cell 1's 2M pages."""
    two = supply_table({(0, G1): (2, 0, 0)})
    result = refit_for_host(NUMA, BOTH, BOTH_MOUNTED, "numa", supply=two)
    plan = make_plan(load_domain(result.data, "numa"), BOTH)
    assert {c.guest_cell: c.page_size_kib for c in plan.consumers if c.kind == "cell"} == \
        {0: G1, 1: M2}
    assert [c.page_size_kib for c in plan.consumers if c.kind == "dimm"] == [M2, M2]
    (dimm,) = [n for n in result.notes if n.startswith("dimm #0 (1G)")]
    assert dimm.startswith("dimm #0 (1G): 1G: only 0 of 1 pages for dimm #0 can be supplied on "
                           "nodes 0-1 now (free 2, kept 0, allocatable 0; 2 already counted for "
                           "this guest's other memory); now 2M pages")
    three = supply_table({(0, G1): (3, 0, 0)})
    assert not any(n.startswith("dimm #0 (1G)") for n in
                   refit_for_host(NUMA, BOTH, BOTH_MOUNTED, "numa", supply=three).notes)


@st.composite
def supplies(draw: st.DrawFn, nodes: tuple[int, ...]) -> HostSupply:
    counts = st.integers(0, 5)
    pools = {(n, s): PoolSupply(draw(counts), draw(counts),
                                draw(st.sampled_from([0, 10, 5000])) if s == M2 else 0,
                                draw(counts) if s == G1 else 0) for n in nodes for s in SIZES}
    return HostSupply(nodes, pools, {n: draw(st.sampled_from([-GIB, 64 * GIB])) for n in nodes})


@settings(max_examples=200, deadline=None)
@given(guest_and_host(), st.data())
def test_refit_with_any_supply_fits_the_host(case: tuple[bytes, HostInfo,
                                                         Optional[frozenset[int]]],
                                             data: st.DataObject) -> None:
    """With any supply the refit plans cleanly here, is checked as libvirt would (else it
    raises and the hook passes the input through), and is stable for the same supply."""
    guest, host, mounts = case
    table = data.draw(supplies(host.nodes))
    result = refit_for_host(guest, host, mounts, "gen", supply=table)
    make_plan(load_domain(result.data, "gen"), host)
    again = refit_for_host(result.data, host, mounts, "gen", supply=table)
    assert not again.changed and again.data == result.data
    assert result.changed == (result.data != guest) and (result.notes != []) == result.changed


# --- the hook's filter, on the fake kernel with a state dir -----------------------------------
def test_the_restore_filter_counts_the_kept_pages_of_the_state(tmp_path, monkeypatch) -> None:
    """libvirt restores a 2 x 1G guest (node 0). With no 1G page free or kept, the filter
    writes 2M (and logs why); once the guest's pages are kept, the XML passes as it is."""
    from hookfix import call, guest_xml
    from simkernel import GIB as SIM_GIB
    from simkernel import make_kernel
    from supplyfix import keep_pages

    from hugexml.qemuhook import hooklog

    kernel = make_kernel("fake", str(tmp_path / "root"), nodes=2, mem_total_kib=16 * SIM_GIB,
                         mem_free_kib=12 * SIM_GIB)
    kernel.fk.set_mounts([("/dev/hugepages", M2), ("/dev/hugepages1G", G1)])
    state = tmp_path / "state"
    monkeypatch.setenv("HUGEXML_ROOT", kernel.fk.root)
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(state))
    monkeypatch.delenv("HUGEXML_CONFIG", raising=False)
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", str(tmp_path / "no-syslog"))
    xml = guest_xml("vm1", 2048, G1, node=0)
    code, out, err = call(["qemu", "vm1", "restore", "begin", "-"], xml)
    assert (code, err) == (0, "")
    assert out == xml.replace(b"size='1048576'", b"size='2048'")
    log = (state / "hook.log").read_text()
    assert "refitted: memory (2G): 1G: only 0 of 2 pages can be supplied on node 0 now" in log
    keep_pages(kernel, str(state), 2, 0)
    assert call(["qemu", "vm1", "restore", "begin", "-"], xml) == (0, xml, "")
    assert call(["qemu", "vm1", "migrate", "begin", "-"], xml) == (0, xml, "")


def test_the_filter_without_a_readable_supply_refits_as_before(monkeypatch, tmp_path) -> None:
    """The hook's entry (dispatch.refit_for_hook) reads the supply of the call's host itself;
    when it cannot, the refit is today's and a note says so."""
    from hugexml.qemuhook.dispatch import Call
    from hugexml.qemuhook.dispatch import refit_for_hook as hook_refit

    monkeypatch.setenv("HUGEXML_ROOT", str(tmp_path / "empty"))
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HUGEXML_CONFIG", raising=False)
    call = Call(["qemu", "g1", "restore", "begin", "-"], None, None, None, None)
    result = hook_refit(call, GUEST_1G, ONLY_2M, None)
    assert result.data == refit_for_host(GUEST_1G, ONLY_2M, None, "g1").data
    assert result.notes[-1].startswith("what this host can supply now is unknown (")
    fits = hook_refit(call, GUEST_1G, BOTH, BOTH_MOUNTED)
    assert fits.data is GUEST_1G and not fits.changed
