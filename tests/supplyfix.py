"""Shared by the supply-aware ``auto`` tests: kept pages made the way a host gets them."""
from __future__ import annotations

import time
from typing import Any, Optional

from allocfix import G1, M2, guest, make_config, plan

from hugexml.alloc.allocator import Allocator
from hugexml.planning.tally import HostSupply, PoolSupply

KEEP_1G = ((G1, 600.0), (M2, 0.0))  # the default keep window: 1G=10m 2M=0


class Clock:
    """The allocator's clock, from the real time: readers without a clock (the hook's
    filter, the CLI) must see the keep window still open."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def allocator(kernel: Any, state_dir: str, clock: Any = None) -> Allocator:
    return Allocator(kernel.gw, state_dir, make_config(keep_for=KEEP_1G), clock=clock or Clock())


def keep_pages(kernel: Any, state_dir: str, pages: int, node: int, size_kib: int = G1,
               name: str = "gone", clock: Any = None) -> Allocator:
    """A guest of ``pages`` x ``size_kib`` on ``node`` started and stopped through the
    allocator: with the default window its 1G pages stay kept for 10 minutes."""
    a = allocator(kernel, state_dir, clock)
    a.reserve(plan(name, (pages, (node,), "strict", size_kib)), guest(name))
    kernel.map(node, size_kib, pages)
    a.settle(guest(name))
    kernel.unmap(node, size_kib, pages)
    kept = a.release(guest(name))["kept"]
    assert kept == ({f"{node}:{size_kib}": pages} if size_kib == G1 else {}), kept
    return a


def supply_table(pools: dict[tuple[int, int], tuple[int, ...]], nodes: tuple[int, ...] = (0, 1),
                 held: Optional[dict[str, dict[tuple[int, int], int]]] = None,
                 alloc_2m: int = 5000, room_kib: Any = 32 * G1) -> HostSupply:
    """An injected snapshot of what the host can supply now: {(node, size): (free, kept,
    allocatable[, bound])}; pools not named have no free or kept page, ``alloc_2m`` 2M pages
    buddyinfo promises and no 1G page; every node has ``room_kib`` (or {node: KiB}) of
    normal memory above its margin."""
    table = {(n, s): PoolSupply(0, 0, alloc_2m if s == M2 else 0) for n in nodes for s in (M2, G1)}
    table.update({pool: PoolSupply(*numbers) for pool, numbers in pools.items()})
    room = room_kib if isinstance(room_kib, dict) else dict.fromkeys(nodes, room_kib)
    return HostSupply(nodes, table, room, held or {})
