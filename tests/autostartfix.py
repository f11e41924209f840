"""Autostart domains on a fake root, as libvirt lays them out: the definition in
``etc/libvirt/qemu/NAME.xml`` and ``etc/libvirt/qemu/autostart/NAME.xml`` an absolute symlink
to it (``virsh autostart``). Shared by tests/test_boot.py and tests/test_doctor.py."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

M2, G1 = 2048, 1 << 20
QEMU = "etc/libvirt/qemu"


def domain(name: str, mib: int, size_kib: int = M2, nodeset: Optional[str] = None,
           mode: str = "strict", memfd: bool = True,
           cells: tuple[tuple[int, int, str], ...] = ()) -> bytes:
    """A KVM domain with hugepages of ``size_kib``; ``nodeset``/``mode``: <numatune><memory>;
    ``cells``: (cell id, MiB, host nodeset) guest cells, each bound strictly."""
    numa = "".join(f"<cell id='{c}' cpus='{c}' memory='{m}' unit='MiB'/>" for c, m, _ in cells)
    cpu = f"<cpu><numa>{numa}</numa></cpu>" if cells else ""
    tune = ""
    if nodeset is not None or cells:
        mem = f"<memory mode='{mode}' nodeset='{nodeset}'/>" if nodeset is not None else ""
        tune = "<numatune>" + mem + "".join(
            f"<memnode cellid='{c}' mode='strict' nodeset='{ns}'/>" for c, _, ns in cells
        ) + "</numatune>"
    source = "<source type='memfd'/>" if memfd else ""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>{mib}</memory>"
            f"<vcpu>{max(1, len(cells))}</vcpu><memoryBacking><hugepages><page "
            f"size='{size_kib}' unit='KiB'/></hugepages>{source}</memoryBacking>{tune}{cpu}"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>").encode()


def autostart(base: Path, name: str, xml: Optional[bytes],
              target: Optional[str] = None) -> Path:
    """Define ``name`` (``xml``; None: no definition) and mark it autostart: the link
    ``autostart/NAME.xml`` -> ``target`` (default: the definition's absolute host path)."""
    qemu = Path(base) / QEMU
    (qemu / "autostart").mkdir(parents=True, exist_ok=True)
    if xml is not None:
        (qemu / f"{name}.xml").write_bytes(xml)
    link = qemu / "autostart" / f"{name}.xml"
    os.symlink(target or f"/{QEMU}/{name}.xml", link)
    return link
