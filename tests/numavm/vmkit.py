"""Helpers for the tests that run inside the numavm VM (real kernel, real sysfs).

``Vm`` runs the CLI and the hook in this process (``hugexml.cli.main.main``,
``hugexml.qemuhook.dispatch.main``: the code the installed commands run, without a 3 s
interpreter start per call under TCG), with a state dir and a config file of the test's own.
``pools()`` reads sysfs directly, never through hugexml. ``HugeFile`` makes pages in use or
reserved on a chosen node the way a guest does: a hugetlbfs file mapped and touched under a
bound memory policy.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import json
import mmap
import os
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

M2, G1 = 2048, 1 << 20
SIZES = (M2, G1)
NODE = "/sys/devices/system/node"
GLOBAL = "/sys/kernel/mm/hugepages"
NAMES = {M2: "2M", G1: "1G"}


def read_int(path: str) -> int:
    with open(path, encoding="ascii") as fh:
        return int(fh.read().strip())


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def node_file(node: int, size_kib: int, name: str) -> str:
    return f"{NODE}/node{node}/hugepages/hugepages-{size_kib}kB/{name}"


def global_file(size_kib: int, name: str) -> str:
    return f"{GLOBAL}/hugepages-{size_kib}kB/{name}"


def nodes() -> list[int]:
    return sorted(int(n[4:]) for n in os.listdir(NODE) if n.startswith("node") and n[4:].isdigit())


def pool(node: int, size_kib: int) -> tuple[int, int, int]:
    """(nr, free, surplus) of one node's pool, from sysfs."""
    return tuple(read_int(node_file(node, size_kib, n))  # type: ignore[return-value]
                 for n in ("nr_hugepages", "free_hugepages", "surplus_hugepages"))


def pools() -> dict[tuple[int, int], tuple[int, int, int]]:
    return {(n, s): pool(n, s) for n in nodes() for s in SIZES}


def global_pool(size_kib: int) -> dict[str, int]:
    return {n: read_int(global_file(size_kib, n)) for n in (
        "nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
        "nr_overcommit_hugepages")}


def meminfo(path: str) -> dict[str, int]:
    out = {}
    with open(path, encoding="ascii") as fh:
        for line in fh:
            words = line.replace(":", " ").split()
            if words and words[0] == "Node":
                words = words[2:]
            if len(words) >= 2:
                out[words[0]] = int(words[1])
    return out


def node_meminfo(node: int) -> dict[str, int]:
    return meminfo(f"{NODE}/node{node}/meminfo")


def set_nr(node: Optional[int], size_kib: int, count: int) -> int:
    """A raw write, as an admin's echo (node None: the global file); returns what sysfs has."""
    path = global_file(size_kib, "nr_hugepages") if node is None else node_file(
        node, size_kib, "nr_hugepages")
    write_text(path, f"{count}\n")
    return read_int(path)


def restore(snapshot: dict[tuple[int, int], tuple[int, int, int]]) -> None:
    """Put every node's persistent pool back (surplus pages of live mappings stay)."""
    for (node, size), (nr, _free, surplus) in sorted(snapshot.items()):
        set_nr(node, size, nr - surplus)


# --- memory policy (set_mempolicy(2)), for pages faulted on a chosen node ---------------
_SYS_SET_MEMPOLICY = 238  # x86_64
MPOL_DEFAULT, MPOL_BIND = 0, 2
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def bound_to(node: int):
    mask = ctypes.c_ulong(1 << node)
    if _libc.syscall(_SYS_SET_MEMPOLICY, MPOL_BIND, ctypes.byref(mask), 64) != 0:
        raise OSError(ctypes.get_errno(), f"set_mempolicy(MPOL_BIND, node {node})")
    try:
        yield
    finally:
        _libc.syscall(_SYS_SET_MEMPOLICY, MPOL_DEFAULT, None, 0)


def ensure_mount(size_kib: int) -> str:
    """A hugetlbfs mount of the size under /run (the guest's own tmpfs), made once."""
    path = f"/run/numavm-huge{NAMES[size_kib]}"
    with open("/proc/self/mounts", encoding="ascii") as fh:
        if any(line.split()[1] == path for line in fh):
            return path
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={NAMES[size_kib]}", "none",
                    path], check=True)
    return path


class HugeFile:
    """A hugetlbfs file: ``touch`` faults pages on a node (in use, they stay with the file
    after unmapping); ``reserve`` maps pages without touching them (resv_hugepages);
    ``close`` unmaps and deletes: the kernel frees the pages (surplus ones to the buddy
    allocator)."""

    count = 0

    def __init__(self, size_kib: int) -> None:
        HugeFile.count += 1
        self.size_kib = size_kib
        self.path = os.path.join(ensure_mount(size_kib), f"f{os.getpid()}-{HugeFile.count}")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.pages = 0
        self.maps: list[mmap.mmap] = []

    def touch(self, node: int, pages: int) -> None:
        page = self.size_kib * 1024
        start = self.pages
        self.pages += pages
        os.ftruncate(self.fd, self.pages * page)
        with bound_to(node):
            m = mmap.mmap(self.fd, self.pages * page, mmap.MAP_SHARED)
            for i in range(start, self.pages):
                m[i * page] = 1
            m.close()

    def reserve(self, pages: int) -> None:
        page = self.size_kib * 1024
        self.pages += pages
        os.ftruncate(self.fd, self.pages * page)
        self.maps.append(mmap.mmap(self.fd, self.pages * page, mmap.MAP_SHARED))

    def close(self) -> None:
        for m in self.maps:
            m.close()
        self.maps = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            os.unlink(self.path)


# --- the CLI and the hook, in this process ----------------------------------------------
@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Vm:
    def __init__(self, tmp: str, margin: str = "1G", **config: str) -> None:
        self.state_dir = os.path.join(tmp, "state")
        self.config_path = os.path.join(tmp, "hugexml.conf")
        # no keep window unless a test asks (release__keep_for=...): pools go back at once
        sections: dict[str, dict[str, str]] = {
            "allocation": {"margin_min": margin}, "hook": {"log": "none"},
            "release": {"keep_for": "1G=0 2M=0"}}
        for key, value in config.items():
            section, _, name = key.partition("__")
            sections.setdefault(section, {})[name] = value
        lines = [line for section, keys in sections.items()
                 for line in [f"[{section}]", *(f"{k} = {v}" for k, v in keys.items())]]
        write_text(self.config_path, "\n".join(lines) + "\n")
        self.tmp = tmp

    @property
    def env(self) -> dict[str, str]:
        return {"HUGEXML_STATE_DIR": self.state_dir, "HUGEXML_CONFIG": self.config_path}

    def cli(self, *argv: str, stdin: bytes = b"") -> Result:
        from hugexml.cli.main import main

        out, err = io.StringIO(), io.StringIO()
        args = ["--state-dir", self.state_dir, "--config", self.config_path, *argv]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(args)
            except SystemExit as exc:  # argparse
                rc = int(exc.code or 0)
        return Result(rc, out.getvalue(), err.getvalue())

    def ok(self, *argv: str) -> Result:
        result = self.cli(*argv)
        assert result.rc == 0, f"hugexml {' '.join(argv)}: exit {result.rc}: {result.err}"
        return result

    def hook(self, name: str, op: str, subop: str, xml: str) -> Result:
        from hugexml.qemuhook.dispatch import main

        out, err = io.StringIO(), io.StringIO()
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            rc = main(["qemu", name, op, subop, "-"], io.BytesIO(xml.encode()), out, err)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return Result(rc, out.getvalue(), err.getvalue())

    def xml_file(self, name: str, xml: str) -> str:
        path = os.path.join(self.tmp, f"{name}.xml")
        write_text(path, xml)
        return path


def domain(name: str, mib: int, size_kib: int = M2, *, mode: Optional[str] = "strict",
           nodeset: Optional[str] = None, cells: tuple[tuple[int, int], ...] = (),
           memnodes: tuple[tuple[int, str, str], ...] = (), memfd: bool = True) -> str:
    """A KVM domain XML with hugepages of ``size_kib``: ``nodeset``/``mode`` for
    <numatune><memory>, ``cells`` as (cell id, MiB) guest NUMA cells, ``memnodes`` as
    (cell id, mode, nodeset)."""
    cpus = max(1, len(cells))
    numa = "".join(f"<cell id='{c}' cpus='{c}' memory='{m}' unit='MiB'/>" for c, m in cells)
    cpu = f"<cpu><numa>{numa}</numa></cpu>" if cells else ""
    tune = ""
    if nodeset is not None or memnodes:
        mem = f"<memory mode='{mode}' nodeset='{nodeset}'/>" if nodeset is not None else ""
        tune = "<numatune>" + mem + "".join(
            f"<memnode cellid='{c}' mode='{m}' nodeset='{ns}'/>" for c, m, ns in memnodes
        ) + "</numatune>"
    source = "<source type='memfd'/>" if memfd else ""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>{mib}</memory>"
            f"<vcpu>{cpus}</vcpu><memoryBacking><hugepages><page size='{size_kib}' unit='KiB'/>"
            f"</hugepages>{source}</memoryBacking>{tune}{cpu}"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
