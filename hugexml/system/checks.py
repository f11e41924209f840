"""What a ``hugexml doctor`` check returns, ``Check`` with one of four statuses, and what a
check may ask of the doctor (``Context``: ``doctor.Doctor`` is one). The checks live in
``hugexml.system.doctor`` and ``hugexml.system.doctor_boot``; both import this module, neither
the other's checks import the doctor.
"""
from __future__ import annotations

from hugexml.core.typed import Typed

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence
    from typing import Any, Optional, Protocol

    from hugexml.core.config import Config
    from hugexml.core.model import HostInfo
    from hugexml.core.root import HostRoot
    from hugexml.host.gateway import Gateway
    from hugexml.system.autostart import Guest, Skipped

    class Context(Protocol):
        """What the checks read: the host and its root, the state dir and config, the
        libvirt daemons found, the host gateway and the autostart guests."""

        root: HostRoot
        host: HostInfo
        state_dir: str
        config_path: Optional[str]
        daemons: list[Any]

        def gateway(self) -> Gateway: ...
        def config(self) -> Config: ...
        def autostart(self) -> tuple[list[Guest], list[Skipped]]: ...

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


class Check(Typed, frozen=True):
    name: str
    status: str
    message: str
    fix: Optional[str] = None

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.status.upper():4} {self.name}: {self.message}{fix}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


def exit_code(checks: Sequence[Check]) -> int:
    statuses = {c.status for c in checks}
    return 2 if FAIL in statuses else 1 if WARN in statuses else 0
