"""One process of tests/test_concurrency.py: reserve a guest's pages on a shared fake host.

usage: alloc_worker.py KIND ROOT STATE_DIR NAME PAGES NODES|any [release]
KIND 'fake': HostGateway over FakeSysIO.from_root(ROOT) (tests/fakekernel.py);
KIND 'sim': the JSON-file SimKernel at ROOT/sim.json.
Prints one JSON line: the reserve result, or {"error": message}.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from allocfix import guest, make_config, plan

from hugexml.alloc.allocator import Allocator
from hugexml.core.errors import HugexmlError


def gateway(kind: str, root: str):
    if kind == "sim":
        from simkernel import FileSimKernel

        return FileSimKernel.open(os.path.join(root, "sim.json"))
    from fakekernel import FakeSysIO

    from hugexml.core.root import HostRoot
    from hugexml.host.sysfs import HostGateway

    return HostGateway(HostRoot(root), io=FakeSysIO.from_root(root))


def main(argv: list[str]) -> int:
    kind, root, state_dir, name, pages, nodes = argv[1:7]
    host_nodes = None if nodes == "any" else tuple(int(n) for n in nodes.split(","))
    config = make_config(margin_min_kib=0, margin_percent=0, lock_timeout_s=60)
    alloc = Allocator(gateway(kind, root), state_dir, config)
    try:
        result = alloc.reserve(plan(name, (int(pages), host_nodes, "strict" if host_nodes
                                           else None)), guest(name))
        if argv[7:8] == ["release"]:
            result["released"] = alloc.release(guest(name))["released"]
    except HugexmlError as exc:
        result = {"error": str(exc)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
