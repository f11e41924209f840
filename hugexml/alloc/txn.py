"""Changing node pools through the HostGateway: read the kernel, grow or shrink, roll back.

``PoolTxn`` changes each (node, size) pool relative to the persistent count it read first
(``nr_hugepages - surplus_hugepages``: a node write sets the persistent count), reads every
write back, and when the kernel grants fewer pages than asked (fragmentation) splits larger
pages hugexml owns on the node (``relieve``, the allocator's demote), compacts the node, then
the whole host, optionally drops caches, and retries within ``config.retries`` and
``config.timeout_s``; a final short grant names what was tried and what would help.
``rollback`` puts every pool it grew back to its count before. The caller (hugexml.alloc.allocator)
holds the lock and has written its intent to the ledger before the first write.
"""
from __future__ import annotations

import time

from hugexml.core.errors import HostError, PoolShort
from hugexml.planning.fit import HostView, Pool, PoolState, error

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

    Progress = Callable[[str], None]

    from hugexml.core.config import Config
    from hugexml.host.gateway import Gateway



def read_pool(gateway: Gateway, node: int, size_kib: int) -> PoolState:
    pool = gateway.node_pool(node, size_kib)
    return PoolState(persistent=pool.nr - pool.surplus, free=pool.free, surplus=pool.surplus)


def read_view(gateway: Gateway, sizes_kib: Any, memory: bool = True) -> HostView:
    """The kernel's counters for ``sizes_kib`` on every node (claims are the caller's)."""
    nodes = tuple(sorted(gateway.nodes())) or (0,)
    view = HostView(nodes=nodes, pools={})
    for size_kib in sorted(set(sizes_kib)):
        for node in nodes:
            view.pools[(node, size_kib)] = read_pool(gateway, node, size_kib)
        # A node's share of resv is at most its free pages: with none free, it is 0.
        if any(view.pools[(node, size_kib)].free for node in nodes):
            view.resv[size_kib] = gateway.global_pool(size_kib).resv
    if memory:
        for node in nodes:
            info = gateway.node_meminfo(node)
            view.mem_free_kib[node] = int(info.get("MemFree", 0))
            view.mem_total_kib[node] = int(info.get("MemTotal", 0))
    return view


def buddy_picture(gateway: Gateway, node: int, size_kib: int) -> str:
    """One line: the node's free blocks of the top orders and the pages buddyinfo predicts."""
    try:
        from hugexml.host.kernel import predict_allocatable

        zones = gateway.buddyinfo().get(node, {})
    except (HostError, ImportError) as exc:
        return f"buddyinfo unavailable: {exc}"
    parts = []
    predicted = 0
    for zone, orders in sorted(zones.items()):
        if zone == "DMA":
            continue
        predicted += predict_allocatable(list(orders), size_kib)
        top = " ".join(f"o{i}={c}" for i, c in enumerate(orders) if i >= len(orders) - 3)
        parts.append(f"{zone}[{top}]")
    return (f"buddyinfo node {node}: {' '.join(parts) or 'none'}; "
            f"predicted allocatable without compaction: {predicted}")


def predicted_allocatable(gateway: Gateway, node: int, size_kib: int,
                          buddy: dict[int, dict[str, list[int]]]) -> tuple[int, bool]:
    """(pages, from_buddyinfo): how many ``size_kib`` pages the node could add now. From the
    free buddy blocks (DMA zone left out) when the page fits the largest order; above it (1G
    on x86, where blocks are at most 4M) contiguity is invisible and the answer is the upper
    bound after a perfect compaction, MemFree in whole pages (from_buddyinfo False)."""
    from hugexml.host.kernel import page_order
    from hugexml.host.kernel import predict_allocatable as predict

    zones = {z: o for z, o in buddy.get(node, {}).items() if z != "DMA"}
    pages = sum(predict(list(orders), size_kib) for orders in zones.values())
    if pages or (zones and all(page_order(size_kib) < len(o) for o in zones.values())):
        return pages, True
    return int(gateway.node_meminfo(node).get("MemFree", 0)) // size_kib, False


class PoolTxn:
    def __init__(self, gateway: Gateway, config: Config, domain: Optional[str],
                 progress: Optional[Progress] = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 relieve: Optional[Callable[[int, int, int], int]] = None) -> None:
        self.gateway = gateway
        self.config = config
        self.domain = domain
        self.progress = progress
        self.monotonic = monotonic
        self.before: dict[Pool, int] = {}
        self._dropped = False
        # (node, size_kib, pages missing) -> pages of that size split from larger pages
        self.relieve = relieve

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def _write(self, node: int, size_kib: int, persistent: int, surplus: int) -> PoolState:
        """Set the node's persistent count; the state read back."""
        nr = self.gateway.set_node_nr(node, size_kib, persistent)
        if surplus == 0:
            # Growing only turns surplus pages into persistent ones: none before, none now.
            return PoolState(persistent=nr, free=-1, surplus=0)
        return read_pool(self.gateway, node, size_kib)

    def grow(self, pools: dict[Pool, int], start: dict[Pool, PoolState]) -> dict[Pool, int]:
        """Add ``pools[p]`` pages to each pool, or raise PoolShort naming the first pool the
        kernel would not fill (the caller then calls ``rollback``). Returns how much each
        pool grew: more than asked when a demote split more than was missing."""
        grown: dict[Pool, int] = {}
        for pool in sorted(pools):
            pages = pools[pool]
            if pages <= 0:
                continue
            node, size_kib = pool
            self.before.setdefault(pool, start[pool].persistent)
            tried: list[str] = []
            got = self._grow_one(node, size_kib, pages, start[pool].surplus, tried)
            if got < pages:
                # The caller rolls back every pool this transaction touched.
                raise error(PoolShort, self.domain, node=node, size_kib=size_kib, needed=pages,
                            got=got, detail=self._short_detail(node, size_kib, tried))
            grown[pool] = got
        return grown

    def _short_detail(self, node: int, size_kib: int, tried: list[str]) -> str:
        """What was tried, what the node's free memory looks like, what would help."""
        helps = ["a smaller page size (hugexml rewrite --page-size 2M)" if size_kib > 2048
                 else "fewer pages on this node",
                 "pages reserved at boot (hugexml boot --from-guests)"]
        if size_kib > 2048:
            helps.insert(0, "a keep window, so pages of stopped guests stay "
                            "([release] keep_for)")
        return (f"Tried: {', '.join(tried) or 'nothing more (retries = 0)'}. "
                f"{buddy_picture(self.gateway, node, size_kib)}. "
                f"What would help: {'; '.join(helps)}.")

    def _grow_one(self, node: int, size_kib: int, pages: int, surplus: int,
                  tried: list[str]) -> int:
        """Grow one pool to ``before + pages``. On a short grant: first split larger pages
        hugexml owns on the node (``relieve``: demote moves no normal memory), then compact
        the node, then the whole host, then drop caches (if allowed), within ``retries``
        and ``timeout``. Returns how much the pool grew."""
        before = self.before[(node, size_kib)]
        target = before + pages
        deadline = self.monotonic() + max(0.0, float(self.config.timeout_s))
        attempt, steps, relieved = 0, self._relief_steps(node), False
        while True:
            attempt += 1
            state = self._write(node, size_kib, target, surplus)
            surplus = state.surplus
            got = state.persistent - before
            if got < pages and self.relieve is not None and not relieved:
                relieved = True
                split = self.relieve(node, size_kib, pages - got)
                tried.append(f"demote ({split} x {size_kib} KiB pages split from larger "
                             "pages hugexml owns)")
                if split:
                    got = read_pool(self.gateway, node, size_kib).persistent - before
            if got >= pages:
                if attempt > 1:
                    self._say(f"node {node}: {pages} x {size_kib} KiB pages added")
                return got
            if attempt > int(self.config.retries) or self.monotonic() >= deadline or not steps:
                return max(0, got)
            name, step = steps.pop(0)
            self._say(f"node {node}: {max(0, got)}/{pages} x {size_kib} KiB pages so far, "
                      f"{name} (attempt {attempt + 1})")
            tried.append(name)
            step()

    def _relief_steps(self, node: int) -> list[tuple[str, Callable[[], object]]]:
        """What a short grant tries between writes, in order: compacting the node (again
        on later attempts), the whole host, then dropping the page cache once."""
        steps: list[tuple[str, Callable[[], object]]] = []
        again: tuple[str, Callable[[], object]] = ("another try", lambda: None)
        if self.config.compact:
            again = (f"compaction of node {node}", lambda: self.gateway.compact(node))
            steps += [again, ("compaction of the whole host", self.gateway.compact_all)]
        if self.config.drop_caches and not self._dropped:
            def drop() -> None:
                self.gateway.drop_caches()
                self._dropped = True
            steps.append(("drop_caches", drop))
        while len(steps) < int(self.config.retries):  # more retries than steps: the node again
            steps.insert(1 if self.config.compact else 0, again)
        return steps

    def shrink(self, node: int, size_kib: int, pages: int, start: PoolState) -> int:
        """Give ``pages`` back; returns how many the kernel really freed."""
        if pages <= 0:
            return 0
        self.before.setdefault((node, size_kib), start.persistent)
        self.gateway.set_node_nr(node, size_kib, start.persistent - pages)
        after = read_pool(self.gateway, node, size_kib)
        return max(0, min(pages, start.persistent - after.persistent))

    def rollback(self) -> dict[Pool, int]:
        """Every pool this transaction grew back to its count before; what stayed above
        (pages the kernel could not take back) per pool. Exceptions propagate: the intent in
        the ledger then stays for reconcile."""
        left: dict[Pool, int] = {}
        for (node, size_kib), before in sorted(self.before.items()):
            now = read_pool(self.gateway, node, size_kib)
            if now.persistent <= before:
                continue
            self.gateway.set_node_nr(node, size_kib, before)
            after = read_pool(self.gateway, node, size_kib)
            if after.persistent > before:
                left[(node, size_kib)] = after.persistent - before
        return left
