"""The hook's boundary, proven by injection: every kind of exception at every step of every
dispatched operation.

Contracts (hugexml.qemuhook.dispatch): ``prepare`` (GATE) exits 1 with exactly one stderr line
and leaves every pool as it was; ``started``, ``reconnect`` and ``release`` (NEVER_FAIL) exit
0; the filters exit 0 and print nothing or the XML. Nothing ever puts a traceback on stderr;
the log (here the state dir's hook.log: no syslog listens) names the domain and the operation,
and holds the traceback of anything that is not a HugexmlError.
"""
from __future__ import annotations

import importlib

import pytest
from hookfix import M2, FakeHost, call, guest_xml

from hugexml.core.errors import HostError
from hugexml.qemuhook import hooklog

EXCEPTIONS = {
    "HugexmlError": lambda: HostError(path="/sys/x", reason="injected"),
    "OSError": lambda: OSError(5, "Input/output error (injected)"),
    "ValueError": lambda: ValueError("could not convert string to float: 'soon'"),
    "KeyError": lambda: KeyError("injected"),
    "MemoryError": lambda: MemoryError(),
}

# Every function a dispatched call can pass through, as "module:attribute".
STEPS = [
    "hugexml.qemuhook.dispatch:Call.xml",
    "hugexml.qemuhook.dispatch:Call.has_record",
    "hugexml.qemuhook.dispatch:Call.config",
    "hugexml.qemuhook.dispatch:Call.host_info",
    "hugexml.qemuhook.dispatch:Call.allocator",
    "hugexml.qemuhook.dispatch:Call.guest",
    "hugexml.xml.domxml:plan_xml",
    "hugexml.system.daemon:mount_problems",
    "hugexml.system.daemon:libvirt_visible_sizes",
    "hugexml.qemuhook.dispatch:refit_for_hook",
    "hugexml.xml.refit:refit_for_host",
    "hugexml.alloc.supply:for_filter",
    "hugexml.host.live:live_guest",
    "hugexml.core.config:load_config",
    "hugexml.alloc.ledger:Store.lock",
    "hugexml.alloc.ledger:Store.load",
    "hugexml.alloc.ledger:Store.commit",
    "hugexml.alloc.ledger:Store.write_journal",
    "hugexml.alloc.ledger:Store.write_guest",
    "hugexml.alloc.ledger:Store.delete_guest",
    "hugexml.alloc.recovery:begin",
    "hugexml.alloc.recovery:sync",
    "hugexml.alloc.allocator:place",
    "hugexml.alloc.allocator:Allocator.reserve",
    "hugexml.alloc.allocator:Allocator.settle",
    "hugexml.alloc.allocator:Allocator.release",
    "hugexml.alloc.allocator:Allocator.reconcile",
    "hugexml.alloc.txn:PoolTxn.grow",
    "hugexml.alloc.txn:PoolTxn.shrink",
    "hugexml.alloc.poolops:read_view",
]
# Steps the migrate/restore filters pass through only to read what the host can supply now;
# a failure there is contained (hugexml.alloc.supply.for_filter), not a failure of the filter.
CONTAINED_IN_FILTERS = {"hugexml.core.config:load_config"}
OPS = {"prepare": "gate", "started": "never-fail", "reconnect": "never-fail",
       "release": "never-fail", "restore": "filter", "migrate": "filter"}
HIT: dict[str, set[str]] = {}  # step -> operations whose injected call raised there


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "hugexml.conf").write_text("[allocation]\nretries = 0\n")
    monkeypatch.setenv("HUGEXML_CONFIG", str(tmp_path / "hugexml.conf"))
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", str(tmp_path / "no-syslog"))
    h = FakeHost(tmp_path / "root")
    monkeypatch.setenv("HUGEXML_ROOT", str(h.base))
    return h


def run(h: FakeHost, op: str, xml: bytes):
    subop = "end" if op == "release" else "begin"
    return call(["qemu", "vm1", op, subop, "-"], xml, make_gateway=h.gateway)


def prepared(h: FakeHost, xml: bytes, op: str) -> None:
    """The state each operation meets in life: a claim (pending before started, active
    after), with its pages mapped while the guest runs."""
    if op in ("started", "reconnect", "release"):
        assert run(h, "prepare", xml)[0] == 0
    if op in ("reconnect", "release"):
        h.sim.map(1, M2, 64)
        assert run(h, "started", xml)[0] == 0
    if op == "release":
        h.sim.unmap(1, M2, 64)


def inject(monkeypatch, step: str, exc_name: str, op: str) -> None:
    module_name, attr = step.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)

    def broken(*args, **kwargs):
        HIT.setdefault(step, set()).add(op)
        raise EXCEPTIONS[exc_name]()

    monkeypatch.setattr(owner, name, staticmethod(broken) if isinstance(
        owner.__dict__.get(name), staticmethod) else broken)
    assert real is not None


@pytest.mark.parametrize("exc_name", EXCEPTIONS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("op", OPS)
def test_every_failure_keeps_the_contract(host, monkeypatch, tmp_path, op, step, exc_name):
    xml = guest_xml("vm1", 128, M2, node=1)
    prepared(host, xml, op)
    before = {k: (p.persistent, p.surplus) for k, p in host.sim.pools.items()}
    inject(monkeypatch, step, exc_name, op)
    code, out, err = run(host, op, xml)
    assert "Traceback" not in err, err
    assert err.count("\n") <= 1, err
    if OPS[op] == "gate":
        if code == 0:  # the step is not on prepare's path for this guest
            assert op not in HIT.get(step, set())
            return
        assert code == 1 and err.startswith("hugexml: ") and err.endswith("\n"), err
        assert {k: (p.persistent, p.surplus) for k, p in host.sim.pools.items()} == before
    else:
        assert code == 0, (code, err)
        if OPS[op] == "filter":
            assert out in (b"", xml) or out.startswith(b"<domain")
    if OPS[op] == "filter" and step in CONTAINED_IN_FILTERS:
        # the filter's supply reader (hugexml.alloc.supply.for_filter) contains it: sizes are judged
        # as before (this guest fits: its XML unchanged), the hook log says why
        assert out == xml, out
        log = (tmp_path / "state" / "hook.log").read_text()
        assert f"domain 'vm1' {op} " in log and "unchanged: " in log, log
        assert "what this host can supply now is unknown" in log, log
        return
    if op in HIT.get(step, set()) and step != "hugexml.qemuhook.dispatch:Call.config":
        log = (tmp_path / "state" / "hook.log").read_text()
        assert f"domain 'vm1' {op} " in log
        if exc_name != "HugexmlError":
            assert "Traceback (most recent call last)" in log and exc_name in log


def test_every_step_is_on_some_operations_path(host, monkeypatch):
    """The matrix above is not vacuous: each injected step sits on the path of some
    operation (traced here by wrappers that call through)."""
    seen: dict[str, set[str]] = {}
    current = {"op": ""}
    for step in STEPS:
        module_name, attr = step.split(":")
        owner = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        real = getattr(owner, name)

        def traced(*args, _real=real, _step=step, **kwargs):
            seen.setdefault(_step, set()).add(current["op"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, traced)
    xml = guest_xml("vm1", 128, M2, node=1)
    for op in ("restore", "migrate", "prepare", "started", "reconnect", "release"):
        current["op"] = op
        if op == "release":
            host.sim.unmap(1, M2, 64)
        assert run(host, op, xml)[0] == 0
        if op == "started":
            host.sim.map(1, M2, 64)
    missing = [s for s in STEPS if not seen.get(s)]
    assert not missing, f"steps no operation reaches: {missing}"
    assert "prepare" in seen["hugexml.alloc.txn:PoolTxn.grow"]
    assert "release" in seen["hugexml.alloc.txn:PoolTxn.shrink"]
    commits = seen["hugexml.alloc.ledger:Store.commit"]
    assert {"prepare", "started", "reconnect", "release"} <= commits


@pytest.mark.parametrize("exc_name", EXCEPTIONS)
@pytest.mark.parametrize("op", ["prepare", "reconnect", "release"])
def test_a_failing_kernel_at_any_call_keeps_the_contract(tmp_path, monkeypatch, op, exc_name):
    """The gateway itself (sysfs) fails at its n-th call, for every n the call makes.
    (``started`` makes none: it only turns the claim active.)"""
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", str(tmp_path / "no-syslog"))
    xml = guest_xml("vm1", 128, M2, node=1)

    def fresh(tag: str) -> FakeHost:
        h = FakeHost(tmp_path / f"root-{tag}")
        monkeypatch.setenv("HUGEXML_ROOT", str(h.base))
        monkeypatch.setenv("HUGEXML_STATE_DIR", str(tmp_path / f"state-{tag}"))
        prepared(h, xml, op)
        return h

    host = fresh("count")
    start = host.sim.calls
    assert run(host, op, xml)[0] == 0    # a clean run counts the gateway calls...
    calls = host.sim.calls - start
    assert calls > 0
    for n in range(1, calls + 1):        # ...then fails at each of them in turn
        host = fresh(str(n))
        before = {k: (p.persistent, p.surplus) for k, p in host.sim.pools.items()}
        host.sim.calls, host.sim.fail_at = 0, n
        host.sim.exc = EXCEPTIONS[exc_name]()
        code, _out, err = run(host, op, xml)
        assert "Traceback" not in err, (n, err)
        if op == "prepare":
            assert code in (0, 1) and (code == 0 or err.count("\n") == 1), (n, err)
            if code == 1:
                assert {k: (p.persistent, p.surplus)
                        for k, p in host.sim.pools.items()} == before, n
        else:
            assert code == 0, (n, err)
