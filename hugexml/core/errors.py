"""One exception hierarchy. Each class carries a message template (nova's msg_fmt).

Callers pass the template's fields as keyword arguments; the hook and the CLI turn any
HugexmlError into ONE stderr line and the class's exit code. Anything else is a
programming error and keeps its traceback.
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any


_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7f)}


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``...): a domain name
    holding a newline or a terminal escape can never forge a line of output."""
    return str(text).translate(_ESCAPES)


class HugexmlError(Exception):
    msg_fmt = "hugexml failed"
    exit_code = 2

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            # A KeyError here is a programming error: let it propagate.
            message = self.msg_fmt % kwargs
        # One line, always: the hook's stderr becomes virsh's error line. Whitespace runs
        # fold to one space; any other control character is escaped.
        self.message = printable(" ".join(str(message).split()))
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


# --- input ---------------------------------------------------------------------------
class InvalidInput(HugexmlError):
    """Bad user input: XML that cannot be read, bad option values."""

    msg_fmt = "invalid input: %(reason)s"


class InvalidXML(InvalidInput):
    msg_fmt = "%(source)s: not a readable domain XML: %(reason)s"


class InvalidDomain(InvalidInput):
    """What libvirt itself would reject (message worded as libvirt words it)."""

    msg_fmt = "domain '%(domain)s': %(reason)s"


class UnsupportedPageSize(InvalidDomain):
    msg_fmt = (
        "domain '%(domain)s': hugepage size %(size_kib)d KiB is not supported by this host "
        "(supported: %(supported)s)"
    )


class NoSuchHostNode(InvalidDomain):
    msg_fmt = "domain '%(domain)s': NUMA node %(node)d is unavailable (host nodes: %(nodes)s)"


class ConfigError(InvalidInput):
    msg_fmt = "config %(path)s: %(key)s: %(reason)s"


# --- host ----------------------------------------------------------------------------
class HostError(HugexmlError):
    """Reading or writing the host (sysfs, procfs, mounts) failed."""

    msg_fmt = "%(path)s: %(reason)s"
    exit_code = 1


class PoolShort(HostError):
    msg_fmt = (
        "domain '%(domain)s': node %(node)d, %(size_kib)d KiB pages: needed %(needed)d more, "
        "the kernel granted %(got)d; pools left unchanged. %(detail)s"
    )


class InsufficientPages(HostError):
    msg_fmt = (
        "domain '%(domain)s': node %(node)s, %(size_kib)d KiB pages: needs %(needed)d, "
        "%(available)d available and %(possible)d more allocatable. %(detail)s"
    )


class MarginViolation(HostError):
    msg_fmt = (
        "domain '%(domain)s': node %(node)d: taking %(pages)d x %(size_kib)d KiB pages would "
        "leave %(left_kib)d KiB of normal memory, below the floor of %(floor_kib)d KiB "
        "(margin in hugexml.conf)"
    )


class DoesNotFitAtBoot(HugexmlError):
    """``boot --from-guests``: the autostart guests' demand breaks a node's margin at boot."""

    msg_fmt = ("autostart guest '%(domain)s' does not fit at boot: %(reason)s ([allocation] "
               "margin_min, margin_percent)")


class LockTimeout(HostError):
    msg_fmt = "could not take the lock %(path)s within %(seconds).1f s (another hugexml holds it)"


class LedgerError(HostError):
    msg_fmt = "state %(path)s: %(reason)s"


class GuestConflict(InvalidDomain):
    msg_fmt = ("domain '%(domain)s': uuid %(uuid)s belongs to guest '%(other)s', whose claim "
               "is %(state)s: two guests cannot share a uuid (release '%(other)s' first)")
    exit_code = 1


class MountMissing(HostError):
    msg_fmt = "domain '%(domain)s': %(reason)s"


# --- hugexml itself -------------------------------------------------------------------
class SelfCheckFailed(HugexmlError):
    """hugexml's own output failed its read-back check: a bug in hugexml. Raised instead of
    writing the output, so the host and the XML stay as they were."""

    msg_fmt = ("%(what)s failed hugexml's own check, nothing was written: %(reason)s "
               "(a hugexml bug; please report this line)")
    exit_code = 70  # EX_SOFTWARE


class MissingDependency(HugexmlError):
    """An optional Python package a feature needs is not installed."""

    msg_fmt = "%(feature)s needs the Python package %(package)s: %(install)s"


class LibvirtError(HugexmlError):
    msg_fmt = "libvirt: %(reason)s"
    exit_code = 1
