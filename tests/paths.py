"""Where the tests' data lives: one place, so every test module agrees.

The libvirt corpus (tests/data/libvirt-qemuxmlconf, see its SOURCE.md) is vendored from
../shared/testdata so a clean clone tests the same cases anywhere; HUGEXML_CORPUS
points the tests at another copy.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("HUGEXML_CORPUS", REPO / "tests" / "data" / "libvirt-qemuxmlconf"))

# The corpus is newer libvirt's. Cases libvirt 9.0 (this project's reference) refuses, with
# 9.0's message and the one edit under which 9.0 builds the same memory layout; and .err
# cases 9.0 accepts. tests/libvirt/test_differential.py checks both against the real daemon.
REFUSED_BY_9_0: dict[str, tuple[str, tuple[str, str]]] = {
    # 9.0 counts every memory device against the slots, newer libvirt only dimm/nvdimm
    "memory-hotplug-multiple": ("memory device count '4' exceeds slots count '2'",
                                ("slots='2'", "slots='4'")),
    # 9.0 wants slots with any <maxMemory>; newer libvirt not for virtio-mem alone
    "memory-hotplug-virtio-mem": ("both maximum memory size and memory slot count must be "
                                  "specified", ("<maxMemory unit=", "<maxMemory slots='2' unit=")),
}
ACCEPTED_BY_9_0: dict[str, str] = {
    # newer libvirt also wants 'restrictive' on <memory> when a memnode has it; 9.0 does not
    "numatune-memnode-restrictive-mode-err-mixed": "'restrictive' mode is required in memory "
                                                   "element when mode is 'restrictive' in "
                                                   "memnode element",
}


def corpus_xml(name: str) -> bytes:
    """A corpus case's XML, with the edit ``REFUSED_BY_9_0`` names for it."""
    data = (CORPUS / f"{name}.xml").read_bytes()
    if name in REFUSED_BY_9_0:
        old, new = REFUSED_BY_9_0[name][1]
        assert old.encode() in data, (name, old)
        data = data.replace(old.encode(), new.encode(), 1)
    return data
