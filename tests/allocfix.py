"""Helpers shared by the allocator's tests: config, plans, kernels."""
from __future__ import annotations

import os
from typing import Any, Optional

import pytest

from hugexml.core.model import DemandItem, GuestId, Plan
from hugexml.core.typed import replace

M2 = 2048
G1 = 1048576


def make_config(**over: Any) -> Any:
    """The real Config (defaults from load_config) with fields replaced. Without a
    ``keep_for``, no keep window: released pages go back at once, so the allocator's tests
    see pools return to where they were (tests of the keep window pass their own)."""
    from hugexml.core.config import load_config

    base = load_config("/nonexistent/hugexml.conf", False)
    over.setdefault("keep_for", ())
    return replace(base, **over)


def plan(name: str, *items: tuple, uuid: Optional[str] = None) -> Plan:
    """plan("vm", (pages, nodes, policy[, size])...)."""
    demand = []
    for it in items:
        pages, nodes, policy = it[:3]
        size = it[3] if len(it) > 3 else M2
        demand.append(DemandItem(page_size_kib=size, pages=pages, policy=policy,
                                 host_nodes=tuple(nodes) if nodes is not None else None))
    return Plan(domain=name, uuid=uuid, consumers=(), demand=tuple(demand))


def guest(name: str, uuid: Optional[str] = None) -> GuestId:
    return GuestId(name, uuid)


def skip_or_fail(reason: str) -> None:
    """A real-host test that cannot run here: a skip, but a failure in CI
    (HUGEXML_REQUIRE_REAL=1), where every realkernel test must run."""
    if os.environ.get("HUGEXML_REQUIRE_REAL") == "1":
        pytest.fail(f"real-host test cannot run: {reason}")
    pytest.skip(reason)
