"""The state store: one file per guest plus the host journal, the lock, quarantine, bounds,
temp files, the boot id and the import of hugexml 0.1's single ledger."""
from __future__ import annotations

import json
import os
import stat

import pytest

from hugexml.alloc import ledger as lg
from hugexml.alloc.ledger import Store
from hugexml.core.errors import LedgerError, LockTimeout
from hugexml.planning.records import GuestRecord, Journal, PoolBook, guest_key

UUID = "6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10"
KNOWN = {(0, 2048), (0, 1048576), (1, 2048), (1, 1048576)}


def record(name="vm1", uuid=UUID, **over) -> GuestRecord:
    rec = GuestRecord(key=guest_key(name, uuid), name=name, uuid=uuid, state="pending",
                      created=1.0, updated=1.0, added={(0, 2048): 4}, claimed={(0, 2048): 4})
    for k, v in over.items():
        setattr(rec, k, v)
    return rec


def seeded(tmp_path, *recs: GuestRecord, boot_id: str = "") -> Store:
    store = Store(str(tmp_path / "state"), boot_id=boot_id)
    with store.lock():
        state = store.load(KNOWN)
        for rec in recs:
            state.put(rec)
            for pool, pages in rec.added.items():
                state.journal.book(pool).guests += pages
        state.journal_dirty = True
        store.commit(state)
    return store


def test_layout_is_private_and_leaves_no_temp_file(tmp_path):
    store = seeded(tmp_path, record())
    state_dir = tmp_path / "state"
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert sorted(os.listdir(state_dir)) == ["guests", "host.json", "lock"]
    assert os.listdir(state_dir / "guests") == [f"{UUID}.json"]
    for path in (store.journal_path, store.guest_path(UUID)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    state = store.read(KNOWN)
    assert state.guests[UUID].added == {(0, 2048): 4} and state.notes == []
    assert state.journal.pools[(0, 2048)].guests == 4


def test_writes_need_the_lock(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(RuntimeError):
        store.write_journal(Journal())
    with pytest.raises(RuntimeError):
        store.write_guest(record())


def test_a_bad_record_is_never_written(tmp_path):
    store = Store(str(tmp_path / "s"))
    with store.lock(), pytest.raises(LedgerError) as info:
        store.write_guest(record(name="n" * 300))
    assert "refusing to write a bad record" in str(info.value)
    assert os.listdir(store.guests_dir) == []


def test_bounds_hold_on_write_as_on_read(tmp_path, monkeypatch):
    monkeypatch.setattr(lg, "MAX_JOURNAL_BYTES", 200)
    store = Store(str(tmp_path / "s"))
    journal = Journal(pools={(n, 2048): PoolBook(baseline=n + 1) for n in range(40)})
    with store.lock(), pytest.raises(LedgerError) as info:
        store.write_journal(journal)
    assert "more than the 200 a reader accepts" in str(info.value)
    assert not os.path.exists(store.journal_path)


@pytest.mark.parametrize("content, why", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON text"),
    (b"[]", "not a JSON object"),
    (b'{"schema": 1}', "schema 1"),
    (b'{"schema": 2, "key": "%s", "name": "vm1", "uuid": "%s", "state": "pending", '
     b'"created": 1, "updated": "soon"}' % (UUID.encode(), UUID.encode()), "not a time"),
])
def test_a_bad_guest_record_is_quarantined_and_others_go_on(tmp_path, content, why):
    other = record(name="other", uuid=UUID.replace("6b", "7c"))
    store = seeded(tmp_path, record(), other)
    with open(store.guest_path(UUID), "wb") as fh:
        fh.write(content)
    assert why in " ".join(store.read(KNOWN).notes)           # a reader moves nothing
    assert os.path.exists(store.guest_path(UUID))
    with store.lock():
        state = store.load(KNOWN)
    assert list(state.guests) == [other.key]
    assert any(why in n and "moved to" in n for n in state.notes), state.notes
    (moved,) = store.quarantined()
    assert why in moved["why"] and open(moved["path"], "rb").read() == content


@pytest.mark.parametrize("make", ["directory", "symlink", "fifo", "huge", "foreign", "name"])
def test_odd_files_in_place_of_records_are_set_aside(tmp_path, make):
    store = seeded(tmp_path, record())
    path = store.guest_path(UUID)
    os.unlink(path)
    if make == "directory":
        os.mkdir(path)
    elif make == "symlink":
        os.symlink("/etc/passwd", path)
    elif make == "fifo":
        os.mkfifo(path)
    elif make == "huge":
        with open(path, "wb") as fh:
            fh.truncate(1 << 30)  # sparse: costs nothing, must never be read
    elif make == "foreign":  # a valid record of another guest under this guest's name
        other = record(name="other", uuid=UUID.replace("6b", "7c"))
        with open(path, "w") as fh:
            json.dump(other.to_json(), fh)
    else:
        path = os.path.join(store.guests_dir, "not-a-key.json")
        with open(path, "w") as fh:
            fh.write("{}")
    with store.lock():
        state = store.load(KNOWN)
    assert state.guests == {} and len(state.notes) == 1
    assert not os.path.lexists(path) and len(store.quarantined()) == 1


def test_the_journal_as_a_directory_or_garbage_is_rebuilt(tmp_path):
    store = seeded(tmp_path, record())
    os.unlink(store.journal_path)
    os.mkdir(store.journal_path)
    with store.lock():
        state = store.load(KNOWN)
    assert state.journal_lost and list(state.guests) == [UUID]
    assert "not a regular file" in state.notes[0]
    assert os.path.isfile(store.journal_path) is False and store.quarantined()


def test_a_journal_entry_for_a_pool_the_host_lacks_is_dropped(tmp_path):
    store = seeded(tmp_path, record())
    raw = json.load(open(store.journal_path))
    raw["pools"]["7:2048"] = {"unreleased": 9}
    raw["pools"]["0:4096"] = {"unreleased": 9}
    raw["pools"]["0:2048"]["admin"] = -3
    json.dump(raw, open(store.journal_path, "w"))
    with store.lock():
        state = store.load(KNOWN)
    assert state.journal.pools == {} and len(state.notes) == 3 and state.journal_dirty


def test_records_of_an_earlier_boot_are_void(tmp_path):
    seeded(tmp_path, record(), boot_id="boot-a")
    store = Store(str(tmp_path / "state"), boot_id="boot-b")
    with store.lock():
        state = store.load(KNOWN)
    assert state.guests == {} and state.journal.pools == {}
    assert sum("earlier boot" in n for n in state.notes) == 2


def test_stale_temp_files_are_removed_under_the_lock(tmp_path):
    store = seeded(tmp_path, record())
    stale = [os.path.join(store.state_dir, f".host.json.{os.getpid()}.0.tmp"),
             os.path.join(store.guests_dir, f".{UUID}.json.{os.getpid()}.0.tmp")]
    for path in stale:
        open(path, "w").write("half")
    assert list(store.read(KNOWN).guests) == [UUID]  # a reader ignores them
    with store.lock():
        state = store.load(KNOWN)
        store.commit(state)
    assert not any(os.path.exists(p) for p in stale) and state.notes == []


def test_the_lock_waits_a_bounded_time(tmp_path):
    first, second = Store(str(tmp_path)), Store(str(tmp_path), lock_timeout_s=0.1)
    with first.lock(), pytest.raises(LockTimeout):
        with second.lock():
            pass


@pytest.mark.parametrize("kind", ["file", "group-writable"])
def test_a_state_dir_it_cannot_trust_is_refused_never_moved(tmp_path, kind):
    path = tmp_path / "state"
    if kind == "file":
        path.write_text("an admin's file")
    else:
        path.mkdir(mode=0o777)
        os.chmod(path, 0o777)
    with pytest.raises(LedgerError), Store(str(path)).lock():
        pass
    assert path.exists() and (kind != "file" or path.read_text() == "an admin's file")


def test_the_quarantine_keeps_the_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(lg, "MAX_QUARANTINED", 3)
    store = Store(str(tmp_path / "s"), clock=lambda: 0.0)
    with store.lock():
        for i in range(5):
            path = os.path.join(store.state_dir, f"junk{i}")
            open(path, "w").write(str(i))
            store.quarantine(path, f"junk {i}")
    assert [q["why"] for q in store.quarantined()] == ["junk 2", "junk 3", "junk 4"]


def test_the_due_file_names_the_next_work(tmp_path):
    store = Store(str(tmp_path / "s"), clock=lambda: 1000.0)
    due = os.path.join(store.state_dir, lg.DUE_FILE)
    with store.lock():
        state = store.load(KNOWN)
        state.journal.book((0, 2048)).kept.append(__import__("hugexml.planning.records").planning
                                                  .records.KeptLot(2, 1500.0))
        state.journal_dirty = True
        store.commit(state)
        assert open(due).read() == "1500\n"
        state.journal.book((0, 2048)).unreleased = 1
        state.journal_dirty = True
        store.commit(state)
        assert open(due).read() == "1060\n"  # owed pages: retry within a minute
        state.journal.pools.clear()
        state.journal_dirty = True
        store.commit(state)
    assert not os.path.exists(due)


V1 = {"version": 1, "baseline": {"0:2048": 2}, "admin": {"1:2048": 3},
      "kept": {"0:2048": 1}, "unreleased": {"0:1048576": 1, "9:2048": 4},
      "guests": {
          UUID: {"name": "vm1", "uuid": UUID.upper(), "state": "active",
                 "added": {"0:2048": 5}, "claimed": {"0:2048": 5}, "created": 1, "updated": 2},
          "zz": {"name": "zz", "state": "pending", "updated": "soon", "added": {"1:2048": 2}},
          "gone": {"name": "gone", "state": "releasing", "added": {"0:2048": 1}}},
      "intent": None, "events": []}


def test_a_schema_1_ledger_is_imported_then_set_aside(tmp_path):
    store = Store(str(tmp_path / "state"))
    os.makedirs(store.state_dir, mode=0o700)
    with open(os.path.join(store.state_dir, "ledger.json"), "w") as fh:
        json.dump(V1, fh)
    assert list(store.read(KNOWN).guests) == [UUID]  # a reader sees it converted
    with store.lock():
        state = store.load(KNOWN)
        store.commit(state)
    books = state.journal.pools
    assert (books[(0, 2048)].baseline, books[(0, 2048)].guests, books[(0, 2048)].kept_pages,
            books[(0, 2048)].unreleased) == (2, 5, 1, 1)   # "gone" was being released
    assert books[(1, 2048)].admin == 3 and books[(1, 2048)].unreleased == 2  # zz's pages
    assert books[(0, 1048576)].unreleased == 1 and (9, 2048) not in books
    assert not os.path.exists(os.path.join(store.state_dir, "ledger.json"))
    assert [q["why"] for q in store.quarantined()] == ["schema-1 ledger, imported into schema 2"]
    assert list(store.read(KNOWN).guests) == [UUID]
