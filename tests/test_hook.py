"""The hook's dispatch table, its no-op paths, its one-line errors and its XML filters.

Host-changing paths run on a fake kernel (tests/fakekernel.py) through the ``make_gateway``
injection point; the no-op paths are checked in a subprocess for what they import.
"""
from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pytest
from hookfix import G1, M2, FakeHost, call, guest_xml, hook_call, no_gateway

from hugexml.qemuhook import dispatch as hook
from hugexml.qemuhook import hooklog

REPO = Path(__file__).resolve().parents[1]
PLAIN = b"""<domain type='kvm'>
  <name>vm1</name>
  <uuid>6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
</domain>
"""
HUGE_2M = PLAIN.replace(
    b"<vcpu>", b"<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages>"
               b"</memoryBacking>\n  <vcpu>")
DIMM_ONLY = PLAIN.replace(
    b"<vcpu>", b"<devices><memory model='dimm'><source><pagesize unit='KiB'>2048</pagesize>"
               b"</source><target><size unit='MiB'>128</size><node>0</node></target></memory>"
               b"</devices>\n  <vcpu>")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test here may touch /run/hugexml, /etc/hugexml or /dev/log."""
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "hugexml.conf").write_text("# defaults\n")
    monkeypatch.setenv("HUGEXML_CONFIG", str(tmp_path / "hugexml.conf"))
    monkeypatch.setenv("HUGEXML_ROOT", str(tmp_path / "emptyroot"))
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", str(tmp_path / "no-syslog"))


# --- the table ---------------------------------------------------------------------------
def test_dispatch_table_handles_exactly_the_documented_operations():
    assert set(hook.DISPATCH) == {
        ("prepare", "begin"), ("started", "begin"), ("release", "end"),
        ("reconnect", "begin"), ("migrate", "begin"), ("restore", "begin")}
    # only prepare may fail a start; started/reconnect must never make libvirt kill a guest
    assert {k: v[1] for k, v in hook.DISPATCH.items()} == {
        ("prepare", "begin"): hook.GATE, ("started", "begin"): hook.NEVER_FAIL,
        ("release", "end"): hook.NEVER_FAIL, ("reconnect", "begin"): hook.NEVER_FAIL,
        ("migrate", "begin"): hook.FILTER, ("restore", "begin"): hook.FILTER}


@pytest.mark.parametrize("argv", [
    ["qemu", "vm1", "start", "begin", "-"],
    ["qemu", "vm1", "stopped", "end", "-"],
    ["qemu", "vm1", "attach", "begin", "-"],
    ["qemu", "vm1", "prepare", "end", "-"],   # a sub-operation we do not handle
    ["qemu", "vm1", "release", "begin", "-"],
    ["qemu", "vm1"],                          # malformed: never crash libvirt's call
    ["qemu"],
])
def test_unhandled_operations_exit_0_without_reading_stdin(argv):
    assert call(argv, make_gateway=no_gateway) == (0, b"", "")


@pytest.mark.parametrize("op", [("prepare", "begin"), ("started", "begin"),
                                ("release", "end"), ("reconnect", "begin")])
def test_guests_without_hugepages_are_no_ops(op):
    assert call(["qemu", "vm1", *op, "-"], PLAIN, make_gateway=no_gateway) == (0, b"", "")


@pytest.mark.parametrize("op", [("migrate", "begin"), ("restore", "begin")])
def test_filters_pass_a_guest_without_hugepages_through_byte_for_byte(op):
    assert call(["qemu", "vm1", *op, "-"], PLAIN, make_gateway=no_gateway) == (0, PLAIN, "")


@pytest.mark.parametrize("data,expected", [
    (PLAIN, False), (HUGE_2M, True), (DIMM_ONLY, True),
    (b"<domain><memoryBacking><hugepages/></memoryBacking></domain>", True),
    (b"<domain><description>hugepages</description></domain>", False),
])
def test_mentions_hugepages(data, expected):
    assert hook.mentions_hugepages(data) is expected


@pytest.mark.parametrize("data,expected", [
    (PLAIN, "6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10"),
    (b"<domain><uuid>6B0D5C1E8F7A4C1D9A550C2B6F7E9A10</uuid></domain>",
     "6B0D5C1E8F7A4C1D9A550C2B6F7E9A10"),
    (b"<domain><name>x</name></domain>", None),
    (b"<domain><uuid>not-a-uuid</uuid></domain>", None),
    (b"<domain><uuid>" + b"a" * 500, None),
])
def test_domain_uuid(data, expected):
    assert hook.domain_uuid(data) == expected


# What the no-op paths import is pinned in tests/test_import_pins.py.


# --- logging -----------------------------------------------------------------------------
def test_syslog_records_go_to_dev_log_as_one_datagram_each(tmp_path, monkeypatch):
    address = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", address)
    try:
        assert hooklog.syslog(["one", "two"], error=True)
        first, second = server.recv(4096), server.recv(4096)
    finally:
        server.close()
    assert first.startswith(b"<27>hugexml[") and first.endswith(b"]: one")
    assert second.endswith(b"]: two")
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", str(tmp_path / "gone"))
    assert hooklog.syslog(["x"], error=False) is False


def flushed(op: str, error: bool, config: str | None = None, tmp_path: Path | None = None,
            trace: str = "") -> str:
    if config is not None and tmp_path is not None:
        (tmp_path / "hugexml.conf").write_text(config)
    c = hook.Call(["qemu", "vm1", op, "begin", "-"], io.BytesIO(b""), io.BytesIO(),
                  io.StringIO(), None)
    c.log("a record")
    c.flush(error=error, trace=trace)
    return c.stderr.getvalue()


def test_without_dev_log_records_go_to_the_state_dirs_hook_log(tmp_path):
    """No syslog (the fixture points SYSLOG_ADDRESS at nothing): successes and failures go
    to <state_dir>/hook.log, tracebacks included, and stderr stays empty."""
    (tmp_path / "state").mkdir(mode=0o700)
    assert flushed("prepare", error=False) == ""
    assert flushed("started", error=True, trace="Traceback (most recent call last):\n  x\n") == ""
    log = (tmp_path / "state" / "hook.log").read_text()
    assert log.count("domain 'vm1' prepare begin: a record (") == 1
    assert "domain 'vm1' started begin: a record (" in log and "Traceback" in log


def test_with_nowhere_to_log_only_a_failures_line_reaches_stderr(tmp_path):
    """No syslog and no usable state dir: a success is dropped, a failure leaves its one
    summary line on stderr (libvirt keeps it in its log) and never its traceback."""
    (tmp_path / "state").write_text("not a directory")
    assert flushed("started", error=False) == ""
    err = flushed("started", error=True, trace="Traceback (most recent call last):\n  x\n")
    assert err.startswith("hugexml: domain 'vm1' started begin: a record (")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_hook_log_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(hooklog, "MAX_LOG_BYTES", 300)
    for i in range(20):
        assert hooklog.append_file(str(tmp_path), [f"line {i} " + "x" * 40])
    assert os.path.getsize(tmp_path / "hook.log") <= 300
    assert os.path.getsize(tmp_path / "hook.log.1") <= 300


@pytest.mark.parametrize("config,on_stderr,in_file", [
    ("[hook]\nlog = stderr\n", True, False),
    ("[hook]\nlog = none\n", False, False),
    ("[hook]\nlog = syslog\n", False, True),   # no syslog listens: the state dir's hook.log
])
def test_hook_log_setting(tmp_path, config, on_stderr, in_file):
    assert bool(flushed("started", False, config, tmp_path)) is on_stderr
    assert bool(flushed("started", True, config, tmp_path)) is on_stderr
    log = tmp_path / "state" / "hook.log"
    assert (log.exists() and log.read_text().count("started begin: a record") == 2) is in_file


def test_a_successful_prepare_logs_its_decision_to_syslog_and_nothing_to_stderr(
        host, tmp_path, monkeypatch):
    address = str(tmp_path / "devlog")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(5)
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", address)
    try:
        assert hook_call(host, "prepare", guest_xml("vm1", 128, M2, node=1)) == (0, b"", "")
        record = server.recv(4096).decode()
    finally:
        server.close()
    assert record.startswith("<30>hugexml["), record          # daemon.info
    assert ("domain 'vm1' prepare begin: demand 64 x 2048 KiB on node 1; "
            "added {1:2048=64}, claimed {1:2048=64}; claim pending (") in record, record


# --- failures ----------------------------------------------------------------------------
def test_read_limit_is_the_safe_parser_limit():
    from hugexml.xml.xmlsafe import MAX_XML_BYTES

    assert hook.READ_LIMIT_BYTES == MAX_XML_BYTES


def test_oversized_input_is_one_line_and_exit_1_on_prepare(monkeypatch):
    monkeypatch.setattr(hook, "READ_LIMIT_BYTES", 64)
    code, out, err = call(["qemu", "vm1", "prepare", "begin", "-"], HUGE_2M)
    assert (code, out) == (1, b"")
    assert err.count("\n") == 1 and err.startswith("hugexml: domain 'vm1' XML: ")
    assert "larger than" in err


@pytest.mark.parametrize("op", [("restore", "begin"), ("migrate", "begin")])
def test_filters_fail_open_with_empty_output(monkeypatch, tmp_path, op):
    """libvirt reads empty output as 'unchanged'; prepare is the gate that explains."""
    monkeypatch.setattr(hook, "READ_LIMIT_BYTES", 64)
    code, out, err = call(["qemu", "vm1", *op, "-"], HUGE_2M)
    assert (code, out, err) == (0, b"", "")
    # no syslog here: the record goes to the state dir's hook.log
    assert ("failed open (XML passed through unchanged): domain 'vm1' XML: not a readable "
            "domain XML: larger than 0 MiB") in (tmp_path / "state" / "hook.log").read_text()


def test_a_programming_error_in_prepare_is_one_line_and_its_traceback_is_logged(
        monkeypatch, tmp_path):
    (tmp_path / "state").mkdir(mode=0o700)

    def broken(c):
        raise KeyError("bug")

    monkeypatch.setitem(hook.DISPATCH, ("prepare", "begin"), (broken, hook.GATE))
    code, out, err = call(["qemu", "vm1", "prepare", "begin", "-"], HUGE_2M)
    assert (code, out) == (1, b"")
    assert err == ("hugexml: internal error (KeyError: 'bug'); the traceback is in "
                   "hugexml's log\n")
    log = (tmp_path / "state" / "hook.log").read_text()
    assert "refused the start: internal error (KeyError" in log
    assert "Traceback (most recent call last)" in log and 'raise KeyError("bug")' in log


def test_a_failing_started_hook_never_fails_libvirt(monkeypatch, tmp_path):
    from hugexml.core.errors import LockTimeout

    def stuck(c):
        raise LockTimeout(path="/run/hugexml/lock", seconds=30.0)

    monkeypatch.setitem(hook.DISPATCH, ("started", "begin"), (stuck, hook.NEVER_FAIL))
    code, out, err = call(["qemu", "vm1", "started", "begin", "-"], HUGE_2M)
    assert (code, out, err) == (0, b"", "")
    assert ("domain 'vm1' started begin: failed, exit 0 all the same: could not take the "
            "lock") in (tmp_path / "state" / "hook.log").read_text()


def test_has_record_is_a_stat_of_the_guests_file(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(state))
    c = hook.Call(["qemu", "vm1", "release", "end", "-"], io.BytesIO(PLAIN), io.BytesIO(),
                  io.StringIO(), None)
    guest = c.guest()
    assert guest.uuid == "6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10"
    assert c.has_record() is False
    (state / "guests").mkdir(parents=True)
    (state / "guests" / "00000000-0000-4000-8000-000000000000.json").write_text("{}")
    assert c.has_record() is False
    (state / "guests" / f"{guest.uuid}.json").write_text("{}")
    assert c.has_record() is True
    (state / "guests" / f"{guest.uuid}.json").unlink()
    from hugexml.planning.records import guest_key

    (state / "guests" / f"{guest_key('vm1', None)}.json").write_text("{}")  # reserved by name
    assert c.has_record() is True


def test_work_due_reads_a_bounded_time(tmp_path, monkeypatch):
    import time as time_mod

    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(state))
    c = hook.Call(["qemu", "vm1", "release", "end", "-"], io.BytesIO(PLAIN), io.BytesIO(),
                  io.StringIO(), None)
    assert c.work_due() is False
    (state / "due").write_text(f"{time_mod.time() + 600:.0f}\n")
    assert c.work_due() is False
    (state / "due").write_text(f"{time_mod.time() - 1:.0f}\n")
    assert c.work_due() is True
    (state / "due").write_text("x" * 10_000_000)
    assert c.work_due() is True  # unreadable: let a session look


# --- on a fake host: sysfs/procfs tree for the plan, SimKernel behind the gateway ---------
@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    h = FakeHost(tmp_path / "root")
    monkeypatch.setenv("HUGEXML_ROOT", str(h.base))
    return h


def ledger(tmp_path) -> dict:
    from statefix import snapshot

    return snapshot(tmp_path / "state") if (tmp_path / "state").exists() else {"guests": {}}


def test_lifecycle_allocates_exactly_on_the_bound_node_and_gives_it_back(host, tmp_path):
    xml = guest_xml("vm1", 128, M2, node=1)
    assert hook_call(host, "prepare", xml) == (0, b"", "")
    assert (host.sim.nr(0, M2), host.sim.nr(1, M2)) == (0, 64)
    (rec,) = ledger(tmp_path)["guests"].values()
    assert rec["state"] == "pending" and rec["added"] == {"1:2048": 64}
    host.sim.map(1, M2, 64)                       # qemu faults the memory in
    assert hook_call(host, "started", xml)[0] == 0
    assert next(iter(ledger(tmp_path)["guests"].values()))["state"] == "active"
    host.sim.unmap(1, M2, 64)                     # qemu exits
    assert hook_call(host, "release", xml)[0] == 0
    assert host.sim.nr(1, M2) == 0
    assert ledger(tmp_path)["guests"] == {}


def test_release_after_a_failed_prepare_is_harmless(host, tmp_path):
    host.sim.set(1, M2, cap=10)                   # fragmentation: 10 pages at most
    xml = guest_xml("vm1", 128, M2, node=1)
    code, out, err = hook_call(host, "prepare", xml)
    assert (code, out) == (1, b"")
    assert err.count("\n") == 1 and err.startswith("hugexml: domain 'vm1': node 1, 2048 KiB")
    assert host.sim.nr(1, M2) == 0                # rolled back
    assert hook_call(host, "release", xml) == (0, b"", "")
    assert host.sim.nr(1, M2) == 0 and ledger(tmp_path)["guests"] == {}


@pytest.mark.parametrize("xml,expect", [
    (guest_xml("vm1", 128, 16384), "hugepage size 16384 KiB is not supported"),
    (guest_xml("vm1", 128, M2, node=7), "node"),
    (b"<domain><name>vm1</name><memoryBacking><hugepages/></memoryBacking>", "vm1"),
])
def test_invalid_domains_fail_with_one_line_and_touch_nothing(host, xml, expect):
    code, out, err = hook_call(host, "prepare", xml)
    assert (code, out) == (1, b"")
    assert err.startswith("hugexml: ") and err.count("\n") == 1 and expect in err, err
    assert host.sim.writes == []


def test_a_missing_mount_fails_before_any_page_is_added_and_names_memfd(host):
    host.set_mounts((M2,))
    code, _, err = hook_call(host, "prepare", guest_xml("vm1", 1024, G1))
    assert code == 1 and err.startswith("hugexml: domain 'vm1': ") and "memfd" in err, err
    assert host.sim.writes == []
    # memfd needs no mount
    assert hook_call(host, "prepare", guest_xml("vm2", 1024, G1, memfd=True), "vm2")[0] == 0
    assert sum(host.sim.nr(n, G1) for n in (0, 1)) == 1


def test_reconnect_makes_a_pending_claim_active(host, tmp_path):
    xml = guest_xml("vm1", 128, M2, node=0)
    hook_call(host, "prepare", xml)
    assert hook_call(host, "reconnect", xml)[0] == 0
    (rec,) = ledger(tmp_path)["guests"].values()
    assert rec["state"] == "active" and rec["added"] == {"0:2048": 64}


def test_concurrent_prepares_never_count_the_same_free_pages_twice(host, tmp_path):
    import threading

    host.sim.set(0, M2, persistent=64)            # 64 free pages: enough for one guest alone
    host.sim.set(1, M2, cap=0)
    xmls = [guest_xml(f"vm{i}", 128, M2, node=0) for i in range(4)]
    results: list[tuple[int, bytes, str]] = []
    barrier = threading.Barrier(len(xmls))

    def run(i: int) -> None:
        barrier.wait()
        results.append(hook_call(host, "prepare", xmls[i], f"vm{i}"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xmls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0] for r in results] == [0, 0, 0, 0], results
    guests = ledger(tmp_path)["guests"]
    assert sum(sum(g["claimed"].values()) for g in guests.values()) == 4 * 64
    assert sum(sum(g["added"].values()) for g in guests.values()) == 3 * 64
    assert host.sim.nr(0, M2) == 4 * 64


def test_restore_filter_moves_an_unmounted_1g_guest_to_a_mounted_2m_size(host):
    host.set_mounts((M2,))
    xml = guest_xml("vm1", 1024, G1)
    code, out, err = hook_call(host, "restore", xml)
    assert code == 0, err
    assert b"<page size='2048' unit='KiB'/>" in out and b"memfd" not in out
    assert out.replace(b"2048", b"1048576") == xml          # nothing else changed
    # fits already: the same bytes
    host.set_mounts((M2, G1))
    assert hook_call(host, "restore", xml)[:2] == (0, xml)


def test_restore_filter_refits_to_what_the_running_daemon_sees_not_what_is_mounted(host):
    """Both sizes are mounted, but libvirtd started before the 1G mount existed: the filter
    asks hugexml.system.daemon which sizes the daemon can use and moves the 1G guest to 2M. A
    memfd guest needs no mount and keeps its 1G pages."""
    import os

    (host.base / "proc/stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    ticks = str(os.sysconf("SC_CLK_TCK"))                  # started 1 s after boot, long ago
    (host.base / "proc/4242").mkdir()
    (host.base / "proc/4242/stat").write_text(
        "4242 (libvirtd) S 1 " + " ".join(["0"] * 17 + [ticks, "0", "0"]) + "\n")
    (host.base / "run").mkdir()
    (host.base / "run/libvirtd.pid").write_text("4242\n")
    (host.base / "dev/hugepages2M/libvirt/qemu").mkdir(parents=True)  # libvirt saw it
    (host.base / "dev/hugepages1G").mkdir(parents=True)               # mounted just now
    xml = guest_xml("vm1", 1024, G1)
    code, out, err = hook_call(host, "restore", xml)
    assert (code, err) == (0, "")
    assert out == xml.replace(b"1048576", b"2048")
    memfd = guest_xml("vm2", 1024, G1, memfd=True)
    assert hook_call(host, "restore", memfd, "vm2") == (0, memfd, "")
    # once libvirt has made its directory in the 1G mount, the daemon knows it
    (host.base / "dev/hugepages1G/libvirt/qemu").mkdir(parents=True)
    assert hook_call(host, "restore", xml) == (0, xml, "")
