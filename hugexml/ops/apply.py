"""``hugexml apply``: rewrite defined guests through libvirt-python, with backups and undo.

For each domain: read its persistent XML (inactive, with secrets, as ``virsh dumpxml
--inactive --security-info``), rewrite ``<memoryBacking>`` with ``hugexml.xml.rewrite`` (the
same code as ``hugexml rewrite``; ``auto`` judged by one snapshot of what the host can
supply now, ``hugexml.alloc.supply``), show the diff, save the old XML under the backup dir
(atomic, mode 0600: it can hold secrets), then ``defineXML`` the new one. Nothing is
defined without a backup. A running guest keeps running; the new XML applies at its next
start. ``undo`` redefines the newest backup and marks it used, so undos walk back in time.

libvirt-python is imported lazily (standalone command only; the hook never calls libvirt).
The connection is injectable: tests pass a fake. Errors per guest are one line each.
"""

from __future__ import annotations

import difflib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from hugexml.core.errors import HostError, HugexmlError, InvalidInput, LibvirtError
from hugexml.core.model import HostInfo, Plan
from hugexml.planning.tally import HostSupply

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from hugexml.planning.pagesize import PageSizeChoice

DEFAULT_BACKUP_DIR = "/var/lib/hugexml/backups"
# libvirt's stable ABI values (libvirt-domain.h), so fakes need not import libvirt.
VIR_DOMAIN_XML_SECURE = 1
VIR_DOMAIN_XML_INACTIVE = 2
VIR_CONNECT_LIST_DOMAINS_PERSISTENT = 4
USED_SUFFIX = ".undone"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]")
_BACKUP = re.compile(
    r"(?P<name>.+)-(?P<uuid>[0-9a-fA-F-]{36})-(?P<stamp>\d{8}T\d{6}\.\d{6}Z)\.xml\Z"
)

FitCheck = Callable[[Plan, HostInfo], Optional[str]]


@dataclass
class Outcome:
    name: str
    status: str  # changed | unchanged | would-change | restored | failed | refused
    message: str
    diff: str = ""
    backup: Optional[str] = None
    running: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "refused")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "diff": self.diff,
            "backup": self.backup,
            "running": self.running,
            "notes": list(self.notes),
        }


def connect(uri: Optional[str]) -> tuple[Any, type[BaseException]]:
    """A read-write libvirt connection and libvirt's exception class."""
    try:
        import libvirt
    except ImportError:
        raise LibvirtError(
            reason="the libvirt Python bindings are not installed "
            "(install python3-libvirt or 'pip install libvirt-python')"
        ) from None
    # libvirt prints errors to stderr from its default handler; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open(uri), libvirt.libvirtError
    except libvirt.libvirtError as exc:
        raise LibvirtError(
            reason=f"cannot connect to {uri or 'the default URI'}: {_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException) -> str:
    getter = getattr(exc, "get_error_message", None)
    text = getter() if callable(getter) else None
    return " ".join(str(text or exc).split()) or exc.__class__.__name__


def unified_diff(old: str, new: str, name: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{name} (defined)",
            tofile=f"{name} (hugexml)",
        )
    )


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """A backup: written whole, never over an existing one."""
    from hugexml.core.fsutil import write_atomic as _write

    try:
        _write(path, data, mode=mode, exclusive=True, make_dirs=True, dir_mode=0o700)
    except OSError as exc:
        raise HostError(
            path=path, reason=f"cannot write the backup: {exc.strerror or exc}"
        ) from exc


class Applier:
    def __init__(
        self,
        conn: Any,
        libvirt_error: type[BaseException],
        host: HostInfo,
        *,
        backup_dir: str = DEFAULT_BACKUP_DIR,
        dry_run: bool = False,
        fit_check: Optional[FitCheck] = None,
        clock: Callable[[], float] = time.time,
        supply: Optional[HostSupply] = None,
        supply_notes: Sequence[str] = (),
    ) -> None:
        self.conn = conn
        self.libvirt_error = libvirt_error
        self.host = host
        self.backup_dir = backup_dir
        self.dry_run = dry_run
        self.fit_check = fit_check
        self.clock = clock
        # what the host can supply now, for ``auto`` (one snapshot for every guest: each is
        # judged alone, its own pages counting for it), and what reading it could not see
        self.supply = supply
        self.supply_notes = list(supply_notes)

    # --- libvirt calls, each error one line ----------------------------------------------
    def _call(self, name: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.libvirt_error as exc:
            raise LibvirtError(reason=f"domain '{name}': {what}: {_one_line(exc)}") from None

    def persistent_names(self) -> list[str]:
        try:
            doms = self.conn.listAllDomains(VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
        except self.libvirt_error as exc:
            raise LibvirtError(reason=f"cannot list domains: {_one_line(exc)}") from None
        return sorted(d.name() for d in doms)

    def _inactive_xml(self, name: str) -> tuple[Any, str]:
        dom = self._call(name, "lookup", self.conn.lookupByName, name)
        if not self._call(name, "isPersistent", dom.isPersistent):
            raise InvalidInput(
                reason=f"domain '{name}' is transient: there is no definition to rewrite"
            )
        xml = self._call(
            name, "XMLDesc", dom.XMLDesc, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE
        )
        return dom, xml

    # --- backups -----------------------------------------------------------------------
    def backup_path(self, name: str, uuid: str) -> str:
        now = self.clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        micros = int(now * 1_000_000) % 1_000_000
        safe = _SAFE_NAME.sub("_", name)
        return os.path.join(self.backup_dir, f"{safe}-{uuid}-{stamp}.{micros:06d}Z.xml")

    def backups(self, name: str, uuid: Optional[str] = None) -> list[str]:
        """Unused backups of a guest, oldest first."""
        safe = _SAFE_NAME.sub("_", name)
        try:
            entries = os.listdir(self.backup_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostError(path=self.backup_dir, reason=exc.strerror or str(exc)) from exc
        found = []
        for entry in entries:
            m = _BACKUP.match(entry)
            if m and m.group("name") == safe and (uuid is None or m.group("uuid") == uuid):
                found.append((m.group("stamp"), os.path.join(self.backup_dir, entry)))
        return [path for _stamp, path in sorted(found)]

    # --- apply -------------------------------------------------------------------------
    def apply(
        self,
        name: str,
        page_size: PageSizeChoice,
        memfd: bool = False,
        refuse_unfit: bool = False,
        drop_ondemand: bool = False,
    ) -> Outcome:
        try:
            return self._apply(name, page_size, memfd, refuse_unfit, drop_ondemand)
        except HugexmlError as exc:
            return Outcome(name, "failed", str(exc))

    def _apply(
        self, name: str, page_size: PageSizeChoice, memfd: bool, refuse_unfit: bool,
        drop_ondemand: bool
    ) -> Outcome:
        from hugexml.planning.plan import make_plan
        from hugexml.xml.domxml import load_domain
        from hugexml.xml.rewrite import rewrite_xml

        dom, old = self._inactive_xml(name)
        old_bytes = old.encode("utf-8")
        result = rewrite_xml(
            old_bytes,
            page_size=page_size,
            host=self.host,
            cells=None,
            memfd=memfd,
            drop_ondemand=drop_ondemand,
            source=f"domain '{name}'",
            supply=self.supply,
        )
        running = bool(self._call(name, "isActive", dom.isActive))
        from hugexml.planning.pagesize import Pick

        notes = (self.supply_notes if page_size is Pick.AUTO else []) + list(result.notes)
        if not result.changed:
            return Outcome(
                name,
                "unchanged",
                f"{name}: already as asked, not redefined",
                running=running,
                notes=notes,
            )
        new = result.data.decode("utf-8")
        plan = make_plan(load_domain(result.data, f"domain '{name}'"), self.host)
        if refuse_unfit and self.fit_check is not None:
            reason = self.fit_check(plan, self.host)
            if reason:
                return Outcome(
                    name,
                    "refused",
                    f"domain '{name}': refused: {reason}",
                    running=running,
                    notes=notes,
                )
        diff = unified_diff(old, new, name)
        if self.dry_run:
            return Outcome(
                name,
                "would-change",
                f"{name}: would be redefined (dry run)",
                diff=diff,
                running=running,
                notes=notes,
            )
        uuid = self._call(name, "UUIDString", dom.UUIDString)
        backup = self.backup_path(name, uuid)
        write_atomic(backup, old_bytes)
        self._call(name, "defineXML", self.conn.defineXML, new)
        message = f"{name}: redefined (backup {backup})"
        if running:
            message += "; it is running: the change takes effect at its next start"
        return Outcome(
            name, "changed", message, diff=diff, backup=backup, running=running, notes=notes
        )

    # --- undo --------------------------------------------------------------------------
    def undo(self, name: str) -> Outcome:
        try:
            return self._undo(name)
        except HugexmlError as exc:
            return Outcome(name, "failed", str(exc))

    def _undo(self, name: str) -> Outcome:
        dom, current = self._inactive_xml(name)
        uuid = self._call(name, "UUIDString", dom.UUIDString)
        found = self.backups(name, uuid)
        if not found:
            raise InvalidInput(reason=f"domain '{name}': no hugexml backup in {self.backup_dir}")
        path = found[-1]
        try:
            with open(path, "rb") as fh:
                old = fh.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HostError(path=path, reason=f"cannot read the backup: {exc}") from exc
        running = bool(self._call(name, "isActive", dom.isActive))
        diff = unified_diff(current, old, name)
        if self.dry_run:
            return Outcome(
                name,
                "would-change",
                f"{name}: would be restored from {path} (dry run)",
                diff=diff,
                backup=path,
                running=running,
            )
        self._call(name, "defineXML", self.conn.defineXML, old)
        try:
            os.rename(path, path + USED_SUFFIX)
        except OSError as exc:
            raise HostError(
                path=path, reason=f"restored, but cannot mark the backup used: {exc.strerror}"
            ) from exc
        message = f"{name}: restored from {path}"
        if running:
            message += "; it is running: the change takes effect at its next start"
        return Outcome(name, "restored", message, diff=diff, backup=path, running=running)


def summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    by: dict[str, list[str]] = {}
    for o in outcomes:
        by.setdefault(o.status, []).append(o.name)
    return {"total": len(outcomes), **{k: sorted(v) for k, v in sorted(by.items())}}


def summary_line(outcomes: Sequence[Outcome]) -> str:
    s = summary(outcomes)
    parts = []
    for status in ("changed", "restored", "would-change", "unchanged", "refused", "failed"):
        names = s.get(status, [])
        if names:
            shown = f" ({', '.join(names)})" if status in ("refused", "failed") else ""
            parts.append(f"{len(names)} {status}{shown}")
    return f"{len(outcomes)} domain(s): " + ", ".join(parts) if parts else "no domains"


def exit_code(outcomes: Sequence[Outcome]) -> int:
    return 0 if all(o.ok for o in outcomes) else 1


def capacity_fit_check(node_memtotal_kib: Callable[[int], Optional[int]]) -> FitCheck:
    """Refuse a plan whose hugepages could never fit: more than the memory of its nodes."""

    def check(plan: Plan, host: HostInfo) -> Optional[str]:
        from hugexml.core.units import format_kib, format_nodeset

        for item in plan.demand:
            nodes = item.host_nodes if item.host_nodes is not None else host.nodes
            known = [n for n in nodes if n in host.nodes]
            if not known:
                return (
                    f"its {format_kib(item.page_size_kib)} pages need host nodes "
                    f"{format_nodeset(nodes)}, which this host lacks"
                )
            total = [node_memtotal_kib(n) for n in known]
            if any(t is None for t in total):
                continue
            capacity_kib = sum(t for t in total if t is not None)
            need_kib = item.pages * item.page_size_kib
            if need_kib > capacity_kib:
                return (
                    f"needs {item.pages} x {format_kib(item.page_size_kib)} pages "
                    f"({need_kib} KiB) on node(s) {format_nodeset(known)}, which have "
                    f"{capacity_kib} KiB of memory in all"
                )
        return None

    return check
