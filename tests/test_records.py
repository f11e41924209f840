"""Typed state records: every field checked on the way in and on the way out (pure)."""
from __future__ import annotations

import json

import pytest

from hugexml.planning import records as rc
from hugexml.planning.records import GuestRecord, Journal, RecordError

UUID = "6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10"
KNOWN = {(n, s) for n in (0, 1) for s in (2048, 1048576)}


def good_guest(**over):
    raw = {"schema": 2, "key": UUID, "name": "vm1", "uuid": UUID, "state": "pending",
           "created": 100.0, "updated": 100.0, "added": {"0:2048": 4},
           "claimed": {"0:2048": 8}, "demand": [
               {"page_size_kib": 2048, "pages": 8, "host_nodes": [0], "policy": "strict"}],
           "boot_id": ""}
    raw.update(over)
    return raw


@pytest.mark.parametrize("text, expected", [
    (UUID, UUID),
    (UUID.upper(), UUID),
    (UUID.replace("-", ""), UUID),
    ("  " + UUID + "\n", UUID),
    ("6b0d-5c1e8f7a4c1d9a550c2b6f7e9a10", UUID),   # libvirt skips dashes anywhere
    ("6b0d5c1e8f7a4c1d9a550c2b6f7e9a1", None),     # 31 digits
    ("6b0d5c1e8f7a4c1d9a550c2b6f7e9a1g", None),
    ("", None), (None, None), (42, None), ("x" * 100, None),
])
def test_uuid_spellings_normalise(text, expected):
    assert rc.normalize_uuid(text) == expected


def test_keys_are_the_uuid_or_a_digest_of_the_name():
    assert rc.guest_key("vm1", UUID.upper()) == UUID
    key = rc.guest_key("a/../../etc\nvm", None)
    assert key.startswith("name-") and len(key) == 37 and rc.is_key(key)
    assert rc.guest_key("vm1", None) != rc.guest_key("vm2", None)
    with pytest.raises(RecordError):
        rc.guest_key("vm1", "not-a-uuid")


def test_a_good_guest_record_round_trips():
    drops: list[str] = []
    rec = GuestRecord.from_json(good_guest(), drops, KNOWN)
    assert drops == [] and rec.added == {(0, 2048): 4} and rec.claimed == {(0, 2048): 8}
    assert GuestRecord.from_json(json.loads(json.dumps(rec.to_json())), [], KNOWN) == rec


@pytest.mark.parametrize("over, reason", [
    ({"schema": 1}, "schema 1"),
    ({"name": ""}, "not a domain name"),
    ({"name": 7}, "not a domain name"),
    ({"name": "x" * 256}, "longer than 255 bytes"),
    ({"name": "a\0b"}, "NUL"),
    ({"uuid": UUID.upper()}, "not a normalised UUID"),
    ({"state": "odd"}, "not a guest record"),
    ({"state": "releasing"}, "not a guest record"),
    ({"updated": "soon"}, "'soon' is not a time"),
    ({"created": []}, "is not a time"),
    ({"created": float("nan")}, "is not a time"),
    ({"created": float("inf")}, "is not a time"),
    ({"created": float("-inf")}, "is not a time"),
    ({"updated": 1e300}, "is not a time"),
    ({"key": "other"}, "does not belong"),
    ({"key": None}, "not a guest record"),
    ({"demand": {"a": 1}}, "demand: not a list"),
    ({"demand": [{"page_size_kib": 2048, "pages": -1}]}, "demand[0].pages"),
    ({"demand": [{"page_size_kib": 2048, "pages": 1, "policy": "odd"}]}, "not a numatune mode"),
    ({"demand": [{}] * 1025}, "at most 1024 rows"),
    ({"boot_id": 5}, "not a boot id"),
])
def test_a_bad_guest_field_names_itself(over, reason):
    with pytest.raises(RecordError) as info:
        GuestRecord.from_json(good_guest(**over), [], KNOWN)
    assert reason in str(info.value)


@pytest.mark.parametrize("added, kept, dropped", [
    ({"7:2048": 3, "0:2048": 4}, {(0, 2048): 4}, "added[7:2048] = 3: no such pool"),
    ({"0:4096": 3}, {}, "added[0:4096] = 3: no such pool"),
    ({"0:0": 3}, {}, "out of range"),
    ({"0:2048": -5}, {}, "is not a count"),
    ({"0:2048": "5"}, {}, "is not a count"),
    ({"zero:2048": 1}, {}, "is not NODE:SIZE_KIB"),
    ([1, 2], {}, "added: not an object"),
])
def test_bad_pool_entries_are_dropped_not_fatal(added, kept, dropped):
    drops: list[str] = []
    rec = GuestRecord.from_json(good_guest(added=added), drops, KNOWN)
    assert rec.added == kept
    assert any(dropped in d for d in drops), drops


def test_a_record_is_checked_before_it_is_written():
    rec = GuestRecord.from_json(good_guest(), [], KNOWN)
    rec.name = "n" * 300
    with pytest.raises(RecordError):
        rec.check()


def test_journal_round_trip_and_per_entry_drops():
    raw = {"schema": 2, "boot_id": "b", "pools": {
        "0:2048": {"baseline": 3, "guests": 4, "kept": [[2, None], [1, 500.0]]},
        "7:2048": {"baseline": 1},                 # a pool the host lacks
        "1:2048": {"admin": -1},                   # a negative count
        "1:1048576": {"admin": 1, "colour": 1},    # an unknown field
        "x": {},                                   # not a pool key
    }, "intent": {"op": "grow", "purpose": "reserve", "guest": None, "started": 1.0,
                  "pid": 10, "pools": {"0:2048": {"before": 3, "target": 7},
                                       "9:2048": {"before": 0, "target": 1}}},
        "events": [{"op": "x"}, "not a dict"]}
    drops: list[str] = []
    journal = Journal.from_json(raw, drops, KNOWN)
    assert list(journal.pools) == [(0, 2048)]
    book = journal.pools[(0, 2048)]
    assert (book.baseline, book.guests, book.kept_pages, book.expected) == (3, 4, 3, 10)
    assert list(journal.intent.pools) == [(0, 2048)]
    assert journal.events == [{"op": "x"}]
    assert len(drops) == 5, drops
    again = Journal.from_json(json.loads(json.dumps(journal.to_json())), [], KNOWN)
    assert again.pools == journal.pools and again.intent == journal.intent


@pytest.mark.parametrize("intent", [
    {"op": "explode", "pools": {}},
    {"op": "grow", "purpose": "x" * 100, "pools": {}},
    {"op": "grow", "purpose": "r", "guest": "../etc", "pools": {}},
    {"op": "shrink", "purpose": "r", "pools": {"0:2048": {"before": 1, "target": 0,
                                                          "buckets": ["guest:x"]}}},
    {"op": "grow", "purpose": "r", "started": "soon", "pid": 1, "pools": {}},
])
def test_a_bad_intent_is_dropped_with_a_note(intent):
    drops: list[str] = []
    journal = Journal.from_json({"schema": 2, "intent": intent}, drops, KNOWN)
    assert journal.intent is None and drops


@pytest.mark.parametrize("raw", [[], "x", {"schema": 1}, {"schema": 2, "boot_id": 3}])
def test_a_journal_that_is_no_journal_raises(raw):
    with pytest.raises(RecordError):
        Journal.from_json(raw, [], KNOWN)


def test_events_are_bounded():
    event = rc.bounded_event({"op": "reconcile", "at": 1.0, "notes": ["x" * 10_000]})
    assert len(repr(event)) <= rc.MAX_EVENT_CHARS
