"""Regressions of the robustness review (issue 10), one test each, on the fake host: each
names the defect as the review found it on the single-ledger code."""
from __future__ import annotations

import json
import os

import pytest
from allocfix import M2, guest, make_config, plan
from hookfix import FakeHost, call, guest_xml
from simkernel import make_kernel
from statefix import quarantined, snapshot

from hugexml.alloc.allocator import Allocator
from hugexml.alloc.ledger import Store
from hugexml.cli import main as cli
from hugexml.core.errors import GuestConflict, LedgerError
from hugexml.core.model import GuestId
from hugexml.qemuhook import hooklog

UUID = "6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10"


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "hugexml.conf").write_text("")
    monkeypatch.setenv("HUGEXML_CONFIG", str(tmp_path / "hugexml.conf"))
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", str(tmp_path / "no-syslog"))
    h = FakeHost(tmp_path / "root")
    monkeypatch.setenv("HUGEXML_ROOT", str(h.base))
    from hugexml.cli import _alloc

    monkeypatch.setattr(_alloc, "MAKE_GATEWAY", h.gateway)
    return h


def hook(h, op, xml, name="vm1"):
    return call(["qemu", name, op, "end" if op == "release" else "begin", "-"], xml,
                make_gateway=h.gateway)


def test_the_reported_incident_a_malformed_record_of_another_guest(host, tmp_path):
    """libvirt restarted with one malformed record of a guest that does not even exist: the
    reconnect of a healthy running guest used to raise ValueError and exit 1."""
    xml = guest_xml("vm1", 128, M2, node=1, uuid=UUID)
    assert hook(host, "prepare", xml)[0] == 0
    host.sim.map(1, M2, 64)
    assert hook(host, "started", xml)[0] == 0
    bad = tmp_path / "state" / "guests" / "00000000-0000-4000-8000-00000000aa01.json"
    bad.write_text('{"name": "zz", "state": "pending", "updated": "soon"}')
    (tmp_path / "state" / "ledger.json").write_text(json.dumps(
        {"version": 1, "guests": {"zz": {"name": "zz", "state": "pending", "updated": "soon"}}}))
    assert hook(host, "reconnect", xml) == (0, b"", "")
    assert snapshot(tmp_path / "state")["guests"]["vm1"]["state"] == "active"
    assert len(quarantined(tmp_path / "state")) == 2


@pytest.mark.parametrize("field, value", [("updated", "soon"), ("created", [1]),
                                          ("added", {"0:2048": "7"})])
def test_a_field_of_the_wrong_type_never_crashes_a_command(host, tmp_path, field, value,
                                                          capsys):
    xml = guest_xml("vm1", 128, M2, node=1, uuid=UUID)
    assert hook(host, "prepare", xml)[0] == 0
    path = tmp_path / "state" / "guests" / f"{UUID}.json"
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    for argv in (["status"], ["status", "--json"], ["doctor", "--json"], ["reconcile"]):
        code = cli.main(["--root", str(host.base), *argv])
        assert code in (0, 1, 2), argv  # doctor exits 2 on a failed check; nothing raises
    capsys.readouterr()


def test_pools_the_host_lacks_never_block_another_guest(host, tmp_path):
    state = tmp_path / "state"
    xml = guest_xml("vm1", 128, M2, node=0, uuid=UUID)
    assert hook(host, "prepare", xml)[0] == 0
    journal = json.loads((state / "host.json").read_text())
    journal["pools"].update({"7:2048": {"unreleased": 5}, "0:4096": {"unreleased": 1},
                             "0:0": {"admin": 1}})
    journal["intent"] = {"op": "grow", "purpose": "reserve", "guest": None, "started": 1,
                         "pid": 1, "pools": {"7:2048": {"before": 0, "target": 4}}}
    (state / "host.json").write_text(json.dumps(journal))
    other = guest_xml("vm2", 64, M2, node=1)
    assert hook(host, "prepare", other, "vm2")[0] == 0
    assert hook(host, "release", xml)[0] == 0 and host.sim.nr(0, M2) == 0
    assert hook(host, "release", other, "vm2")[0] == 0 and host.sim.nr(1, M2) == 0


def test_names_are_bounded_on_write_as_on_read(host, tmp_path):
    """16 guests with 1 MiB names used to make a ledger that could not be read back."""
    long_name = "n" * (1 << 20)
    code, _, err = hook(host, "prepare", guest_xml(long_name, 64, M2), long_name)
    assert code == 1 and err.count("\n") == 1 and "longer than 255 bytes" in err
    assert host.sim.writes == []


def test_two_domains_with_one_uuid_never_share_a_claim(host, tmp_path):
    first = guest_xml("vm1", 128, M2, node=1, uuid=UUID)
    second = guest_xml("vm2", 128, M2, node=1, uuid=UUID.upper())
    assert hook(host, "prepare", first)[0] == 0
    code, _, err = hook(host, "prepare", second, "vm2")
    assert code == 1 and err.startswith("hugexml: domain 'vm2': uuid " + UUID)
    assert "belongs to guest 'vm1'" in err and err.count("\n") == 1
    assert hook(host, "release", second, "vm2")[0] == 0   # vm2's release frees nothing...
    assert snapshot(tmp_path / "state")["guests"]["vm1"]["state"] == "pending"
    assert host.sim.nr(1, M2) == 64                      # ...of vm1's pending pages


def test_a_cli_reserve_with_a_dashless_uuid_is_the_hooks_guest(host, tmp_path, capsys):
    xml = guest_xml("vm1", 128, M2, node=1, uuid=UUID)
    (tmp_path / "vm1.xml").write_bytes(xml)
    assert cli.main(["--root", str(host.base), "reserve", str(tmp_path / "vm1.xml"),
                     "--uuid", UUID.replace("-", "").upper()]) == 0
    assert os.path.exists(tmp_path / "state" / "guests" / f"{UUID}.json")
    assert hook(host, "release", xml)[0] == 0 and host.sim.nr(1, M2) == 0
    capsys.readouterr()


def test_a_commit_that_fails_after_the_kernel_grew_rolls_the_kernel_back(tmp_path,
                                                                        monkeypatch):
    kernel = make_kernel("fake", str(tmp_path / "root"), nodes=2)
    alloc = Allocator(kernel.gw, str(tmp_path / "state"), make_config())

    def disk_full(self, rec):
        raise LedgerError(path=self.guest_path(rec.key), reason="cannot write: No space left")

    monkeypatch.setattr(Store, "write_guest", disk_full)
    with pytest.raises(LedgerError):
        alloc.reserve(plan("vm", (8, (0,), "strict"), (4, (1,), "strict")), guest("vm"))
    assert kernel.nr(0, M2) == 0 and kernel.nr(1, M2) == 0
    monkeypatch.undo()
    data = snapshot(tmp_path / "state")
    assert data["intent"] is None and data["guests_total"] == {}


def test_a_newline_in_a_name_cannot_forge_a_line_of_status(host, tmp_path, capsys):
    evil = "vm1\nnode  2M  999  999"
    xml = guest_xml("x", 64, M2).replace(b"<name>x</name>", f"<name>{evil}</name>".encode())
    (tmp_path / "evil.xml").write_bytes(xml)
    assert cli.main(["--root", str(host.base), "reserve", str(tmp_path / "evil.xml")]) == 0
    capsys.readouterr()
    assert cli.main(["--root", str(host.base), "status"]) == 0
    out = capsys.readouterr().out
    assert "vm1\\x0anode  2M  999  999" in out and "\nnode  2M  999  999" not in out


def test_policy_keep_survives_a_retried_prepare(tmp_path):
    """A prepare killed after the kernel grew, then retried: with policy = keep its pages
    used to be given back at stop."""
    from simkernel import Crash

    kernel = make_kernel("sim", str(tmp_path / "root"), nodes=1)
    config = make_config(release_policy="keep")
    alloc = Allocator(kernel.gw, str(tmp_path / "state"), config)
    real = Store.write_journal
    writes = []

    def die_at_commit(self, journal):
        writes.append(1)
        if len(writes) == 2:
            raise Crash()
        real(self, journal)

    Store.write_journal = die_at_commit
    try:
        with pytest.raises(Crash):
            alloc.reserve(plan("vm", (8, (0,), "strict")), guest("vm"))
    finally:
        Store.write_journal = real
    retry = Allocator(kernel.gw, str(tmp_path / "state"), config)
    retry.reserve(plan("vm", (8, (0,), "strict")), guest("vm"))
    kernel.map(0, M2, 8)
    retry.settle(guest("vm"))
    kernel.unmap(0, M2, 8)
    retry.release(guest("vm"))
    assert kernel.nr(0, M2) == 8 and snapshot(tmp_path / "state")["kept"] == {"0:2048": 8}


def test_root_means_the_state_and_config_live_under_it(host, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HUGEXML_STATE_DIR")
    monkeypatch.delenv("HUGEXML_CONFIG")
    monkeypatch.delenv("HUGEXML_ROOT")
    (tmp_path / "vm1.xml").write_bytes(guest_xml("vm1", 128, M2, node=1, uuid=UUID))
    assert cli.main(["--root", str(host.base), "reserve", str(tmp_path / "vm1.xml")]) == 0
    assert (host.base / "run/hugexml/guests" / f"{UUID}.json").exists()
    (host.base / "etc/hugexml").mkdir(parents=True)
    (host.base / "etc/hugexml/hugexml.conf").write_text("[release]\npolicy = odd\n")
    assert cli.main(["--root", str(host.base), "release", "vm1"]) == 2  # that config is read
    assert "etc/hugexml/hugexml.conf: [release] policy" in capsys.readouterr().err


def test_the_hooks_precheck_reads_a_bounded_prefix(host, tmp_path):
    """A 1 GiB state file costs the release of an unrelated guest nothing."""
    (tmp_path / "state").mkdir()
    with open(tmp_path / "state" / "due", "wb") as fh:
        fh.truncate(1 << 30)
    with open(tmp_path / "state" / "host.json", "wb") as fh:
        fh.truncate(1 << 30)
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert hook(host, "release", guest_xml("other", 64, M2)) == (0, b"", "")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB


def test_release_by_cli_uuid_or_name(tmp_path):
    kernel = make_kernel("sim", str(tmp_path / "root"), nodes=1)
    alloc = Allocator(kernel.gw, str(tmp_path / "state"), make_config())
    alloc.reserve(plan("vm", (2, (0,), "strict")), GuestId("vm", UUID.upper()))
    with pytest.raises(GuestConflict):
        alloc.reserve(plan("vm2", (2, (0,), "strict")), GuestId("vm2", UUID))
    assert alloc.release(GuestId(UUID.replace("-", "")))["guest"] == UUID
    alloc.reserve(plan("vm", (2, (0,), "strict")), GuestId("vm", UUID))
    assert alloc.release(GuestId("vm"))["guest"] == UUID
