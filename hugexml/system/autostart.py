"""The guests libvirt starts at boot, read as plain files, never through libvirt.

libvirt autostarts a domain when ``/etc/libvirt/qemu/autostart/NAME.xml`` exists, a symlink
to its definition ``/etc/libvirt/qemu/NAME.xml`` (virDomainObjListLoadConfig). Here every
``*.xml`` entry of that directory under the host root is read:

- links are followed by hand (at most ``MAX_HOPS``), an absolute target under the root as
  the host would see it, a relative one from the link's directory; a file that resolves
  outside the root is refused (a copied host cannot read the real one);
- the file must be a regular file, opened with ``O_NONBLOCK | O_NOFOLLOW`` (a FIFO or a
  device never blocks the reader) and read at most ``xmlsafe.MAX_XML_BYTES`` + 1 bytes;
- it is parsed by ``hugexml.xml.domxml.plan_xml`` (the safe parser ``hugexml.xml.xmlsafe``: no DTD,
  no entities) with the host's description.

A domain that cannot be read or planned is one line (``Skipped``), never fatal; at most
``MAX_DOMAINS`` entries are read.
"""
from __future__ import annotations

import os
import posixpath
import stat

from hugexml.core.errors import HugexmlError, printable
from hugexml.core.typed import Typed
from hugexml.xml.xmlsafe import MAX_XML_BYTES

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

    from hugexml.core.model import HostInfo, Plan
    from hugexml.core.root import HostRoot

AUTOSTART_DIR = "/etc/libvirt/qemu/autostart"
MAX_HOPS = 8
MAX_DOMAINS = 1024


class Unreadable(Exception):
    """Why an autostart entry cannot be read (one line, without the entry's name)."""


class AutostartFile(Typed, frozen=True):
    entry: str      # the name in the autostart directory, e.g. "vm1.xml"
    path: str       # the definition read, as the host sees it: "/etc/libvirt/qemu/vm1.xml"
    data: bytes


class Skipped(Typed, frozen=True):
    entry: str
    reason: str
    planned: bool = False   # False: not readable; True: read, but libvirt would refuse it

    def line(self) -> str:
        """``autostart/NAME.xml: why``; the directory itself: ``why`` alone."""
        return f"autostart/{printable(self.entry)}: {self.reason}" if self.entry else self.reason


class Guest(Typed, frozen=True):
    """An autostart domain and its plan (the demand per host node and size)."""

    file: AutostartFile
    plan: Plan


def entries(root: HostRoot) -> tuple[list[str], Optional[str]]:
    """The ``*.xml`` names of the autostart directory, sorted; (names, why not) when the
    directory cannot be listed (a missing one is no autostart domain at all)."""
    try:
        names = sorted(n for n in os.listdir(root.path(AUTOSTART_DIR)) if n.endswith(".xml"))
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        return [], f"{AUTOSTART_DIR}: {exc.strerror or exc}"
    return names, None


def resolve(root: HostRoot, host_path: str) -> str:
    """The host path a link chain ends at (absolute, as the host sees it). Unreadable for
    a dangling link, a loop or too long a chain, or a file outside the root."""
    path = posixpath.normpath(host_path)
    for _hop in range(MAX_HOPS + 1):
        real = root.path(path)
        try:
            info = os.lstat(real)
        except FileNotFoundError:
            raise Unreadable(f"{printable(path)} does not exist"
                             + (" (a dangling link)" if path != host_path else "")) from None
        except OSError as exc:
            raise Unreadable(f"{printable(path)}: {exc.strerror or exc}") from None
        if not stat.S_ISLNK(info.st_mode):
            inside = os.path.realpath(real)
            if os.path.commonpath([inside, root.base]) != root.base:
                raise Unreadable(f"{printable(path)} resolves outside the host root")
            return path
        try:
            target = os.readlink(real)
        except OSError as exc:
            raise Unreadable(f"{printable(path)}: {exc.strerror or exc}") from None
        if not target.startswith("/"):
            target = posixpath.join(posixpath.dirname(path), target)
        path = posixpath.normpath(target)  # '..' cannot climb above the root's '/'
    raise Unreadable(f"more than {MAX_HOPS} symbolic links from {printable(host_path)} "
                     "(a loop?)")


def read_file(root: HostRoot, host_path: str, limit: int = MAX_XML_BYTES) -> bytes:
    """At most ``limit`` bytes of a regular file (Unreadable otherwise, or when larger)."""
    try:
        fd = os.open(root.path(host_path),
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(f"{printable(host_path)}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(f"{printable(host_path)} is not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Unreadable(f"{printable(host_path)}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise Unreadable(f"{printable(host_path)} is larger than {limit // (1 << 20)} MiB")
    return b"".join(chunks)


def read_autostart(root: HostRoot) -> tuple[list[AutostartFile], list[Skipped]]:
    """Every autostart definition that can be read, and one ``Skipped`` per one that cannot."""
    names, why = entries(root)
    skipped = [Skipped("", why)] if why else []
    if len(names) > MAX_DOMAINS:
        skipped.append(Skipped(f"{names[MAX_DOMAINS]}...", f"{len(names) - MAX_DOMAINS} "
                               f"entries beyond the first {MAX_DOMAINS} are not read"))
        names = names[:MAX_DOMAINS]
    files = []
    for name in names:
        try:
            path = resolve(root, posixpath.join(AUTOSTART_DIR, name))
            files.append(AutostartFile(name, path, read_file(root, path)))
        except Unreadable as exc:
            skipped.append(Skipped(name, str(exc)))
    return files, skipped


def plan_autostart(root: HostRoot, host: HostInfo) -> tuple[list[Guest], list[Skipped]]:
    """The autostart domains planned with the host's description (``domxml.plan_xml``): what
    libvirt would refuse to start, hugexml refuses here too (a ``Skipped`` that is
    ``planned``)."""
    from hugexml.xml.domxml import plan_xml

    files, skipped = read_autostart(root)
    guests = []
    for f in files:
        try:
            guests.append(Guest(f, plan_xml(f.data, host, f.path)))
        except HugexmlError as exc:
            skipped.append(Skipped(f.entry, str(exc), planned=True))
    return guests, skipped


def running(root: HostRoot, name: str) -> bool:
    """libvirt runs the guest now: its status file names a pid that exists (read as files)."""
    from hugexml.host.live import daemon_pid

    pid = daemon_pid(root, name)
    return pid is not None and os.path.isdir(root.path("proc", str(pid)))
