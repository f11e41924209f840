"""The claim ledger: one JSON file in the state dir, changed only under one flock.

Layout of ``<state_dir>/ledger.json`` (schema version 1). Pools are keyed ``"<node>:<size_kib>"``
and every count is in pages of that size::

    {"version": 1,
     "baseline":   {pool: persistent pages hugexml found before its first change there,
                    plus pages that appeared later by somebody else's hand},
     "admin":      {pool: pages added by ``hugexml allocate`` (never given back by releases)},
     "kept":       {pool: pages of released guests kept in the pool (release policy 'keep')},
     "unreleased": {pool: pages hugexml added and owes back; retried at release/reconcile},
     "guests": {key: {"name", "uuid", "state": "pending"|"active"|"releasing",
                      "added": {pool: pages added for this guest},
                      "claimed": {pool: pages promised to it (pending: kept free for it)},
                      "demand": [plan demand items], "created", "updated"}},
     "intent": null | {"op": "grow"|"shrink", "purpose", "guest", "started", "pid",
                       "pools": {pool: {"before", "target", "buckets"}}},
     "events": [last 50 reconcile reports]}

Writes are atomic (temp file, fsync, rename, fsync of the directory) and happen only while
the lock is held. Reads for ``status`` take no lock: rename makes every read see a whole
file. A file that does not parse or has an unknown version raises LedgerError; it is never
reset silently (``Ledger.quarantine`` moves it aside for reconcile, which reports it).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from hugexml.errors import LedgerError, LockTimeout

LEDGER_FILE = "ledger.json"
LOCK_FILE = "lock"
VERSION = 1
MAX_LEDGER_BYTES = 16 * 1024 * 1024
MAX_EVENTS = 50
STATES = ("pending", "active", "releasing")
BUCKETS = ("baseline", "admin", "kept", "unreleased")
_POOL_KEY = re.compile(r"(\d{1,4}):(\d{1,10})\Z")

Ledger_t = dict[str, Any]


# --- pool keys -------------------------------------------------------------------------
def pool_key(node: int, size_kib: int) -> str:
    return f"{int(node)}:{int(size_kib)}"


def parse_pool_key(key: str) -> tuple[int, int]:
    m = _POOL_KEY.match(key)
    if not m:
        raise ValueError(f"bad pool key {key!r}")
    return int(m.group(1)), int(m.group(2))


def empty_ledger() -> Ledger_t:
    return {"version": VERSION, "baseline": {}, "admin": {}, "kept": {}, "unreleased": {},
            "guests": {}, "intent": None, "events": []}


# --- validation ------------------------------------------------------------------------
def _check_counts(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    for key, count in value.items():
        if not isinstance(key, str) or not _POOL_KEY.match(key):
            raise ValueError(f"{where}: bad pool key {key!r}")
        if type(count) is not int or count < 0:
            raise ValueError(f"{where}[{key}]: {count!r} is not a page count")


def validate(data: Any) -> Ledger_t:
    """The ledger if it has the version-1 shape; ValueError naming the first problem."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("version") != VERSION:
        raise ValueError(f"unknown version {data.get('version')!r} (this hugexml reads {VERSION})")
    for bucket in BUCKETS:
        _check_counts(data.setdefault(bucket, {}), bucket)
    guests = data.setdefault("guests", {})
    if not isinstance(guests, dict):
        raise ValueError("guests is not an object")
    for key, rec in guests.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise ValueError(f"guest {key!r}: not a guest record")
        if rec.get("state") not in STATES:
            raise ValueError(f"guest {key!r}: unknown state {rec.get('state')!r}")
        _check_counts(rec.setdefault("added", {}), f"guest {key!r} added")
        _check_counts(rec.setdefault("claimed", {}), f"guest {key!r} claimed")
    intent = data.setdefault("intent", None)
    if intent is not None:
        if not isinstance(intent, dict) or intent.get("op") not in ("grow", "shrink"):
            raise ValueError("intent is not a grow/shrink record")
        pools = intent.get("pools")
        if not isinstance(pools, dict):
            raise ValueError("intent has no pools")
        for key, rec in pools.items():
            if not _POOL_KEY.match(str(key)) or not isinstance(rec, dict):
                raise ValueError(f"intent pool {key!r} is malformed")
            for field in ("before", "target"):
                if type(rec.get(field)) is not int or rec[field] < 0:
                    raise ValueError(f"intent pool {key!r}: bad {field}")
    if not isinstance(data.setdefault("events", []), list):
        raise ValueError("events is not a list")
    return data


# --- derived counts ----------------------------------------------------------------------
def count(counts: dict[str, int], key: str) -> int:
    return int(counts.get(key, 0))


def bump(counts: dict[str, int], key: str, delta: int) -> None:
    """Add ``delta`` to a count; zero entries are removed so the file stays small."""
    value = counts.get(key, 0) + delta
    if value < 0:
        raise ValueError(f"count for {key} would go negative ({value})")
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def pools_in(data: Ledger_t) -> set[str]:
    keys: set[str] = set()
    for bucket in BUCKETS:
        keys.update(data[bucket])
    for rec in data["guests"].values():
        keys.update(rec["added"])
    return keys


def guest_added(data: Ledger_t, key: str, states: tuple[str, ...] = STATES,
                exclude: str | None = None) -> int:
    return sum(count(rec["added"], key) for gk, rec in data["guests"].items()
               if rec["state"] in states and gk != exclude)


def pending_claims(data: Ledger_t, key: str, exclude: str | None = None) -> int:
    return sum(count(rec["claimed"], key) for gk, rec in data["guests"].items()
               if rec["state"] == "pending" and gk != exclude)


def expected_pages(data: Ledger_t, key: str) -> int:
    """Persistent pages the kernel should have in a pool hugexml tracks."""
    return (count(data["baseline"], key) + count(data["admin"], key) + count(data["kept"], key)
            + count(data["unreleased"], key) + guest_added(data, key))


def hugexml_pages(data: Ledger_t, key: str) -> int:
    """Pages in a pool that hugexml added and has not given back (everything but baseline)."""
    return expected_pages(data, key) - count(data["baseline"], key)


def forget_idle_pools(data: Ledger_t) -> None:
    """Drop baselines of pools where hugexml holds nothing any more: later changes there are
    the admin's business, not differences to explain."""
    for key in list(data["baseline"]):
        if hugexml_pages(data, key) == 0:
            del data["baseline"][key]


def debit(data: Ledger_t, key: str, bucket: str, pages: int) -> int:
    """Take up to ``pages`` from a bucket (a BUCKETS name or ``guest:<key>``); what was taken."""
    if bucket.startswith("guest:"):
        rec = data["guests"].get(bucket[6:])
        if rec is None:
            return 0
        counts = rec["added"]
    else:
        counts = data[bucket]
    taken = max(0, min(pages, count(counts, key)))
    if taken:
        bump(counts, key, -taken)
    return taken


def debit_in_order(data: Ledger_t, key: str, buckets: list[str], pages: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for bucket in buckets:
        if pages <= 0:
            break
        taken = debit(data, key, bucket, pages)
        if taken:
            out[bucket] = taken
            pages -= taken
    return out


def add_event(data: Ledger_t, event: dict[str, Any]) -> None:
    events = data["events"]
    events.append(event)
    del events[:-MAX_EVENTS]


# --- the file and its lock -------------------------------------------------------------
class Ledger:
    """``<state_dir>/ledger.json`` and ``<state_dir>/lock``."""

    def __init__(self, state_dir: str, lock_timeout_s: float = 90.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LEDGER_FILE)
        self.lock_path = os.path.join(state_dir, LOCK_FILE)
        self.lock_timeout_s = lock_timeout_s
        self.clock = clock
        self._lock_fd: int | None = None

    # state dir --------------------------------------------------------------------
    def ensure_dir(self) -> None:
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            st = os.lstat(self.state_dir)
        except OSError as exc:
            raise LedgerError(path=self.state_dir, reason=exc.strerror or str(exc)) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise LedgerError(path=self.state_dir, reason="state dir is not a directory")
        if st.st_mode & 0o022:
            mode = f"{st.st_mode & 0o777:o}"
            raise LedgerError(path=self.state_dir,
                              reason=f"state dir is group/world-writable (mode {mode})")

    # lock ---------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the lock (bounded wait, LockTimeout). Closing the fd releases it, as a
        killed process's does."""
        self.ensure_dir()
        fd = self._acquire()
        try:
            self._lock_fd = fd
            yield
        finally:
            self._lock_fd = None
            os.close(fd)

    @contextmanager
    def locked(self) -> Iterator[Ledger_t]:
        """Hold the lock; yield the ledger as read under it (empty when there is none)."""
        with self.lock():
            yield self.read()

    def _acquire(self) -> int:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as exc:
            raise LedgerError(path=self.lock_path, reason=exc.strerror or str(exc)) from exc
        try:
            self._wait(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _wait(self, fd: int, mode: int) -> None:
        """flock ``mode`` on ``fd`` within lock_timeout_s (LockTimeout); the caller closes."""
        deadline = time.monotonic() + max(0.0, self.lock_timeout_s)
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LedgerError(path=self.lock_path, reason=exc.strerror or str(exc)) from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(path=self.lock_path, seconds=self.lock_timeout_s)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def read_shared(self) -> Ledger_t:
        """The ledger for a dry run, creating nothing: no state dir (then it is empty), no
        lock file. When the lock file exists, a shared lock (bounded wait) keeps the read
        from landing between a writer's kernel change and its commit."""
        if not os.path.isdir(self.state_dir):
            return empty_ledger()
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return self.read()
        except OSError as exc:
            raise LedgerError(path=self.lock_path, reason=exc.strerror or str(exc)) from exc
        try:
            self._wait(fd, fcntl.LOCK_SH)
            return self.read()
        finally:
            os.close(fd)

    @property
    def holding_lock(self) -> bool:
        return self._lock_fd is not None

    # read / write -------------------------------------------------------------------
    def read(self) -> Ledger_t:
        """The current ledger (empty when the file does not exist). No lock needed."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_LEDGER_BYTES + 1)
        except FileNotFoundError:
            return empty_ledger()
        except OSError as exc:
            raise LedgerError(path=self.path, reason=exc.strerror or str(exc)) from exc
        if len(raw) > MAX_LEDGER_BYTES:
            raise LedgerError(path=self.path, reason=f"larger than {MAX_LEDGER_BYTES} bytes")
        try:
            return validate(json.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            raise LedgerError(path=self.path,
                              reason=f"corrupt ({exc}); run 'hugexml status' to see it, "
                                     "reconcile moves it aside") from exc

    def write(self, data: Ledger_t) -> None:
        if not self.holding_lock:
            raise RuntimeError("ledger written without holding its lock")
        validate(data)  # never write what we could not read back (only adds missing keys)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        from hugexml.fsutil import write_atomic

        try:
            write_atomic(self.path, blob, mode=0o600)
        except OSError as exc:
            raise LedgerError(path=self.path,
                              reason=f"cannot write: {exc.strerror or exc}") from exc

    def quarantine(self) -> str | None:
        """Move a ledger that cannot be read aside (under the lock); its new path, or None."""
        if not self.holding_lock:
            raise RuntimeError("ledger moved aside without holding its lock")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        target = f"{self.path}.corrupt-{stamp}"
        n = 0
        while os.path.exists(target):
            n += 1
            target = f"{self.path}.corrupt-{stamp}.{n}"
        try:
            os.rename(self.path, target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LedgerError(path=self.path, reason=f"cannot move aside: {exc.strerror}") from exc
        return target
