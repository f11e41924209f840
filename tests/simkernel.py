"""An in-memory model of the kernel's hugetlb pool counters behind the HostGateway API.

Used by the allocator's tests next to the sysfs-tree FakeKernel (tests/fakekernel.py): it is
fast enough for the hypothesis state machine, and it models the parts of hugetlb that decide
whether a shrink is safe (mm/hugetlb.c set_max_huge_pages):
- a node write sets the node's *persistent* count; growing first turns surplus pages back
  into persistent ones, then allocates fresh pages up to the node's room (``cap``: the
  fragmentation limit, and MemFree);
- shrinking never frees pages in use or reserved: it frees free pages down to
  ``max(count, used + resv)`` and turns the rest of the excess into surplus pages, which the
  kernel frees when they are unmapped;
- ``map``/``unmap`` stand for qemu faulting in / releasing guest memory.
Failures are injected with ``fail_at`` (the n-th gateway call raises ``exc``) and ``dead``.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

from hugexml.core.errors import HostError

GIB = 1048576


class Crash(BaseException):
    """kill -9: raised by a gateway call; every later call of that gateway fails too."""


@dataclass
class Pool:
    persistent: int = 0
    surplus: int = 0
    used: int = 0
    resv: int = 0
    cap: Optional[int] = None  # most pages the node can still add (fragmentation)

    @property
    def nr(self) -> int:
        return self.persistent + self.surplus

    @property
    def free(self) -> int:
        return self.nr - self.used


class SimKernel:
    def __init__(self, nodes: int = 2, sizes: tuple[int, ...] = (2048, 1048576),
                 mem_total_kib: int = 64 * GIB, mem_free_kib: int = 48 * GIB) -> None:
        self.node_ids = tuple(range(nodes))
        self.sizes = tuple(sorted(sizes))
        self.pools = {(n, s): Pool() for n in self.node_ids for s in self.sizes}
        self.mem_total = dict.fromkeys(self.node_ids, mem_total_kib)
        self.mem_free = dict.fromkeys(self.node_ids, mem_free_kib)
        self.calls = 0
        self.writes: list[tuple[int, int, int]] = []
        self.compactions: list[int] = []
        self.cap_after_compact: dict[int, Optional[int]] = {}
        self.fail_at: Optional[int] = None
        self.exc: BaseException = HostError(path="/sys/fake", reason="injected failure")
        self.dead = False
        self.crash_on_write: Optional[int] = None  # the n-th set_node_nr ever kills us
        self.can_demote = True
        self.demotes: list[tuple[int, int, int]] = []

    @property
    def gw(self) -> Any:
        """What the allocator is given: the SimKernel itself stands in for the gateway."""
        return self

    # --- test controls -------------------------------------------------------------
    def set(self, node: int, size_kib: int, **fields: Any) -> None:
        pool = self.pools[(node, size_kib)]
        grown = fields.get("persistent", pool.persistent) - pool.persistent
        for key, value in fields.items():
            setattr(pool, key, value)
        self.mem_free[node] -= grown * size_kib

    def map(self, node: int, size_kib: int, pages: int) -> None:
        pool = self.pools[(node, size_kib)]
        assert pool.free >= pages, "mapping more pages than free"
        pool.used += pages

    def unmap(self, node: int, size_kib: int, pages: int) -> None:
        pool = self.pools[(node, size_kib)]
        assert pool.used >= pages
        pool.used -= pages
        gone = min(pool.surplus, pages)  # surplus pages go back to the buddy allocator
        pool.surplus -= gone
        self.mem_free[node] += gone * size_kib

    def nr(self, node: int, size_kib: int) -> int:
        return self.pools[(node, size_kib)].persistent

    # --- gateway API ---------------------------------------------------------------
    def _call(self) -> None:
        self.calls += 1
        if self.dead:
            raise Crash("gateway of a killed process")
        if self.fail_at is not None and self.calls >= self.fail_at:
            self.fail_at = None
            if isinstance(self.exc, Crash):
                self.dead = True
            raise self.exc

    def boot_id(self) -> str:
        return ""

    def nodes(self) -> tuple[int, ...]:
        return self.node_ids

    def page_sizes_kib(self) -> tuple[int, ...]:
        return self.sizes

    def node_pool(self, node: int, size_kib: int) -> Any:
        self._call()
        pool = self.pools.get((node, size_kib))
        if pool is None:
            raise HostError(path=f"node{node}/hugepages-{size_kib}kB", reason="no such pool")
        return SimpleNamespace(nr=pool.nr, free=pool.free, surplus=pool.surplus)

    def global_pool(self, size_kib: int) -> Any:
        self._call()
        pools = [p for (n, s), p in self.pools.items() if s == size_kib]
        return SimpleNamespace(nr=sum(p.nr for p in pools), free=sum(p.free for p in pools),
                               resv=sum(p.resv for p in pools),
                               surplus=sum(p.surplus for p in pools), overcommit=0)

    def node_meminfo(self, node: int) -> dict[str, int]:
        self._call()
        return {"MemTotal": self.mem_total[node], "MemFree": self.mem_free[node]}

    def max_pages(self, node: int, size_kib: int) -> int:
        """As HostGateway.max_pages: the node's MemTotal in pages."""
        return self.mem_total[node] // size_kib

    def set_node_nr(self, node: int, size_kib: int, count: int) -> int:
        self._call()
        pool = self.pools[(node, size_kib)]
        self.writes.append((node, size_kib, count))
        if self.crash_on_write is not None and len(self.writes) >= self.crash_on_write:
            self.crash_on_write, self.dead = None, True
            raise Crash("killed before this write")
        if count > pool.persistent:
            back = min(pool.surplus, count - pool.persistent)
            pool.surplus -= back
            pool.persistent += back
            room = self.mem_free[node] // size_kib
            if pool.cap is not None:
                room = min(room, pool.cap)
            fresh = min(count - pool.persistent, room)
            pool.persistent += fresh
            self.mem_free[node] -= fresh * size_kib
            if pool.cap is not None:
                pool.cap -= fresh
        elif count < pool.persistent:
            keep = max(count, pool.used + pool.resv)
            freed = max(0, pool.persistent - keep)
            pool.persistent -= freed
            self.mem_free[node] += freed * size_kib
            to_surplus = pool.persistent - count
            if to_surplus > 0:
                pool.persistent -= to_surplus
                pool.surplus += to_surplus
        return pool.nr

    def compact(self, node: int) -> None:
        self._call()
        self.compactions.append(node)
        if node in self.cap_after_compact:
            for (n, _), pool in self.pools.items():
                if n == node:
                    pool.cap = self.cap_after_compact[node]

    def drop_caches(self) -> None:
        self._call()

    def compact_all(self) -> bool:
        self._call()
        self.compactions.append(-1)
        for node in self.cap_after_compact:
            for (n, _), pool in self.pools.items():
                if n == node:
                    pool.cap = self.cap_after_compact[node]
        return True

    def demote_size(self, node: int, size_kib: int) -> Optional[int]:
        smaller = [s for s in self.sizes if s < size_kib]
        return max(smaller) if smaller and self.can_demote else None

    def demote(self, node: int, size_kib: int, count: int) -> int:
        """As the kernel's demote_store: free pages of the node minus the size's reserved
        pages, each into size/smaller pages of the next size, persistent and free."""
        self._call()
        small = self.demote_size(node, size_kib)
        assert small is not None, "no demote file"
        big, little = self.pools[(node, size_kib)], self.pools[(node, small)]
        resv = sum(p.resv for (n, s), p in self.pools.items() if s == size_kib)
        k = max(0, min(count, big.free - resv, big.persistent))
        big.persistent -= k
        little.persistent += k * (size_kib // small)
        self.demotes.append((node, size_kib, k))
        return k

    def buddyinfo(self) -> dict[int, dict[str, list[int]]]:
        self._call()
        return {n: {"Normal": [0] * 9 + [p.cap or 0 for (m, s), p in self.pools.items()
                                          if m == n and s == 2048][:1] + [0]}
                for n in self.node_ids}


class FileSimKernel(SimKernel):
    """A SimKernel whose state lives in a JSON file, for tests with many processes.

    Every gateway call loads the state and every write saves it (atomically). The allocator
    calls its gateway only while it holds the ledger lock, so the processes take turns.
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        self.path = path
        super().__init__(**kwargs)

    @classmethod
    def open(cls, path: str) -> FileSimKernel:
        import json

        with open(path) as fh:
            state = json.load(fh)
        kernel = cls(path, nodes=len(state["nodes"]), sizes=tuple(state["sizes"]))
        kernel._load()
        return kernel

    def save(self) -> None:
        import json
        import os

        state = {"nodes": list(self.node_ids), "sizes": list(self.sizes),
                 "mem_free": {str(n): v for n, v in self.mem_free.items()},
                 "mem_total": {str(n): v for n, v in self.mem_total.items()},
                 "pools": {f"{n}:{s}": vars(p) for (n, s), p in self.pools.items()}}
        tmp = f"{self.path}.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
        os.rename(tmp, self.path)

    def _load(self) -> None:
        import json

        with open(self.path) as fh:
            state = json.load(fh)
        self.mem_free = {int(n): v for n, v in state["mem_free"].items()}
        self.mem_total = {int(n): v for n, v in state["mem_total"].items()}
        for key, fields in state["pools"].items():
            n, s = key.split(":")
            self.pools[(int(n), int(s))] = Pool(**fields)

    def node_pool(self, node: int, size_kib: int) -> Any:
        self._load()
        return super().node_pool(node, size_kib)

    def global_pool(self, size_kib: int) -> Any:
        self._load()
        return super().global_pool(size_kib)

    def node_meminfo(self, node: int) -> dict[str, int]:
        self._load()
        return super().node_meminfo(node)

    def set_node_nr(self, node: int, size_kib: int, count: int) -> int:
        self._load()
        nr = super().set_node_nr(node, size_kib, count)
        self.save()
        return nr


# --- the same test API over the sysfs-tree FakeKernel and the REAL HostGateway -----------------
class FakePoolView:
    """A snapshot of one FakeKernel pool with SimKernel's field names (read-only)."""

    def __init__(self, nr: int, free: int, surplus: int, resv: int,
                 cap: Optional[int]) -> None:
        self.nr, self.free, self.surplus, self.resv, self.cap = nr, free, surplus, resv, cap
        self.persistent = nr - surplus
        self.used = nr - free


class _MemFree:
    """``kernel.mem_free[node]`` (read, or set: other processes take or give memory)."""

    def __init__(self, fk: Any) -> None:
        self.fk = fk

    def __getitem__(self, node: int) -> int:
        return int(self.fk.mem_free_kib(node))

    def __setitem__(self, node: int, kib: int) -> None:
        self.fk.consume_memory(node, self[node] - kib)


class _CompactCaps:
    """``kernel.cap_after_compact[node] = pages``: what a compaction of the node makes room for."""

    def __init__(self, host: FakeKernelHost) -> None:
        self.host = host

    def __setitem__(self, node: int, pages: Optional[int]) -> None:
        for size in self.host.sizes:
            self.host.fk.set_compact_cap(node, size, pages)


def _counting_gateway(host: FakeKernelHost) -> Any:
    """The real HostGateway over the fake's SysIO, with SimKernel's kill -9 / failure hooks:
    every public call first asks ``host._call()`` (which may raise), then runs the real code
    (paths, parsing, the write, the read-back)."""
    from hugexml.host.sysfs import HostGateway

    class CountingGateway(HostGateway):
        def node_pool(self, node: int, size_kib: int) -> Any:
            host._call()
            return super().node_pool(node, size_kib)

        def global_pool(self, size_kib: int) -> Any:
            host._call()
            return super().global_pool(size_kib)

        def node_meminfo(self, node: int) -> dict[str, int]:
            host._call()
            return super().node_meminfo(node)

        def buddyinfo(self) -> dict[int, dict[str, list[int]]]:
            host._call()
            return super().buddyinfo()

        def set_node_nr(self, node: int, size_kib: int, count: int) -> int:
            host._call()
            host.writes.append((node, size_kib, count))
            if host.crash_on_write is not None and len(host.writes) >= host.crash_on_write:
                host.crash_on_write, host.dead = None, True
                raise Crash("killed before this write")
            return super().set_node_nr(node, size_kib, count)

        def compact(self, node: int) -> bool:
            host._call()
            host.compactions.append(node)
            return super().compact(node)

        def drop_caches(self, level: int = 1) -> None:
            host._call()
            super().drop_caches(level)

        def compact_all(self) -> bool:
            host._call()
            host.compactions.append(-1)
            return super().compact_all()

        def demote(self, node: int, size_kib: int, count: int) -> int:
            host._call()
            k = super().demote(node, size_kib, count)
            host.demotes.append((node, size_kib, k))
            return k

    return CountingGateway(host.fk.host_root, io=host.fk.io)


class FakeKernelHost(SimKernel):
    """SimKernel's test controls over tests/fakekernel.py; the allocator gets ``gw``: the real
    ``hugexml.host.sysfs.HostGateway`` reading and writing the fake sysfs tree.

    Differences that are the kernel's, kept on purpose: ``resv`` is global per size (as
    ``resv_hugepages``), a shrink never goes below the host-wide in-use + reserved count.
    """

    def __init__(self, root: str, nodes: int = 2, sizes: tuple[int, ...] = (2048, 1048576),
                 mem_total_kib: int = 64 * GIB, mem_free_kib: int = 48 * GIB) -> None:
        from fakekernel import FakeKernel

        if not 0 <= mem_free_kib <= mem_total_kib:
            raise ValueError(f"MemFree {mem_free_kib} kB outside 0..MemTotal {mem_total_kib}")
        self.node_ids = tuple(range(nodes))
        self.sizes = tuple(sorted(sizes))
        self.fk = FakeKernel(root, nodes=nodes, sizes_kib=self.sizes,
                             mem_kib_per_node=mem_total_kib,
                             used_kib_per_node=mem_total_kib - mem_free_kib)
        self.calls = 0
        self.writes = []
        self.compactions = []
        self.demotes = []
        self.can_demote = True
        self.fail_at = None
        self.exc = HostError(path="/sys/fake", reason="injected failure")
        self.dead = False
        self.crash_on_write = None
        self.mem_free = _MemFree(self.fk)
        self.cap_after_compact = _CompactCaps(self)
        self._gateway = _counting_gateway(self)

    @property
    def gw(self) -> Any:
        return self._gateway

    @property
    def pools(self) -> dict[tuple[int, int], FakePoolView]:
        conf = self.fk.conf()
        out = {}
        for node in self.node_ids:
            for size in self.sizes:
                nr, free, surplus = self.fk.pool(node, size)
                out[(node, size)] = FakePoolView(nr, free, surplus, self.fk.resv(size),
                                                 conf["caps"].get(f"{node}:{size}"))
        return out

    @pools.setter
    def pools(self, value: Any) -> None:  # SimKernel.__init__ is not called; never set
        raise AttributeError("FakeKernelHost pools are the fake kernel's files")

    def set(self, node: int, size_kib: int, **fields: Any) -> None:
        pool = self.pools[(node, size_kib)]
        if "persistent" in fields:
            self.fk.preset(node, size_kib, fields["persistent"] + pool.surplus)
        if "used" in fields:
            more = fields["used"] - self.pools[(node, size_kib)].used
            if more > 0:
                self.fk.use(node, size_kib, more)
            elif more < 0:
                self.fk.unuse(node, size_kib, -more)
        if "resv" in fields:
            self.fk.reserve(size_kib, fields["resv"] - self.fk.resv(size_kib))
        if "cap" in fields:
            self.fk.set_cap(node, size_kib, fields["cap"])
        unknown = set(fields) - {"persistent", "used", "resv", "cap"}
        if unknown:
            raise TypeError(f"unknown pool fields {sorted(unknown)}")

    def map(self, node: int, size_kib: int, pages: int) -> None:
        self.fk.use(node, size_kib, pages)

    def unmap(self, node: int, size_kib: int, pages: int) -> None:
        self.fk.unuse(node, size_kib, pages)

    def nr(self, node: int, size_kib: int) -> int:
        return self.pools[(node, size_kib)].persistent


def make_kernel(kind: str, root: str, **kwargs: Any) -> SimKernel:
    """``sim``: the in-memory SimKernel (it is its own gateway); ``fake``: FakeKernelHost."""
    if kind == "sim":
        return SimKernel(**kwargs)
    if kind == "fake":
        return FakeKernelHost(root, **kwargs)
    raise ValueError(f"unknown kernel kind {kind!r}")
