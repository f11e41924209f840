"""The host gateway: every read and write of the kernel's hugepage pools, under a HostRoot.

One class, ``HostGateway``, reads the per-node and global pools, meminfo, buddyinfo and the
THP mode, and changes exactly one thing: a node's persistent pool, through its
``nr_hugepages`` or, where that cannot say it, ``nr_hugepages_mempolicy`` bound to the node
(``hugexml.host.mempolicy``) (plus the compaction and drop-caches triggers). Rules it keeps:

- every path is built through ``HostRoot`` (tests point it at a fake sysfs tree);
- every ``OSError`` becomes ``HostError(path=..., reason=...)`` raised ``from`` it;
- every write is read back: the kernel answers a pool write with success and may grant
  fewer pages (asked 30 x 1G, got 9). ``set_node_nr`` returns what the kernel HAS.
- it never computes a target: ``set_node_nr`` takes an absolute count that the caller (the
  allocator, under its lock) derived from the current value. It refuses negative counts and
  counts larger than the node's memory.

Reads and writes go through a tiny ``SysIO`` (real files by default) that the fake kernel in
``tests/fakekernel.py`` replaces. Only ``os`` and ``re`` are imported: the hook loads this.

Kernels without NUMA (no ``sys/devices/system/node``) have one node, 0, whose pool is the
global one.
"""
from __future__ import annotations

import errno as errno_mod
import os

from hugexml.core.errors import HostError, InvalidInput
from hugexml.core.lazyre import pattern
from hugexml.core.root import HostRoot
from hugexml.core.units import MAX_NODES, numbered
from hugexml.host.kernel import (
    GlobalPool,
    NodePool,
    counter,
    parse_buddyinfo,
    parse_meminfo,
    predict_allocatable,
    surplus_short,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, Optional

NODE_BASE = "sys/devices/system/node"
GLOBAL_BASE = "sys/kernel/mm/hugepages"
THP_ENABLED = "sys/kernel/mm/transparent_hugepage/enabled"
BUDDYINFO = "proc/buddyinfo"
MEMINFO = "proc/meminfo"
DROP_CACHES = "proc/sys/vm/drop_caches"
BOOT_ID = "proc/sys/kernel/random/boot_id"
MEMPOLICY_FILE = "nr_hugepages_mempolicy"  # under GLOBAL_BASE/hugepages-<N>kB
# Largest hugepage size any kernel offers (16 GiB on ppc64); anything larger is bad input.
MAX_PAGE_KIB = 16 * 1024 * 1024
MAX_READ_BYTES = 1 << 20  # buddyinfo/meminfo are a few KiB; sysfs attributes < 4 KiB
DROP_CACHES_LEVELS = (1, 2, 3)
_THP_WORD = pattern(r"\[([a-z_+-]+)\]")


class SysIO:
    """Reads and writes small kernel files. Replace it to fake a kernel.

    Reads are unbuffered (sysfs attributes are generated on each read). Writes are ONE
    ``write(2)`` on a file opened write-only without O_CREAT/O_TRUNC: a sysfs store method
    sees the whole value at once, and a missing attribute fails instead of being created.
    """

    def read_text(self, path: str) -> str:
        with open(path, "rb", buffering=0) as fh:
            data = fh.read(MAX_READ_BYTES)
        return data.decode("ascii", "replace")

    def write_text(self, path: str, text: str) -> None:
        data = text.encode("ascii")
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno_mod.EIO, f"short write ({written} of {len(data)} bytes)", path)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _check_node(node: int) -> int:
    if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < MAX_NODES:
        raise InvalidInput(reason=f"NUMA node {node!r} is out of range 0-{MAX_NODES - 1}")
    return node


def _check_size(size_kib: int) -> int:
    if (isinstance(size_kib, bool) or not isinstance(size_kib, int)
            or not 0 < size_kib <= MAX_PAGE_KIB):
        raise InvalidInput(reason=f"hugepage size {size_kib!r} KiB is out of range")
    return size_kib


class HostGateway:
    """Reads the kernel's hugepage pools and changes a node's pool; nothing else."""

    def __init__(self, root: HostRoot, io: Optional[SysIO] = None,
                 mempolicy: Optional[Callable[[Optional[tuple[int, ...]]], None]] = None,
                 ) -> None:
        self.root = root
        self.io = io if io is not None else SysIO()
        self._numa: Optional[bool] = None
        # Binds this thread's memory policy (a node tuple) or puts it back (None): injected,
        # else the io's own (a fake kernel's), else set_mempolicy(2) only on the real root
        # (memory_binder).
        self.mempolicy = mempolicy

    def __repr__(self) -> str:
        return f"HostGateway({self.root!r}, io={type(self.io).__name__})"

    # --- low level ------------------------------------------------------------------
    def _read(self, rel: str, what: str = "") -> str:
        path = self.root.path(rel)
        try:
            return self.io.read_text(path)
        except FileNotFoundError as exc:
            raise HostError(path=path, reason=f"{_reason(exc)}{what}", errno=exc.errno) from exc
        except OSError as exc:
            raise HostError(path=path, reason=_reason(exc), errno=exc.errno) from exc

    def _read_int(self, rel: str, what: str = "") -> int:
        text = self._read(rel, what)
        try:
            return counter(text.strip())
        except ValueError as exc:
            raise HostError(path=self.root.path(rel), reason=str(exc)) from None

    def _write(self, rel: str, text: str, what: str = "") -> None:
        path = self.root.path(rel)
        try:
            self.io.write_text(path, text)
        except FileNotFoundError as exc:
            raise HostError(path=path, reason=f"{_reason(exc)}{what}", errno=exc.errno) from exc
        except OSError as exc:
            raise HostError(path=path, reason=f"writing {text.strip()!r}: {_reason(exc)}",
                            errno=exc.errno) from exc

    def _listdir(self, rel: str) -> list[str]:
        path = self.root.path(rel)
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostError(path=path, reason=_reason(exc), errno=exc.errno) from exc

    @property
    def numa(self) -> bool:
        """True when the kernel has per-node sysfs (``sys/devices/system/node/node0``)."""
        if self._numa is None:
            self._numa = os.path.isdir(self.root.path(NODE_BASE, "node0"))
        return self._numa

    def _pool_rel(self, node: int, size_kib: int, name: str) -> str:
        _check_node(node)
        _check_size(size_kib)
        if self.numa:
            return f"{NODE_BASE}/node{node}/hugepages/hugepages-{size_kib}kB/{name}"
        if node != 0:
            raise HostError(path=self.root.path(NODE_BASE),
                            reason=f"no NUMA node {node}: this kernel has no NUMA sysfs")
        return f"{GLOBAL_BASE}/hugepages-{size_kib}kB/{name}"

    @staticmethod
    def _missing_pool(node: int, size_kib: int) -> str:
        return f" (no node {node} or no {size_kib} KiB pages on this host)"

    # --- reading --------------------------------------------------------------------
    def nodes(self) -> tuple[int, ...]:
        found = sorted(node for node in (numbered(name, "node")
                                         for name in self._listdir(NODE_BASE))
                       if node is not None)
        return tuple(found) if found else (0,)

    def page_sizes_kib(self) -> tuple[int, ...]:
        return tuple(sorted(size for size in (numbered(name, "hugepages-", "kB")
                                              for name in self._listdir(GLOBAL_BASE))
                            if size is not None))

    def node_pool(self, node: int, size_kib: int) -> NodePool:
        missing = self._missing_pool(node, size_kib)
        nr = self._read_int(self._pool_rel(node, size_kib, "nr_hugepages"), missing)
        free = self._read_int(self._pool_rel(node, size_kib, "free_hugepages"), missing)
        surplus = self._read_int(self._pool_rel(node, size_kib, "surplus_hugepages"), missing)
        return NodePool(nr=nr, free=free, surplus=surplus)

    def global_pool(self, size_kib: int) -> GlobalPool:
        _check_size(size_kib)
        base = f"{GLOBAL_BASE}/hugepages-{size_kib}kB/"
        missing = f" (no {size_kib} KiB pages on this host)"
        values = [self._read_int(base + name, missing) for name in (
            "nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
            "nr_overcommit_hugepages")]
        return GlobalPool(*values)

    def _parse_meminfo(self, rel: str, what: str = "") -> dict[str, int]:
        text = self._read(rel, what)
        try:
            return parse_meminfo(text)
        except ValueError as exc:
            raise HostError(path=self.root.path(rel), reason=str(exc)) from None

    def meminfo(self) -> dict[str, int]:
        """proc/meminfo as {key: kB} (``HugePages_*``: page counts)."""
        return self._parse_meminfo(MEMINFO)

    def node_meminfo(self, node: int) -> dict[str, int]:
        """A node's meminfo as {key: kB} (``HugePages_*``: counts of the default size)."""
        _check_node(node)
        if not self.numa:
            if node != 0:
                raise HostError(path=self.root.path(NODE_BASE),
                                reason=f"no NUMA node {node}: this kernel has no NUMA sysfs")
            return self.meminfo()
        return self._parse_meminfo(f"{NODE_BASE}/node{node}/meminfo",
                                   f" (no NUMA node {node} on this host)")

    def buddyinfo(self) -> dict[int, dict[str, list[int]]]:
        """{node: {zone: [free blocks of order 0, 1, ...]}} from proc/buddyinfo."""
        text = self._read(BUDDYINFO)
        try:
            return parse_buddyinfo(text)
        except ValueError as exc:
            raise HostError(path=self.root.path(BUDDYINFO), reason=str(exc)) from exc

    def thp_mode(self) -> Optional[str]:
        """The bracketed word of transparent_hugepage/enabled; None without THP."""
        try:
            text = self._read(THP_ENABLED)
        except HostError as exc:
            if exc.kwargs.get("errno") == errno_mod.ENOENT:
                return None
            raise
        m = _THP_WORD.search(text)
        return m.group(1) if m else None

    def boot_id(self) -> str:
        """This boot's id (``proc/sys/kernel/random/boot_id``), "" when unknown: state
        written under another boot id describes pools that no longer exist."""
        try:
            text = self.io.read_text(self.root.path(BOOT_ID)).strip()
        except OSError:
            return ""
        return text if len(text) <= 64 and text.isprintable() else ""

    def base_page_kib(self) -> int:
        """The base page size of the host (sysconf), 4 for a fake root."""
        if not self.root.is_real:
            return 4
        return int(os.sysconf("SC_PAGE_SIZE")) // 1024

    def allocatable_now(self, node: int, size_kib: int,
                        buddy: Optional[dict[int, dict[str, list[int]]]] = None) -> int:
        """Pages of ``size_kib`` the node's free buddy blocks could give without compaction
        (summed over its zones; 0 for pages above the largest buddy order, e.g. 1G)."""
        _check_node(node)
        info = self.buddyinfo() if buddy is None else buddy
        base = self.base_page_kib()
        return sum(predict_allocatable(orders, size_kib, base)
                   for orders in info.get(node, {}).values())

    def allocatable_if_compacted(self, node: int, size_kib: int) -> int:
        """Upper bound after a perfect compaction: the node's MemFree in whole pages."""
        return self.node_meminfo(node).get("MemFree", 0) // _check_size(size_kib)

    # --- changing -------------------------------------------------------------------
    def max_pages(self, node: int, size_kib: int) -> int:
        """The largest count ``set_node_nr`` accepts: the node's MemTotal in pages."""
        total_kib = self.node_meminfo(node).get("MemTotal")
        if not total_kib:
            raise HostError(path=self.root.path(f"{NODE_BASE}/node{node}/meminfo"),
                            reason="no MemTotal line: cannot bound the pool size")
        return total_kib // _check_size(size_kib)

    def set_node_nr(self, node: int, size_kib: int, count: int) -> int:
        """Write a node's persistent pool size and return the count the kernel now has.

        The result may be lower than ``count`` (fragmentation; the kernel still reports
        success) or, when shrinking, higher (pages in use or reserved stay). The caller
        computes ``count`` from the current value under its lock: never an absolute or zero
        size over pages somebody else owns. Either way below, the kernel adds pages only on
        this node and frees only its free pages.

        The node's ``nr_hugepages`` file, unless it cannot say ``count``; then
        ``set_node_nr_bound`` (``hugexml.host.mempolicy``), exact on every kernel:

        - while other nodes hold surplus pages: Linux before 6.7 (Debian 12's 6.1, RHEL 9's
          5.14) makes a node write's count global with ``nr_hugepages``, their surplus pages
          included, so the node lands that many pages above ``count``, and a shrink can even
          first turn this node's own surplus pages into persistent ones (fixed in 6.7: "mm/
          hugetlb: fix nodes huge page allocation when there are surplus pages");
        - when surplus pages in use keep free pages a shrink wants freed (``surplus_short``:
          the kernel's ``min_count`` counts them): the node write would turn those free
          pages into free surplus pages.
        """
        self._pool_rel(node, size_kib, "nr_hugepages")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInput(reason=f"node {node}, {size_kib} KiB pages: pool size "
                                      f"{count!r} is not a count")
        limit = self.max_pages(node, size_kib)
        if count > limit:
            raise InvalidInput(reason=f"node {node}, {size_kib} KiB pages: pool size {count} "
                                      f"exceeds the node's memory ({limit} pages)")
        if self.numa and self._read_int(f"{GLOBAL_BASE}/hugepages-{size_kib}kB/"
                                        "surplus_hugepages", self._missing_pool(node, size_kib)):
            # surplus pages somewhere (without, neither rule applies: one read, no more)
            mine, pools = self.node_pool(node, size_kib), self.global_pool(size_kib)
            if pools.surplus > mine.surplus or surplus_short(mine, count, pools) > 0:
                return self.set_node_nr_bound(node, size_kib, count)
        rel = self._pool_rel(node, size_kib, "nr_hugepages")
        self._write(rel, f"{count}\n", self._missing_pool(node, size_kib))
        nr = self._read_int(rel)
        if not self.numa:
            return nr
        surplus = self._read_int(self._pool_rel(node, size_kib, "surplus_hugepages"))
        if nr - surplus > count and self.global_pool(size_kib).surplus > surplus:
            # surplus pages elsewhere since the read: Linux < 6.7 counted them in
            return self.set_node_nr_bound(node, size_kib, count)
        return nr

    def mempolicy_path(self, size_kib: int) -> str:
        return self.root.path(f"{GLOBAL_BASE}/hugepages-{_check_size(size_kib)}kB/"
                              f"{MEMPOLICY_FILE}")

    def write_file(self, path: str, text: str) -> None:
        """One raw write through the io (``hugexml.host.mempolicy`` converts its OSError)."""
        self.io.write_text(path, text)

    def memory_binder(self) -> Optional[Callable[[Optional[tuple[int, ...]]], None]]:
        """What binds this thread's memory policy for this gateway: the injected setter, else
        its io's own (a fake kernel emulates the task's policy), else set_mempolicy(2), but
        only on the real root; None under any other root (a plain SysIO on a fake tree binds
        nothing)."""
        if self.mempolicy is not None:
            return self.mempolicy
        own = getattr(self.io, "set_mempolicy", None)
        if own is not None:
            return own
        if not self.root.is_real:
            return None
        from hugexml.host.mempolicy import set_thread_policy

        return set_thread_policy

    def set_node_nr_bound(self, node: int, size_kib: int, count: int) -> int:
        """``set_node_nr`` through ``nr_hugepages_mempolicy`` with this thread bound to the
        node (``hugexml.host.mempolicy.set_node_bound``); without NUMA, ``set_node_nr``."""
        if not self.numa:
            return self.set_node_nr(node, size_kib, count)
        from hugexml.host.mempolicy import set_node_bound

        return set_node_bound(self, node, size_kib, count)

    def demote_size(self, node: int, size_kib: int) -> Optional[int]:
        """The page size a free ``size_kib`` page of ``node`` splits into with the kernel's
        ``demote`` file (Linux >= 5.16), or None where there is no such file."""
        rel = self._pool_rel(node, size_kib, "demote_size")
        if not self.numa or not os.path.exists(self.root.path(rel)):
            return None
        return numbered(self._read(rel).strip(), "", "kB")

    def demote(self, node: int, size_kib: int, count: int) -> int:
        """Split up to ``count`` free pages of the node's ``size_kib`` pool into pages of its
        ``demote_size`` (the kernel takes only free, unreserved pages, and reports success
        whatever it did); how many it split, read back from the pool."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInput(reason=f"node {node}: demote count {count!r} is not a count")
        if count == 0:
            return 0
        rel = self._pool_rel(node, size_kib, "demote")
        before = self._read_int(self._pool_rel(node, size_kib, "nr_hugepages"))
        self._write(rel, f"{count}\n", self._missing_pool(node, size_kib))
        after = self._read_int(self._pool_rel(node, size_kib, "nr_hugepages"))
        return max(0, before - after)

    def compact_all(self) -> bool:
        """Compact every node (``/proc/sys/vm/compact_memory``); False without the file."""
        if not os.path.exists(self.root.path("proc/sys/vm/compact_memory")):
            return False
        self._write("proc/sys/vm/compact_memory", "1\n")
        return True

    def compact(self, node: int) -> bool:
        """Ask the kernel to compact a node's memory (synchronous). False when the kernel
        has no compaction trigger (CONFIG_COMPACTION off): nothing was done."""
        _check_node(node)
        rel = f"{NODE_BASE}/node{node}/compact" if self.numa else "proc/sys/vm/compact_memory"
        if not os.path.exists(self.root.path(rel)):
            return False
        self._write(rel, "1\n")
        return True

    def drop_caches(self, level: int = 1) -> None:
        """Drop clean caches so their memory can become hugepages.

        Level 1 (page cache) is the default: it is where the reclaimable memory is. Level 2/3
        also drop dentries and inodes host-wide, which makes every guest's next metadata
        access hit the disk; the allocator uses 1. Dirty pages are not written back first
        (no sync: syncing on a busy hypervisor can stall for long).
        """
        if level not in DROP_CACHES_LEVELS:
            raise InvalidInput(reason=f"drop_caches level {level!r} is not 1, 2 or 3")
        self._write(DROP_CACHES, f"{level}\n")
