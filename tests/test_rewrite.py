"""hugexml rewrite: golden -in.xml/-out.xml pairs, the plan agreeing, idempotency, the CLI.

Every golden pair was written and reviewed by hand (the output is what libvirt would want
and what an admin would write); the table below also states, independently of the code, which
page size each guest cell must end up with, and ``make_plan`` must report exactly that.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simkernel import make_kernel
from supplyfix import keep_pages, supply_table

from hugexml.core.errors import InvalidDomain, InvalidInput, InvalidXML, UnsupportedPageSize
from hugexml.core.model import HostInfo
from hugexml.planning.pagesize import Pick
from hugexml.planning.plan import make_plan
from hugexml.planning.tally import HostSupply, PoolSupply
from hugexml.xml.domxml import load_domain
from hugexml.xml.rewrite import rewrite_xml

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "rewrite"
G1 = 1048576
M2 = 2048
HOST = HostInfo(default_page_kib=M2, page_sizes_kib=(M2, G1), nodes=(0, 1, 2, 3))
NODES = HOST.nodes
GIB = 1048576


# node 0: one kept 1G page; node 1: three free; nodes 2 and 3: one free each
SUPPLY_NUMA = supply_table({(0, G1): (0, 1, 0, 12), (1, G1): (3, 0, 0), (2, G1): (1, 0, 0),
                            (3, G1): (1, 0, 0)}, NODES)
# no 1G page free or kept anywhere: MemFree would allow some, but that is no promise
SUPPLY_NO_1G = supply_table({(n, G1): (0, 0, 0, 20) for n in range(4)}, NODES)

# NAME -> (rewrite options, expected page size per consumer: guest cell, or None = whole RAM;
#          None as a size = normal RAM, expected <source type>)
TABLE: dict[str, tuple[dict[str, Any], dict[Optional[int], Optional[int]], Optional[str]]] = {
    # comments, a PI, '>' in a comment, XML declaration; bare <hugepages/> made explicit
    "comments-everywhere": ({"page_size": G1}, {None: G1}, None),
    # tabs, double quotes, attributes over lines, entities, CDATA, no final newline
    "odd-formatting": ({"page_size": M2}, {None: M2}, None),
    # CRLF; memoryBacking with every other child kept; auto on 4G -> 1G
    "crlf-auto": ({"page_size": Pick.AUTO}, {None: G1}, None),
    # no memoryBacking: inserted after <memtune>; auto per cell: 4G, 1536M, 1025M
    "numa-auto-mixed": ({"page_size": Pick.AUTO}, {0: G1, 1: M2, 2: None}, None),
    # --cells 1,3 --page-size 1G over a master 2M page ('2' 'M' units)
    "cells-subset": ({"page_size": G1, "cells": frozenset({1, 3})},
                     {0: M2, 1: G1, 2: M2, 3: G1}, None),
    "memfd": ({"page_size": M2, "memfd": True}, {None: M2}, "memfd"),
    "memfd-insert": ({"page_size": M2, "memfd": True}, {None: M2}, "memfd"),
    # already what auto wants: same bytes
    "already-fits": ({"page_size": Pick.AUTO}, {0: G1, 1: M2, 2: None}, None),
    # a document on one line: the new element is written on one line too
    "single-line": ({"page_size": Pick.AUTO}, {None: G1}, None),
    "empty-backing-memfd": ({"page_size": M2, "memfd": True}, {None: M2}, "memfd"),
    # cell 1 backs a 512M dimm: 1G would not divide it, so 2M
    "dimm-inherits": ({"page_size": Pick.AUTO}, {0: G1, 1: M2}, None),
    # an explicit size for all cells drops the other page sizes
    "drop-other-sizes": ({"page_size": M2}, {0: M2, 1: M2}, None),
    # 4K = the system page size = normal RAM: <hugepages> goes, <nosharepages/> stays
    "normal-pages": ({"page_size": 4}, {None: None}, None),
    "backing-removed": ({"page_size": 4}, {None: None}, None),
    # conflicts with hugepages, resolved because asked (libvirt refuses them with hugepages)
    "anonymous-memfd": ({"page_size": M2, "memfd": True}, {None: M2}, "memfd"),
    "ondemand-dropped": ({"page_size": G1, "drop_ondemand": True}, {None: G1}, None),
    "ondemand-threads": ({"page_size": Pick.AUTO, "drop_ondemand": True}, {0: G1, 1: G1},
                         None),
    # a domain libvirt refuses (anonymous + hugepages) made one it takes: normal pages
    "anonymous-normal-pages": ({"page_size": 4}, {None: None}, "anonymous"),
    # auto counts only what the host can supply now, per cell and its node binding: cell 0
    # (node 0) has one kept 1G page of 2; cell 1 and its dimm take node 1's three; cell 2
    # interleaves one page on each of nodes 2-3; cell 3 prefers node 3, left with none
    "supply-numa": ({"page_size": Pick.AUTO, "supply": SUPPLY_NUMA},
                    {0: M2, 1: G1, 2: G1, 3: M2}, None),
    # no 1G page can be promised: 2M (largest would write 1G)
    "supply-no-1g": ({"page_size": Pick.AUTO, "supply": SUPPLY_NO_1G}, {None: M2}, None),
}
# NAME -> rewrite options; NAME-err.txt is the one line hugexml refuses NAME-in.xml with
REFUSED: dict[str, dict[str, Any]] = {
    "anonymous-refused": {"page_size": M2},
    "ondemand-refused": {"page_size": Pick.AUTO},
    "both-refused": {"page_size": G1},
    # the input itself is one libvirt refuses: no rewrite makes it acceptable
    "already-broken": {"page_size": G1},
}


def golden(name: str) -> tuple[bytes, bytes]:
    return (GOLDEN / f"{name}-in.xml").read_bytes(), (GOLDEN / f"{name}-out.xml").read_bytes()


def plan_sizes(data: bytes, host: HostInfo = HOST) -> dict[Optional[int], Optional[int]]:
    plan = make_plan(load_domain(data, "test"), host)
    return {c.guest_cell: c.page_size_kib for c in plan.consumers if c.kind in ("cell", "memory")}


def test_every_golden_file_is_in_the_table() -> None:
    names = {p.name[: -len("-in.xml")] for p in GOLDEN.glob("*-in.xml")}
    assert names == set(TABLE) | set(REFUSED) and not set(TABLE) & set(REFUSED)
    assert all((GOLDEN / f"{n}-out.xml").is_file() for n in TABLE)
    assert all((GOLDEN / f"{n}-err.txt").is_file() for n in REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_golden_refusals(name: str) -> None:
    """Refused in one line (exit 2) naming the element and the option that resolves it,
    rather than writing XML libvirt refuses."""
    data = (GOLDEN / f"{name}-in.xml").read_bytes()
    expected = (GOLDEN / f"{name}-err.txt").read_text().strip()
    with pytest.raises(InvalidDomain) as info:
        rewrite_xml(data, host=HOST, source=name, **REFUSED[name])
    assert str(info.value) == expected and info.value.exit_code == 2


def test_golden_refusal_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "in.xml"
    path.write_bytes((GOLDEN / "anonymous-refused-in.xml").read_bytes())
    proc = subprocess.run([sys.executable, "-m", "hugexml", "rewrite", str(path),
                           "--page-size", "2M"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "hugexml rewrite: " + (GOLDEN / "anonymous-refused-err.txt").read_text().strip()]
    fixed = subprocess.run([sys.executable, "-m", "hugexml", "rewrite", str(path),
                            "--page-size", "2M", "--memfd"], capture_output=True, text=True)
    assert fixed.returncode == 0 and "<source type='memfd'/>" in fixed.stdout


@pytest.mark.parametrize("name", sorted(TABLE))
def test_golden(name: str) -> None:
    options, expected_sizes, expected_source = TABLE[name]
    data, expected = golden(name)
    result = rewrite_xml(data, host=HOST, source=name, **options)
    assert result.data == expected
    assert result.changed == (data != expected)
    # the plan reports exactly the requested page sizes
    assert plan_sizes(result.data) == expected_sizes
    assert load_domain(result.data, name).source == expected_source
    # running it again changes nothing
    again = rewrite_xml(result.data, host=HOST, source=name, **options)
    assert again.data == result.data and not again.changed


def test_unchanged_input_is_returned_as_is() -> None:
    data, _ = golden("already-fits")
    result = rewrite_xml(data, page_size=Pick.AUTO, host=HOST)
    assert result.data is data and not result.changed


def test_auto_explains_each_choice() -> None:
    data, _ = golden("numa-auto-mixed")
    notes = rewrite_xml(data, page_size=Pick.AUTO, host=HOST).notes
    assert notes == [
        "cell 0 (4G): 1G pages: the largest host page size (1G, 2M) that divides 4G",
        "cell 1 (1536M): 2M pages: the largest host page size (1G, 2M) that divides 1536M "
        "(1G: no)",
        "cell 2 (1025M): normal pages: no host page size (1G, 2M) divides 1025M",
    ]
    data, _ = golden("dimm-inherits")
    notes = rewrite_xml(data, page_size=Pick.AUTO, host=HOST).notes
    assert "dimm #0 (512M)" in notes[1] and notes[1].startswith("cell 1 (2G): 2M pages")


def test_auto_on_a_host_with_only_2m() -> None:
    data, _ = golden("numa-auto-mixed")
    host = HostInfo(default_page_kib=M2, page_sizes_kib=(M2,), nodes=(0, 1))
    result = rewrite_xml(data, page_size=Pick.AUTO, host=host)
    assert plan_sizes(result.data, host) == {0: M2, 1: M2, 2: None}
    assert b"<page size='2048' unit='KiB' nodeset='0-1'/>" in result.data


def test_explicit_size_that_does_not_divide_warns() -> None:
    data, _ = golden("numa-auto-mixed")
    result = rewrite_xml(data, page_size=G1, host=HOST, cells=frozenset({1}))
    assert result.notes == [
        "warning: cell 1 (1536M) is not a multiple of 1G: it takes 2 pages (2G)"]
    assert plan_sizes(result.data) == {0: None, 1: G1, 2: None}


@pytest.mark.parametrize("options, error, text", [
    ({"page_size": 5 * 1024}, InvalidInput, "not a power of two"),
    ({"page_size": 16 * G1}, UnsupportedPageSize,
     "hugepage size 16777216 KiB is not supported by this host (supported: 2M, 1G)"),
    ({"page_size": G1, "cells": frozenset({7})}, InvalidInput, "has no guest cell 7"),
    ({"page_size": Pick.AUTO, "host": None}, InvalidInput, "auto needs the host"),
    ({"page_size": "huge"}, InvalidInput, "is not a size, 'auto' or 'largest'"),
])
def test_refusals(options: dict[str, Any], error: type, text: str) -> None:
    data, _ = golden("numa-auto-mixed")
    kwargs = {"host": HOST, **options}
    with pytest.raises(error) as info:
        rewrite_xml(data, **kwargs)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_cells_on_a_guest_without_cells() -> None:
    data, _ = golden("crlf-auto")
    with pytest.raises(InvalidInput, match="has no guest NUMA cells"):
        rewrite_xml(data, page_size=M2, host=HOST, cells=frozenset({0}))


def test_not_a_domain() -> None:
    with pytest.raises(InvalidXML, match="root element is <domstatus>"):
        rewrite_xml(b"<domstatus><domain/></domstatus>", page_size=M2, host=HOST)


def test_bare_default_kept_for_other_cells_needs_the_default() -> None:
    data = (GOLDEN / "cells-subset-in.xml").read_bytes().replace(
        b"<hugepages>\n      <page size='2' unit='M'/>\n    </hugepages>", b"<hugepages/>")
    result = rewrite_xml(data, page_size=G1, host=HOST, cells=frozenset({0}))
    assert plan_sizes(result.data) == {0: G1, 1: M2, 2: M2, 3: M2}
    with pytest.raises(InvalidInput, match="default hugepage size is unknown"):
        rewrite_xml(data, page_size=G1, host=None, cells=frozenset({0}))


def test_without_a_host_an_explicit_size_is_written() -> None:
    data, expected = golden("comments-everywhere")
    assert rewrite_xml(data, page_size=G1, host=None).data == expected


# --- auto and what the host can supply now --------------------------------------------------
def test_auto_with_a_supply_says_why_per_cell() -> None:
    data, _ = golden("supply-numa")
    notes = rewrite_xml(data, page_size=Pick.AUTO, host=HOST, supply=SUPPLY_NUMA).notes
    assert notes == [
        "cell 0 (2G): 2M pages: 1G: only 1 of 2 pages can be supplied on node 0 now (free 0, "
        "kept 1, allocatable 0; MemFree allows up to 12 more, not a promise: not counted); 2M "
        "chosen: the largest host page size (1G, 2M) that divides 2G and can be supplied now: "
        "1024 pages on node 0 (free 0, kept 0, allocatable 5000)",
        "cell 1 (2G): 1G pages: the largest host page size (1G, 2M) that divides 2G and dimm #0 "
        "(1G) and can be supplied now: 3 pages on node 1 (free 3, kept 0, allocatable 0)",
        "cell 2 (2G): 1G pages: the largest host page size (1G, 2M) that divides 2G and can be "
        "supplied now: 2 pages on nodes 2-3 (free 2, kept 0, allocatable 0)",
        "cell 3 (2G): 2M pages: 1G: only 1 of 2 pages can be supplied on nodes 0-3 now (free 5, "
        "kept 1, allocatable 0; MemFree allows up to 12 more, not a promise: not counted; 5 "
        "already counted for this guest's other memory); 2M chosen: the largest host page size "
        "(1G, 2M) that divides 2G and can be supplied now: 1024 pages on nodes 0-3 (free 0, "
        "kept 0, allocatable 20000; 1024 already counted for this guest's other memory)",
    ]


def test_largest_is_the_largest_that_divides_whatever_the_supply() -> None:
    data, _ = golden("supply-numa")
    largest = rewrite_xml(data, page_size=Pick.LARGEST, host=HOST, supply=SUPPLY_NUMA)
    assert plan_sizes(largest.data) == {0: G1, 1: G1, 2: G1, 3: G1}
    assert largest.data == rewrite_xml(data, page_size=Pick.AUTO, host=HOST).data
    assert largest.notes[0] == "cell 0 (2G): 1G pages: the largest host page size (1G, 2M) " \
                               "that divides 2G"


def test_cells_left_alone_take_their_pages_first() -> None:
    """--cells 3: cells 0-2 keep their sizes and take their pages before cell 3 is judged."""
    data, _ = golden("supply-numa")
    all_1g = rewrite_xml(data, page_size=G1, host=HOST).data
    result = rewrite_xml(all_1g, page_size=Pick.AUTO, host=HOST, supply=SUPPLY_NUMA,
                         cells=frozenset({3}))
    assert plan_sizes(result.data) == {0: G1, 1: G1, 2: G1, 3: M2}
    # with cells 0-2 on 2M, node 3's free page and node 0's kept one are cell 3's
    all_2m = rewrite_xml(data, page_size=M2, host=HOST).data
    result = rewrite_xml(all_2m, page_size=Pick.AUTO, host=HOST, supply=SUPPLY_NUMA,
                         cells=frozenset({3}))
    assert plan_sizes(result.data) == {0: M2, 1: M2, 2: M2, 3: G1}
    assert "2 pages on nodes 0-3 (free 5, kept 1, allocatable 0" in result.notes[0]


def test_the_guests_own_pages_count_for_it() -> None:
    """Pages the guest holds now (its record: a pending claim, or a running guest's mapped
    pages) are free for it when it starts again."""
    from hugexml.planning.tally import guest_key_of

    data, _ = golden("supply-numa")
    key = guest_key_of("supply-numa", "7f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5")
    held = supply_table({(0, G1): (0, 1, 0), (1, G1): (3, 0, 0), (2, G1): (1, 0, 0),
                         (3, G1): (1, 0, 0)}, NODES, held={str(key): {(0, G1): 1}})
    result = rewrite_xml(data, page_size=Pick.AUTO, host=HOST, supply=held)
    assert plan_sizes(result.data)[0] == G1
    assert "(free 0, kept 1, this guest's own 1, allocatable 0)" in result.notes[0]


def test_a_device_with_its_own_page_size_takes_its_pages_first() -> None:
    data = b"""<domain type='kvm'>
  <name>own-dimm</name>
  <maxMemory slots='2' unit='GiB'>8</maxMemory>
  <memory unit='GiB'>3</memory>
  <memoryBacking>
    <hugepages/>
  </memoryBacking>
  <vcpu>1</vcpu>
  <numatune>
    <memory mode='strict' nodeset='0'/>
  </numatune>
  <os>
    <type>hvm</type>
  </os>
  <cpu>
    <numa>
      <cell id='0' cpus='0' memory='2' unit='GiB'/>
    </numa>
  </cpu>
  <devices>
    <memory model='dimm'>
      <source>
        <pagesize unit='G'>1</pagesize>
      </source>
      <target>
        <size unit='GiB'>1</size>
        <node>0</node>
      </target>
    </memory>
  </devices>
</domain>
"""
    two = supply_table({(0, G1): (2, 0, 0)}, NODES)
    result = rewrite_xml(data, page_size=Pick.AUTO, host=HOST, supply=two)
    assert plan_sizes(result.data) == {0: M2}
    assert "1G: only 1 of 2 pages can be supplied on node 0 now (free 2, kept 0, allocatable 0; " \
           "1 already counted for this guest's other memory)" in result.notes[0]
    three = supply_table({(0, G1): (3, 0, 0)}, NODES)
    assert plan_sizes(rewrite_xml(data, page_size=Pick.AUTO, host=HOST, supply=three).data) \
        == {0: G1}


# --- the command ---------------------------------------------------------------------------
def fake_root(tmp_path: Path, sizes_kib: tuple[int, ...] = (M2, G1), nodes: int = 2) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text("MemTotal: 16000000 kB\nHugepagesize:    2048 kB\n")
    for size in sizes_kib:
        (root / f"sys/kernel/mm/hugepages/hugepages-{size}kB").mkdir(parents=True)
        for node in range(nodes):
            (root / f"sys/devices/system/node/node{node}/hugepages/hugepages-{size}kB").mkdir(
                parents=True)
    return root


def cli(root: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "hugexml", "--root", str(root), "rewrite", *args],
                          input=stdin, capture_output=True, env=env, timeout=60, check=False)


def test_cli_stdout_and_notes(tmp_path: Path) -> None:
    data, expected = golden("numa-auto-mixed")
    src = tmp_path / "vm.xml"
    src.write_bytes(data)
    proc = cli(fake_root(tmp_path), str(src))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected
    # this root has no pools to read: what it can supply is unknown, so auto is largest
    unknown, first = proc.stderr.decode().splitlines()[:2]
    assert unknown.startswith(f"{src}: what this host can supply now is unknown (")
    assert unknown.endswith("): page sizes judged as with --page-size largest")
    assert first == (
        f"{src}: cell 0 (4G): 1G pages: the largest host page size (1G, 2M) that divides 4G")
    assert src.read_bytes() == data  # the input is not touched


def test_cli_stdin_and_output_file(tmp_path: Path) -> None:
    data, expected = golden("odd-formatting")
    out = tmp_path / "out.xml"
    proc = cli(fake_root(tmp_path), "-", "--page-size", "2M", "-o", str(out), stdin=data)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == expected and proc.stdout == b""


def test_cli_in_place_keeps_backup_and_mode(tmp_path: Path) -> None:
    data, expected = golden("comments-everywhere")
    src = tmp_path / "vm.xml"
    src.write_bytes(data)
    os.chmod(src, 0o640)
    proc = cli(fake_root(tmp_path), str(src), "--page-size", "1048576KiB", "--in-place")
    assert proc.returncode == 0, proc.stderr
    assert src.read_bytes() == expected
    assert stat.S_IMODE(src.stat().st_mode) == 0o640
    assert (tmp_path / "vm.xml.bak").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "vm.xml", "vm.xml.bak"]
    # a second run finds nothing to do and leaves the file alone
    mtime = src.stat().st_mtime_ns
    proc = cli(fake_root(tmp_path / "again"), str(src), "--page-size", "1G", "--in-place",
               "--no-backup")
    assert proc.returncode == 0 and src.stat().st_mtime_ns == mtime


def test_cli_in_place_through_a_symlink(tmp_path: Path) -> None:
    data, expected = golden("memfd-insert")
    real = tmp_path / "real.xml"
    real.write_bytes(data)
    link = tmp_path / "link.xml"
    link.symlink_to(real)
    proc = cli(fake_root(tmp_path), str(link), "--page-size", "2M", "--memfd", "--in-place")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and real.read_bytes() == expected
    assert (tmp_path / "real.xml.bak").read_bytes() == data


def test_cli_in_place_no_backup(tmp_path: Path) -> None:
    data, expected = golden("crlf-auto")
    src = tmp_path / "vm.xml"
    src.write_bytes(data)
    proc = cli(fake_root(tmp_path), str(src), "--in-place", "--no-backup")
    assert proc.returncode == 0, proc.stderr
    assert src.read_bytes() == expected and not (tmp_path / "vm.xml.bak").exists()


def test_cli_check_and_diff(tmp_path: Path) -> None:
    data, _ = golden("memfd")
    src = tmp_path / "vm.xml"
    src.write_bytes(data)
    root = fake_root(tmp_path)
    proc = cli(root, str(src), "--page-size", "2M", "--memfd", "--check", "--diff")
    assert proc.returncode == 1
    assert proc.stdout.decode().splitlines() == [
        f"--- {src}", f"+++ {src}", "@@ -5,7 +5,7 @@", "     <hugepages>",
        "       <page size='2048' unit='KiB'/>", "     </hugepages>",
        '-    <source type="file"/>', '+    <source type="memfd"/>',
        "     <access mode='shared'/>", "   </memoryBacking>", "   <os>"]
    assert src.read_bytes() == data
    assert cli(root, str(src), "--page-size", "2M", "--check").returncode == 0


def test_cli_json(tmp_path: Path) -> None:
    import json

    data, expected = golden("single-line")
    proc = cli(fake_root(tmp_path), "-", "--json", "--page-size", "largest", stdin=data)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["changed"] is True and doc["xml"].encode() == expected
    assert doc["notes"] == ["memory (1G): 1G pages: the largest host page size (1G, 2M) that "
                            "divides 1G"]


GUEST_2G_NODE_0 = b"""<domain type='kvm'>
  <name>vm2g</name>
  <uuid>3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a</uuid>
  <memory unit='GiB'>2</memory>
  <vcpu>1</vcpu>
  <numatune>
    <memory mode='strict' nodeset='0'/>
  </numatune>
  <os>
    <type>hvm</type>
  </os>
</domain>
"""


def test_cli_auto_counts_the_kept_pages_of_the_state_dir(tmp_path: Path) -> None:
    """On the fake kernel (2 nodes, 12G free each, no free 1G page): 2M, since no 1G page
    can be promised; after a 2 x 1G guest on node 0 stopped (its pages kept), 1G."""
    kernel = make_kernel("fake", str(tmp_path / "root"), nodes=2, mem_total_kib=16 * GIB,
                         mem_free_kib=12 * GIB)
    state, conf = tmp_path / "state", tmp_path / "hugexml.conf"
    conf.write_text("[allocation]\nmargin_min = 1G\nmargin_percent = 5\n")
    src = tmp_path / "vm.xml"
    src.write_bytes(GUEST_2G_NODE_0)

    def run(*args: str) -> tuple[bytes, list[str]]:
        proc = cli_with(Path(kernel.fk.root), state, conf, str(src), *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr.decode().splitlines()

    out, notes = run()
    assert b"<page size='2048' unit='KiB'/>" in out
    assert notes == [
        f"{src}: memory (2G): 2M pages: 1G: only 0 of 2 pages can be supplied on node 0 now "
        "(free 0, kept 0, allocatable 0; MemFree allows up to 11 more, not a promise: not "
        "counted); 2M chosen: the largest host page size (1G, 2M) that divides 2G and can be "
        "supplied now: 1024 pages on node 0 (free 0, kept 0, allocatable 5632 within the "
        "margin, 6144 without)"]
    keep_pages(kernel, str(state), 2, 0)
    out, notes = run()
    assert b"<page size='1048576' unit='KiB'/>" in out
    assert notes == [f"{src}: memory (2G): 1G pages: the largest host page size (1G, 2M) that "
                     "divides 2G and can be supplied now: 2 pages on node 0 (free 0, kept 2, "
                     "allocatable 0; MemFree allows up to 9 more, not a promise: not counted)"]
    # pages kept on node 1 are not where this guest may take pages
    elsewhere = make_kernel("fake", str(tmp_path / "root1"), nodes=2, mem_total_kib=16 * GIB,
                            mem_free_kib=12 * GIB)
    keep_pages(elsewhere, str(tmp_path / "state1"), 2, 1)
    proc = cli_with(Path(elsewhere.fk.root), tmp_path / "state1", conf, str(src), "--check")
    assert proc.returncode == 1 and b"only 0 of 2 pages can be supplied on node 0" in proc.stderr
    # largest: 1G whatever the host can supply, and no word about it
    out, notes = run("--page-size", "largest")
    assert b"<page size='1048576' unit='KiB'/>" in out and "supplied" not in " ".join(notes)


def cli_with(root: Path, state: Path, conf: Path, *args: str,
             stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "hugexml", "--root", str(root), "--state-dir",
                           str(state), "--config", str(conf), "rewrite", *args],
                          input=stdin, capture_output=True, env=env, timeout=60, check=False)


HOSTILE = {
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                      b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                      b"<domain><name>&lol2;</name></domain>",
    "xxe": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b"<domain><name>&x;</name></domain>",
    "external-dtd": b'<?xml version="1.0"?><!DOCTYPE domain SYSTEM "http://example.com/x.dtd">'
                    b"<domain/>",
    "not-utf8": b"<domain><name>\xff\xfe</name><memory>1</memory></domain>",
    "truncated": b"<domain type='kvm'><name>vm</name><memory unit='KiB'>1048",
    "absurd-memory": b"<domain><name>vm</name><memory unit='EiB'>99999999999</memory></domain>",
    "absurd-cell": b"<domain><name>vm</name><memory>1048576</memory><cpu><numa>"
                   b"<cell id='99999999999999' cpus='0' memory='1048576'/></numa></cpu></domain>",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_cli_hostile_input(tmp_path: Path, name: str) -> None:
    proc = cli(fake_root(tmp_path), "-", "--page-size", "2M", stdin=HOSTILE[name])
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("hugexml rewrite: ") and "Traceback" not in err
    assert proc.stdout == b""


@pytest.mark.parametrize("args, text", [
    (("--page-size", "3M"), "not a power of two"),
    (("--page-size", "16G"), "not supported by this host"),
    (("--page-size", "lots"), "is not a size like 2M"),
    (("--cells", "0-2,x"), "--cells"),
    (("--no-backup",), "--no-backup needs --in-place"),
    (("--in-place",), "--in-place needs a FILE"),
])
def test_cli_bad_options(tmp_path: Path, args: tuple[str, ...], text: str) -> None:
    data, _ = golden("numa-auto-mixed")
    proc = cli(fake_root(tmp_path), "-", *args, stdin=data)
    assert proc.returncode == 2 and text in proc.stderr.decode(), proc.stderr
    assert proc.stderr.decode().count("\n") == 1


def test_cli_missing_file(tmp_path: Path) -> None:
    proc = cli(fake_root(tmp_path), str(tmp_path / "nope.xml"))
    assert proc.returncode == 2 and "No such file" in proc.stderr.decode()


# --- invariants over generated domains (hypothesis) ----------------------------------------

CELL_MIB = (512, 1024, 1025, 1536, 2048, 3072, 4096)
BACKINGS = ("none", "empty", "bare", "master-2M", "master-1G-others", "split")


@st.composite
def generated(draw: Any) -> tuple[bytes, dict[Optional[int], Optional[int]], dict[str, Any]]:
    """A domain in a random style, its page map as generated, and rewrite options."""
    unit = draw(st.sampled_from([b"  ", b"    ", b"\t"]))
    q = draw(st.sampled_from([b"'", b'"']))
    nl = draw(st.sampled_from([b"\n", b"\r\n"]))
    comment = draw(st.lists(st.booleans(), min_size=12, max_size=12))
    ncells = draw(st.integers(0, 4))
    cells = [draw(st.sampled_from(CELL_MIB)) for _ in range(ncells)]
    backing = draw(st.sampled_from(BACKINGS))
    if backing == "split" and ncells < 2:
        backing = "master-2M"
    targets: list[Optional[int]] = list(range(ncells)) if ncells else [None]

    def a(name: str, value: str) -> bytes:
        return b" " + name.encode() + b"=" + q + value.encode() + q

    lines: list[bytes] = []

    def add(depth: int, text: bytes) -> None:
        if comment[len(lines) % len(comment)]:
            lines.append(unit * depth + b"<!-- note " + str(len(lines)).encode() + b" -->")
        lines.append(unit * depth + text)

    memory_mib = sum(cells) or draw(st.sampled_from(CELL_MIB))
    lines.append(b"<domain" + a("type", "kvm") + b">")
    add(1, b"<name>gen</name>")
    add(1, b"<memory" + a("unit", "MiB") + b">" + str(memory_mib).encode() + b"</memory>")
    original: dict[Optional[int], Optional[int]] = dict.fromkeys(targets)
    if backing == "empty":
        add(1, b"<memoryBacking/>")
    elif backing != "none":
        add(1, b"<memoryBacking>")
        if backing == "bare":
            add(2, b"<hugepages/>")
            original = dict.fromkeys(targets, M2)
        else:
            add(2, b"<hugepages>")
            if backing == "master-2M":
                add(3, b"<page" + a("size", "2") + a("unit", "M") + b"/>")
                original = dict.fromkeys(targets, M2)
            elif backing == "master-1G-others":
                add(3, b"<page" + a("size", "1048576") + b"/>")
                original = dict.fromkeys(targets, G1)
            else:
                add(3, b"<page" + a("size", "2048") + a("nodeset", "0") + b"/>")
                add(3, b"<page" + a("size", "1") + a("unit", "G") + a("nodeset", "1") + b"/>")
                original = {t: None for t in targets}
                original.update({0: M2, 1: G1})
            add(2, b"</hugepages>")
        if draw(st.booleans()):
            add(2, b"<nosharepages/>")
        if draw(st.booleans()):
            add(2, b"<access" + a("mode", "shared") + b"/>")
        add(1, b"</memoryBacking>")
    add(1, b"<vcpu>4</vcpu>")
    if ncells:
        add(1, b"<cpu>")
        add(2, b"<numa>")
        for i, mib in enumerate(cells):
            add(3, b"<cell" + a("id", str(i)) + a("cpus", str(i)) + a("memory", str(mib))
                + a("unit", "MiB") + b"/>")
        add(2, b"</numa>")
        add(1, b"</cpu>")
    add(1, b"<os><type>hvm</type></os>")
    lines.append(b"</domain>")
    data = nl.join(lines) + draw(st.sampled_from([b"", nl]))

    size = draw(st.sampled_from([Pick.AUTO, M2, G1, 4]))
    chosen = None
    if ncells and draw(st.booleans()):
        chosen = frozenset(draw(st.lists(st.integers(0, ncells - 1), min_size=1, unique=True)))
    memory = {t: (cells[t] if t is not None else memory_mib) * 1024 for t in targets}
    expected = dict(original)
    for t in targets if chosen is None else sorted(chosen):
        if size is Pick.AUTO:
            expected[t] = G1 if memory[t] % G1 == 0 else M2 if memory[t] % M2 == 0 else None
        else:
            expected[t] = None if size == 4 else int(size)
    options = {"page_size": size, "cells": chosen, "memfd": draw(st.booleans())}
    return data, expected, options


def outside(data: bytes) -> tuple[int, int]:
    """The byte range of <memoryBacking> with its line's indentation (the generator writes
    'memoryBacking' nowhere else), or an empty range."""
    start = data.find(b"<memoryBacking")
    if start < 0:
        return 0, 0
    end = data.find(b"</memoryBacking>", start)
    end = data.find(b"/>", start) + 2 if end < 0 else end + len(b"</memoryBacking>")
    while start > 0 and data[start - 1:start] in (b" ", b"\t", b"\n", b"\r"):
        start -= 1
    return start, end


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated())
def test_generated_domains(case: tuple[bytes, dict, dict]) -> None:
    data, expected, options = case
    result = rewrite_xml(data, host=HOST, **options)
    out = result.data
    # the plan reports exactly what was asked
    assert plan_sizes(out) == expected
    if options["memfd"]:
        assert load_domain(out, "gen").source == "memfd"
    # a second run changes nothing
    again = rewrite_xml(out, host=HOST, **options)
    assert not again.changed and again.data == out
    # every changed byte lies in <memoryBacking> (old in the input, new in the output)
    def without_backing(doc: bytes) -> bytes:
        start, end = outside(doc)
        return doc[:start] + doc[end:]

    assert without_backing(out) == without_backing(data)
    assert result.changed == (out != data)


@st.composite
def supplies(draw: Any) -> HostSupply:
    """Any snapshot of what HOST's four nodes can supply: few pages, sometimes a margin."""
    counts = st.integers(0, 6)
    pools = {(n, s): PoolSupply(draw(counts), draw(counts),
                                draw(st.sampled_from([0, 10, 600, 5000])) if s == M2 else 0,
                                draw(counts) if s == G1 else 0)
             for n in HOST.nodes for s in (M2, G1)}
    room = {n: draw(st.sampled_from([-GIB, GIB, 64 * GIB])) for n in HOST.nodes}
    return HostSupply(HOST.nodes, pools, room)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated(), supplies())
def test_generated_domains_with_a_supply(case: tuple[bytes, dict, dict],
                                         supply: HostSupply) -> None:
    """auto with any supply: never a larger size than largest, never XML libvirt refuses
    (rewrite_xml checks every output), and a second run with the same supply changes
    nothing."""
    data, expected, options = case
    result = rewrite_xml(data, host=HOST, supply=supply, **options)
    got = plan_sizes(result.data)
    for target, size in got.items():
        if options["page_size"] is Pick.AUTO:
            assert (size or 0) <= (expected[target] or 0), (target, result.notes)
        else:
            assert size == expected[target]
    again = rewrite_xml(result.data, host=HOST, supply=supply, **options)
    assert not again.changed and again.data == result.data
