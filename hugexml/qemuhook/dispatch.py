"""The libvirt qemu hook: a dispatch table on (operation, sub-operation), and one boundary.

libvirt runs ``qemu NAME OP SUBOP EXTRA`` with the domain XML on stdin, on every guest
lifecycle event, concurrently for different guests. libvirt stops a guest whose ``started``
or ``reconnect`` hook exits non-zero, so every entry has a contract, enforced in ``main``
whatever its handler raises (a ``HugexmlError``, an ``OSError``, a programming error,
``MemoryError``):

- ``GATE`` (``prepare begin``): may refuse the start, always with ONE stderr line (exit 1),
  which ``virsh start`` shows. A programming error's line names it; its traceback goes to
  the log. Nothing stays allocated (the allocator rolls back what it grew).
- ``NEVER_FAIL`` (``started begin``, ``reconnect begin``, ``release end``): exit 0 whatever
  happens, and log the domain, the operation and what went wrong (with the traceback).
- ``FILTER`` (``migrate begin``, ``restore begin``): print the XML refitted to this host;
  on any error print nothing, which libvirt reads as "unchanged" (fail open), and log.
  ``prepare``, which runs next with the same XML, is the gate that explains.
- Anything else: exit 0 without reading stdin.

What each handler does: ``prepare`` plans, checks that the daemon knows a hugetlbfs mount
of each file-backed size (making a missing one for the daemon's next start, the one side
effect besides pages, see ``daemon.mount_for_next_start``), and reserves. ``started`` settles the
claim. ``release`` gives back. ``reconnect`` reconciles the guest with what the host shows
(its record comes back if it was lost). Each of them also does due work (owed pages, ended
keep windows) when the state dir's ``due`` file says so.

The hook never calls libvirt and never imports libvirt-python (the daemon is waiting on it).
"""
from __future__ import annotations

import os
import time

# Not typing.TYPE_CHECKING: importing typing costs ~10% of the no-op path (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable
    from typing import Any, Callable, Optional

    from hugexml.alloc.allocator import Allocator
    from hugexml.core.config import Config
    from hugexml.core.model import GuestId, HostInfo, Plan
    from hugexml.core.root import HostRoot
    from hugexml.host.sysfs import HostGateway
    from hugexml.xml.rewrite import RewriteResult

    GatewayFactory = Callable[[HostRoot], HostGateway]

# What a domain XML must contain to need hugepages: <memoryBacking><hugepages> or a memory
# device's <source><pagesize>. libvirt formats its XML itself, without prefixes.
HUGEPAGE_MARKERS = (b"<hugepages", b"<pagesize")
READ_LIMIT_BYTES = 16 * 1024 * 1024  # == hugexml.xml.xmlsafe.MAX_XML_BYTES (a test checks)
GUESTS_DIR = "guests"            # hugexml.alloc.ledger.GUESTS_DIR (not imported: it loads json)
LEGACY_FILE = "ledger.json"      # hugexml.alloc.ledger.LEGACY_FILE
DUE_FILE = "due"                 # hugexml.alloc.ledger.DUE_FILE
GATE, NEVER_FAIL, FILTER = "gate", "never-fail", "filter"


def mentions_hugepages(data: bytes) -> bool:
    return any(marker in data for marker in HUGEPAGE_MARKERS)


def domain_uuid(data: bytes) -> Optional[str]:
    """The domain's <uuid> by a bytes search (libvirt writes it before any nested element),
    as libvirt spells it; hugexml.planning.records.normalize_uuid makes it a record key."""
    start = data.find(b"<uuid>")
    if start < 0:
        return None
    end = data.find(b"</uuid>", start, start + 100)
    text = data[start + 6:end].strip().decode("ascii", "replace") if end > 0 else ""
    return text if len(text) in (32, 36) else None


_HEX = frozenset("0123456789abcdef")


def _normal_uuid(text: Optional[str]) -> Optional[str]:
    """hugexml.planning.records.normalize_uuid without its imports (the hook's fast path)."""
    digits = (text or "").strip().replace("-", "").lower()
    if len(digits) != 32 or not _HEX.issuperset(digits):
        return None
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class Call:
    """One hook invocation: arguments, streams, lazily built collaborators, a log."""

    def __init__(self, argv: list[str], stdin: Any, stdout: Any, stderr: Any,
                 make_gateway: Optional[GatewayFactory]) -> None:
        from hugexml.core.root import HostRoot, config_from_env, state_dir_from_env

        self.name, self.op, self.subop = [*argv[1:4], "", "", ""][:3]
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.root = HostRoot.from_env()
        self.state_dir = state_dir_from_env(None, self.root)
        self.config_path = config_from_env(None, self.root)
        self.config_explicit = bool(os.environ.get("HUGEXML_CONFIG"))
        self.started = time.monotonic()
        self.records: list[str] = []
        self._make_gateway = make_gateway
        self._data: Optional[bytes] = None
        self._config: Optional[Config] = None

    # --- input ----------------------------------------------------------------------
    def xml(self) -> bytes:
        """stdin, bounded like hugexml.xml.xmlsafe.read_limited (not imported: it loads typing)."""
        if self._data is None:
            data = bytes(self.stdin.read(READ_LIMIT_BYTES + 1))
            if len(data) > READ_LIMIT_BYTES:
                from hugexml.core.errors import InvalidXML

                raise InvalidXML(source=f"domain '{self.name}' XML",
                                 reason=f"larger than {READ_LIMIT_BYTES >> 20} MiB")
            self._data = data
        return self._data

    def guest(self) -> GuestId:
        from hugexml.core.model import GuestId

        return GuestId(self.name, domain_uuid(self.xml()))

    def has_record(self) -> bool:
        """Cheap pre-check before taking the lock: is there a record of this guest (a stat
        of ``guests/<uuid>.json``; a guest recorded without a uuid only when such records
        exist at all), or a schema-1 ledger to import? No json, no hashlib."""
        base = os.path.join(self.state_dir, GUESTS_DIR)
        uuid = _normal_uuid(domain_uuid(self.xml()))
        if uuid is not None and os.path.lexists(os.path.join(base, f"{uuid}.json")):
            return True
        if os.path.lexists(os.path.join(self.state_dir, LEGACY_FILE)):
            return True
        try:
            named = any(n.startswith("name-") for n in os.listdir(base))
        except OSError:
            return False
        if not named:
            return False
        from hugexml.planning.records import RecordError, guest_key

        try:
            return os.path.lexists(os.path.join(base, f"{guest_key(self.name, None)}.json"))
        except RecordError:
            return False

    def work_due(self) -> bool:
        """Does the state dir's ``due`` file (at most 32 bytes: an epoch time) say that
        owed pages or an ended keep window wait for a session?"""
        try:
            with open(os.path.join(self.state_dir, DUE_FILE), "rb") as fh:
                text = fh.read(32)
        except OSError:
            return False
        try:
            return float(text) <= time.time()
        except ValueError:
            return True  # not ours to trust: let a session look

    # --- collaborators --------------------------------------------------------------
    def config(self) -> Config:
        if self._config is None:
            from hugexml.core.config import load_config

            self._config = load_config(self.config_path, self.config_explicit)
        return self._config

    def host_info(self) -> HostInfo:
        from hugexml.host.hostinfo import read_host_info

        return read_host_info(self.root)

    def allocator(self) -> Allocator:
        from hugexml.alloc.allocator import Allocator

        if self._make_gateway is not None:
            gateway = self._make_gateway(self.root)
        else:
            from hugexml.host.sysfs import HostGateway

            gateway = HostGateway(self.root)
        return Allocator(gateway, self.state_dir, self.config())

    # --- logging --------------------------------------------------------------------
    def log(self, text: str) -> None:
        self.records.append(text)

    def log_allocator(self, allocator: Allocator) -> None:
        """What the allocator's recovery did before this call's work (quarantined files,
        dropped entries, owed pages): each note is a record."""
        for note in allocator.report.get("notes", ()):
            self.log(f"state: {note}")
        for key in ("recovered", "rebuilt", "balanced", "expired", "keep_ended"):
            if key in allocator.report:
                self.log(f"state: {key} {_fmt_counts(allocator.report[key])}")

    def flush(self, error: bool, trace: str = "", stderr_fallback: bool = True) -> None:
        """Emit the records (hugexml.qemuhook.hooklog). ``stderr_fallback``: when nothing else can
        take a failure, its summary line goes to stderr; off when the caller already put
        the one line there (a refused start)."""
        if not self.records and not trace:
            return
        from hugexml.core.errors import printable
        from hugexml.qemuhook.hooklog import emit

        try:
            mode = self.config().hook_log
        except Exception:  # a broken config was already reported by the handler
            mode = "syslog"
        took_ms = (time.monotonic() - self.started) * 1000.0
        head = f"domain '{printable(self.name)}' {self.op} {self.subop}"
        lines = [f"{head}: {printable(r)} ({took_ms:.0f} ms)" for r in self.records]
        emit(mode, lines, trace, error, self.state_dir,
             self.stderr if stderr_fallback else None)


# --- handlers ---------------------------------------------------------------------------
def _fmt_demand(plan: Plan) -> str:
    parts = []
    for item in plan.demand:
        nodes = ",".join(map(str, item.host_nodes)) if item.host_nodes is not None else "any"
        parts.append(f"{item.pages} x {item.page_size_kib} KiB on node {nodes}")
    return "; ".join(parts) or "none"


def _fmt_counts(result: Any) -> str:
    """``{"added": {"1:2048": 64}}`` -> ``added {1:2048=64}`` (pool keys are node:size KiB)."""
    if isinstance(result, dict):
        parts = [f"{k} {{{_fmt_counts(v)}}}" if isinstance(v, dict)
                 else f"{k}={_fmt_counts(v)}" for k, v in sorted(result.items(), key=str)]
        return ", ".join(parts) or "nothing"
    if isinstance(result, (list, tuple)):
        return ", ".join(_fmt_counts(v) for v in result) or "nothing"
    return str(result)


def _check_mounts(call: Call, plan: Plan) -> None:
    """Each file-backed size needs a hugetlbfs mount the running daemon knows about. A size
    with no mount at all gets one for the daemon's next start: prepare's one side effect
    besides pages (``daemon.mount_for_next_start``); this start fails all the same."""
    sizes = plan.file_backed_sizes_kib
    if not sizes:
        return
    from hugexml.core.errors import MountMissing
    from hugexml.system.daemon import mount_for_next_start, mount_problems

    problems = mount_problems(call.root, call.state_dir, sizes)
    if problems:
        size_kib, line = sorted(problems.items())[0]
        made = mount_for_next_start(call.root, call.state_dir, size_kib)
        raise MountMissing(domain=plan.domain, reason=made or line)


def _prepare(call: Call) -> int:
    data = call.xml()
    if not mentions_hugepages(data):
        return 0
    from hugexml.xml.domxml import plan_xml

    # With a host, the plan itself rejects page sizes and nodes this host lacks.
    plan = plan_xml(data, call.host_info(), f"domain '{call.name}' XML")
    if not plan.hugepages:
        return 0
    _check_mounts(call, plan)
    allocator = call.allocator()
    try:
        added = allocator.reserve(plan, call.guest(), keep_s=plan.keep_s)
    finally:
        call.log_allocator(allocator)
    call.log(f"demand {_fmt_demand(plan)}; {_fmt_counts(added)}; claim pending")
    return 0


def _started(call: Call) -> int:
    if call.has_record():
        allocator = call.allocator()
        allocator.settle(call.guest())
        call.log_allocator(allocator)
        call.log("claim active")
    elif call.work_due():
        _tidy(call)
    return 0


def _release(call: Call) -> int:
    if call.has_record():
        allocator = call.allocator()
        given = allocator.release(call.guest())
        call.log_allocator(allocator)
        call.log(_fmt_counts({k: v for k, v in given.items() if k != "guest"}))
    elif call.work_due():
        _tidy(call)
    return 0


def _reconnect(call: Call) -> int:
    """After a daemon restart, for a running guest: reconcile, and give the guest its
    record back from what the host shows when the record was lost."""
    data = call.xml()
    if mentions_hugepages(data) or call.has_record():
        from hugexml.host.live import live_guest

        guest = call.guest()
        live = live_guest(call.root, call.name, guest.uuid, data, call.host_info())
        allocator = call.allocator()
        result = allocator.reconcile(guest, live=[live])
        call.log_allocator(allocator)
        call.log(f"reconciled {_fmt_counts({k: v for k, v in result.items() if k != 'notes'})}")
    elif call.work_due():
        _tidy(call)
    return 0


def _tidy(call: Call) -> None:
    allocator = call.allocator()
    released = allocator.tidy()
    call.log_allocator(allocator)
    call.log(f"due work: released {_fmt_counts(released)}")


def _filter(call: Call) -> int:
    """Refit page sizes and node bindings to this host, byte-exact elsewhere
    (hugexml.xml.refit). A file-backed size counts only when the running daemon has a
    hugetlbfs mount of it (hugexml.system.daemon.libvirt_visible_sizes); the memory source itself
    is never changed (libvirt's restore ABI check rejects a different source)."""
    data = call.xml()
    out = data
    if mentions_hugepages(data):
        from hugexml.system.daemon import libvirt_visible_sizes

        result = refit_for_hook(call, data, call.host_info(),
                                libvirt_visible_sizes(call.root, call.state_dir))
        if result.changed:
            out = result.data
            call.log("refitted: " + "; ".join(result.notes))
        elif result.notes:  # e.g. the supply could not be read: why the XML stayed as is
            call.log("unchanged: " + "; ".join(result.notes))
    call.stdout.write(out)
    call.stdout.flush()
    return 0


def refit_for_hook(call: Call, data: bytes, host: HostInfo,
                   mounted_sizes_kib: Optional[Iterable[int]]) -> RewriteResult:
    """The migrate/restore filter as the hook calls it: ``refit_for_host`` with what this
    host can supply now (``supply.for_filter``: this call's host, state dir and config).
    When that cannot be read, sizes are judged as before and a note says so: the supply
    never makes the filter fail."""
    from hugexml.alloc.supply import for_filter
    from hugexml.xml.refit import refit_for_host

    supply, unknown = for_filter(call.root, call.state_dir, call.config)
    result = refit_for_host(data, host, mounted_sizes_kib,
                            f"domain '{call.name}' XML", supply=supply)
    if unknown is not None:
        result.notes.append(unknown)
    elif result.changed and supply is not None:
        result.notes.extend(supply.notes)
    return result


# (op, subop) -> (handler, contract)
DISPATCH: dict[tuple[str, str], tuple[Callable[[Call], int], str]] = {
    ("prepare", "begin"): (_prepare, GATE),
    ("started", "begin"): (_started, NEVER_FAIL),
    ("release", "end"): (_release, NEVER_FAIL),
    ("reconnect", "begin"): (_reconnect, NEVER_FAIL),
    ("migrate", "begin"): (_filter, FILTER),
    ("restore", "begin"): (_filter, FILTER),
}


def main(argv: list[str], stdin: Any, stdout: Any, stderr: Any,
         make_gateway: Optional[GatewayFactory] = None) -> int:
    """Run one hook call under its contract. ``stdin``/``stdout`` are binary, ``stderr`` is
    text. ``make_gateway`` builds the HostGateway from the HostRoot (tests inject a fake
    kernel)."""
    entry = DISPATCH.get(tuple(argv[2:4]))  # type: ignore[arg-type]
    if entry is None:
        return 0
    handler, contract = entry
    call: Optional[Call] = None
    try:
        call = Call(argv, stdin, stdout, stderr, make_gateway)
        code = handler(call)
    except BaseException as exc:  # the boundary: every failure is contained
        return _contain(call, contract, exc, argv, stderr)
    try:
        call.flush(error=False)
    except BaseException:  # the work is done: a log cannot undo it
        pass
    return code


def _contain(call: Optional[Call], contract: str, exc: BaseException, argv: list[str],
             stderr: Any) -> int:
    """The contract's answer to a failure: the exit code, after the log and (GATE only) the
    one stderr line. Never raises."""
    try:
        from hugexml.core.errors import HugexmlError, printable

        expected = isinstance(exc, HugexmlError)
        summary = str(exc) if expected else f"internal error ({type(exc).__name__}: " \
                                            f"{printable(' '.join(str(exc).split()))[:300]})"
        trace = "" if expected else _traceback(exc)
        if contract == GATE:
            note = "" if expected else "; the traceback is in hugexml's log"
            stderr.write(f"hugexml: {summary}{note}\n")
            stderr.flush()
        if call is None:  # Call() itself failed: log with the defaults
            name = printable(argv[1] if len(argv) > 1 else "?")
            from hugexml.qemuhook.hooklog import emit

            state_dir = os.environ.get("HUGEXML_STATE_DIR") or os.path.join(
                os.environ.get("HUGEXML_ROOT") or "/", "run/hugexml")
            emit("syslog", [f"domain '{name}' {' '.join(argv[2:4])}: failed: {summary}"],
                 trace, True, state_dir, stderr if contract != GATE else None)
        else:
            if contract == FILTER:
                call.records.append("failed open (XML passed through unchanged): " + summary)
            elif contract == NEVER_FAIL:
                call.records.append(f"failed, exit 0 all the same: {summary}")
            else:
                call.records.append(f"refused the start: {summary}")
            call.flush(error=True, trace=trace, stderr_fallback=contract != GATE)
    except BaseException:  # even a failing log must not change the exit code
        pass
    return 1 if contract == GATE else 0


def _traceback(exc: BaseException) -> str:
    try:
        import traceback

        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:
        return f"{type(exc).__name__} (no traceback: formatting it failed)"


FILTERS = (("migrate", "begin"), ("restore", "begin"))


def chain(argv: list[str], stdin: Any, stdout: Any, stderr: Any, original: str) -> int:
    """The legacy single-file hook: run the admin's original hook first, then hugexml.

    The original gets the same arguments and XML. Its non-zero exit stops a start before
    hugexml allocates anything; ``release end`` runs hugexml whatever the original said.
    For the XML filters the original's output (when not empty) is what hugexml refits.
    hugexml's own part keeps its contract: only the original can fail started/reconnect.
    """
    if not os.access(original, os.X_OK):
        return main(argv, stdin, stdout, stderr)
    import io
    import subprocess

    data = stdin.read()
    proc = subprocess.run([original, *argv[1:]], input=data, capture_output=True,
                          check=False)
    if proc.stderr:
        stderr.write(proc.stderr.decode("utf-8", "replace"))
        stderr.flush()
    op = tuple(argv[2:4])
    if proc.returncode != 0 and op != ("release", "end"):
        return proc.returncode
    if op in FILTERS and proc.stdout.strip():
        data = proc.stdout
    out = io.BytesIO()
    code = main(argv, io.BytesIO(data), out, stderr)
    if op in FILTERS:
        stdout.write(out.getvalue() or data)
    else:
        stdout.write(proc.stdout)
    stdout.flush()
    return proc.returncode or code
