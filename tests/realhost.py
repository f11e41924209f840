"""The real host as tests see it: its lock, whether real-host tests can run, and snapshots
of its pools and hugetlbfs mounts. A plain module (not conftest): tests/numavm has a
conftest of its own, so ``from conftest import`` would be ambiguous in a whole-suite run."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

REAL_LOCK = "/run/lock/hugexml-tests.lock"
# CI sets this: a real-host test that cannot run is a failure there, not a skip.
REQUIRE_REAL = os.environ.get("HUGEXML_REQUIRE_REAL") == "1"


def real_host_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.isdir("/sys/kernel/mm/hugepages"):
        return "no hugetlb support in this kernel"
    return None


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_REAL:
        pytest.fail(f"real-host test cannot run: {reason}")
    pytest.skip(reason)


def snapshot_pools() -> dict[str, str]:
    paths = glob.glob("/sys/kernel/mm/hugepages/hugepages-*/nr_hugepages")
    paths += glob.glob("/sys/devices/system/node/node*/hugepages/hugepages-*/nr_hugepages")
    return {p: Path(p).read_text().strip() for p in paths}


def hugetlbfs_mounts() -> set[str]:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return {line.split()[1] for line in fh if line.split()[2:3] == ["hugetlbfs"]}
