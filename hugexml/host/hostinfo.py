"""Read the host description the plan needs (default size, sizes, nodes). Read-only.

Uses only ``os``: the hook imports this on its hot path.
"""
from __future__ import annotations

import os

from hugexml.core.errors import HostError
from hugexml.core.model import HostInfo
from hugexml.core.root import HostRoot
from hugexml.core.units import numbered


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc


def read_default_page_kib(root: HostRoot) -> int | None:
    path = root.path("proc/meminfo")
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Hugepagesize:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError) as exc:
        raise HostError(path=path, reason=f"cannot read Hugepagesize: {exc}") from exc
    return None


def read_page_sizes_kib(root: HostRoot) -> tuple[int, ...]:
    sizes = {numbered(name, "hugepages-", "kB")
             for name in _listdir(root.path("sys/kernel/mm/hugepages"))}
    return tuple(sorted(size for size in sizes if size is not None))


def read_nodes(root: HostRoot) -> tuple[int, ...]:
    nodes = {numbered(name, "node") for name in _listdir(root.path("sys/devices/system/node"))}
    return tuple(sorted(node for node in nodes if node is not None))


def read_host_info(root: HostRoot) -> HostInfo:
    nodes = read_nodes(root)
    return HostInfo(
        default_page_kib=read_default_page_kib(root),
        page_sizes_kib=read_page_sizes_kib(root),
        nodes=nodes if nodes else (0,),
    )
