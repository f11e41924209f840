"""CI's smoke run of ``bench/``: every benchmark runs once at its smallest size and prints
its table (shown in pytest's summary, ``bench smoke``). No timing is asserted: a shared CI
machine's times say nothing. What is asserted: each exits 0, prints its ratios, and leaves
the hugepage pools as it found them.

The real-kernel benchmarks take the real-host lock themselves; this test only reads the
pools before and after, under that lock.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from realhost import _skip_or_fail, real_host_unavailable, real_lock, snapshot_pools

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"\d+\.\d+x\b|= \d+\.\d+\b")  # "1.30x" or "... = 1.304"
# script: (arguments, each at its smallest size; a line its table must print)
BENCHES = {
    "bench_startup": (["--rounds", "1"], "rewrite vs import lxml.etree (goal <= 1.25)"),
    "bench_alloc": (["--rounds", "1", "--kernel", "real"], "hugexml reserve+release / raw"),
    "bench_hook": (["--rounds", "1"], "prepare begin, 2M guest"),
    "bench_plan": (["--rounds", "1"], "plan_xml (parse + plan) / lxml fromstring"),
    "bench_rewrite": (["--domains", "50", "--runs", "1"], "ratio rewrite/baseline time"),
    "bench_fragmentation": (["--want", "1"], "1.00x the first ask"),
}
OUTPUTS: dict[str, str] = {}  # printed by conftest's pytest_terminal_summary

pytestmark = pytest.mark.realkernel


def pools_locked() -> dict[str, str]:
    """The pools, read under the real-host lock. The benchmarks take that lock themselves,
    so this test must not hold it (nor may an earlier module's fixture: it is module-scoped),
    and a wait for it is bounded (realhost.real_lock), never a hang."""
    with real_lock():
        return snapshot_pools()


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_benchmark_runs_and_prints_its_ratios(name: str) -> None:
    reason = real_host_unavailable()
    if reason:
        _skip_or_fail(reason)
    before = pools_locked()
    argv, table = BENCHES[name]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *argv],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    OUTPUTS[name] = proc.stdout.strip()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert table in proc.stdout and RATIO.search(proc.stdout), proc.stdout
    assert pools_locked() == before, f"{name} left the pools changed"
