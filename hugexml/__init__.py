"""hugexml: hugepages for KVM guests with no manual steps on the hypervisor."""
from __future__ import annotations

__version__ = "0.1.0"
