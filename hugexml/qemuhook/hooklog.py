"""Where the hook's records go: syslog, else a bounded file in the state dir, else stderr.

``[hook] log`` (hugexml.conf) chooses:

- ``syslog`` (default): datagrams to ``/dev/log`` (facility daemon). When nobody listens
  there (a container, a host without journald or rsyslog), the records are appended to
  ``<state_dir>/hook.log`` (kept under 1 MiB: the previous MiB is ``hook.log.1``). When that
  cannot be written either, a failure's summary line goes to stderr (libvirt keeps a
  hook's stderr in its own log) and a success's records are dropped.
- ``stderr``: every record, tracebacks included, on stderr.
- ``none``: nothing.

A traceback (a programming error) goes only where records go, never to stderr under
``syslog``: stderr of a failing ``prepare`` is the one line ``virsh start`` shows.
Only ``os`` and ``time`` at import: the hook's fast paths load this module.
"""
from __future__ import annotations

import os
import time

SYSLOG_ADDRESS = "/dev/log"
LOG_FILE = "hook.log"
MAX_LOG_BYTES = 1 << 20


def emit(mode: str, lines: list[str], trace: str, error: bool, state_dir: str,
         stderr: object) -> bool:
    """Send ``lines`` (and ``trace``) where ``mode`` says; True when they landed somewhere
    other than stderr. Never raises."""
    try:
        if mode == "none":
            return True
        if mode == "stderr":
            _to_stream(stderr, lines, trace)
            return False
        body = lines + (trace.rstrip("\n").splitlines() if trace else [])
        if syslog(body, error) or append_file(state_dir, body):
            return True
        if error:
            _to_stream(stderr, lines[:1], "")
    except BaseException:  # logging must never fail the hook
        pass
    return False


def _to_stream(stream: object, lines: list[str], trace: str) -> None:
    write = getattr(stream, "write", None)
    if write is None:
        return
    for line in lines:
        write(f"hugexml: {line}\n")
    if trace:
        write(trace if trace.endswith("\n") else trace + "\n")
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


def syslog(lines: list[str], error: bool) -> bool:
    """RFC 3164 datagrams to /dev/log (facility daemon). False when nobody listens."""
    import socket

    priority = 3 * 8 + (3 if error else 6)  # daemon.err / daemon.info
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for line in lines:
                sock.sendto(f"<{priority}>hugexml[{os.getpid()}]: {line}".encode(
                    "utf-8", "backslashreplace")[:8192], SYSLOG_ADDRESS)
    except OSError:
        return False
    return True


def append_file(state_dir: str, lines: list[str]) -> bool:
    """Append to ``<state_dir>/hook.log`` (0600, no symlinks, rotated at 1 MiB)."""
    path = os.path.join(state_dir, LOG_FILE)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    data = "".join(f"{stamp} hugexml[{os.getpid()}]: {line}\n" for line in lines).encode(
        "utf-8", "backslashreplace")
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        try:
            if os.lstat(path).st_size + len(data) > MAX_LOG_BYTES:
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError:
        return False
    return True
