"""Shared by the allocator's commands (status, allocate, shrink, reserve, release, reconcile):
building an Allocator from the CLI context, progress on a terminal, printing counts."""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

    from hugexml.host.gateway import Gateway


def tty_progress(stream: Any = None) -> Optional[Callable[[str], None]]:
    """A progress printer for long allocations, only when stderr is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None

    def say(text: str) -> None:
        stream.write(f"hugexml: {text}\n")
        stream.flush()

    return say


def add_pool_arguments(p: Any, count_help: str, node_help: str) -> None:
    """--size, --count, --node, --json: the pool-changing commands' common options."""
    p.add_argument("--size", required=True, metavar="SIZE", help="page size: 2M, 1G, 2048KiB")
    p.add_argument("--count", required=True, type=int, metavar="N", help=count_help)
    p.add_argument("--node", type=int, metavar="N", help=node_help)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def load(ctx: Any) -> Any:
    from hugexml.core.config import load_config

    return load_config(ctx.config_path, ctx.config_explicit)


# Tests replace this: (HostRoot) -> a HostGateway-like object (a fake kernel).
MAKE_GATEWAY: Optional[Callable[[Any], Gateway]] = None


def gateway(ctx: Any) -> Gateway:
    if MAKE_GATEWAY is not None:
        return MAKE_GATEWAY(ctx.root)
    from hugexml.host.sysfs import HostGateway

    return HostGateway(ctx.root)


def allocator(ctx: Any, progress: bool = True) -> Any:
    from hugexml.alloc.allocator import Allocator

    return Allocator(gateway(ctx), ctx.state_dir, load(ctx),
                     progress=tty_progress() if progress else None)


def pool_args(args: Any) -> tuple[int, int, Optional[int]]:
    """(size_kib, count, node) of ``add_pool_arguments``' options, each checked."""
    return size_arg(args.size), count_arg(args.count), node_arg(args.node)


def size_arg(text: str, option: str = "--size") -> int:
    from hugexml.core.errors import InvalidInput
    from hugexml.core.units import UnitError, parse_cli_size_kib

    try:
        return parse_cli_size_kib(text)
    except UnitError as exc:
        raise InvalidInput(reason=f"{option}: {exc}") from None


def count_arg(value: int, option: str = "--count") -> int:
    from hugexml.core.errors import InvalidInput

    if value < 0 or value > 1 << 24:
        raise InvalidInput(reason=f"{option} {value} is out of range (0-{1 << 24})")
    return value


def node_arg(value: Optional[int]) -> Optional[int]:
    from hugexml.core.errors import InvalidInput
    from hugexml.core.units import MAX_NODES

    if value is not None and not 0 <= value < MAX_NODES:
        raise InvalidInput(reason=f"--node {value} is out of range (0-{MAX_NODES - 1})")
    return value


def fmt_pools(counts: dict[str, int]) -> str:
    """{"0:2048": 3} -> "node 0: 3 x 2M"."""
    from hugexml.core.units import format_kib

    parts = []
    for key, pages in sorted(counts.items(), key=lambda kv: tuple(map(int, kv[0].split(":")))):
        node, size_kib = key.split(":")
        parts.append(f"node {node}: {pages} x {format_kib(int(size_kib))}")
    return ", ".join(parts) or "nothing"


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, sort_keys=True))
