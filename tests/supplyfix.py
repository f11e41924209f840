"""Shared by the supply-aware ``auto`` tests: kept pages made the way a host gets them."""
from __future__ import annotations

import time
from typing import Any

from allocfix import G1, M2, guest, make_config, plan

from hugexml.alloc import Allocator

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
