"""Autostart domains on a fake root, as libvirt lays them out: the definition in
``etc/libvirt/qemu/NAME.xml`` and ``etc/libvirt/qemu/autostart/NAME.xml`` an absolute symlink
to it (``virsh autostart``). Shared by tests/test_boot.py and tests/test_doctor.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

NUMAVM = str(Path(__file__).resolve().parent / "numavm")
if NUMAVM not in sys.path:
    sys.path.append(NUMAVM)  # vmkit.domain, the one domain builder of the tests

M2, G1 = 2048, 1 << 20
QEMU = "etc/libvirt/qemu"


def domain(name: str, mib: int, size_kib: int = M2, nodeset: Optional[str] = None,
           mode: str = "strict", memfd: bool = True,
           cells: tuple[tuple[int, int, str], ...] = ()) -> bytes:
    """A KVM domain with hugepages of ``size_kib`` (tests/numavm/vmkit.py's, as bytes);
    ``nodeset``/``mode``: <numatune><memory>; ``cells``: (cell id, MiB, host nodeset) guest
    cells, each bound strictly."""
    from vmkit import domain as vm_domain

    return vm_domain(name, mib, size_kib, mode=mode, nodeset=nodeset,
                     cells=tuple((c, m) for c, m, _ in cells),
                     memnodes=tuple((c, "strict", ns) for c, _, ns in cells),
                     memfd=memfd).encode()


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
