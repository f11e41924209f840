"""Shared fixtures: the libvirt corpus, and a guard for tests that touch the real host.

Tests marked ``realkernel`` or ``libvirt`` take one exclusive lock (so they never run
against each other, even across pytest processes), snapshot every hugepage pool and the
hugetlbfs mounts, and put them back afterwards, whatever the test did.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from realhost import (  # noqa: F401  (re-exported for the fixtures below)
    REAL_LOCK,
    REQUIRE_REAL,
    _skip_or_fail,
    hugetlbfs_mounts,
    real_host_unavailable,
    real_lock,
    snapshot_pools,
)

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("HUGEXML_CORPUS", REPO / "tests" / "data" / "libvirt-qemuxmlconf"))


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"libvirt corpus not found at {CORPUS} (set HUGEXML_CORPUS)")
    return CORPUS


@pytest.fixture(scope="module")
def real_host_lock():
    """Held for one module at most (tests/libvirt's daemon lives that long): a test that
    runs a real-host program in a subprocess (tests/test_bench_smoke.py) must find the lock
    free once earlier modules are done, or the program waits for its own parent."""
    reason = real_host_unavailable()
    if reason:
        _skip_or_fail(reason)
    with real_lock():
        yield


@pytest.fixture
def real_host(real_host_lock):
    """Exclusive use of the real host; pools and hugetlbfs mounts restored afterwards."""
    pools = snapshot_pools()
    mounts = hugetlbfs_mounts()
    yield
    for mount in sorted(hugetlbfs_mounts() - mounts, reverse=True):
        os.system(f"umount {mount!r} 2>/dev/null || umount -l {mount!r}")
    # Per-size global counts last, so they win over per-node writes.
    for path in sorted(pools, key=lambda p: p.startswith("/sys/kernel")):
        with open(path, "w") as fh:
            fh.write(pools[path])
    leftover = {p: v for p, v in snapshot_pools().items() if pools.get(p) != v}
    assert not leftover, f"hugepage pools not restored: {leftover}"


# No test may hang CI: one stuck test (a lock wait, a pool write, a daemon that never
# answers) fails with its name, and the rest of the suite runs. Inside the NUMA VM
# (tests/numavm) the budget is tighter: the VM's whole group has a deadline of its own.
TEST_TIMEOUT_S = 300 if os.environ.get("HUGEXML_NUMAVM") else 1200


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{item.nodeid} ran longer than {TEST_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pytest_collection_modifyitems(config, items):
    """Tests that read the libvirt corpus carry the ``corpus`` marker (``-m 'not corpus'``
    for a build without ../shared, e.g. the RPM's %check)."""
    for item in items:
        if "corpus" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.corpus)


def pytest_terminal_summary(terminalreporter):
    """The benchmarks' tables from CI's smoke run (tests/test_bench_smoke.py): ratios only,
    printed, never asserted."""
    module = __import__("sys").modules.get("test_bench_smoke")
    outputs = getattr(module, "OUTPUTS", None)
    if outputs:
        terminalreporter.section("bench smoke (one round each; ratios printed, not asserted)")
        for name, text in sorted(outputs.items()):
            terminalreporter.write_line(f"{name}:")
            for line in text.splitlines():
                terminalreporter.write_line(f"  {line}")
