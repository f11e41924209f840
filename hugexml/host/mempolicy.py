"""The host gateway's bound pool writes: a node's exact pool change through
``nr_hugepages_mempolicy``, and the calling thread's NUMA memory policy it needs.

``nr_hugepages_mempolicy`` (one per page size, under ``/sys/kernel/mm/hugepages``) takes a
global persistent count but adds and frees pages only on the nodes of the writing task's
memory policy (mm/hugetlb.c: ``init_nodemask_of_mempolicy``). ``set_node_bound`` uses it
where a node's own ``nr_hugepages`` cannot say a count (``HostGateway.set_node_nr``).
``set_thread_policy((node,))`` binds the calling thread (``set_mempolicy(2)``, ``MPOL_BIND``,
through ctypes) and ``set_thread_policy(None)`` puts it back to ``MPOL_DEFAULT``; both raise
``OSError`` (``ENOSYS`` where the syscall number is not known here). Imported, and ctypes
loaded, only when such a write is needed. Policies are per thread: bind, write and restore
happen on one thread.
"""
from __future__ import annotations

import errno
import os

from hugexml.core.errors import HostError, HugexmlError
from hugexml.core.units import MAX_NODES

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence
    from typing import Optional, Protocol

    from hugexml.host.kernel import GlobalPool, NodePool

    Binder = Callable[[Optional[tuple[int, ...]]], None]

    class BoundPools(Protocol):
        """What a bound pool change needs of the host gateway (``host.HostGateway``)."""

        def nodes(self) -> tuple[int, ...]: ...
        def node_pool(self, node: int, size_kib: int) -> NodePool: ...
        def global_pool(self, size_kib: int) -> GlobalPool: ...
        def mempolicy_path(self, size_kib: int) -> str: ...
        def write_file(self, path: str, text: str) -> None: ...
        def memory_binder(self) -> Optional[Binder]: ...

MPOL_DEFAULT = 0
MPOL_BIND = 2
# set_mempolicy(2): arch/x86/entry/syscalls/syscall_64.tbl (238) and the generic table
# include/uapi/asm-generic/unistd.h (237) that arm64 uses.
SYSCALL_NUMBERS = {"x86_64": 238, "aarch64": 237}
MASK_BITS = MAX_NODES  # node ids are bounded by hugexml.core.units.MAX_NODES
_WORD_BITS = 64


def syscall_number(machine: str) -> int:
    """The set_mempolicy syscall number of ``machine`` (``os.uname().machine``)."""
    try:
        return SYSCALL_NUMBERS[machine]
    except KeyError:
        raise OSError(errno.ENOSYS, f"set_mempolicy: no syscall number known for {machine}; "
                      f"known: {', '.join(sorted(SYSCALL_NUMBERS))}") from None


def node_mask(nodes: Sequence[int]) -> list[int]:
    """The nodemask words (64-bit, lowest node in the lowest bit) of ``nodes``."""
    words = [0] * (MASK_BITS // _WORD_BITS)
    for node in nodes:
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < MASK_BITS:
            raise OSError(errno.EINVAL, f"set_mempolicy: node {node!r} is out of range")
        words[node // _WORD_BITS] |= 1 << (node % _WORD_BITS)
    return words


def set_thread_policy(nodes: Optional[tuple[int, ...]]) -> None:
    """Bind the calling thread's memory policy to ``nodes`` (MPOL_BIND), or with None put
    it back to MPOL_DEFAULT. OSError with the kernel's errno when it refuses (EINVAL: a node
    without memory or outside the task's cpuset)."""
    import ctypes

    number = syscall_number(os.uname().machine)
    if nodes is not None and not nodes:
        raise OSError(errno.EINVAL, "set_mempolicy: binding to no node")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if nodes is None:
        rc = libc.syscall(ctypes.c_long(number), ctypes.c_int(MPOL_DEFAULT), None,
                          ctypes.c_ulong(0))
    else:
        mask = (ctypes.c_ulong * (MASK_BITS // _WORD_BITS))(*node_mask(nodes))
        # the kernel reads maxnode - 1 bits (get_nodes), as numactl passes them
        rc = libc.syscall(ctypes.c_long(number), ctypes.c_int(MPOL_BIND), ctypes.byref(mask),
                          ctypes.c_ulong(MASK_BITS + 1))
    if rc != 0:
        err = ctypes.get_errno()
        what = "MPOL_DEFAULT" if nodes is None else f"MPOL_BIND to node(s) {list(nodes)}"
        raise OSError(err, f"set_mempolicy({what}): {os.strerror(err)}")


# --- a node's exact pool change through nr_hugepages_mempolicy --------------------------
def set_node_bound(gw: BoundPools, node: int, size_kib: int, count: int) -> int:
    """Set ``node``'s persistent pool of ``size_kib`` pages to ``count`` through
    ``nr_hugepages_mempolicy`` with this thread bound to the node; the node's ``nr`` read
    back. The count written is the global persistent target: this node's change on top of
    a fresh read, so other nodes' surplus pages never enter it (as they do in a node write
    before Linux 6.7). Bound to the node, the kernel adds pages only there and frees only
    that node's free pages: never a page in use, never another node's page.

    A shrink the kernel would refuse because surplus pages are in use elsewhere (its
    ``min_count`` counts them; ``lenders_for``) first has each lending node count that many
    of its in-use surplus pages as persistent (a relabel: no page is added, freed or moved),
    then shrinks this node, then puts each lender back to its persistent count (in a
    ``finally``). A page a lender's owner frees meanwhile stays free for that moment and the
    last write frees it, as the kernel would have at once (should the owner free one just
    before the relabel, the kernel adds a page there instead, which the last write frees).
    Free pages no lender can unblock stay persistent (a write would make them free surplus
    pages). Nothing here chooses a count: ``count`` is the caller's, derived under its lock.
    """
    pool = gw.node_pool(node, size_kib)
    change = (node, count)
    lenders, stuck = lenders_for(gw, node, size_kib, pool, count)
    if count + stuck == pool.persistent:
        return pool.nr
    lent: dict[int, int] = {}  # lender -> its persistent count before
    try:
        for other, pages in sorted(lenders.items()):
            before = gw.node_pool(other, size_kib).persistent
            _bound_write(gw, other, size_kib, before + pages, change)
            lent[other] = before
        _bound_write(gw, node, size_kib, count + stuck, change)
    finally:
        failed: Optional[HugexmlError] = None
        for other, before in sorted(lent.items()):  # every lender, even after one failed
            try:
                _bound_write(gw, other, size_kib, before, change)
            except HugexmlError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
    return gw.node_pool(node, size_kib).nr


def lenders_for(gw: BoundPools, node: int, size_kib: int, pool: NodePool,
                count: int) -> tuple[dict[int, int], int]:
    """Who unblocks a shrink of ``node`` (``kernel.surplus_short``): {other node: surplus
    pages it counts as persistent meanwhile}, from nodes whose surplus pages are all in use
    (a node with free pages would lose them on the way back), and the pages nobody can
    unblock."""
    from hugexml.host.kernel import surplus_short

    short = surplus_short(pool, count, gw.global_pool(size_kib))
    lenders: dict[int, int] = {}
    for other in gw.nodes() if short > 0 else ():
        theirs = gw.node_pool(other, size_kib) if other != node else None
        if theirs is not None and theirs.surplus and not theirs.free and short > 0:
            lenders[other] = min(short, theirs.surplus)
            short -= lenders[other]
    return lenders, short


def _bound_write(gw: BoundPools, bound: int, size_kib: int, persistent: int,
                 change: tuple[int, int]) -> None:
    """Set ``bound``'s persistent count to ``persistent``: the global target written to
    nr_hugepages_mempolicy with this thread bound to ``bound``, MPOL_DEFAULT again in a
    ``finally``. ``change`` (node, count) is the pool change this serves, for errors. An
    OSError raises before the kernel changed anything (a refused bind or write)."""
    path = gw.mempolicy_path(size_kib)
    now = gw.node_pool(bound, size_kib).persistent
    pools = gw.global_pool(size_kib)
    target = max(0, pools.nr - pools.surplus + persistent - now)
    what = (f"node {change[0]}, {size_kib} KiB pages, pool to {change[1]}: node {bound} from "
            f"{now} to {persistent} persistent pages (global target {target})")
    bind = gw.memory_binder()
    if bind is None:
        raise HostError(path=path, reason=f"{what}: no memory policy to bind under a root "
                                          f"other than /")
    try:
        try:
            bind((bound,))
        except OSError as exc:
            raise HostError(path=path, reason=f"{what}: binding the memory policy: "
                            f"{exc.strerror or exc}", errno=exc.errno) from exc
        try:
            gw.write_file(path, f"{target}\n")
        except OSError as exc:
            raise HostError(path=path, reason=f"{what}: {exc.strerror or exc}",
                            errno=exc.errno) from exc
    finally:
        try:
            bind(None)
        except OSError as exc:  # MPOL_DEFAULT is always allowed; say so if it was not
            raise HostError(path=path, reason=f"{what}: restoring MPOL_DEFAULT: "
                            f"{exc.strerror or exc}", errno=exc.errno) from exc
    gw.node_pool(bound, size_kib)  # read back (the caller reads what it needs)
