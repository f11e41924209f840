"""The claim ledger: file format, atomic writes, the lock, corruption handling."""
from __future__ import annotations

import json
import os
import stat
import time

import pytest

from hugexml import ledger as lg
from hugexml.errors import LedgerError, LockTimeout
from hugexml.ledger import Ledger


def test_missing_ledger_reads_empty_and_dir_is_private(tmp_path):
    state = tmp_path / "state"
    led = Ledger(str(state))
    assert led.read() == lg.empty_ledger()
    with led.locked() as data:
        assert data["guests"] == {}
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700


def test_roundtrip_is_atomic_and_private(tmp_path):
    led = Ledger(str(tmp_path))
    with led.locked() as data:
        data["baseline"]["0:2048"] = 4
        data["guests"]["vm1"] = {"name": "vm1", "uuid": None, "state": "pending",
                                 "added": {"0:2048": 2}, "claimed": {"0:2048": 6}}
        led.write(data)
    assert led.read()["guests"]["vm1"]["added"] == {"0:2048": 2}
    assert stat.S_IMODE(os.stat(led.path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["ledger.json", "lock"]  # no temp file left


def test_write_needs_the_lock(tmp_path):
    led = Ledger(str(tmp_path))
    with pytest.raises(RuntimeError):
        led.write(lg.empty_ledger())


def test_write_refuses_what_it_could_not_read_back(tmp_path):
    led = Ledger(str(tmp_path))
    with led.locked() as data:
        data["admin"]["0:2048"] = -1
        with pytest.raises(ValueError):
            led.write(data)
    assert not os.path.exists(led.path)


@pytest.mark.parametrize("content, reason", [
    (b"{not json", "corrupt"),
    (b'{"version": 2}', "unknown version 2"),
    (b'[]', "not a JSON object"),
    (b'{"version": 1, "admin": {"0:2048": -3}}', "is not a page count"),
    (b'{"version": 1, "admin": {"zero:2048": 3}}', "bad pool key"),
    (b'{"version": 1, "guests": {"a": {"name": "a", "state": "odd"}}}', "unknown state"),
    (b'{"version": 1, "intent": {"op": "grow", "pools": {"0:2048": {"before": 1}}}}', "bad target"),
    (b"\xff\xfe", "corrupt"),
])
def test_corrupt_ledger_is_an_error_never_a_reset(tmp_path, content, reason):
    led = Ledger(str(tmp_path))
    with open(led.path, "wb") as fh:
        fh.write(content)
    with pytest.raises(LedgerError) as info:
        led.read()
    assert reason in str(info.value)
    assert "\n" not in str(info.value)
    assert open(led.path, "rb").read() == content  # untouched


def test_quarantine_moves_the_file_aside(tmp_path):
    led = Ledger(str(tmp_path), clock=lambda: 0.0)
    with open(led.path, "w") as fh:
        fh.write("garbage")
    with led.lock():
        moved = led.quarantine()
        moved2 = led.quarantine()
    assert moved == led.path + ".corrupt-19700101T000000"
    assert moved2 is None
    assert open(moved).read() == "garbage"
    assert led.read() == lg.empty_ledger()


def test_lock_waits_a_bounded_time(tmp_path):
    holder = Ledger(str(tmp_path))
    waiter = Ledger(str(tmp_path), lock_timeout_s=0.3)
    with holder.lock():
        start = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            with waiter.lock():
                pass
        took = time.monotonic() - start
    assert 0.3 <= took < 2.0
    assert "within 0.3 s" in str(info.value)
    with waiter.lock():  # released when the holder leaves
        pass


def test_lock_released_on_exception(tmp_path):
    led = Ledger(str(tmp_path), lock_timeout_s=0.1)
    with pytest.raises(KeyError):
        with led.locked():
            raise KeyError("boom")
    with led.locked():
        pass


def test_group_writable_state_dir_is_refused(tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    os.chmod(state, 0o777)
    with pytest.raises(LedgerError, match="world-writable"):
        with Ledger(str(state)).lock():
            pass


def test_file_written_is_compact_sorted_json(tmp_path):
    led = Ledger(str(tmp_path))
    with led.locked() as data:
        data["admin"] = {"1:2048": 3, "0:2048": 1}
        led.write(data)
    raw = open(led.path).read()
    assert json.loads(raw)["admin"] == {"0:2048": 1, "1:2048": 3}
    assert raw.index('"0:2048"') < raw.index('"1:2048"')


def _ledger_with_everything():
    data = lg.empty_ledger()
    data["baseline"] = {"0:2048": 10}
    data["admin"] = {"0:2048": 3}
    data["kept"] = {"0:2048": 1}
    data["unreleased"] = {"0:2048": 2}
    data["guests"] = {
        "a": {"name": "a", "state": "pending", "added": {"0:2048": 4}, "claimed": {"0:2048": 7}},
        "b": {"name": "b", "state": "active", "added": {"0:2048": 5}, "claimed": {"0:2048": 5}},
        "c": {"name": "c", "state": "releasing", "added": {"0:2048": 6}, "claimed": {}},
    }
    return lg.validate(data)


@pytest.mark.parametrize("func, args, expected", [
    (lg.expected_pages, ("0:2048",), 10 + 3 + 1 + 2 + 4 + 5 + 6),
    (lg.hugexml_pages, ("0:2048",), 3 + 1 + 2 + 4 + 5 + 6),
    (lg.guest_added, ("0:2048",), 15),
    (lg.guest_added, ("0:2048", ("pending", "active")), 9),
    (lg.guest_added, ("0:2048", lg.STATES, "a"), 11),
    (lg.pending_claims, ("0:2048",), 7),
    (lg.pending_claims, ("0:2048", "a"), 0),
    (lg.expected_pages, ("1:2048",), 0),
])
def test_derived_counts(func, args, expected):
    assert func(_ledger_with_everything(), *args) == expected


def test_debit_in_order_takes_each_bucket_at_most_what_it_holds():
    data = _ledger_with_everything()
    taken = lg.debit_in_order(data, "0:2048", ["unreleased", "guest:c", "admin"], 10)
    assert taken == {"unreleased": 2, "guest:c": 6, "admin": 2}
    assert "0:2048" not in data["unreleased"]
    assert data["guests"]["c"]["added"] == {}
    assert data["admin"] == {"0:2048": 1}
    assert lg.debit(data, "0:2048", "guest:nobody", 5) == 0


def test_forget_idle_pools_keeps_baselines_where_hugexml_holds_pages():
    data = lg.empty_ledger()
    data["baseline"] = {"0:2048": 3, "1:2048": 0, "0:1048576": 2}
    data["admin"] = {"0:1048576": 1}
    lg.forget_idle_pools(data)
    assert data["baseline"] == {"0:1048576": 2}


def test_pool_keys_roundtrip_and_reject_garbage():
    assert lg.parse_pool_key(lg.pool_key(7, 1048576)) == (7, 1048576)
    for bad in ("7", "a:1", "1:2:3", "-1:2048", "12345:2048"):
        with pytest.raises(ValueError):
            lg.parse_pool_key(bad)


def test_events_are_bounded():
    data = lg.empty_ledger()
    for i in range(lg.MAX_EVENTS + 7):
        lg.add_event(data, {"i": i})
    assert len(data["events"]) == lg.MAX_EVENTS
    assert data["events"][-1] == {"i": lg.MAX_EVENTS + 6}
