"""The state store: small files in the state dir, changed only under one flock.

Layout of ``<state_dir>`` (default ``/run/hugexml``; schema 2, see ``hugexml.planning.records``)::

    lock                 the flock every change holds (bounded wait, LockTimeout)
    host.json            the host journal: books per pool (baseline, admin, guests, kept,
                         unreleased), the intent of an unfinished pool change, reports
    guests/<key>.json    one record per guest; <key> is its UUID (8-4-4-4-12, lower case),
                         or name-<sha256 of its name> for a guest without one
    quarantine/          files that failed their checks, moved aside with a .why note
    hook.log             the hook's log when nobody listens on /dev/log

Why several files: one bad record can only affect its own guest. A guest record that does
not parse, holds a field of the wrong type, belongs to another key or comes from an earlier
boot is moved to ``quarantine/`` and named in the load's ``notes`` (the hook logs them,
``status`` and ``doctor`` report them); every other guest goes on working. Its pages are not
lost: the journal counts the pages added for guests in total, so pages no record claims any
more are owed back (``hugexml.alloc.recovery.balance``). A journal entry that fails its check (a
pool the host lacks, a negative count) is dropped with a note; a journal that cannot be read
at all is quarantined and rebuilt from the guest records and the kernel.

Writes go through ``fsutil.write_atomic`` (temp file with O_EXCL, fsync, rename) and are
bounded as reads are. Reads for ``status`` and ``doctor`` move nothing (``repair=False``).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hugexml.core.errors import LedgerError, LockTimeout
from hugexml.planning import records as rc
from hugexml.planning.records import GuestRecord, Journal, Pool, RecordError
from hugexml.planning.state import State, due_time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

JOURNAL_FILE = "host.json"
GUESTS_DIR = "guests"
QUARANTINE_DIR = "quarantine"
LOCK_FILE = "lock"
LEGACY_FILE = "ledger.json"  # schema 1: one file for everything (hugexml 0.1)
DUE_FILE = "due"  # when a hook call should next do due work (epoch seconds), see the hook
MAX_JOURNAL_BYTES = 1 << 20
MAX_GUEST_BYTES = 256 * 1024
MAX_LEGACY_BYTES = 16 << 20
MAX_GUESTS = 4096
MAX_QUARANTINED = 64


def _read_bounded(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; OSError, or ValueError when it is no
    regular file or larger than ``limit``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"larger than {limit} bytes ({st.st_size})")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON text ({type(exc).__name__})") from exc
    except ValueError as exc:
        raise ValueError(f"not JSON ({str(exc)[:80]})") from exc


class Store:
    def __init__(self, state_dir: str, lock_timeout_s: float = 90.0,
                 clock: Callable[[], float] = time.time, boot_id: str = "") -> None:
        self.state_dir = state_dir
        self.journal_path = os.path.join(state_dir, JOURNAL_FILE)
        self.guests_dir = os.path.join(state_dir, GUESTS_DIR)
        self.quarantine_dir = os.path.join(state_dir, QUARANTINE_DIR)
        self.lock_path = os.path.join(state_dir, LOCK_FILE)
        self.lock_timeout_s = lock_timeout_s
        self.clock = clock
        self.boot_id = boot_id
        self._lock_fd: Optional[int] = None

    def guest_path(self, key: str) -> str:
        return os.path.join(self.guests_dir, f"{key}.json")

    # --- the state dir and its lock ------------------------------------------------------
    def ensure_dir(self) -> None:
        """The state dir: made when missing; refused when it is no directory or others may
        write it (hugexml never moves aside a path it was merely pointed at)."""
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            st = os.lstat(self.state_dir)
        except OSError as exc:
            raise LedgerError(path=self.state_dir, reason=exc.strerror or str(exc)) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise LedgerError(path=self.state_dir, reason="state dir is not a directory")
        if st.st_mode & 0o022:
            raise LedgerError(path=self.state_dir, reason="state dir is group/world-writable "
                                                          f"(mode {st.st_mode & 0o777:o})")

    def _ensure_guests_dir(self) -> None:
        """guests/, under the lock: anything else at its path is ours and moved aside."""
        if os.path.lexists(self.guests_dir) and not (
                os.path.isdir(self.guests_dir) and not os.path.islink(self.guests_dir)):
            self.quarantine(self.guests_dir, "guests/ is not a directory")
        try:
            os.makedirs(self.guests_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise LedgerError(path=self.guests_dir, reason=exc.strerror or str(exc)) from exc

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the lock (bounded wait, LockTimeout). Closing the fd releases it, as a
        killed process's does."""
        self.ensure_dir()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as exc:
            raise LedgerError(path=self.lock_path, reason=exc.strerror or str(exc)) from exc
        try:
            self._wait(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            self._ensure_guests_dir()
            yield
        finally:
            self._lock_fd = None
            os.close(fd)

    def _wait(self, fd: int, mode: int, timeout_s: Optional[float] = None) -> None:
        limit = self.lock_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + max(0.0, limit)
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LedgerError(path=self.lock_path,
                                      reason=exc.strerror or str(exc)) from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(path=self.lock_path, seconds=limit)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    @property
    def holding_lock(self) -> bool:
        return self._lock_fd is not None

    def _need_lock(self, what: str) -> None:
        if not self.holding_lock:
            raise RuntimeError(f"{what} without holding the state lock")

    # --- loading ---------------------------------------------------------------------------
    def load(self, known: Optional[set[Pool]] = None, repair: bool = True) -> State:
        """The whole state. ``repair`` (under the lock): quarantine what fails its checks and
        remove stale temp files; without it (status, doctor, dry runs) nothing moves and the
        notes say what a repair would do. ``known``: the host's pools; entries naming
        others are dropped."""
        if repair:
            self._need_lock("state repaired")
            self._remove_temp_files()
        state = State(journal=Journal(boot_id=self.boot_id), guests={})
        self._load_journal(state, known, repair)
        self._load_guests(state, known, repair)
        if state.guests and not os.path.lexists(self.journal_path):
            state.journal_lost = state.journal_dirty = True
        if os.path.lexists(os.path.join(self.state_dir, LEGACY_FILE)):
            self._import_legacy(state, known, repair)
        return state

    def _import_legacy(self, state: State, known: Optional[set[Pool]], repair: bool) -> None:
        """hugexml 0.1's ``ledger.json`` into this state (``hugexml.alloc.migrate``); stale next to
        a schema-2 journal, set aside when unreadable."""
        path = os.path.join(self.state_dir, LEGACY_FILE)
        if os.path.lexists(self.journal_path) or state.guests:
            self._set_aside(state, path, "schema-1 ledger next to a schema-2 journal: stale",
                            repair)
            return
        try:
            raw = _parse_json(_read_bounded(path, MAX_LEGACY_BYTES))
            if not isinstance(raw, dict) or raw.get("version") != 1:
                raise ValueError("not a schema-1 ledger")
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._set_aside(state, path, f"schema-1 ledger unreadable: {reason}", repair)
            return
        from hugexml.alloc.migrate import import_legacy

        import_legacy(raw, state, known, path)

    def read(self, known: Optional[set[Pool]] = None) -> State:
        """The state for a reader that changes nothing: under a shared lock when one can be
        had within 2 s (no half-done change), else as the files are now."""
        if not os.path.isdir(self.state_dir):
            return State(journal=Journal(boot_id=self.boot_id), guests={})
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return self.load(known, repair=False)
        try:
            try:
                self._wait(fd, fcntl.LOCK_SH, timeout_s=2.0)
            except LockTimeout:
                state = self.load(known, repair=False)
                state.notes.append("read while another hugexml held the lock: a change may "
                                   "be half done")
                return state
            return self.load(known, repair=False)
        finally:
            os.close(fd)

    def _load_journal(self, state: State, known: Optional[set[Pool]], repair: bool) -> None:
        path = self.journal_path
        if not os.path.lexists(path):
            return
        try:
            raw = _parse_json(_read_bounded(path, MAX_JOURNAL_BYTES))
            drops: list[str] = []
            journal = Journal.from_json(raw, drops, known)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._set_aside(state, path, f"host journal unreadable: {reason}", repair)
            state.journal_lost = state.journal_dirty = True
            return
        if self.boot_id and journal.boot_id and journal.boot_id != self.boot_id:
            self._set_aside(state, path, "host journal of an earlier boot", repair)
            state.journal_dirty = True
            return
        state.journal = journal
        journal.boot_id = self.boot_id or journal.boot_id
        if drops:
            state.notes.extend(f"{path}: dropped {d}" for d in drops)
            state.journal_dirty = True

    def _load_guests(self, state: State, known: Optional[set[Pool]], repair: bool) -> None:
        try:
            names = sorted(os.listdir(self.guests_dir))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LedgerError(path=self.guests_dir, reason=exc.strerror or str(exc)) from exc
        if len(names) > MAX_GUESTS:
            raise LedgerError(path=self.guests_dir,
                              reason=f"{len(names)} entries, more than {MAX_GUESTS}")
        for name in names:
            path = os.path.join(self.guests_dir, name)
            key = name[:-5] if name.endswith(".json") else ""
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # a writer's temp file (removed under the lock)
            if not rc.is_key(key):
                self._set_aside(state, path, "not a guest record name", repair)
                continue
            drops: list[str] = []
            try:
                rec = GuestRecord.from_json(
                    _parse_json(_read_bounded(path, MAX_GUEST_BYTES)), drops, known)
                if rec.key != key:
                    raise RecordError(f"record of {rec.key!r} in the file of {key!r}")
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self._set_aside(state, path, f"guest record unreadable: {reason}", repair)
                continue
            if self.boot_id and rec.boot_id and rec.boot_id != self.boot_id:
                self._set_aside(state, path, "guest record of an earlier boot", repair)
                continue
            state.guests[key] = rec
            if drops:
                state.notes.extend(f"{path}: dropped {d}" for d in drops)
                state.dirty.add(key)

    def _set_aside(self, state: State, path: str, reason: str, repair: bool) -> None:
        if not repair:
            state.notes.append(f"{path}: {reason} (the next change moves it to "
                               f"{self.quarantine_dir})")
            return
        moved = self.quarantine(path, reason)
        state.notes.append(f"{path}: {reason}; moved to {moved}")

    # --- writing ---------------------------------------------------------------------------
    def commit(self, state: State) -> None:
        """Write what ``state`` says changed, in the order that keeps every crash point
        recoverable: removed records first, then the journal, then records. A crash after
        a removal leaves pages no record claims (owed back); a crash after the journal
        counted new pages, before the record names them, the same."""
        self._need_lock("state committed")
        for key in sorted(state.removed):
            self.delete_guest(key)
        state.removed.clear()
        if state.journal_dirty:
            self.write_journal(state.journal)
            state.journal_dirty = False
            self._write_due(state)
        for key in sorted(state.dirty):
            rec = state.guests.get(key)
            if rec is not None:
                self.write_guest(rec)
        state.dirty.clear()
        if state.legacy_path is not None:
            self.quarantine(state.legacy_path, "schema-1 ledger, imported into schema 2")
            state.legacy_path = None

    def write_journal(self, journal: Journal) -> None:
        self._need_lock("host journal written")
        journal.boot_id = self.boot_id or journal.boot_id
        journal.events = [rc.bounded_event(e) for e in journal.events[-rc.MAX_EVENTS:]]
        blob = json.dumps(journal.to_json(), sort_keys=True, separators=(",", ":")).encode()
        self._write(self.journal_path, blob, MAX_JOURNAL_BYTES)

    def write_guest(self, rec: GuestRecord) -> None:
        self._need_lock("guest record written")
        rec.boot_id = self.boot_id or rec.boot_id
        try:
            rec.check()
        except RecordError as exc:
            raise LedgerError(path=self.guest_path(rec.key),
                              reason=f"refusing to write a bad record: {exc}") from exc
        blob = json.dumps(rec.to_json(), sort_keys=True, separators=(",", ":")).encode()
        self._write(self.guest_path(rec.key), blob, MAX_GUEST_BYTES)

    def _write_due(self, state: State) -> None:
        path = os.path.join(self.state_dir, DUE_FILE)
        due = due_time(state, self.clock())
        try:
            if due is None:
                if os.path.lexists(path):
                    os.unlink(path)
                return
            from hugexml.core.fsutil import write_atomic

            write_atomic(path, f"{due:.0f}\n".encode(), mode=0o600)
        except OSError as exc:
            raise LedgerError(path=path, reason=f"cannot write: {exc.strerror or exc}") from exc

    def delete_guest(self, key: str) -> None:
        self._need_lock("guest record removed")
        try:
            os.unlink(self.guest_path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LedgerError(path=self.guest_path(key),
                              reason=f"cannot remove: {exc.strerror or exc}") from exc

    def _write(self, path: str, blob: bytes, limit: int) -> None:
        if len(blob) > limit:
            raise LedgerError(path=path, reason=f"would be {len(blob)} bytes, more than the "
                                                f"{limit} a reader accepts; not written")
        from hugexml.core.fsutil import write_atomic

        try:
            write_atomic(path, blob, mode=0o600)
        except OSError as exc:
            raise LedgerError(path=path, reason=f"cannot write: {exc.strerror or exc}") from exc

    # --- quarantine and leftovers ----------------------------------------------------------
    def quarantine(self, path: str, reason: str) -> str:
        """Move ``path`` (file or directory) into ``quarantine/`` with a ``.why`` note; the
        new path. The quarantine keeps the newest MAX_QUARANTINED entries."""
        self._need_lock("a file quarantined")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        base = f"{stamp}-{os.path.basename(path)}"
        try:
            os.makedirs(self.quarantine_dir, mode=0o700, exist_ok=True)
            target, n = os.path.join(self.quarantine_dir, base), 0
            while os.path.lexists(target):
                n += 1
                target = os.path.join(self.quarantine_dir, f"{base}.{n}")
            os.rename(path, target)
        except OSError as exc:
            raise LedgerError(path=path, reason=f"{reason}; cannot move it aside: "
                                                f"{exc.strerror or exc}") from exc
        try:
            with open(target + ".why", "w", encoding="utf-8") as fh:
                fh.write(f"{reason}\n")
        except OSError:
            pass  # the log line and the event still say why
        self._trim_quarantine()
        return target

    def _trim_quarantine(self) -> None:
        entries = sorted(e for e in self._quarantine_entries() if not e.endswith(".why"))
        for name in entries[:-MAX_QUARANTINED]:
            for victim in (name, name + ".why"):
                path = os.path.join(self.quarantine_dir, victim)
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        import shutil

                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                except OSError:
                    pass

    def _quarantine_entries(self) -> list[str]:
        try:
            return os.listdir(self.quarantine_dir)
        except OSError:
            return []

    def quarantined(self) -> list[dict[str, Any]]:
        """What is in quarantine/: name, when, why (for status and doctor)."""
        out = []
        for name in sorted(self._quarantine_entries()):
            if name.endswith(".why"):
                continue
            path = os.path.join(self.quarantine_dir, name)
            try:
                why = _read_bounded(path + ".why", 4096).decode("utf-8", "replace").strip()
            except (OSError, ValueError):
                why = ""
            try:
                when = os.lstat(path).st_mtime
            except OSError:
                continue
            out.append({"path": path, "moved_at": when, "why": why})
        return out

    def _remove_temp_files(self) -> None:
        """Temp files of state files: under the lock, every one is a killed writer's."""
        from hugexml.core.fsutil import temp_files

        leftovers = temp_files(self.state_dir, JOURNAL_FILE)
        try:
            names = os.listdir(self.guests_dir)
        except OSError:
            names = []
        leftovers += [os.path.join(self.guests_dir, n) for n in names
                      if n.startswith(".") and n.endswith(".tmp")]
        for path in leftovers:
            try:
                os.unlink(path)
            except OSError:
                pass
