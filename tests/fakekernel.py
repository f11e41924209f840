"""A fake kernel: a sysfs/procfs tree under a directory whose hugepage counters behave like
Linux's (mm/hugetlb.c ``set_max_huge_pages``), for multi-node and failure tests.

    fk = FakeKernel(tmp_path, nodes=4)
    gw = HostGateway(fk.host_root, io=fk.io)      # or fk.gateway()
    gw.set_node_nr(1, 2048, 30)                   # may grant fewer: see set_cap()

What the fake does on a write to ``nr_hugepages`` (per node or global), as the kernel does:
growing first turns surplus pages back into persistent ones, then allocates fresh pages from
the node's MemFree, bounded by a per-node, per-size "fragmentation cap" (``set_cap``; None =
only memory bounds it) and a one-shot ``short_grant``; it reports success whatever it got.
Shrinking frees only free pages and never below the global reserved + in-use count; what is
still above the target is converted to surplus (freed when the guest unmaps it). ``nr`` in
sysfs includes surplus, as in the kernel. Writing ``compact`` raises caps to what
``set_compact_cap`` configured; ``drop_caches`` turns the node's FilePages into MemFree.

Two options model kernels more closely: ``node_write_counts_surplus`` (Linux before 6.7, e.g.
Debian 12's 6.1: a node write's count is made global with nr_hugepages, surplus pages of
other nodes included, so it over- or under-shoots by them) and ``gigantic_whole_gib`` (1G
pages only from whole GiBs a node does not use for itself). Nodes are chosen as the kernel
does, with per-size alloc/free cursors that persist across writes; a reservation that goes
away frees unused surplus pages (return_unused_surplus_pages). ``demote`` turns free 1G pages
into 2M pages on their node. ``nr_hugepages_mempolicy`` obeys this process's memory policy
(``FakeSysIO.set_mempolicy``, the gateway's setter on a fake root): bound, a global count
works on the bound nodes only. tests/numavm/kernelscenarios.py checks all of it against a real
4-node kernel.

State lives in the files (the counters in the sysfs files themselves, MemFree/FilePages in
the node meminfo; caps, injected faults and a write log under ``.fakekernel/``), every file
is replaced atomically, and each read-modify-write holds an ``flock`` on
``.fakekernel/lock``: many processes can share one fake kernel. A subprocess rebuilds the
io with ``FakeSysIO.from_root(path)`` or the whole helper with ``FakeKernel.attach(path)``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

from hugexml.core.root import HostRoot
from hugexml.host.kernel import NodePool
from hugexml.host.sysfs import HostGateway, SysIO

GIB_KIB = 1024 * 1024
META = ".fakekernel"
NODE = "sys/devices/system/node"
GLOBAL = "sys/kernel/mm/hugepages"
MAX_ORDER = 10
THP_WORDS = ("always", "madvise", "never")
WRITE_LOG = 1000  # writes kept in the log


def _key(node: int, size_kib: int) -> str:
    return f"{node}:{size_kib}"


def _per_node(value: Union[int, Sequence[int]], node: int) -> int:
    """A per-node setting given once for all nodes or as one value per node."""
    return value if isinstance(value, int) else value[node]


def _demote_files(base: str, size_kib: int, sizes_kib: Sequence[int]) -> dict[str, str]:
    """``demote`` (write-only) and ``demote_size`` of a pool that has a smaller size."""
    smaller = [s for s in sizes_kib if s < size_kib]
    if not smaller:
        return {}
    return {f"{base}/demote": "", f"{base}/demote_size": f"{max(smaller)}kB\n"}


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(text)
    os.replace(tmp, path)


class _Kernel:
    """The whole fake state, loaded from the files and stored back (only what changed)."""

    def __init__(self, root: str) -> None:
        self.root = root
        with open(self.meta("state.json"), encoding="utf-8") as fh:
            self.conf: dict[str, Any] = json.load(fh)
        self.nodes: list[int] = self.conf["nodes"]
        self.sizes: list[int] = self.conf["sizes_kib"]
        self.pools: dict[str, list[int]] = {}  # key -> [nr, free, surplus]
        for node in self.nodes:
            for size in self.sizes:
                self.pools[_key(node, size)] = [
                    int(self.read(self.pool_rel(node, size, n)))
                    for n in ("nr_hugepages", "free_hugepages", "surplus_hugepages")]
        self.resv = {s: int(self.read(f"{GLOBAL}/hugepages-{s}kB/resv_hugepages"))
                     for s in self.sizes}
        self.overcommit = {s: int(self.read(f"{GLOBAL}/hugepages-{s}kB/nr_overcommit_hugepages"))
                           for s in self.sizes}
        self.mem: dict[int, dict[str, int]] = {}
        for node in self.nodes:
            lines = self.read(f"{NODE}/node{node}/meminfo").splitlines()
            self.mem[node] = {ln.split()[2].rstrip(":"): int(ln.split()[3]) for ln in lines}
        self.thp = self.read("sys/kernel/mm/transparent_hugepage/enabled")

    # --- files ------------------------------------------------------------------------
    def meta(self, name: str) -> str:
        return os.path.join(self.root, META, name)

    def read(self, rel: str) -> str:
        with open(os.path.join(self.root, rel), encoding="ascii") as fh:
            return fh.read()

    @staticmethod
    def pool_rel(node: int, size_kib: int, name: str) -> str:
        return f"{NODE}/node{node}/hugepages/hugepages-{size_kib}kB/{name}"

    def files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        dflt = self.conf["default_kib"]
        for size in self.sizes:
            tot = [sum(self.pools[_key(n, size)][i] for n in self.nodes) for i in range(3)]
            for name, value in (("nr_hugepages", tot[0]), ("free_hugepages", tot[1]),
                                ("surplus_hugepages", tot[2]), ("resv_hugepages", self.resv[size]),
                                ("nr_overcommit_hugepages", self.overcommit[size]),
                                ("nr_hugepages_mempolicy", tot[0])):
                out[f"{GLOBAL}/hugepages-{size}kB/{name}"] = f"{value}\n"
            for node in self.nodes:
                for i, name in enumerate(("nr_hugepages", "free_hugepages", "surplus_hugepages")):
                    out[self.pool_rel(node, size, name)] = f"{self.pools[_key(node, size)][i]}\n"
        buddy = []
        for node in self.nodes:
            m = self.mem[node]
            d = self.pools.get(_key(node, dflt), [0, 0, 0])
            rows = [("MemTotal", m["MemTotal"], " kB"), ("MemFree", m["MemFree"], " kB"),
                    ("MemUsed", m["MemTotal"] - m["MemFree"], " kB"),
                    ("FilePages", m["FilePages"], " kB"), ("HugePages_Total", d[0], ""),
                    ("HugePages_Free", d[1], ""), ("HugePages_Surp", d[2], "")]
            out[f"{NODE}/node{node}/meminfo"] = "".join(
                f"Node {node} {k + ':':<16}{v:>10}{unit}\n" for k, v, unit in rows)
            buddy.append(f"Node {node}, zone   Normal " + " ".join(
                f"{c:6d}" for c in self.buddy_orders(node)) + " \n")
        out["proc/buddyinfo"] = "".join(buddy)
        g = [sum(self.pools[_key(n, dflt)][i] for n in self.nodes) for i in range(3)]
        free = sum(self.mem[n]["MemFree"] for n in self.nodes)
        cached = sum(self.mem[n]["FilePages"] for n in self.nodes)
        rows2 = [("MemTotal", sum(self.mem[n]["MemTotal"] for n in self.nodes), " kB"),
                 ("MemFree", free, " kB"), ("MemAvailable", free + cached, " kB"),
                 ("Cached", cached, " kB"), ("HugePages_Total", g[0], ""),
                 ("HugePages_Free", g[1], ""), ("HugePages_Rsvd", self.resv.get(dflt, 0), ""),
                 ("HugePages_Surp", g[2], ""), ("Hugepagesize", dflt, " kB"),
                 ("Hugetlb", sum(p[0] * int(k.split(":")[1]) for k, p in self.pools.items()),
                  " kB")]
        out["proc/meminfo"] = "".join(f"{k + ':':<16}{v:>8}{unit}\n" for k, v, unit in rows2)
        out["sys/kernel/mm/transparent_hugepage/enabled"] = self.thp
        return out

    def store(self) -> None:
        with open(self.meta("state.json"), encoding="utf-8") as fh:
            if json.load(fh) != self.conf:
                _atomic_write(self.meta("state.json"), json.dumps(self.conf, sort_keys=True))
        for rel, text in self.files().items():
            path = os.path.join(self.root, rel)
            try:
                with open(path, encoding="ascii") as fh:
                    if fh.read() == text:
                        continue
            except FileNotFoundError:
                pass
            _atomic_write(path, text)

    def buddy_orders(self, node: int) -> list[int]:
        """Free blocks per order: as many 2M (order 9) blocks as the 2M cap lets the node
        grant, the rest of MemFree in blocks too small for a hugepage."""
        free_kib = self.mem[node]["MemFree"]
        orders = [0] * (MAX_ORDER + 1)
        cap = self.conf["caps"].get(_key(node, 2048))
        if cap is None:
            orders[MAX_ORDER], rest = divmod(free_kib, 4 << MAX_ORDER)
            orders[9], rest = divmod(rest, 2048)
        else:
            orders[9] = min(cap, free_kib // 2048)
            orders[8], rest = divmod(free_kib - orders[9] * 2048, 1024)
        orders[0] = rest // 4
        return orders

    # --- the kernel's set_max_huge_pages ---------------------------------------------
    def persistent(self, size: int, nodes: Optional[list[int]] = None) -> int:
        return sum(p[0] - p[2] for k, p in self.pools.items()
                   if int(k.split(":")[1]) == size and (nodes is None or int(k.split(":")[0])
                                                        in nodes))

    def alloc_fresh(self, node: int, size: int) -> bool:
        key = _key(node, size)
        cap = self.conf["caps"].get(key)
        short = self.conf["short_grant"].get(key)
        if self.mem[node]["MemFree"] - self.conf["min_free_kib"] < size or cap == 0 or short == 0:
            return False
        if self.conf.get("gigantic_whole_gib") and size >= GIB_KIB:
            # A gigantic page needs a whole aligned GiB: a node's top one holds its own
            # structures (NODE_DATA, struct pages), the first node's lowest the kernel.
            whole = self.mem[node]["MemTotal"] // size - (2 if node == self.nodes[0] else 1)
            if self.pools[key][0] >= whole:
                return False
        delay = self.conf["grant_delay_s"].get(str(size), 0)
        if delay:
            time.sleep(delay)
        self.mem[node]["MemFree"] -= size
        self.pools[key][0] += 1
        self.pools[key][1] += 1
        if cap is not None:
            self.conf["caps"][key] = cap - 1
        if short is not None:
            self.conf["short_grant"][key] = short - 1
        return True

    def free_page(self, node: int, size: int) -> None:
        key = _key(node, size)
        self.pools[key][0] -= 1
        self.mem[node]["MemFree"] += size
        if self.conf["caps"].get(key) is not None:
            self.conf["caps"][key] += 1

    # --- the kernel's per-size node cursors (h->next_nid_to_alloc / next_nid_to_free) ---
    def _cursor(self, kind: str, size: int, allowed: list[int]) -> int:
        """hstate_next_node_to_alloc/_to_free: the node at the size's cursor (the next
        allowed one if it is not allowed); the cursor moves past it. Both start at node 0,
        persist across writes and follow per-node writes too."""
        cursors = self.conf.setdefault(f"next_nid_to_{kind}", {})
        nid = cursors.get(str(size), self.nodes[0])
        if nid not in allowed:
            nid = _next_allowed(nid, allowed)
        cursors[str(size)] = _next_allowed(nid, allowed)
        return nid

    def _each(self, kind: str, size: int, allowed: list[int], take: Any) -> Optional[int]:
        """for_each_node_mask_to_alloc/_to_free: each allowed node once, from the cursor,
        until ``take(node)`` succeeds; that node, or None."""
        for _ in allowed:
            node = self._cursor(kind, size, allowed)
            if take(node):
                return node
        return None

    def demote(self, size: int, target: int, count: int, node: Optional[int]) -> None:
        """The kernel's demote_store: up to ``count`` free pages that no reservation needs
        become ``size // target`` free pages of the smaller size on the same node; memory
        does not move. Fewer (or none) when fewer are free: still a success."""
        allowed = self.nodes if node is None else [node]
        for _ in range(count):
            free = sum(self.pools[_key(n, size)][1] for n in allowed)
            if free - self.resv[size] <= 0:
                break
            src = self._each("free", size, allowed, lambda n: self.pools[_key(n, size)][1] > 0)
            if src is None:
                break
            big, small = self.pools[_key(src, size)], self.pools[_key(src, target)]
            big[0] -= 1
            big[1] -= 1
            small[0] += size // target
            small[1] += size // target

    def unreserve(self, size: int, pages: int) -> None:
        """A reservation goes away (munmap, close): return_unused_surplus_pages frees up to
        that many free surplus pages, from the nodes the free cursor gives."""
        self.resv[size] -= pages
        for _ in range(min(pages, sum(self.pools[_key(n, size)][2] for n in self.nodes))):
            node = self._each("free", size, self.nodes, lambda n: self.pools[_key(n, size)][2] > 0
                              and self.pools[_key(n, size)][1] > 0)
            if node is None:
                break
            pool = self.pools[_key(node, size)]
            pool[1] -= 1
            pool[2] -= 1
            self.free_page(node, size)

    def set_max(self, size: int, count: int, node: Optional[int],
                allowed: Optional[list[int]] = None) -> None:
        """set_max_huge_pages; ``count`` of a node write is first made global, from the
        persistent counts (Linux 6.7 on) or, with ``node_write_counts_surplus`` (Linux before
        6.7, Debian 12's 6.1 among them), from nr_hugepages, surplus pages included. A global
        write works on ``allowed`` nodes (nr_hugepages_mempolicy: the task's bound nodes),
        by default all."""
        pools = {n: self.pools[_key(n, size)] for n in self.nodes}
        if allowed is None:
            allowed = self.nodes if node is None else [node]
        if node is not None and self.conf.get("node_write_counts_surplus"):
            count += sum(p[0] for p in pools.values()) - pools[node][0]
        elif node is not None:
            count += self.persistent(size) - self.persistent(size, [node])
        while count > self.persistent(size):  # adjust_pool_surplus(-1): surplus first
            found = self._each("alloc", size, allowed, lambda n: pools[n][2] > 0)
            if found is None:
                break
            pools[found][2] -= 1
        while count > self.persistent(size):  # alloc_pool_huge_page: fresh pages
            if self._each("alloc", size, allowed, lambda n: self.alloc_fresh(n, size)) is None:
                break
        used = sum(p[0] - p[1] for p in pools.values())
        min_count = max(count, self.resv[size] + used)
        while min_count < self.persistent(size):  # remove_pool_huge_page: free pages only
            found = self._each("free", size, allowed, lambda n: pools[n][1] > 0)
            if found is None:
                break
            pools[found][1] -= 1
            self.free_page(found, size)
        while count < self.persistent(size):  # adjust_pool_surplus(+1): the rest is surplus
            found = self._each("free", size, allowed, lambda n: pools[n][2] < pools[n][0])
            if found is None:
                break
            pools[found][2] += 1
        for key in list(self.conf["short_grant"]):
            if int(key.split(":")[1]) == size and (node is None or key == _key(node, size)):
                del self.conf["short_grant"][key]



def _next_allowed(nid: int, allowed: list[int]) -> int:
    """next_node_allowed: the next allowed node after ``nid``, wrapping around."""
    later = [n for n in sorted(allowed) if n > nid]
    return later[0] if later else min(allowed)


class FakeSysIO(SysIO):
    """SysIO for a fake root: reads are plain (files are replaced atomically), writes are
    interpreted as the kernel would, under the fake's flock. Picklable (carries only its path:
    a memory policy is the task's own)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        # This process's memory policy, as set_mempolicy(2) keeps a task's: the nodes of
        # MPOL_BIND, None for MPOL_DEFAULT. Writes of nr_hugepages_mempolicy obey it.
        self.bound: Optional[tuple[int, ...]] = None
        self.binds: list[Optional[tuple[int, ...]]] = []  # every call, oldest first

    def set_mempolicy(self, nodes: Optional[tuple[int, ...]]) -> None:
        """The gateway's memory-policy setter on a fake root (the kernel's EINVAL for a
        node that has no memory here)."""
        if nodes is not None:
            with self.locked() as kern:
                if not nodes or any(n not in kern.nodes for n in nodes):
                    raise OSError(errno.EINVAL, "Invalid argument")
        self.binds.append(None if nodes is None else tuple(nodes))
        self.bound = None if nodes is None else tuple(nodes)

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}  # a policy is the task's own: not carried to another

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])  # type: ignore[misc]

    @classmethod
    def from_root(cls, root: str) -> FakeSysIO:
        if not os.path.isfile(os.path.join(root, META, "state.json")):
            raise FileNotFoundError(f"{root} is not a fake kernel root")
        return cls(root)

    def rel(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if rel.startswith(".."):
            raise ValueError(f"FakeSysIO: {path} is outside the fake root {self.root}")
        return rel

    @contextmanager
    def locked(self) -> Iterator[_Kernel]:
        with open(os.path.join(self.root, META, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield _Kernel(self.root)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _fault(self, kern: _Kernel, kind: str, rel: str) -> None:
        queue = kern.conf["faults"][kind].get(rel)
        if not queue:
            return
        skip, err = queue[0]
        if skip > 0:
            queue[0][0] -= 1
            return
        queue.pop(0)
        if not queue:
            del kern.conf["faults"][kind][rel]
        kern.store()
        raise OSError(err, os.strerror(err), os.path.join(self.root, rel))

    def read_text(self, path: str) -> str:
        rel = self.rel(path)
        if os.path.exists(os.path.join(self.root, META, "faults")):
            with self.locked() as kern:
                self._fault(kern, "read", rel)
        if rel.endswith(("/compact", "/demote")) or rel in ("proc/sys/vm/drop_caches",
                                                             "proc/sys/vm/compact_memory"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return super().read_text(path)

    def write_text(self, path: str, text: str) -> None:
        rel = self.rel(path)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        with self.locked() as kern:
            self._fault(kern, "write", rel)
            self._apply(kern, rel, text, path)
            kern.conf["writes"] = [*kern.conf["writes"][-(WRITE_LOG - 1):], [rel, text.strip()]]
            kern.store()

    @staticmethod
    def _number(text: str, path: str) -> int:
        body = text[:-1] if text.endswith("\n") else text
        if not body.isdigit() or not body.isascii():  # kstrtoul
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return int(body)

    def _apply(self, kern: _Kernel, rel: str, text: str, path: str) -> None:
        parts = rel.split("/")
        name = parts[-1]
        size = int(parts[-2][len("hugepages-"):-2]) if parts[-2].startswith("hugepages-") else 0
        if name == "nr_hugepages_mempolicy" and self.bound is not None:
            kern.set_max(size, self._number(text, path), None, list(self.bound))
        elif name in ("nr_hugepages", "nr_hugepages_mempolicy"):
            node = int(parts[4][4:]) if rel.startswith(NODE) else None
            kern.set_max(size, self._number(text, path), node)
        elif name == "demote":
            node = int(parts[4][4:]) if rel.startswith(NODE) else None
            target = int(kern.read(os.path.join(os.path.dirname(rel), "demote_size"))[:-3])
            kern.demote(size, target, self._number(text, path), node)
        elif name == "nr_overcommit_hugepages":
            kern.overcommit[size] = self._number(text, path)
        elif name == "compact" and rel.startswith(NODE):
            node = int(parts[4][4:])
            kern.conf["compactions"][str(node)] = kern.conf["compactions"].get(str(node), 0) + 1
            for size in kern.sizes:
                key, up = _key(node, size), kern.conf["compact_caps"].get(_key(node, size))
                if up is not None and kern.conf["caps"].get(key) is not None:
                    kern.conf["caps"][key] = max(kern.conf["caps"][key], up)
        elif rel == "proc/sys/vm/compact_memory":
            kern.conf["compactions"]["all"] = kern.conf["compactions"].get("all", 0) + 1
            for node in kern.nodes:
                for size in kern.sizes:
                    key, up = _key(node, size), kern.conf["compact_caps"].get(_key(node, size))
                    if up is not None and kern.conf["caps"].get(key) is not None:
                        kern.conf["caps"][key] = max(kern.conf["caps"][key], up)
        elif rel == "proc/sys/vm/drop_caches":
            level = self._number(text, path)
            if not 1 <= level <= 4:
                raise OSError(errno.EINVAL, "Invalid argument", path)
            kern.conf["drop_caches"].append(level)
            if level & 1:
                for node in kern.nodes:
                    kern.mem[node]["MemFree"] += kern.mem[node]["FilePages"]
                    kern.mem[node]["FilePages"] = 0
        elif rel == "sys/kernel/mm/transparent_hugepage/enabled":
            if text.strip() not in THP_WORDS:
                raise OSError(errno.EINVAL, "Invalid argument", path)
            kern.thp = " ".join(f"[{w}]" if w == text.strip() else w for w in THP_WORDS) + "\n"
        else:
            raise PermissionError(errno.EACCES, "Permission denied", path)


def write_hugetlbfs_mounts(base: Any, table: dict[str, str]) -> None:
    """``<base>/proc/self/mounts`` listing hugetlbfs ``{path: pagesize option}`` (e.g.
    ``{"/dev/hugepages1G": "1024M"}``, as the kernel prints it); the mount points exist."""
    rows = ["proc /proc proc rw 0 0"]
    for path, size in table.items():
        rows.append(f"hugetlbfs {path} hugetlbfs rw,relatime,pagesize={size} 0 0")
        os.makedirs(os.path.join(str(base), path.lstrip("/")), exist_ok=True)
    os.makedirs(os.path.join(str(base), "proc/self"), exist_ok=True)
    with open(os.path.join(str(base), "proc/self/mounts"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(rows) + "\n")


class FakeKernel:
    """Builds the tree and offers what a test needs to play host and guest."""

    def __init__(self, tmp_path: Any, nodes: int = 2, sizes_kib: tuple[int, ...] = (2048, GIB_KIB),
                 mem_kib_per_node: Union[int, Sequence[int]] = 16 * GIB_KIB,
                 default_kib: int = 2048, *,
                 used_kib_per_node: Union[int, Sequence[int]] = 512 * 1024,
                 cache_kib_per_node: int = 0,
                 min_free_kib: int = 0, compact_file: bool = True, thp: str = "madvise",
                 mounts: Optional[list[tuple[str, int]]] = None,
                 node_write_counts_surplus: bool = False, gigantic_whole_gib: bool = False,
                 ) -> None:
        self.root = os.path.abspath(str(tmp_path))
        node_ids = list(range(nodes))
        os.makedirs(os.path.join(self.root, META), exist_ok=True)
        conf = {"nodes": node_ids, "sizes_kib": list(sizes_kib), "default_kib": default_kib,
                "caps": {}, "compact_caps": {}, "short_grant": {}, "compactions": {},
                "drop_caches": [], "grant_delay_s": {}, "min_free_kib": min_free_kib,
                "faults": {"read": {}, "write": {}}, "writes": [],
                "node_write_counts_surplus": node_write_counts_surplus,
                "gigantic_whole_gib": gigantic_whole_gib}
        _atomic_write(os.path.join(self.root, META, "state.json"), json.dumps(conf))
        seed = {"sys/kernel/mm/transparent_hugepage/enabled":
                " ".join(f"[{w}]" if w == thp else w for w in THP_WORDS) + "\n",
                "proc/sys/vm/drop_caches": "", "proc/sys/vm/compact_memory": "",
                f"{NODE}/online": f"0-{nodes - 1}\n",
                f"{NODE}/possible": f"0-{nodes - 1}\n", f"{NODE}/has_memory": f"0-{nodes - 1}\n"}
        for node in node_ids:
            total = _per_node(mem_kib_per_node, node)
            free = total - _per_node(used_kib_per_node, node) - cache_kib_per_node
            seed[f"{NODE}/node{node}/meminfo"] = (
                f"Node {node} MemTotal: {total} kB\nNode {node} MemFree: {free} kB\n"
                f"Node {node} MemUsed: 0 kB\nNode {node} FilePages: {cache_kib_per_node} kB\n")
            if compact_file:
                seed[f"{NODE}/node{node}/compact"] = ""
            for size in sizes_kib:
                for name in ("nr_hugepages", "free_hugepages", "surplus_hugepages"):
                    seed[_Kernel.pool_rel(node, size, name)] = "0\n"
                seed.update(_demote_files(os.path.dirname(_Kernel.pool_rel(node, size, "x")),
                                          size, sizes_kib))
        for size in sizes_kib:
            for name in ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
                         "nr_overcommit_hugepages", "nr_hugepages_mempolicy"):
                seed[f"{GLOBAL}/hugepages-{size}kB/{name}"] = "0\n"
            seed.update(_demote_files(f"{GLOBAL}/hugepages-{size}kB", size, sizes_kib))
        for rel, text in seed.items():
            os.makedirs(os.path.dirname(os.path.join(self.root, rel)), exist_ok=True)
            _atomic_write(os.path.join(self.root, rel), text)
        self.io = FakeSysIO(self.root)
        self.set_mounts([("/dev/hugepages", default_kib)] if mounts is None else mounts)
        with self.io.locked() as kern:
            kern.store()

    @classmethod
    def attach(cls, root: str) -> FakeKernel:
        """The helper for an existing fake root (e.g. in a subprocess): builds nothing."""
        self = cls.__new__(cls)
        self.root = os.path.abspath(root)
        self.io = FakeSysIO.from_root(self.root)
        return self

    @property
    def host_root(self) -> HostRoot:
        return HostRoot(self.root)

    def gateway(self) -> HostGateway:
        return HostGateway(self.host_root, io=self.io)

    # --- looking ------------------------------------------------------------------------
    def pool(self, node: int, size_kib: int) -> NodePool:
        return NodePool(*_Kernel(self.root).pools[_key(node, size_kib)])

    def resv(self, size_kib: int) -> int:
        return _Kernel(self.root).resv[size_kib]

    def mem_free_kib(self, node: int) -> int:
        return _Kernel(self.root).mem[node]["MemFree"]

    def counters(self) -> dict[str, Any]:
        """Every counter, for before/after equality checks."""
        kern = _Kernel(self.root)
        return {"pools": kern.pools, "resv": kern.resv, "overcommit": kern.overcommit,
                "mem": kern.mem}

    def conf(self) -> dict[str, Any]:
        return _Kernel(self.root).conf

    def writes(self) -> list[tuple[str, str]]:
        """Every write the fake accepted, oldest first: (path under the root, value)."""
        return [(rel, text) for rel, text in self.conf()["writes"]]

    def compactions(self, node: int) -> int:
        return int(self.conf()["compactions"].get(str(node), 0))

    # --- host knobs ---------------------------------------------------------------------
    def _edit(self, fn: Any) -> Any:
        with self.io.locked() as kern:
            result = fn(kern)
            kern.store()
            return result

    def set_cap(self, node: int, size_kib: int, pages: Optional[int]) -> None:
        """At most ``pages`` more fresh pages (freed pages raise it again); None: no cap."""
        self._edit(lambda k: k.conf["caps"].__setitem__(_key(node, size_kib), pages))

    def set_compact_cap(self, node: int, size_kib: int, pages: Optional[int]) -> None:
        """What a write to the node's ``compact`` raises the cap to (None: compaction helps
        nothing)."""
        self._edit(lambda k: k.conf["compact_caps"].__setitem__(_key(node, size_kib), pages))

    def short_grant(self, node: int, size_kib: int, pages: int) -> None:
        """The next growing write to this pool grants at most ``pages`` (one shot)."""
        self._edit(lambda k: k.conf["short_grant"].__setitem__(_key(node, size_kib), pages))

    def set_grant_delay(self, size_kib: int, seconds_per_page: float) -> None:
        self._edit(lambda k: k.conf["grant_delay_s"].__setitem__(str(size_kib), seconds_per_page))

    def fail_next_write(self, rel: str, err: int = errno.EIO, times: int = 1,
                        after: int = 0) -> None:
        """The next ``times`` writes to ``rel`` (path under the root) fail with ``err``,
        after ``after`` writes that succeed."""
        self._fault("write", rel, err, times, after)

    def fail_next_read(self, rel: str, err: int = errno.EIO, times: int = 1,
                       after: int = 0) -> None:
        self._fault("read", rel, err, times, after)

    def _fault(self, kind: str, rel: str, err: int, times: int, after: int) -> None:
        def add(kern: _Kernel) -> None:
            queue = kern.conf["faults"][kind].setdefault(rel, [])
            queue.extend([[after, err]] + [[0, err] for _ in range(times - 1)])
        self._edit(add)
        open(os.path.join(self.root, META, "faults"), "a").close()

    def preset(self, node: int, size_kib: int, nr: int) -> None:
        """Boot-time pages (``hugepages=`` on the command line): nr free pages, no cap."""
        def boot(kern: _Kernel) -> None:
            pool = kern.pools[_key(node, size_kib)]
            kern.mem[node]["MemFree"] -= (nr - pool[0]) * size_kib
            pool[0], pool[1] = nr, pool[1] + nr - pool[0]
            assert pool[1] >= 0 and kern.mem[node]["MemFree"] >= 0, "preset below in-use"
        self._edit(boot)

    def consume_memory(self, node: int, kib: int) -> None:
        """Other processes take (kib > 0) or give back (kib < 0) normal memory."""
        def take(kern: _Kernel) -> None:
            if not 0 <= kern.mem[node]["MemFree"] - kib <= kern.mem[node]["MemTotal"]:
                raise ValueError(f"node {node}: cannot consume {kib} kB")
            kern.mem[node]["MemFree"] -= kib
        self._edit(take)

    def set_mounts(self, mounts: list[tuple[str, int]]) -> None:
        lines = ["proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0",
                 "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0"]
        lines += [f"hugetlbfs {path} hugetlbfs rw,relatime,pagesize="
                  f"{f'{size // 1024}M' if size >= 1024 else f'{size}K'} 0 0"
                  for path, size in mounts]
        for rel in ("proc/self/mounts", "proc/mounts"):
            os.makedirs(os.path.dirname(os.path.join(self.root, rel)), exist_ok=True)
            _atomic_write(os.path.join(self.root, rel), "\n".join(lines) + "\n")

    # --- guest side ---------------------------------------------------------------------
    def use(self, node: int, size_kib: int, pages: int, reserved: bool = False) -> None:
        """A guest faults in ``pages`` free pages (consuming reservations if ``reserved``)."""
        def fault(kern: _Kernel) -> None:
            pool = kern.pools[_key(node, size_kib)]
            if pool[1] < pages or (reserved and kern.resv[size_kib] < pages):
                raise ValueError(f"node {node}: {pages} x {size_kib} kB not free/reserved")
            pool[1] -= pages
            if reserved:
                kern.resv[size_kib] -= pages
        self._edit(fault)

    def unuse(self, node: int, size_kib: int, pages: int) -> None:
        """A guest unmaps pages: surplus pages go back to the buddy allocator, others to
        the free list (the kernel's free_huge_folio)."""
        def unmap(kern: _Kernel) -> None:
            pool = kern.pools[_key(node, size_kib)]
            if pool[0] - pool[1] < pages:
                raise ValueError(f"node {node}: fewer than {pages} x {size_kib} kB in use")
            for _ in range(pages):
                if pool[2] > 0:
                    pool[2] -= 1
                    kern.free_page(node, size_kib)
                else:
                    pool[1] += 1
        self._edit(unmap)

    def reserve(self, size_kib: int, pages: int) -> None:
        """mmap of a hugetlbfs file: free pages are reserved (resv_hugepages)."""
        def resv(kern: _Kernel) -> None:
            free = sum(kern.pools[_key(n, size_kib)][1] for n in kern.nodes)
            if free - kern.resv[size_kib] < pages or kern.resv[size_kib] + pages < 0:
                raise ValueError(f"cannot reserve {pages} x {size_kib} kB")
            kern.resv[size_kib] += pages
        self._edit(resv)

    def unreserve(self, size_kib: int, pages: int) -> None:
        """The mapping goes away: its reservation, and surplus pages nobody needs then."""
        def drop(kern: _Kernel) -> None:
            if not 0 < pages <= kern.resv[size_kib]:
                raise ValueError(f"cannot unreserve {pages} x {size_kib} kB")
            kern.unreserve(size_kib, pages)
        self._edit(drop)
