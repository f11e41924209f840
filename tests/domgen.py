"""A seeded generator of libvirt domain XMLs about memory, NUMA and memory devices.

``generate(seed, count)`` yields ``(name, xml)`` pairs; the same seed gives the same domains
on every machine (one ``random.Random`` per seed, nothing else random). What it covers:

- ``<memory>``, ``<currentMemory>`` and ``<maxMemory>`` in every unit libvirt reads (none,
  b, bytes, k/K/KiB/KB, M/MiB/MB, G/GiB/GB, T/TiB/TB, mixed case), including values that do
  not divide the unit, sizes that overflow, trailing spaces, unknown units, zero;
- guest NUMA cells with and without ``memAccess`` and ``discard``, explicit, implicit,
  duplicated and out-of-range ids, cpus that overlap or exceed ``<vcpu>``;
- ``<hugepages>``: bare, or 1-3 ``<page>`` elements of 4K, 1M, 2M, 4M, 1G and 0 in any
  unit, with and without ``nodeset`` (guest cells that overlap, are missing, or ``0``
  without cells, and libvirt's ``^`` syntax);
- ``<memoryBacking>`` ``source`` (file, anonymous, memfd), ``access``, ``allocation`` (mode,
  threads), ``discard``, ``nosharepages``, ``locked``;
- ``<numatune>`` ``<memory>`` (every mode, placement static/auto, nodesets) and
  ``<memnode>`` (every mode, good and bad cell ids), ``<vcpu placement='auto'>``;
- memory devices dimm, nvdimm and virtio-mem with and without ``<source><pagesize>`` and
  ``<nodemask>``, target nodes that exist or not, and ``<maxMemory>`` with and without slots.

Most choices are valid; each invalid variant has a small probability, so that roughly half
of the domains are ones libvirt accepts.
"""
from __future__ import annotations

import random
import uuid as uuidlib
from collections.abc import Iterator
from typing import Optional

KIB = 1024
MIB = 1024
GIB = 1024 * 1024

# unit -> bytes per unit (libvirt's virScaleInteger); None: the default, KiB
UNITS: dict[Optional[str], int] = {
    None: 1024, "b": 1, "bytes": 1, "k": 1024, "K": 1024, "KiB": 1024, "KB": 1000,
    "kb": 1000, "M": 1024**2, "MiB": 1024**2, "mib": 1024**2, "MB": 1000**2, "G": 1024**3,
    "GiB": 1024**3, "GB": 1000**3, "gB": 1000**3, "T": 1024**4, "TiB": 1024**4,
    "TB": 1000**4,
}
PAGE_KIB = (4, 2048, 2048, 2048, 2048, 1048576, 1048576, 1048576, 1024, 4096)
MODES = ("strict", "preferred", "interleave", "restrictive")
ACCESS = ("shared", "private")


class Gen:
    def __init__(self, rng: random.Random, name: str) -> None:
        self.r = rng
        self.name = name

    def p(self, prob: float) -> bool:
        return self.r.random() < prob

    # --- values ---------------------------------------------------------------------
    def size(self, kib: int, units: Optional[list[Optional[str]]] = None) -> tuple[str, str]:
        """(value text, unit attribute text or '') for ``kib``, in a random unit; the value
        is rounded up when the unit does not divide it, as a person would write it (only in
        units where that adds less than 1%, or 1 KiB)."""
        choices = [u for u in (units if units is not None else list(UNITS))
                   if (kib * 1024) % UNITS[u] == 0 or UNITS[u] <= max(kib * 1024 // 100, 1024)]
        unit = self.r.choice(choices or [None])
        scale = UNITS[unit]
        value = -(-kib * 1024 // scale)
        text = str(value)
        if self.p(0.004):
            text = self.r.choice([f"{value} ", f" {value}", f"+{value}", f"-{value}", "",
                                  "0x10", f"{value}.5", "18446744073709551616"])
        if self.p(0.002):
            unit = self.r.choice(["Ki", "XiB", " MiB", "kilobytes", "iB"])
        return text, "" if unit is None else f" unit='{unit}'"

    def elem(self, tag: str, kib: int, extra: str = "") -> str:
        value, unit = self.size(kib)
        return f"<{tag}{unit}{extra}>{value}</{tag}>"

    def nodeset(self, universe: int, allow_empty: bool = False) -> str:
        """A libvirt bitmap over 0..universe-1 (sometimes beyond, or badly written)."""
        if self.p(0.03):
            return self.r.choice(["", "a", "1-0", "0,^0", "^0", "0-", "0,,1", "1 2", "0-16384",
                                  "^0,0", " 0 , 1 ", "0-1,^1", "2000"])
        nodes = sorted(self.r.sample(range(max(universe, 1)),
                                     self.r.randint(1, max(universe, 1))))
        if self.p(0.05):
            nodes.append(universe + self.r.randint(0, 2))
        parts = [str(n) for n in nodes]
        if len(nodes) >= 2 and nodes == list(range(nodes[0], nodes[-1] + 1)) and self.p(0.5):
            parts = [f"{nodes[0]}-{nodes[-1]}"]
        return ",".join(parts)

    # --- the domain ---------------------------------------------------------------------
    def domain(self) -> str:
        r = self.r
        vcpus = r.randint(1, 4)
        ncells = 0 if self.p(0.4) else r.randint(1, 4)
        cells_kib = [r.choice([256, 512, 768, 1024, 1025, 1536, 2048]) * MIB // 1024 * 1024
                     for _ in range(ncells)]
        if self.p(0.1):
            cells_kib = [c + r.choice([1, 4, 512, 1000]) for c in cells_kib]
        total_kib = sum(cells_kib) if ncells else r.choice([128, 256, 512, 1000, 1024, 2048,
                                                            3072, 4096]) * MIB
        if not ncells and self.p(0.1):
            total_kib += r.choice([1, 4, 100, 512, 1023])
        devices, dev_kib, need_hotplug = self.memory_devices(ncells)
        uuid = uuidlib.UUID(int=r.getrandbits(128))
        parts = [f"<name>{self.name}</name>", f"<uuid>{uuid}</uuid>"]
        if need_hotplug or self.p(0.05):
            max_kib = (total_kib + dev_kib) * 2 + r.choice([1, 512, 1024]) * MIB
            if self.p(0.03):
                max_kib = total_kib // 2
            if self.p(0.03):
                slots = ""
            else:
                count = r.choice([0, 1, 2, 8]) if self.p(0.03) else 16
                slots = f" slots='{count}'"
            parts.append(self.elem("maxMemory", max_kib, slots))
        if not (ncells and self.p(0.05)):  # libvirt: <memory> may be left out with cells
            mem_kib = total_kib + dev_kib
            if self.p(0.03):
                mem_kib = r.choice([0, dev_kib // 2, 2**62, 2**54])
            dump = f" dumpCore='{r.choice(['on', 'off', 'maybe'])}'" if self.p(0.03) else ""
            parts.append(self.elem("memory", mem_kib, dump))
        if self.p(0.1):
            parts.append(self.elem("currentMemory", (total_kib + dev_kib) // r.choice([1, 2])))
        if self.p(0.03):
            parts.append("<memtune>" + self.elem(r.choice(["hard_limit", "soft_limit",
                                                           "min_guarantee"]), 8 * GIB)
                         + "</memtune>")
        parts.append(self.memory_backing(ncells))
        placement = " placement='auto'" if self.p(0.02) else ""
        parts.append(f"<vcpu{placement}>{vcpus}</vcpu>")
        parts.append(self.numatune(ncells))
        machine = "q35" if self.p(0.2) else "pc"
        parts.append(f"<os><type arch='x86_64' machine='{machine}'>hvm</type></os>")
        if ncells or self.p(0.02):
            parts.append(self.cpu(ncells, cells_kib, vcpus))
        parts.append("<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
                     f"<memballoon model='none'/>{devices}</devices>")
        body = "\n  ".join(p for p in parts if p)
        return f"<domain type='kvm'>\n  {body}\n</domain>\n"

    def cpu(self, ncells: int, cells_kib: list[int], vcpus: int) -> str:
        r = self.r
        if not ncells:
            return "<cpu><numa/></cpu>"
        owners = [i % ncells for i in range(vcpus)]
        r.shuffle(owners)
        cells = []
        for i, kib in enumerate(cells_kib):
            cpus = [c for c, o in enumerate(owners) if o == i]
            if self.p(0.03):
                cpus.append(r.randint(0, vcpus + 1))
            attrs = ""
            cid: Optional[int] = i
            if self.p(0.03):
                cid = r.choice([None, ncells, 0, i + 1])
            if cid is not None:
                attrs += f" id='{cid}'"
            if cpus:
                attrs += f" cpus='{','.join(map(str, sorted(set(cpus))))}'"
            if not self.p(0.01):
                value, unit = self.size(kib)
                attrs += f" memory='{value}'{unit}"
            if self.p(0.25):
                attrs += f" memAccess='{r.choice(ACCESS + (('default',) if self.p(0.1) else ()))}'"
            if self.p(0.1):
                attrs += f" discard='{r.choice(['yes', 'no'])}'"
            cells.append(f"<cell{attrs}/>")
        return "<cpu><numa>" + "".join(cells) + "</numa></cpu>"

    def pages(self, ncells: int) -> str:
        r = self.r
        if self.p(0.2):
            return "<hugepages/>"
        count = r.choice([1, 1, 1, 2, 2, 3]) if ncells else (1 if not self.p(0.05) else 2)
        # page nodesets: the cells dealt out to the pages (one page may be the master)
        owner = [r.randrange(count) for _ in range(ncells)]
        master = r.randrange(count) if self.p(0.5) or not ncells else None
        out = []
        for i in range(count):
            kib = 0 if self.p(0.005) else r.choice(PAGE_KIB)
            value, unit = self.size(kib, [None, "KiB", "k", "M", "MiB", "G", "GiB", "b", "KB"])
            attrs = f" size='{value}'{unit}" if not self.p(0.005) else ""
            cells = [c for c in range(ncells) if owner[c] == i]
            if self.p(0.03):
                attrs += f" nodeset='{self.nodeset(ncells or 1)}'"
            elif i != master and cells:
                attrs += f" nodeset='{','.join(map(str, cells))}'"
            elif i != master and not ncells:
                attrs += " nodeset='0'"
            out.append(f"<page{attrs}/>")
        return "<hugepages>" + "".join(out) + "</hugepages>"

    def memory_backing(self, ncells: int) -> str:
        r = self.r
        if self.p(0.15):
            return ""
        kids = []
        if self.p(0.75):
            kids.append(self.pages(ncells))
        if self.p(0.05):
            kids.append("<nosharepages/>")
        if self.p(0.05):
            kids.append("<locked/>")
        if self.p(0.35):
            source = r.choice(["memfd", "memfd", "file", "anonymous"]
                              + (["none", "ram"] if self.p(0.05) else []))
            kids.append(f"<source type='{source}'/>")
        if self.p(0.25):
            modes = ACCESS + (("default",) if self.p(0.1) else ())
            kids.append(f"<access mode='{r.choice(modes)}'/>")
        if self.p(0.25):
            mode = r.choice(["immediate", "ondemand"] + (["lazy"] if self.p(0.05) else []))
            threads = f" threads='{r.choice([1, 2, 8, -1])}'" if self.p(0.2) else ""
            kids.append(f"<allocation mode='{mode}'{threads}/>")
        if self.p(0.1):
            kids.append("<discard/>")
        return "<memoryBacking>" + "".join(kids) + "</memoryBacking>"

    def numatune(self, ncells: int) -> str:
        r = self.r
        if self.p(0.55):
            return ""
        kids = []
        if self.p(0.8):
            attrs = ""
            if self.p(0.85):
                attrs += f" mode='{r.choice(MODES + (('bind',) if self.p(0.05) else ()))}'"
            placement = r.choice([None] * 6 + ["static", "auto"])
            if placement:
                attrs += f" placement='{placement}'"
            if (placement != "auto" and self.p(0.92)) or self.p(0.05):
                attrs += f" nodeset='{self.nodeset(1)}'"
            kids.append(f"<memory{attrs}/>")
        if (ncells and self.p(0.5)) or self.p(0.05):
            for cell in r.sample(range(max(ncells, 1)), r.randint(1, max(ncells, 1))):
                if self.p(0.05):
                    cell = r.choice([ncells, cell, -1])
                mode = f" mode='{r.choice(MODES)}'" if self.p(0.8) else ""
                nodeset = f" nodeset='{self.nodeset(1)}'" if not self.p(0.02) else ""
                kids.append(f"<memnode cellid='{cell}'{mode}{nodeset}/>")
        return "<numatune>" + "".join(kids) + "</numatune>"

    def memory_devices(self, ncells: int) -> tuple[str, int, bool]:
        r = self.r
        if self.p(0.65) or (not ncells and not self.p(0.05)):
            return "", 0, False
        out = []
        total = 0
        for _ in range(r.randint(1, 3)):
            model = r.choice(["dimm", "dimm", "nvdimm", "virtio-mem"])
            kib = r.choice([128, 256, 512, 1024, 1025]) * MIB
            attrs = f" model='{model}'"
            if self.p(0.1):
                attrs += f" access='{r.choice(ACCESS)}'"
            if self.p(0.05):
                attrs += f" discard='{r.choice(['yes', 'no'])}'"
            source = []
            if model == "nvdimm":
                if not self.p(0.05):
                    source.append(f"<path>/tmp/{self.name}-nvdimm</path>")
            else:
                if self.p(0.4):
                    page = r.choice(PAGE_KIB)
                    value, unit = self.size(page, [None, "KiB", "M", "G", "b"])
                    source.append(f"<pagesize{unit}>{value}</pagesize>")
                if self.p(0.3):
                    source.append(f"<nodemask>{self.nodeset(1)}</nodemask>")
            target = [self.elem("size", kib)]
            if (ncells and not self.p(0.05)) or self.p(0.05):
                node = r.randrange(max(ncells, 1))
                if self.p(0.05):
                    node = ncells + r.randint(0, 1)
                target.append(f"<node>{node}</node>")
            if model == "virtio-mem":
                block = 2048 if not self.p(0.05) else 1024
                target.append(self.elem("block", block))
                target.append(self.elem("requested", r.choice([0, kib // 2, kib])
                                        // block * block))
            if model == "nvdimm" and self.p(0.2):
                target.append("<label>" + self.elem("size", 128) + "</label>")
            src = f"<source>{''.join(source)}</source>" if source else ""
            out.append(f"<memory{attrs}>{src}<target>{''.join(target)}</target></memory>")
            total += kib
        return "".join(out), total, True


def generate(seed: int, count: int, prefix: str = "hxtest-diff") -> Iterator[tuple[str, str]]:
    rng = random.Random(seed)
    for index in range(count):
        name = f"{prefix}-{seed}-{index}"
        yield name, Gen(rng, name).domain()
