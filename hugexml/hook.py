"""The libvirt qemu hook: a dispatch table on (operation, sub-operation).

libvirt runs ``qemu NAME OP SUBOP EXTRA`` with the domain XML on stdin, on every guest
lifecycle event, concurrently for different guests. What each entry does, and why:

- ``prepare begin`` is the only gate. Guests that name no hugepages leave at once (a bytes
  search, no lxml). Otherwise: plan, check page sizes and the mounts the daemon can see,
  reserve through the allocator (claim ``pending``). A ``HugexmlError`` becomes ONE stderr
  line and exit 1, which libvirt prints in ``virsh start``'s error.
- ``started begin`` settles the claim, ``reconnect begin`` reconciles it after a daemon
  restart, ``release end`` gives back what hugexml added. They never fail libvirt: a failing
  started/reconnect hook makes libvirt kill a running guest over bookkeeping. They log.
- ``migrate begin`` / ``restore begin`` are XML filters: they print the XML refitted to this
  host (the input bytes when it already fits). They fail open: on a ``HugexmlError`` they
  print nothing, which libvirt reads as "unchanged", and ``prepare`` (which runs next, with
  the same XML) is the gate that explains what does not fit. A programming error keeps its
  traceback and exits 1, which aborts the restore/migration (the save image or the source
  guest survives).
- Anything else: exit 0 without reading stdin (libvirt ignores EPIPE on the XML pipe).

The hook never calls libvirt and never imports libvirt-python (the daemon is waiting on it).
"""
from __future__ import annotations

import os
import time

# Not typing.TYPE_CHECKING: importing typing costs ~10% of the no-op path (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

    from hugexml.alloc import Allocator
    from hugexml.config import Config
    from hugexml.host import HostGateway
    from hugexml.model import GuestId, HostInfo, Plan
    from hugexml.root import HostRoot

    GatewayFactory = Callable[[HostRoot], HostGateway]

# What a domain XML must contain to need hugepages: <memoryBacking><hugepages> or a memory
# device's <source><pagesize>. libvirt formats its XML itself, without prefixes.
HUGEPAGE_MARKERS = (b"<hugepages", b"<pagesize")
LEDGER_FILE = "ledger.json"  # hugexml.ledger.LEDGER_FILE (not imported: it loads json)
SYSLOG_ADDRESS = "/dev/log"
READ_LIMIT_BYTES = 16 * 1024 * 1024  # == hugexml.xmlsafe.MAX_XML_BYTES (a test checks)


def mentions_hugepages(data: bytes) -> bool:
    return any(marker in data for marker in HUGEPAGE_MARKERS)


def domain_uuid(data: bytes) -> Optional[str]:
    """The domain's <uuid> by a bytes search: libvirt writes it before any nested element.
    Every hook operation keys the guest by this same function, so the ledger key agrees."""
    start = data.find(b"<uuid>")
    if start < 0:
        return None
    end = data.find(b"</uuid>", start, start + 100)
    text = data[start + 6:end].strip().decode("ascii", "replace") if end > 0 else ""
    return text if len(text) in (32, 36) else None


class Call:
    """One hook invocation: arguments, streams, lazily built collaborators, a log."""

    def __init__(self, argv: list[str], stdin: Any, stdout: Any, stderr: Any,
                 make_gateway: Optional[GatewayFactory]) -> None:
        from hugexml.root import HostRoot, config_from_env, state_dir_from_env

        self.name, self.op, self.subop = [*argv[1:4], "", "", ""][:3]
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.root = HostRoot.from_env()
        self.state_dir = state_dir_from_env()
        self.config_path = config_from_env()
        self.config_explicit = bool(os.environ.get("HUGEXML_CONFIG"))
        self.started = time.monotonic()
        self.records: list[str] = []
        self._make_gateway = make_gateway
        self._data: Optional[bytes] = None
        self._config: Optional[Config] = None

    # --- input ----------------------------------------------------------------------
    def xml(self) -> bytes:
        """stdin, bounded like hugexml.xmlsafe.read_limited (not imported: it loads typing)."""
        if self._data is None:
            data = bytes(self.stdin.read(READ_LIMIT_BYTES + 1))
            if len(data) > READ_LIMIT_BYTES:
                from hugexml.errors import InvalidXML

                raise InvalidXML(source=f"domain '{self.name}' XML",
                                 reason=f"larger than {READ_LIMIT_BYTES >> 20} MiB")
            self._data = data
        return self._data

    def guest(self) -> GuestId:
        from hugexml.model import GuestId

        return GuestId(self.name, domain_uuid(self.xml()))

    def ledger_mentions_guest(self) -> bool:
        """Cheap pre-check before taking the lock: does the ledger name this guest at all?
        (its uuid, the ledger key, or its name; a byte search, no json)."""
        try:
            with open(os.path.join(self.state_dir, LEDGER_FILE), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return False
        except OSError:
            return True  # let the allocator report what is wrong
        uuid = domain_uuid(self.xml())
        return (uuid is not None and uuid.lower().encode() in raw) or (
            f'"{self.name}"'.encode("utf-8", "replace") in raw)

    # --- collaborators --------------------------------------------------------------
    def config(self) -> Config:
        if self._config is None:
            from hugexml.config import load_config

            self._config = load_config(self.config_path, self.config_explicit)
        return self._config

    def host_info(self) -> HostInfo:
        from hugexml.hostinfo import read_host_info

        return read_host_info(self.root)

    def allocator(self) -> Allocator:
        from hugexml.alloc import Allocator

        if self._make_gateway is not None:
            gateway = self._make_gateway(self.root)
        else:
            from hugexml.host import HostGateway

            gateway = HostGateway(self.root)
        return Allocator(gateway, self.state_dir, self.config())

    # --- logging --------------------------------------------------------------------
    def log(self, text: str) -> None:
        self.records.append(text)

    def flush_log(self, error: bool, exit_code: int) -> None:
        """Send the records where ``[hook] log`` says (default: syslog, ``/dev/log``).

        A successful call prints nothing on stderr: libvirt keeps a hook's stderr in its
        debug log and quotes it in errors, and an operator who reads it there should only
        ever find failures. So when syslog is not listening (no ``/dev/log``: a container, a
        host without journald/rsyslog) a success record is dropped, and a failure record
        goes to stderr unless the hook exits non-zero (then the caller's one line is
        already there and is all libvirt will show). ``log = stderr`` prints every record.
        """
        if not self.records:
            return
        try:
            mode = self.config().hook_log
        except Exception:  # a broken config was already reported by the handler
            mode = "syslog"
        if mode == "none":
            return
        took_ms = (time.monotonic() - self.started) * 1000.0
        lines = [f"domain '{self.name}' {self.op} {self.subop}: {r} ({took_ms:.0f} ms)"
                 for r in self.records]
        if mode == "syslog":
            if _syslog(lines, error=error) or not error or exit_code != 0:
                return
        for line in lines:
            print(f"hugexml: {line}", file=self.stderr)


def _syslog(lines: list[str], error: bool) -> bool:
    """RFC 3164 datagrams to /dev/log (facility daemon). False when nobody listens."""
    import socket

    priority = 3 * 8 + (3 if error else 6)  # daemon.err / daemon.info
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for line in lines:
                sock.sendto(f"<{priority}>hugexml[{os.getpid()}]: {line}".encode(),
                            SYSLOG_ADDRESS)
    except OSError:
        return False
    return True


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
    """Each file-backed size needs a hugetlbfs mount the running daemon knows about.

    A mount made now does not save this start (libvirt scans mounts at daemon start): when
    none exists, hugexml.daemon mounts one for the next daemon start, and the start fails
    with the line that says to restart the daemon, or to use memfd, which needs no mount.
    """
    sizes = plan.file_backed_sizes_kib
    if not sizes:
        return
    from hugexml.daemon import mount_problems
    from hugexml.errors import MountMissing

    problems = mount_problems(call.root, call.state_dir, sizes, mount_missing=True)
    if problems:
        raise MountMissing(domain=plan.domain, reason=problems[0])


def _prepare(call: Call) -> int:
    data = call.xml()
    if not mentions_hugepages(data):
        return 0
    from hugexml.plan import plan_xml

    # With a host, the plan itself rejects page sizes and nodes this host lacks.
    plan = plan_xml(data, call.host_info(), f"domain '{call.name}' XML")
    if not plan.hugepages:
        return 0
    _check_mounts(call, plan)
    added = call.allocator().reserve(plan, call.guest())
    call.log(f"demand {_fmt_demand(plan)}; {_fmt_counts(added)}; claim pending")
    return 0


def _started(call: Call) -> int:
    if call.ledger_mentions_guest():
        call.allocator().settle(call.guest())
        call.log("claim active")
    return 0


def _release(call: Call) -> int:
    if call.ledger_mentions_guest():
        given = call.allocator().release(call.guest())
        call.log(_fmt_counts({k: v for k, v in given.items() if k != "guest"}))
    return 0


def _reconnect(call: Call) -> int:
    if call.ledger_mentions_guest():
        guest = call.guest()
        allocator = call.allocator()
        result = allocator.reconcile(guest)
        allocator.settle(guest)  # the guest is running: its claim is active
        call.log(f"reconciled {_fmt_counts(result)}; claim active")
    return 0


def _filter(call: Call) -> int:
    """Refit page sizes and node bindings to this host, byte-exact elsewhere
    (hugexml.refit). A file-backed size counts only when the running daemon has a
    hugetlbfs mount of it (hugexml.daemon.libvirt_visible_sizes); the memory source itself
    is never changed (libvirt's restore ABI check rejects a different source)."""
    data = call.xml()
    out = data
    if mentions_hugepages(data):
        from hugexml.daemon import libvirt_visible_sizes
        from hugexml.rewrite import refit_for_host

        result = refit_for_host(data, call.host_info(),
                                libvirt_visible_sizes(call.root, call.state_dir),
                                f"domain '{call.name}' XML")
        if result.changed:
            out = result.data
            call.log("refitted: " + "; ".join(result.notes))
    call.stdout.write(out)
    call.stdout.flush()
    return 0


# (op, subop) -> (handler, exit code when it raises a HugexmlError)
DISPATCH: dict[tuple[str, str], tuple[Callable[[Call], int], int]] = {
    ("prepare", "begin"): (_prepare, 1),
    ("started", "begin"): (_started, 0),
    ("release", "end"): (_release, 1),  # libvirt only logs a failing release
    ("reconnect", "begin"): (_reconnect, 0),
    ("migrate", "begin"): (_filter, 0),
    ("restore", "begin"): (_filter, 0),
}


def main(argv: list[str], stdin: Any, stdout: Any, stderr: Any,
         make_gateway: Optional[GatewayFactory] = None) -> int:
    """Run one hook call. ``stdin``/``stdout`` are binary, ``stderr`` is text.

    ``make_gateway`` builds the HostGateway from the HostRoot (tests inject a fake kernel).
    """
    entry = DISPATCH.get(tuple(argv[2:4]))  # type: ignore[arg-type]
    if entry is None:
        return 0
    handler, error_exit = entry
    call = Call(argv, stdin, stdout, stderr, make_gateway)
    try:
        code = handler(call)
    except Exception as exc:
        from hugexml.errors import HugexmlError

        if not isinstance(exc, HugexmlError):
            raise
        call.records = [f"failed: {exc}"]
        if error_exit:
            print(f"hugexml: {exc}", file=stderr)
        call.flush_log(error=True, exit_code=error_exit)
        return error_exit
    call.flush_log(error=False, exit_code=code)
    return code


FILTERS = (("migrate", "begin"), ("restore", "begin"))


def chain(argv: list[str], stdin: Any, stdout: Any, stderr: Any, original: str) -> int:
    """The legacy single-file hook: run the admin's original hook first, then hugexml.

    The original gets the same arguments and XML. Its non-zero exit stops a start before
    hugexml allocates anything; ``release end`` runs hugexml whatever the original said.
    For the XML filters the original's output (when not empty) is what hugexml refits.
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
