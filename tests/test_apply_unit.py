"""hugexml apply against a fake libvirt connection (injectable): diff, backup, define, undo."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from lxml import etree

from hugexml.cli.main import main as cli_main
from hugexml.core.errors import LibvirtError
from hugexml.core.model import HostInfo
from hugexml.ops import apply as ap
from hugexml.planning.pagesize import Pick

HOST = HostInfo(default_page_kib=2048, page_sizes_kib=(2048, 1048576), nodes=(0,))

PLAIN = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>{kib}</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <graphics type='vnc' port='-1' passwd='s3cret'/>
  </devices>
</domain>
"""


class FakeError(Exception):
    def get_error_message(self) -> str:
        return str(self.args[0])


class FakeDomain:
    def __init__(self, conn: FakeConn, xml: str, active: bool = False, persistent: bool = True):
        self.conn = conn
        self.xml = xml
        self.live_xml = xml if active else None
        self.persistent = persistent
        root = etree.fromstring(xml.encode())
        self._name = root.findtext("name")
        self._uuid = root.findtext("uuid")

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        return self._uuid

    def XMLDesc(self, flags: int = 0) -> str:
        self.conn.calls.append(("XMLDesc", self._name, flags))
        if flags & ap.VIR_DOMAIN_XML_INACTIVE or self.live_xml is None:
            return self.xml
        return self.live_xml

    def isActive(self) -> int:
        return int(self.live_xml is not None)

    def isPersistent(self) -> int:
        return int(self.persistent)


class FakeConn:
    def __init__(self) -> None:
        self.domains: dict[str, FakeDomain] = {}
        self.calls: list[tuple] = []
        self.fail_define: set[str] = set()
        self.closed = False

    def add(
        self,
        name: str,
        kib: int = 1048576,
        active: bool = False,
        persistent: bool = True,
        xml: str | None = None,
    ) -> FakeDomain:
        uuid = f"00000000-0000-4000-8000-{len(self.domains):012d}"
        dom = FakeDomain(
            self, xml or PLAIN.format(name=name, uuid=uuid, kib=kib), active, persistent
        )
        self.domains[name] = dom
        return dom

    def lookupByName(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise FakeError(f"Domain not found: no domain with matching name '{name}'")
        return self.domains[name]

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:
        assert flags == ap.VIR_CONNECT_LIST_DOMAINS_PERSISTENT
        return [d for d in self.domains.values() if d.persistent]

    def defineXML(self, xml: str) -> FakeDomain:
        root = etree.fromstring(xml.encode())
        name = root.findtext("name")
        self.calls.append(("defineXML", name))
        if name in self.fail_define:
            raise FakeError("operation failed: domain definition rejected\n(second line)")
        dom = self.domains.get(name)
        if dom is None:
            dom = self.domains[name] = FakeDomain(self, xml)
        elif dom.UUIDString() != root.findtext("uuid"):
            raise FakeError(f"operation failed: domain '{name}' already exists with another uuid")
        dom.xml = xml  # the persistent definition only; a running guest keeps its live XML
        return dom

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def conn() -> FakeConn:
    return FakeConn()


def applier(conn: FakeConn, tmp_path: Path, **kw) -> ap.Applier:
    return ap.Applier(conn, FakeError, HOST, backup_dir=str(tmp_path / "backups"), **kw)


def test_explicit_2m_rewrite_diff_backup_define(conn, tmp_path):
    dom = conn.add("vm1")
    old = dom.xml
    out = applier(conn, tmp_path).apply("vm1", 2048)
    assert out.status == "changed", out.message
    assert ("XMLDesc", "vm1", ap.VIR_DOMAIN_XML_INACTIVE | ap.VIR_DOMAIN_XML_SECURE) in conn.calls
    assert "<page size='2048' unit='KiB'/>" in dom.xml or 'size="2048"' in dom.xml
    assert "+  <memoryBacking>" in out.diff and out.diff.startswith("--- vm1 (defined)")
    # The backup is the old XML, byte for byte, private (it holds the VNC password).
    assert Path(out.backup).read_text() == old
    assert stat.S_IMODE(os.stat(out.backup).st_mode) == 0o600
    assert Path(out.backup).name.startswith("vm1-00000000-0000-4000-8000-000000000000-")
    # Everything outside <memoryBacking> is untouched.
    assert (
        dom.xml.replace(
            dom.xml[dom.xml.index("  <memoryBacking>") : dom.xml.index("</memoryBacking>\n") + 17],
            "",
        )
        == old
    )


def test_running_guest_is_told_next_start_and_keeps_its_live_xml(conn, tmp_path):
    dom = conn.add("vm1", active=True)
    live = dom.live_xml
    out = applier(conn, tmp_path).apply("vm1", 2048)
    assert out.status == "changed" and out.running
    assert "takes effect at its next start" in out.message
    assert dom.live_xml == live and dom.xml != live


def test_dry_run_changes_nothing(conn, tmp_path):
    dom = conn.add("vm1")
    old = dom.xml
    out = applier(conn, tmp_path, dry_run=True).apply("vm1", 2048)
    assert out.status == "would-change" and out.diff
    assert dom.xml == old and not (tmp_path / "backups").exists()
    assert not [c for c in conn.calls if c[0] == "defineXML"]


def test_second_apply_is_unchanged_and_writes_no_backup(conn, tmp_path):
    conn.add("vm1")
    a = applier(conn, tmp_path)
    assert a.apply("vm1", 2048).status == "changed"
    again = a.apply("vm1", 2048)
    assert again.status == "unchanged"
    assert len(os.listdir(tmp_path / "backups")) == 1


def test_auto_picks_per_host_and_undo_walks_back(conn, tmp_path):
    dom = conn.add("vm1", kib=2 * 1048576)
    original = dom.xml
    clock = iter(range(1_000_000, 1_000_100))
    a = applier(conn, tmp_path, clock=lambda: float(next(clock)))
    first = a.apply("vm1", Pick.AUTO)
    assert first.status == "changed"
    assert "1048576" in dom.xml  # 2 GiB: the largest dividing size is 1G
    after_auto = dom.xml
    second = a.apply("vm1", 2048)
    assert second.status == "changed" and "'2048'" in dom.xml
    undo1 = a.undo("vm1")
    assert undo1.status == "restored" and dom.xml == after_auto
    undo2 = a.undo("vm1")
    assert undo2.status == "restored" and dom.xml == original
    undo3 = a.undo("vm1")
    assert undo3.status == "failed" and "no hugexml backup" in undo3.message


def test_libvirt_errors_are_one_line_and_others_still_done(conn, tmp_path):
    conn.add("good")
    conn.add("rejected")
    conn.fail_define.add("rejected")
    a = applier(conn, tmp_path)
    outs = [a.apply(n, 2048) for n in ("missing", "rejected", "good")]
    assert [o.status for o in outs] == ["failed", "failed", "changed"]
    assert "Domain not found" in outs[0].message and "\n" not in outs[0].message
    assert (
        "defineXML: operation failed: domain definition rejected (second line)" in outs[1].message
    )
    assert ap.exit_code(outs) == 1
    line = ap.summary_line(outs)
    assert "1 changed" in line and "2 failed (missing, rejected)" in line


def test_no_backup_no_define(conn, tmp_path):
    conn.add("vm1")
    (tmp_path / "backups").write_text("a file where the directory should be")
    out = applier(conn, tmp_path).apply("vm1", 2048)
    assert out.status == "failed" and "cannot write the backup" in out.message
    assert not [c for c in conn.calls if c[0] == "defineXML"]


def test_transient_domain_is_refused(conn, tmp_path):
    conn.add("tmp", active=True, persistent=False)
    out = applier(conn, tmp_path).apply("tmp", 2048)
    assert out.status == "failed" and "transient" in out.message


def test_all_auto_refuses_guests_that_do_not_fit(conn, tmp_path):
    conn.add("small", kib=1048576)
    conn.add("huge", kib=64 * 1048576)
    check = ap.capacity_fit_check(lambda node: 8 * 1048576)  # 8 GiB on node 0
    a = applier(conn, tmp_path, fit_check=check)
    outs = [a.apply(n, Pick.AUTO, refuse_unfit=True) for n in a.persistent_names()]
    by = {o.name: o for o in outs}
    assert by["small"].status == "changed"
    assert by["huge"].status == "refused" and "domain 'huge': refused" in by["huge"].message
    assert "refused (huge)" in ap.summary_line(outs)


def test_connect_without_bindings_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)
    with pytest.raises(LibvirtError, match="libvirt Python bindings are not installed"):
        ap.connect("qemu:///system")


@pytest.fixture
def fake_host_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text("MemTotal: 16000000 kB\nHugepagesize:       2048 kB\n")
    for size in (2048, 1048576):
        (root / f"sys/kernel/mm/hugepages/hugepages-{size}kB").mkdir(parents=True)
    node = root / "sys/devices/system/node/node0"
    node.mkdir(parents=True)
    (node / "meminfo").write_text(
        "Node 0 MemTotal:       8388608 kB\nNode 0 MemFree:  4000000 kB\n"
    )
    return root


def run_cli(monkeypatch, conn: FakeConn, root: Path, *args: str) -> int:
    import hugexml.cli.apply as cmd

    monkeypatch.setattr(cmd, "CONNECT", lambda uri: (conn, FakeError))
    return cli_main(["--root", str(root), "apply", *args])


def test_cli_all_auto_json_and_exit_codes(monkeypatch, capsys, conn, fake_host_root, tmp_path):
    conn.add("a", kib=1048576)
    conn.add("b", kib=2 * 1048576, active=True)
    conn.add("toolarge", kib=32 * 1048576)
    code = run_cli(
        monkeypatch,
        conn,
        fake_host_root,
        "--all",
        "--page-size",
        "auto",
        "--backup-dir",
        str(tmp_path / "bk"),
        "--json",
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["summary"]["changed"] == ["a", "b"] and report["summary"]["refused"] == [
        "toolarge"
    ]
    assert conn.closed
    assert len(os.listdir(tmp_path / "bk")) == 2
    code = run_cli(
        monkeypatch, conn, fake_host_root, "--undo", "b", "--backup-dir", str(tmp_path / "bk")
    )
    out = capsys.readouterr().out
    assert code == 0 and "b: restored from" in out and "1 domain(s): 1 restored" in out


def test_cli_bad_input_exit_2(monkeypatch, capsys, conn, fake_host_root):
    assert run_cli(monkeypatch, conn, fake_host_root) == 2
    assert run_cli(monkeypatch, conn, fake_host_root, "vm", "--page-size", "3X") == 2
    assert run_cli(monkeypatch, conn, fake_host_root, "--undo", "--all") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("hugexml apply: ") for line in err)


@pytest.mark.parametrize("backing,option,fixed", [
    ("<memoryBacking><source type='anonymous'/></memoryBacking>", "memfd",
     "<source type='memfd'/>"),
    ("<memoryBacking><allocation mode='ondemand'/></memoryBacking>", "drop_ondemand",
     "<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>"),
])
def test_a_conflict_with_hugepages_is_refused_unless_resolved(conn, tmp_path, backing, option,
                                                              fixed):
    """libvirt refuses hugepages with these: apply defines nothing (one line naming the
    option), or resolves them when asked."""
    xml = PLAIN.format(name="vm1", uuid="00000000-0000-4000-8000-000000000000",
                       kib=1048576).replace("  <vcpu", f"  {backing}\n  <vcpu")
    dom = conn.add("vm1", xml=xml)
    out = applier(conn, tmp_path).apply("vm1", 2048)
    assert out.status == "failed" and "does not allow hugepages" in out.message
    assert f"--{option.replace('_', '-')}" in out.message and "\n" not in out.message
    assert dom.xml == xml and not [c for c in conn.calls if c[0] == "defineXML"]
    out = applier(conn, tmp_path).apply("vm1", 2048, **{option: True})
    assert out.status == "changed", out.message
    assert fixed in dom.xml and "<page size='2048' unit='KiB'/>" in dom.xml


# --- auto and what the host can supply now ----------------------------------------------------
def one_node_supply(free_1g: int = 0, kept_1g: int = 0):
    from hugexml.planning.tally import HostSupply, PoolSupply

    pools = {(0, 2048): PoolSupply(0, 0, 5000), (0, 1048576): PoolSupply(free_1g, kept_1g, 0, 9)}
    return HostSupply((0,), pools, {0: 32 * 1048576})


@pytest.mark.parametrize("free_1g, kept_1g, page_size, expected", [
    (0, 0, Pick.AUTO, "2048"),          # no 1G page can be promised: 2M
    (0, 2, Pick.AUTO, "1048576"),       # two kept 1G pages: 1G
    (1, 0, Pick.AUTO, "2048"),          # one of two is not enough
    (0, 0, Pick.LARGEST, "1048576"),    # the largest that divides, whatever the supply
])
def test_auto_counts_what_the_host_can_supply(conn, tmp_path, free_1g, kept_1g, page_size,
                                             expected):
    dom = conn.add("vm1", kib=2 * 1048576)
    a = applier(conn, tmp_path, supply=one_node_supply(free_1g, kept_1g),
                supply_notes=["a note from reading the supply"])
    out = a.apply("vm1", page_size)
    assert out.status == "changed", out.message
    assert f"<page size='{expected}' unit='KiB'/>" in dom.xml
    if page_size is Pick.AUTO:
        assert out.notes[0] == "a note from reading the supply"
        assert "can be supplied now" in out.notes[1]
    else:
        assert out.notes == ["memory (2G): 1G pages: the largest host page size (1G, 2M) that "
                             "divides 2G"]


def test_cli_apply_auto_reads_the_state_dir(monkeypatch, capsys, conn, tmp_path):
    """On the fake kernel: 2M while no 1G page can be promised; after a 2 x 1G guest stopped
    (its pages kept), 1G."""
    from simkernel import GIB, make_kernel
    from supplyfix import keep_pages

    kernel = make_kernel("fake", str(tmp_path / "root"), nodes=1, mem_total_kib=16 * GIB,
                         mem_free_kib=12 * GIB)
    state, conf = tmp_path / "state", tmp_path / "hugexml.conf"
    conf.write_text("[allocation]\nmargin_min = 1G\n")
    conn.add("vm1", kib=2 * 1048576)
    conn.add("vm2", kib=2 * 1048576)

    def apply(name: str) -> dict:
        import hugexml.cli.apply as cmd

        monkeypatch.setattr(cmd, "CONNECT", lambda uri: (conn, FakeError))
        code = cli_main(["--root", kernel.fk.root, "--state-dir", str(state), "--config",
                         str(conf), "apply", name, "--page-size", "auto", "--backup-dir",
                         str(tmp_path / "bk"), "--json"])
        assert code == 0
        return json.loads(capsys.readouterr().out)["results"][0]

    first = apply("vm1")
    assert "<page size='2048' unit='KiB'/>" in conn.domains["vm1"].xml
    assert first["notes"][0].startswith("memory (2G): 2M pages: 1G: only 0 of 2 pages can be "
                                        "supplied on node 0 now (free 0, kept 0, allocatable 0")
    keep_pages(kernel, str(state), 2, 0)
    second = apply("vm2")
    assert "<page size='1048576' unit='KiB'/>" in conn.domains["vm2"].xml
    assert "(free 0, kept 2, allocatable 0" in second["notes"][0]
