"""Typed records of hugexml's state, checked field by field on the way in and on the way out.

Pure: no I/O. ``hugexml.alloc.ledger`` reads and writes the files; this module turns their JSON
into dataclasses and back. A value that fails a check raises ``RecordError`` naming the
field, so the store can quarantine one file, or drop one entry, and go on.

Two kinds of file (see ``hugexml.alloc.ledger`` for the layout):

- ``GuestRecord``: one guest's claim: the pages hugexml added for it per pool, the pages it
  was promised while it starts, its demand, its state (``pending`` -> ``active``).
- ``Journal``: the host's books per pool (``PoolBook``: the admin's baseline, pages added
  by ``hugexml allocate``, the total added for guests, kept pages, pages owed back), the
  intent of an unfinished pool change, and the last reports.

Pools are ``(node, size_kib)`` in memory and ``"node:size_kib"`` on disk; counts are pages.
"""
from __future__ import annotations

from hugexml.core.lazyre import pattern
from hugexml.core.typed import Typed, field
from hugexml.core.units import MAX_NODES

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Optional

Pool = tuple[int, int]  # (node, size_kib)

SCHEMA = 2
MAX_NAME_BYTES = 255           # a libvirt domain name is a file name (NAME.xml)
MAX_PAGES = 1 << 32            # pages in one pool: far above any host's memory
MAX_PAGE_KIB = 16 * 1024 * 1024
MAX_DEMAND_ROWS = 1024
MAX_KEPT_LOTS = 64
MAX_EVENTS = 50
MAX_EVENT_CHARS = 4096
MAX_TIME = 1e11                # epoch seconds, year 5138: anything later is not a time
STATES = ("pending", "active")
INTENT_OPS = ("grow", "shrink")
SHRINK_BUCKETS = ("unreleased", "kept", "admin", "baseline")
POLICIES = ("strict", "preferred", "interleave", "restrictive")

_POOL_KEY = pattern(r"([0-9]{1,4}):([0-9]{1,10})\Z")
_HEX32 = pattern(r"[0-9a-f]{32}\Z")
_KEY = pattern(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                  r"|name-[0-9a-f]{32})\Z")


class RecordError(ValueError):
    """A field that fails its check: the message names the field."""


# --- scalar checks ---------------------------------------------------------------------
def _int(value: Any, where: str, high: int = MAX_PAGES) -> int:
    if type(value) is not int or not 0 <= value <= high:
        raise RecordError(f"{where}: {_show(value)} is not a count in 0..{high}")
    return value


def _time(value: Any, where: str) -> float:
    # NaN fails every comparison and infinity exceeds MAX_TIME: no math.isfinite needed
    if type(value) not in (int, float) or not 0 <= value <= MAX_TIME:
        raise RecordError(f"{where}: {_show(value)} is not a time")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _boot_id(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise RecordError(f"boot_id: {_show(value)} is not a boot id")
    return value


MAX_KEEP_S = 30 * 24 * 3600.0


def _keep(value: Any) -> Optional[float]:
    """A keep window in seconds: None (the config's), -1 (for ever) or 0..30 days."""
    if value is None:
        return None
    if type(value) not in (int, float) or not (value == -1 or 0 <= value <= MAX_KEEP_S):
        raise RecordError(f"keep_s: {_show(value)} is not a keep window")
    return float(value)


def check_name(value: Any, where: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise RecordError(f"{where}: {_show(value)} is not a domain name")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or "\0" in value:
        raise RecordError(f"{where}: longer than {MAX_NAME_BYTES} bytes or holds NUL")
    return value


def normalize_uuid(text: Any) -> Optional[str]:
    """libvirt's UUID spellings (any dashes, any case, surrounding blanks) as
    ``8-4-4-4-12`` lower-case hex; None when ``text`` is not a UUID."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    digits = text.strip().replace("-", "").lower()
    if not _HEX32.match(digits):
        return None
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def guest_key(name: str, uuid: Optional[str]) -> str:
    """The file name of a guest's record: its UUID, or a digest of its name without one."""
    if uuid is not None:
        norm = normalize_uuid(uuid)
        if norm is None:
            raise RecordError(f"uuid: {_show(uuid)} is not a UUID")
        return norm
    import hashlib

    return "name-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def is_key(text: str) -> bool:
    return bool(_KEY.match(text))


# --- pools -----------------------------------------------------------------------------
def pool_key(pool: Pool) -> str:
    return f"{int(pool[0])}:{int(pool[1])}"


def parse_pool(text: Any, where: str = "pool") -> Pool:
    m = _POOL_KEY.match(text) if isinstance(text, str) else None
    if not m:
        raise RecordError(f"{where}: {_show(text)} is not NODE:SIZE_KIB")
    node, size_kib = int(m.group(1)), int(m.group(2))
    if node >= MAX_NODES or not 0 < size_kib <= MAX_PAGE_KIB:
        raise RecordError(f"{where}: {text} is out of range")
    return node, size_kib


def _pool_counts(value: Any, where: str, drops: list[str],
                 known: Optional[set[Pool]]) -> dict[Pool, int]:
    """{"n:s": pages} -> {(n, s): pages}. An entry that is malformed (bad key, negative or
    absurd count) or names a pool the host lacks is dropped and named in ``drops``: it never
    takes the rest of the record with it."""
    if not isinstance(value, dict):
        drops.append(f"{where}: not an object")
        return {}
    out: dict[Pool, int] = {}
    for key, pages in value.items():
        try:
            pool = parse_pool(key, f"{where} {_show(key)}")
            count = _int(pages, f"{where}[{key}]")
        except RecordError as exc:
            drops.append(str(exc))
            continue
        if known is not None and pool not in known:
            drops.append(f"{where}[{key}] = {count}: no such pool on this host")
            continue
        if count:
            out[pool] = count
    return out


def _dump_counts(counts: dict[Pool, int]) -> dict[str, int]:
    return {pool_key(p): n for p, n in sorted(counts.items()) if n}


# --- guests ----------------------------------------------------------------------------
class DemandRow(Typed, frozen=True):
    page_size_kib: int
    pages: int
    host_nodes: Optional[tuple[int, ...]]
    policy: Optional[str]

    def to_json(self) -> dict[str, Any]:
        return {"page_size_kib": self.page_size_kib, "pages": self.pages,
                "host_nodes": list(self.host_nodes) if self.host_nodes is not None else None,
                "policy": self.policy}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> DemandRow:
        if not isinstance(raw, dict):
            raise RecordError(f"{where}: not an object")
        nodes = raw.get("host_nodes")
        if nodes is not None:
            if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
                raise RecordError(f"{where}.host_nodes: not a list of nodes")
            nodes = tuple(_int(n, f"{where}.host_nodes", MAX_NODES - 1) for n in nodes)
        policy = raw.get("policy")
        if policy is not None and policy not in POLICIES:
            raise RecordError(f"{where}.policy: {_show(policy)} is not a numatune mode")
        return cls(_int(raw.get("page_size_kib"), f"{where}.page_size_kib", MAX_PAGE_KIB),
                   _int(raw.get("pages"), f"{where}.pages"), nodes, policy)


class GuestRecord(Typed):
    key: str
    name: str
    uuid: Optional[str]
    state: str
    created: float
    updated: float
    added: dict[Pool, int] = field(default_factory=dict)
    claimed: dict[Pool, int] = field(default_factory=dict)
    demand: tuple[DemandRow, ...] = ()
    boot_id: str = ""  # the boot it was written in: a record of an earlier boot is void
    keep_s: Optional[float] = None  # the guest's own keep window (<metadata>); -1: for ever

    def check(self) -> GuestRecord:
        """Every field in range (before a write, as after a read); RecordError if not."""
        check_name(self.name)
        if self.uuid is not None and normalize_uuid(self.uuid) != self.uuid:
            raise RecordError(f"uuid: {_show(self.uuid)} is not a normalised UUID")
        if self.key != guest_key(self.name, self.uuid):
            raise RecordError(f"key {_show(self.key)} does not belong to this name/uuid")
        if self.state not in STATES:
            raise RecordError(f"state: {_show(self.state)} is not one of {', '.join(STATES)}")
        _time(self.created, "created")
        _time(self.updated, "updated")
        for what, counts in (("added", self.added), ("claimed", self.claimed)):
            for pool, pages in counts.items():
                parse_pool(pool_key(pool), what)
                _int(pages, f"{what}[{pool_key(pool)}]")
        if len(self.demand) > MAX_DEMAND_ROWS:
            raise RecordError(f"demand: more than {MAX_DEMAND_ROWS} rows")
        _boot_id(self.boot_id)
        _keep(self.keep_s)
        return self

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "key": self.key, "name": self.name, "uuid": self.uuid,
                "state": self.state, "created": self.created, "updated": self.updated,
                "added": _dump_counts(self.added), "claimed": _dump_counts(self.claimed),
                "demand": [d.to_json() for d in self.demand], "boot_id": self.boot_id,
                "keep_s": self.keep_s}

    @classmethod
    def from_json(cls, raw: Any, drops: list[str],
                  known: Optional[set[Pool]] = None) -> GuestRecord:
        if not isinstance(raw, dict):
            raise RecordError("not a JSON object")
        if raw.get("schema") != SCHEMA:
            raise RecordError(f"schema {_show(raw.get('schema'))} (this hugexml reads {SCHEMA})")
        name = check_name(raw.get("name"))
        uuid = raw.get("uuid")
        if uuid is not None and normalize_uuid(uuid) != uuid:
            raise RecordError(f"uuid: {_show(uuid)} is not a normalised UUID")
        demand = raw.get("demand", [])
        if not isinstance(demand, list) or len(demand) > MAX_DEMAND_ROWS:
            raise RecordError("demand: not a list of at most "
                              f"{MAX_DEMAND_ROWS} rows")
        key, state = raw.get("key"), raw.get("state")
        if not isinstance(key, str) or state not in STATES:
            raise RecordError(f"key {_show(key)} / state {_show(state)}: not a guest record")
        rec = cls(key=key, name=name, uuid=uuid, state=state,
                  created=_time(raw.get("created"), "created"),
                  updated=_time(raw.get("updated"), "updated"),
                  added=_pool_counts(raw.get("added", {}), "added", drops, known),
                  claimed=_pool_counts(raw.get("claimed", {}), "claimed", drops, known),
                  demand=tuple(DemandRow.from_json(d, f"demand[{i}]")
                               for i, d in enumerate(demand)),
                  boot_id=_boot_id(raw.get("boot_id", "")),
                  keep_s=_keep(raw.get("keep_s")))
        return rec.check()


# --- the host journal --------------------------------------------------------------------
class KeptLot(Typed):
    """Pages kept in a pool after their guest stopped, until ``until`` (None: for ever)."""

    pages: int
    until: Optional[float]


class PoolBook(Typed):
    baseline: int = 0     # pages not hugexml's: found before its first change, or added by others
    admin: int = 0        # pages added by `hugexml allocate`
    guests: int = 0       # pages added for guests: the sum of their records' `added`
    unreleased: int = 0   # pages hugexml added and owes back (not free when it tried)
    kept: list[KeptLot] = field(default_factory=list)

    @property
    def kept_pages(self) -> int:
        return sum(lot.pages for lot in self.kept)

    @property
    def expected(self) -> int:
        """Persistent pages the kernel should have in this pool."""
        return self.baseline + self.admin + self.guests + self.unreleased + self.kept_pages

    @property
    def hugexml_pages(self) -> int:
        return self.expected - self.baseline

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (
            ("baseline", self.baseline), ("admin", self.admin), ("guests", self.guests),
            ("unreleased", self.unreleased)) if v}
        if self.kept:
            out["kept"] = [[lot.pages, lot.until] for lot in self.kept]
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str) -> PoolBook:
        if not isinstance(raw, dict):
            raise RecordError(f"{where}: not an object")
        unknown = set(raw) - {"baseline", "admin", "guests", "unreleased", "kept"}
        if unknown:
            raise RecordError(f"{where}: unknown field {_show(sorted(unknown)[0])}")
        kept_raw = raw.get("kept", [])
        if not isinstance(kept_raw, list) or len(kept_raw) > MAX_KEPT_LOTS:
            raise RecordError(f"{where}.kept: not a list of at most {MAX_KEPT_LOTS} lots")
        kept = []
        for i, lot in enumerate(kept_raw):
            if not isinstance(lot, list) or len(lot) != 2:
                raise RecordError(f"{where}.kept[{i}]: not [pages, until]")
            until = None if lot[1] is None else _time(lot[1], f"{where}.kept[{i}] until")
            kept.append(KeptLot(_int(lot[0], f"{where}.kept[{i}] pages"), until))
        return cls(**{k: _int(raw.get(k, 0), f"{where}.{k}")
                      for k in ("baseline", "admin", "guests", "unreleased")},
                   kept=[lot for lot in kept if lot.pages])


class IntentPool(Typed):
    before: int
    target: int
    buckets: tuple[str, ...] = ()  # shrink: the order pages leave the books


class Intent(Typed):
    """A pool change between its first kernel write and its commit."""

    op: str
    purpose: str
    guest: Optional[str]
    started: float
    pid: int
    pools: dict[Pool, IntentPool]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "purpose": self.purpose, "guest": self.guest,
                "started": self.started, "pid": self.pid,
                "pools": {pool_key(p): {"before": r.before, "target": r.target,
                                        "buckets": list(r.buckets)}
                          for p, r in sorted(self.pools.items())}}

    @classmethod
    def from_json(cls, raw: Any, drops: list[str], known: Optional[set[Pool]]) -> Intent:
        if not isinstance(raw, dict) or raw.get("op") not in INTENT_OPS:
            raise RecordError("intent: not a grow/shrink record")
        purpose, guest = raw.get("purpose"), raw.get("guest")
        if not isinstance(purpose, str) or len(purpose) > 32:
            raise RecordError("intent.purpose: not a short string")
        if guest is not None and not (isinstance(guest, str) and is_key(guest)):
            raise RecordError(f"intent.guest: {_show(guest)} is not a guest key")
        pools_raw = raw.get("pools")
        if not isinstance(pools_raw, dict):
            raise RecordError("intent.pools: not an object")
        pools: dict[Pool, IntentPool] = {}
        for key, rec in pools_raw.items():
            pool = parse_pool(key, f"intent pool {_show(key)}")
            if not isinstance(rec, dict):
                raise RecordError(f"intent pool {key}: not an object")
            buckets = rec.get("buckets", [])
            if not isinstance(buckets, list) or any(b not in SHRINK_BUCKETS for b in buckets):
                raise RecordError(f"intent pool {key}: bad buckets {_show(buckets)}")
            entry = IntentPool(_int(rec.get("before"), f"intent pool {key} before"),
                               _int(rec.get("target"), f"intent pool {key} target"),
                               tuple(buckets))
            if known is not None and pool not in known:
                drops.append(f"intent pool {key}: no such pool on this host")
                continue
            pools[pool] = entry
        pid = raw.get("pid")
        return cls(raw["op"], purpose, guest, _time(raw.get("started"), "intent.started"),
                   _int(pid, "intent.pid", 1 << 22), pools)


class Journal(Typed):
    boot_id: str = ""
    pools: dict[Pool, PoolBook] = field(default_factory=dict)
    intent: Optional[Intent] = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def book(self, pool: Pool) -> PoolBook:
        return self.pools.setdefault(pool, PoolBook())

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "boot_id": self.boot_id,
                "pools": {pool_key(p): b.to_json() for p, b in sorted(self.pools.items())
                          if b.to_json()},
                "intent": self.intent.to_json() if self.intent else None,
                "events": self.events[-MAX_EVENTS:]}

    @classmethod
    def from_json(cls, raw: Any, drops: list[str],
                  known: Optional[set[Pool]] = None) -> Journal:
        """The journal; an entry that fails its check is dropped (and named in ``drops``),
        so one bad pool never blocks another. Only a file that is not a schema-2 journal
        at all raises RecordError."""
        if not isinstance(raw, dict):
            raise RecordError("not a JSON object")
        if raw.get("schema") != SCHEMA:
            raise RecordError(f"schema {_show(raw.get('schema'))} (this hugexml reads {SCHEMA})")
        journal = cls(boot_id=_boot_id(raw.get("boot_id", "")))
        pools = raw.get("pools", {})
        if not isinstance(pools, dict):
            drops.append("pools: not an object")
            pools = {}
        for key, book in pools.items():
            try:
                pool = parse_pool(key)
                parsed = PoolBook.from_json(book, f"pool {key}")
            except RecordError as exc:
                drops.append(str(exc))
                continue
            if known is not None and pool not in known:
                drops.append(f"pool {key}: no such pool on this host")
                continue
            journal.pools[pool] = parsed
        if raw.get("intent") is not None:
            try:
                journal.intent = Intent.from_json(raw["intent"], drops, known)
            except RecordError as exc:
                drops.append(f"{exc} (dropped: the next reconcile compares pools with the "
                             "kernel instead)")
        events = raw.get("events", [])
        if isinstance(events, list):
            journal.events = [e for e in events[-MAX_EVENTS:]
                              if isinstance(e, dict) and len(repr(e)) <= MAX_EVENT_CHARS]
        return journal


def bounded_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event as it may be stored: long reports are cut, so the journal stays small."""
    if len(repr(event)) <= MAX_EVENT_CHARS:
        return event
    return {"op": event.get("op"), "at": event.get("at"),
            "summary": repr(event)[:MAX_EVENT_CHARS - 200] + "..."}
