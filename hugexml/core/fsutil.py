"""Writing files so that a reader never sees half of one: the one atomic-write in hugexml.

The ledger, the hook files, mount units, fstab, Prometheus text files, rewritten domain XML
and apply's backups all go through :func:`write_atomic`: a temp file in the same directory,
written in full, fsynced, given its mode (and owner), then renamed over the target (or
hard-linked beside it when the target must not be replaced), and the directory fsynced so
the rename survives a crash. On any failure the temp file is removed and the ``OSError``
propagates; callers convert it ``from exc`` into their own one-line error.

Temp names are ``.<name>.<pid>.<seq>.<random>.tmp``, created with ``O_EXCL``: a temp file a
killed process left (even one whose pid is reused) never blocks a later write, and
``temp_files`` finds such leftovers for the owner of the directory to remove.
"""
from __future__ import annotations

import itertools
import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

_SEQUENCE = itertools.count()


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_files(directory: str, name: str) -> list[str]:
    """Leftover temp files of ``write_atomic(<directory>/<name>)`` (full paths)."""
    prefix = f".{name}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, e) for e in entries
            if e.startswith(prefix) and e.endswith(".tmp")]


def _open_temp(directory: str, name: str) -> tuple[int, str]:
    for _ in range(8):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{next(_SEQUENCE)}."
                                      f"{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {directory}")


def write_atomic(path: str, data: bytes, *, mode: Optional[int] = None,
                 keep_mode: bool = False, owner: Optional[tuple[int, int]] = None,
                 exclusive: bool = False, make_dirs: bool = False,
                 dir_mode: int = 0o755, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically.

    ``mode``: the file's permission bits (default: the umask's, or the existing file's
    when ``keep_mode``). ``exclusive``: fail with ``FileExistsError`` rather than replace
    an existing file (backups are never overwritten). ``owner``: (uid, gid), applied when
    permitted. ``durable=False`` skips the fsyncs: the rename alone is atomic for every
    reader and survives a killed process; only a host crash can lose it (state that a
    reboot voids anyway, such as hugexml's records of the running kernel's pools).
    """
    directory = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(directory, mode=dir_mode, exist_ok=True)
    if keep_mode and mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = None
    # No tempfile import (the hook's path stays lean): pid, sequence and random, O_EXCL.
    fd, tmp = _open_temp(directory, os.path.basename(path))
    try:
        try:
            os.fchmod(fd, (mode if mode is not None else _umask_mode()) & 0o7777)
            if owner is not None:
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass  # not root: the file stays ours
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # FileExistsError: never overwrite
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        tmp = ""
        if durable:
            fsync_dir(directory)
    finally:
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
