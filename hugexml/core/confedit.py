"""One key of hugexml.conf set in place: every other byte and comment of the file stays.

``set_key`` (pure) edits the text as ``configparser`` reads it: the key's line in its
section (key names are case-insensitive, ``=`` or ``:``), with its continuation lines
(indented deeper than the key), replaced by ``key = value`` keeping the key line's indent,
spelling, delimiter, inline comment and line ending. Without the key, the new line goes
after the section's commented-out template line (``#reserve =``, as the shipped file has)
or after the section's last line; without the section, a section is appended.

``write_key`` checks the file is a valid configuration before and after (``parse_config``:
the edit never turns a file hugexml reads into one it refuses), writes the previous version
to ``<file>.bak`` and the new one atomically (``fsutil.write_atomic``, the file's mode kept),
and writes nothing when the value is already there.
"""
from __future__ import annotations

from hugexml.core.config import DEFAULT_CONFIG_TEXT, MAX_CONFIG_BYTES, parse_config
from hugexml.core.errors import ConfigError
from hugexml.core.lazyre import pattern

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

    from hugexml.core.config import Config

_HEADER = pattern(r"\s*\[(?P<name>[^\]]+)\]")
_KEY = pattern(r"(?P<indent>[ \t]*)(?P<key>[^=:\s#;][^=:]*?)(?P<delim>\s*[=:][ \t]*)"
               r"(?P<value>.*?)(?P<comment>[ \t]+[#;].*)?(?P<eol>\r?\n|\r)?\Z", )
_COMMENTED = pattern(r"[ \t]*[#;][ \t]*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*[=:]")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _eol(lines: list[str]) -> str:
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith("\n"):
            return "\n"
    return "\n"


def set_key(text: str, section: str, key: str, value: str) -> str:
    """``text`` with ``[section] key = value`` (see the module docstring)."""
    lines = text.splitlines(keepends=True)
    eol = _eol(lines)
    start = end = None  # the section's lines: [start, end)
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m and _indent(line) == 0:
            if start is not None:
                end = i
                break
            if m.group("name").strip() == section:
                start = i + 1
    if start is None:
        tail = "" if not text or text.endswith(("\n", "\r")) else eol
        gap = eol if text.strip() else ""
        return f"{text}{tail}{gap}[{section}]{eol}{key} = {value}{eol}"
    end = len(lines) if end is None else end
    for i in range(start, end):
        m = _KEY.match(lines[i])
        if not m or lines[i].lstrip().startswith(("#", ";")) or \
                m.group("key").strip().lower() != key.lower():
            continue
        stop = i + 1  # continuation lines: deeper than the key, blank ones between them
        for j in range(i + 1, end):
            if not lines[j].strip():
                continue
            if _indent(lines[j]) <= _indent(lines[i]):
                break
            stop = j + 1
        delim = m.group("delim")
        if not delim.endswith((" ", "\t")):
            delim += " "
        new = (f"{m.group('indent')}{m.group('key')}{delim}{value}"
               f"{m.group('comment') or ''}{m.group('eol') or ''}")
        return "".join([*lines[:i], new, *lines[stop:]])
    at = None
    for i in range(start, end):
        m = _COMMENTED.match(lines[i])
        if m and m.group("key").lower() == key.lower():
            at = i + 1
    if at is None:
        at = start
        for i in range(start, end):
            if lines[i].strip():
                at = i + 1
    if at > 0 and not lines[at - 1].endswith(("\n", "\r")):
        lines[at - 1] += eol
    return "".join([*lines[:at], f"{key} = {value}{eol}", *lines[at:]])


def read_text(path: str) -> Optional[str]:
    """The file's text, None when it does not exist (ConfigError as load_config words it)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(path=path, key="file", reason=exc.strerror or str(exc)) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path=path, key="file", reason=f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path=path, key="file", reason="not UTF-8 text") from exc


def write_key(path: str, section: str, key: str, value: str,
              check: Callable[[Config], Any]) -> dict[str, Any]:
    """Set ``[section] key = value`` in the file at ``path`` (made from the shipped template
    when missing). ``check(config)`` must be true of the result (the value read back).
    Returns {"path", "changed", "backup" (or None), "created"}."""
    from hugexml.core.fsutil import write_atomic

    old = read_text(path)
    base = DEFAULT_CONFIG_TEXT if old is None else old
    parse_config(base, path)  # a file hugexml refuses is not edited: fix it first
    new = set_key(base, section, key, value)
    config = parse_config(new, path)
    if not check(config):
        raise ConfigError(path=path, key=f"[{section}] {key}",
                          reason=f"the edit did not read back as {value!r}")
    result: dict[str, Any] = {"path": path, "changed": new != old, "backup": None,
                              "created": old is None}
    if new == old:
        return result
    try:
        if old is not None:
            backup = f"{path}.bak"
            write_atomic(backup, old.encode("utf-8"), mode=0o600)
            result["backup"] = backup
        write_atomic(path, new.encode("utf-8"), keep_mode=True,
                     mode=None if old is not None else 0o644, make_dirs=True)
    except OSError as exc:
        raise ConfigError(path=path, key="file",
                          reason=f"cannot write: {exc.strerror or exc}") from exc
    return result
