"""``hugexml doctor``: one check a line, ok / warn / fail / skip, each problem with its fix.

Read-only: nothing here writes to the host (the ledger is read, never reconciled). Guests'
needs come from libvirt's defined domains when libvirt-python can connect (never from the
hook), or from XML passed in by the caller; a check whose problem would stop such a guest
from starting is a failure, otherwise a warning. Exit code: 2 with a failure, 1 with a
warning, else 0.
"""
from __future__ import annotations

import os

from hugexml.core.errors import HugexmlError
from hugexml.core.root import HostRoot
from hugexml.core.units import format_kib
from hugexml.system.checks import FAIL, OK, SKIP, WARN, Check

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional, Union

    from hugexml.core.config import Config
    from hugexml.host.gateway import Gateway
    from hugexml.system.autostart import Guest, Skipped

G1 = 1 << 20
HOOKS = ("etc/libvirt/hooks/qemu.d/hugexml", "etc/libvirt/hooks/qemu")


class Doctor:
    """Collaborators are injectable: ``daemons`` (hugexml.system.daemon.Daemon list), ``gateway``
    (a ``hugexml.host.gateway.Gateway``: the HostGateway, or the tests' fake kernel), ``domains``
    (list of (name, xml bytes)) or None for libvirt, ``planner`` (hugexml.xml.domxml.plan_xml's
    signature: (xml, host, source) -> Plan)."""

    def __init__(self, root: HostRoot, state_dir: str, *, daemons: Optional[list[Any]] = None,
                 gateway: Optional[Gateway] = None,
                 domains: Optional[list[tuple[str, bytes]]] = None,
                 libvirt_uri: str = "qemu:///system", planner: Any = None,
                 config_path: Optional[str] = None, config_explicit: bool = False) -> None:
        from hugexml.host.hostinfo import read_host_info
        from hugexml.system import daemon as dm

        self.root, self.state_dir, self.uri = root, state_dir, libvirt_uri
        self.host = read_host_info(root)
        self.daemons = dm.find_daemons(root) if daemons is None else daemons
        self._gateway, self._domains, self._planner = gateway, domains, planner
        self.config_path, self.config_explicit = config_path, config_explicit
        self.needs: dict[int, set[str]] = {}        # page size -> guests that need it
        self.file_needs: dict[int, set[str]] = {}   # ... as hugetlbfs files (a mount)
        self._autostart: Optional[tuple[list[Guest], list[Skipped]]] = None

    def gateway(self) -> Gateway:
        if self._gateway is None:
            from hugexml.host.sysfs import HostGateway

            self._gateway = HostGateway(self.root)
        return self._gateway

    def config(self) -> Config:
        """hugexml.conf as the allocator reads it (the defaults without a config path)."""
        from hugexml.core.config import Config, load_config

        return (Config() if self.config_path is None
                else load_config(self.config_path, self.config_explicit))

    def autostart(self) -> tuple[list[Guest], list[Skipped]]:
        """The autostart domains read as files and planned (hugexml.system.autostart), once."""
        if self._autostart is None:
            from hugexml.system.autostart import plan_autostart

            self._autostart = plan_autostart(self.root, self.host)
        return self._autostart

    def run(self) -> list[Check]:
        from hugexml.system import doctor_boot

        guests = self._guarded("guests", self.check_guests)
        checks = [self._guarded(n, f) for n, f in (
            ("cpu-1g", self.check_cpu), ("default-size", self.check_default_size),
            ("pools", self.check_pools), ("boot-reserve", self.check_boot_reserve),
            ("mounts", self.check_mounts),
            ("qemu.conf", self.check_qemu_conf), ("stale-daemon", self.check_stale_daemon),
            ("hook", self.check_hook), ("ledger", self.check_ledger), ("kept", self.check_kept),
            ("thp", self.check_thp),
            ("fragmentation", self.check_fragmentation),
            ("autostart", lambda: doctor_boot.check_autostart(self)),
            ("hugetlb-cma", lambda: doctor_boot.check_hugetlb_cma(self)))]
        return [*(c for group in checks for c in group), *guests]

    def _guarded(self, name: str, fn: Callable[[], Union[Check, list[Check]]]) -> list[Check]:
        try:
            result = fn()
        except HugexmlError as exc:
            return [Check(name, FAIL, str(exc))]
        return result if isinstance(result, list) else [result]

    def _who(self, size_kib: int, file_only: bool = False) -> str:
        names = sorted((self.file_needs if file_only else self.needs).get(size_kib, ()))
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    # --- checks ------------------------------------------------------------------------
    def check_cpu(self) -> Check:
        flags = _cpu_flags(self.root)
        if flags is None:
            return Check("cpu-1g", SKIP, "no flags line in proc/cpuinfo (not x86?)")
        if "pdpe1gb" in flags:
            return Check("cpu-1g", OK, "CPU supports 1G pages (pdpe1gb)")
        if self.needs.get(G1):
            return Check("cpu-1g", FAIL, f"guest {self._who(G1)} needs 1G pages but the CPU has "
                         "no pdpe1gb", "use 2M pages: hugexml rewrite DOMAIN.xml --page-size 2M, "
                         "or run the guest on a host whose CPU has pdpe1gb")
        return Check("cpu-1g", OK, "CPU has no pdpe1gb: 1G pages are impossible here "
                     "(no guest asks for them)")

    def check_default_size(self) -> Check:
        from hugexml.system.doctor_boot import check_default_size

        return check_default_size(self)

    def check_pools(self) -> Check:
        gw = self.gateway()
        parts = []
        for node in self.host.nodes:
            sizes = []
            for size_kib in self.host.page_sizes_kib:
                pool = gw.node_pool(node, size_kib)
                sizes.append(f"{format_kib(size_kib)} {pool.free}/{pool.nr} free")
            parts.append(f"node {node}: {', '.join(sizes) or 'no hugepage sizes'}")
        return Check("pools", OK, "; ".join(parts))

    def check_boot_reserve(self) -> Check:
        from hugexml.system.doctor_boot import check_boot_reserve

        return check_boot_reserve(self)

    def check_mounts(self) -> Check:
        from hugexml.system.mounts import list_mounts, mount_for

        mounts = list_mounts(self.root)
        have = [f"{format_kib(m.page_size_kib)} at {m.path}" for m in mounts]
        missing = [s for s in self.host.page_sizes_kib if mount_for(mounts, s) is None]
        msg = f"hugetlbfs: {', '.join(have) or 'none'}"
        if not missing:
            return Check("mounts", OK, msg)
        sizes = ",".join(format_kib(s) for s in missing)
        fix = (f"hugexml mounts ensure --size {sizes} --persist, then restart "
               f"{self._daemon_name()} (it sees mounts only at start)")
        needed = [s for s in missing if self.file_needs.get(s)]
        if needed:
            who = "; ".join(f"{format_kib(s)} for {self._who(s, True)}" for s in needed)
            return Check("mounts", FAIL, f"{msg}; no mount for {who}", fix)
        return Check("mounts", WARN, f"{msg}; no mount for {sizes} (file-backed guests of "
                     "that size cannot start; memfd ones can)", fix)

    def check_qemu_conf(self) -> Check:
        from hugexml.system import daemon as dm
        from hugexml.system.mounts import list_mounts

        setting = dm.hugetlbfs_mount_setting(self.root)
        if setting is None:
            return Check("qemu.conf", OK, "hugetlbfs_mount unset: libvirt uses every mount")
        mounts = list_mounts(self.root)
        paths = {m.path: m for m in mounts}
        for path in setting:
            if path not in paths:
                return Check("qemu.conf", FAIL, f"hugetlbfs_mount lists {path}: libvirtd will "
                             f"refuse to start: not a hugetlbfs mount: '{path}'",
                             f"mount it (hugexml mounts ensure --size SIZE --path {path} "
                             "--persist) or remove it from hugetlbfs_mount")
        left_out = sorted({m.page_size_kib for m in mounts if m.path not in setting}
                          - {paths[p].page_size_kib for p in setting})
        if left_out:
            sizes = ", ".join(format_kib(s) for s in left_out)
            needed = [s for s in left_out if self.file_needs.get(s)]
            fix = f"add the {sizes} mount to hugetlbfs_mount and restart {self._daemon_name()}"
            status = FAIL if needed else WARN
            who = f" (needed by {self._who(needed[0], True)})" if needed else ""
            return Check("qemu.conf", status, f"hugetlbfs_mount leaves out the mounted "
                         f"{sizes} pages{who}", fix)
        return Check("qemu.conf", OK, f"hugetlbfs_mount = {', '.join(setting)}")

    def check_stale_daemon(self) -> Check:
        from hugexml.system import daemon as dm
        from hugexml.system.mounts import list_mounts

        if not self.daemons:
            return Check("stale-daemon", OK, "no libvirt daemon running: its next start sees "
                         "every mount")
        mounts = dm.allowed_mounts(list_mounts(self.root), dm.hugetlbfs_mount_setting(self.root))
        problems = []
        for d in self.daemons:
            for size_kib in sorted({m.page_size_kib for m in mounts}):
                of_size = [m for m in mounts if m.page_size_kib == size_kib]
                if not any(dm.judge(self.root, self.state_dir, m, d).visible for m in of_size):
                    problems.append((d, of_size[0], size_kib))
        conf = self.root.path(dm.QEMU_CONF)
        changed = [d for d in self.daemons if _mtime(conf) > d.started + dm.START_SLACK_S]
        if problems:
            d, mount, size_kib = problems[0]
            status = FAIL if any(self.file_needs.get(p[2]) for p in problems) else WARN
            return Check("stale-daemon", status, f"hugetlbfs {mount.path} "
                         f"({format_kib(size_kib)}) was mounted after {d.name} (pid {d.pid}) "
                         "started: it cannot use it", f"restart {d.name} so it sees it")
        if changed:
            d = changed[0]
            return Check("stale-daemon", WARN, f"{conf} changed after {d.name} (pid {d.pid}) "
                         "started", f"restart {d.name} to apply it")
        names = ", ".join(f"{d.name} (pid {d.pid})" for d in self.daemons)
        return Check("stale-daemon", OK, f"{names} sees every hugetlbfs mount")

    def check_hook(self) -> Check:
        found = [p for p in HOOKS if os.path.isfile(self.root.path(p))
                 and b"hugexml" in _head(self.root.path(p))]
        if not found:
            return Check("hook", WARN, "the hugexml qemu hook is not installed: guests get no "
                         "pages allocated, no mount check", "hugexml install-hook")
        path = self.root.path(found[0])
        if not os.access(path, os.X_OK):
            return Check("hook", FAIL, f"{path} is not executable: libvirt will not run it",
                         f"chmod 0755 {path}")
        # libvirt (virHookCheck, at daemon start) enables the qemu hooks when hooks/qemu is
        # executable or hooks/qemu.d holds an executable file; later it runs all of them.
        enablers = [path]
        dropin_dir = self.root.path("etc/libvirt/hooks/qemu.d")
        if found[0] == HOOKS[0]:
            legacy = self.root.path(HOOKS[1])
            others = [os.path.join(dropin_dir, n) for n in _listdir(dropin_dir)]
            enablers = [p for p in [legacy, *others] if os.path.isfile(p)
                        and os.access(p, os.X_OK)]
        oldest = min((os.stat(p).st_ctime for p in enablers), default=float("inf"))
        late = [d for d in self.daemons if oldest > d.started]
        if late:
            d = late[0]
            return Check("hook", WARN, f"{path} was installed after {d.name} (pid {d.pid}) "
                         "started, and no other qemu hook was there: libvirt discovers hooks "
                         "only at start", f"restart {d.name}")
        return Check("hook", OK, f"{path} installed and executable"
                     + (", discovered by the running daemon" if self.daemons else ""))

    def check_ledger(self) -> Check:
        """The state store (guest records, host journal) read as status reads it: files a
        change would quarantine, files already quarantined, books that differ from the
        kernel, an unfinished pool change."""
        from hugexml.alloc.ledger import Store
        from hugexml.alloc.txn import read_pool
        from hugexml.core.errors import printable

        if not os.path.isdir(self.state_dir):
            return Check("ledger", OK, f"{self.state_dir} does not exist yet: hugexml has "
                         "changed no pool since boot")
        gateway = self.gateway()
        store = Store(self.state_dir, boot_id=gateway.boot_id())
        state = store.read()
        off = []
        for (node, size_kib), book in sorted(state.journal.pools.items()):
            now = read_pool(gateway, node, size_kib).persistent
            if now != book.expected:
                off.append(f"node {node} {format_kib(size_kib)}: kernel {now}, books "
                           f"{book.expected}")
        if state.journal.intent is not None:
            off.append("an interrupted pool change is pending")
        off.extend(printable(n) for n in state.notes)
        quarantined = store.quarantined()
        if quarantined:
            off.append(f"{len(quarantined)} file(s) in {store.quarantine_dir} (newest: "
                       f"{printable(quarantined[-1]['why'])})")
        if off:
            return Check("ledger", WARN, "; ".join(off),
                         "hugexml reconcile (quarantined files are kept for inspection; "
                         "remove them when done)")
        return Check("ledger", OK, f"state matches the kernel ({len(state.guests)} guests "
                     "with a claim)")

    def check_kept(self) -> Check:
        """Pages kept for restarts, per node and size, with the time their window ends."""
        import time

        from hugexml.alloc.ledger import Store

        if not os.path.isdir(self.state_dir):
            return Check("kept", OK, "no pages kept for restarts")
        gateway = self.gateway()
        state = Store(self.state_dir, boot_id=gateway.boot_id()).read()
        now, parts = time.time(), []
        for (node, size_kib), book in sorted(state.journal.pools.items()):
            for lot in book.kept:
                end = ("for ever" if lot.until is None
                       else f"{max(0.0, lot.until - now) / 60:.0f} min left")
                parts.append(f"node {node} {format_kib(size_kib)}: {lot.pages} ({end})")
        return Check("kept", OK, ("kept for restarts: " + "; ".join(parts)) if parts
                     else "no pages kept for restarts")

    def check_thp(self) -> Check:
        mode = _bracketed(self.root.path("sys/kernel/mm/transparent_hugepage/enabled"))
        defrag = _bracketed(self.root.path("sys/kernel/mm/transparent_hugepage/defrag"))
        if mode is None:
            return Check("thp", SKIP, "no transparent_hugepage in sysfs")
        msg = f"THP enabled={mode} defrag={defrag or '?'}"
        if mode == "always" and defrag == "always":
            return Check("thp", WARN, msg + ": every THP fault may stall in direct compaction",
                         "echo madvise > /sys/kernel/mm/transparent_hugepage/defrag")
        return Check("thp", OK, msg)

    def check_fragmentation(self) -> Check:
        """Pages each node could give now (buddyinfo). A page above the largest buddy order
        (1G on x86: blocks are at most 4M) never shows there: its bound is MemFree."""
        from hugexml.alloc.txn import predicted_allocatable

        gw = self.gateway()
        info = gw.buddyinfo()
        parts, poor = [], []
        for node in self.host.nodes:
            row = []
            for size_kib in self.host.page_sizes_kib:
                pages, seen = predicted_allocatable(gw, node, size_kib, info)
                row.append(f"{pages} x {format_kib(size_kib)}" if seen else
                           f"at most {pages} x {format_kib(size_kib)} after compaction")
                if size_kib == G1 and pages == 0:
                    poor.append(node)
            parts.append(f"node {node} could give {', '.join(row)} now")
        if poor and self.needs.get(G1):
            return Check("fragmentation", WARN, "; ".join(parts),
                         f"reserve 1G pages at boot: hugexml boot --reserve 1G:N@{poor[0]} --apply")
        return Check("fragmentation", OK, "; ".join(parts))

    def check_guests(self) -> Check:
        domains = self._domains
        if domains is None:
            domains = _libvirt_domains(self.uri)
            if isinstance(domains, str):
                return Check("guests", SKIP, domains)
        from hugexml.system.daemon import libvirt_visible_sizes

        planner: Any = self._planner
        if planner is None:
            import importlib

            planner = importlib.import_module("hugexml.xml.domxml").plan_xml

        problems = []
        for name, xml in domains:
            try:
                plan = planner(xml, self.host, f"domain '{name}'")
            except HugexmlError as exc:
                problems.append(str(exc))
                continue
            for c in plan.consumers:
                if c.page_size_kib is not None:
                    self.needs.setdefault(c.page_size_kib, set()).add(plan.domain)
            for size_kib in plan.file_backed_sizes_kib:
                self.file_needs.setdefault(size_kib, set()).add(plan.domain)
        visible = libvirt_visible_sizes(self.root, self.state_dir, daemons=self.daemons)
        for size_kib in sorted(self.file_needs):
            if size_kib in self.host.page_sizes_kib and size_kib not in visible:
                problems.append(f"{self._who(size_kib, True)}: no {format_kib(size_kib)} "
                                "hugetlbfs mount libvirt can use")
        lacking = sorted(set(self.needs) - set(self.host.page_sizes_kib))
        for size_kib in lacking:
            problems.append(f"{self._who(size_kib)}: the host has no {format_kib(size_kib)} pages")
        if problems:
            return Check("guests", FAIL, "; ".join(problems[:4]), "hugexml rewrite the domain "
                         "(--page-size auto) or fix the host as the checks above say")
        return Check("guests", OK, f"{len(domains)} defined domains, "
                     f"{sum(1 for _ in self.needs)} hugepage sizes needed, all available")

    def _daemon_name(self) -> str:
        return self.daemons[0].name if self.daemons else "libvirtd"


# --- small readers ---------------------------------------------------------------------
def _cpu_flags(root: HostRoot) -> Optional[set[str]]:
    try:
        with open(root.path("proc/cpuinfo"), encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def _bracketed(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read(256)
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text.strip() or None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(4096)
    except OSError:
        return b""


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _libvirt_domains(uri: str) -> Any:
    """[(name, xml)] of the defined domains, or a reason string to skip."""
    try:
        import libvirt
    except ImportError:
        return "libvirt-python is not importable: guests not checked"
    try:
        libvirt.registerErrorHandler(lambda *_: None, None)
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        return f"cannot connect to {uri}: {' '.join(str(exc).split())[:160]}"
    try:
        return [(d.name(), d.XMLDesc(0).encode()) for d in conn.listAllDomains()]
    finally:
        conn.close()
