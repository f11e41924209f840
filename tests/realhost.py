"""The real host as tests see it: its lock, whether real-host tests can run, and snapshots
of its pools and hugetlbfs mounts. A plain module (not conftest): tests/numavm has a
conftest of its own, so ``from conftest import`` would be ambiguous in a whole-suite run."""
from __future__ import annotations

import fcntl
import glob
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REAL_LOCK = "/run/lock/hugexml-tests.lock"
# CI sets this: a real-host test that cannot run is a failure there, not a skip.
REQUIRE_REAL = os.environ.get("HUGEXML_REQUIRE_REAL") == "1"
LOCK_WAIT_S = 900  # longer than any one real-host test; a wait past it is a deadlock


@contextmanager
def real_lock(wait_s: float = LOCK_WAIT_S, path: str = REAL_LOCK) -> Iterator[None]:
    """Hold the real-host lock. Waits at most ``wait_s``, then fails naming the holder:
    a holder in this very process (a fixture kept it too long) would otherwise hang CI."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{path} still held after {wait_s:.0f} s: "
                                f"{lock_holders(path) or 'holder unknown'}")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_holders(path: str = REAL_LOCK) -> str:
    """The PIDs holding a lock on ``path``'s inode, from /proc/locks."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as fh:
            rows = [line.split() for line in fh]
    except OSError:
        return ""
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = sorted({r[4] for r in rows if len(r) > 5 and r[5] == inode})
    return "held by PID " + ", ".join(pids) + (" (this pytest)" if str(os.getpid()) in pids
                                                 else "") if pids else ""


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
