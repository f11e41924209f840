"""The real-host lock never hangs the suite: a wait is bounded and names the holder.

CI once stalled for its whole budget because a session-scoped fixture held the lock while a
later test waited for it in the same process (tests/test_bench_smoke.py).
"""
from __future__ import annotations

import fcntl
import os
import time

import pytest
from realhost import lock_holders, real_lock


def test_a_wait_for_a_lock_this_process_holds_fails_naming_it(tmp_path) -> None:
    path = str(tmp_path / "real.lock")
    with open(path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(pytest.fail.Exception) as exc:
            with real_lock(wait_s=0.5, path=path):
                pass
        assert time.monotonic() - start < 5
    assert f"held by PID {os.getpid()} (this pytest)" in str(exc.value)


def test_a_free_lock_is_taken_and_given_back(tmp_path) -> None:
    path = str(tmp_path / "real.lock")
    with real_lock(wait_s=0.5, path=path):
        assert str(os.getpid()) in lock_holders(path)
    assert lock_holders(path) == ""


def test_the_real_host_fixture_lock_lives_one_module_at_most(request) -> None:
    """Session scope was the deadlock: the benchmarks (subprocesses) wait for their parent."""
    defs = request.session._fixturemanager.getfixturedefs("real_host_lock", request.node)
    assert defs and defs[-1].scope == "module"
