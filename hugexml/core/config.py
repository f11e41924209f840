"""The configuration file ``/etc/hugexml/hugexml.conf`` (INI), read into a frozen ``Config``.

A missing default file means the built-in defaults; a missing file named explicitly
(``--config``, ``HUGEXML_CONFIG``) is an error. Unknown sections, unknown keys and bad
values are rejected with ONE line naming the file, the key and the reason, so a typo never
silently changes how pools are handled on a hypervisor.
"""
from __future__ import annotations

import configparser

from hugexml.core.errors import ConfigError
from hugexml.core.lazyre import pattern
from hugexml.core.typed import Typed
from hugexml.core.units import MAX_NODES, UnitError, parse_cli_size_kib, parse_duration_s

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable

MAX_CONFIG_BYTES = 64 * 1024
MAX_SECONDS = 24 * 3600

DEFAULT_CONFIG_TEXT = """\
# hugexml configuration. Every key is shown commented out with its default.
# See hugexml(8), section CONFIGURATION.

[allocation]
# Never leave a NUMA node with less normal free memory than the larger of
# margin_min and margin_percent of the node.
#margin_min = 1G
#margin_percent = 5
# When the kernel grants fewer pages than asked, compact the node and retry.
#compact = yes
# Also drop the page cache (echo 1 > drop_caches) once before retrying.
#drop_caches = no
# Retries after a short grant, and the time bound for all of them (seconds).
#retries = 3
#timeout = 30
# Seconds to wait for the lock held by another hugexml (a guest start waits
# behind another one's allocation): must be larger than timeout, since one try
# of a slow 1G allocation can outlast it.
#lock_timeout = 90
# When a node is short of small pages (the kernel grants fewer than asked, or
# growing the pool would break the margin), split free larger pages hugexml owns
# there (kept, or owed back) with the kernel's demote file (Linux >= 5.16)
# before compacting. Never an admin's page.
#demote = yes

[release]
# release: give back the pages hugexml added for a guest when it stops, after
# its keep window (keep_for). keep: leave them in the pool for ever (recorded;
# "hugexml shrink" gives them back first).
#policy = release
# Keep window per page size: pages a stopped guest gave up stay in the pool this
# long (any guest's next start on that node uses them first), then go back to
# the kernel. SIZE=DURATION pairs; DURATION is 0 (at once) or a number with s,
# m, h or d. A size not listed: 0. Runtime 1G pages are hard to get back on a
# fragmented host, 2M pages are not.
#keep_for = 1G=10m 2M=0

[claims]
# Seconds after which a claim of a guest that was prepared but never started expires.
#pending_timeout = 600

[boot]
# Pages applied per node early in boot by hugexml-reserve.service,
# e.g. "2M:512@0 1G:4@1" (SIZE:COUNT[@NODE], space separated).
#reserve =

[hook]
# Where the hook logs its decisions: syslog, stderr or none.
#log = syslog
"""

_RESERVE_ITEM = pattern(r"[0-9]+[KMGkmg]?[iI]?[bB]?:[0-9]{1,19}(@[0-9]{1,4})?\Z")


class Config(Typed, frozen=True):
    """hugexml.conf as values; ``keep_window_s`` answers the keep window of a page size."""

    margin_min_kib: int = 1024 * 1024
    margin_percent: float = 5.0
    compact: bool = True
    drop_caches: bool = False
    retries: int = 3
    timeout_s: float = 30.0
    lock_timeout_s: float = 90.0
    demote: bool = True
    release_policy: str = "release"
    keep_for: tuple[tuple[int, float], ...] = ((1048576, 600.0), (2048, 0.0))
    pending_timeout_s: float = 600.0
    boot_reserve: str = ""
    hook_log: str = "syslog"

    def keep_window_s(self, size_kib: int) -> float:
        """Seconds a stopped guest's pages of this size stay kept (0: given back at once)."""
        return dict(self.keep_for).get(size_kib, 0.0)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def _size_kib(text: str) -> int:
    if text.strip() == "0":
        return 0
    try:
        return parse_cli_size_kib(text.strip())
    except (UnitError, ValueError) as exc:
        raise ValueError(str(exc)) from exc


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text.strip())
        except ValueError as exc:
            raise ValueError(f"not a number: {text!r}") from exc
        if not low <= value <= high:
            raise ValueError(f"{text.strip()} is outside {low:g}..{high:g}")
        return value
    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"{text.strip()!r} is not one of {', '.join(allowed)}")
        return value
    return parse


def _keep_for(text: str) -> tuple[tuple[int, float], ...]:
    pairs: dict[int, float] = {}
    for item in text.split():
        size, sep, duration = item.partition("=")
        if not sep:
            raise ValueError(f"{item[:40]!r} is not SIZE=DURATION (e.g. 1G=10m)")
        size_kib = _size_kib(size)
        if size_kib <= 4:
            raise ValueError(f"{size!r} is not a hugepage size")
        if size_kib in pairs:
            raise ValueError(f"{size} is listed twice")
        try:
            pairs[size_kib] = parse_duration_s(duration)
        except ValueError as exc:
            raise ValueError(str(exc).replace("30 days", "30 days (use policy = keep)")) \
                from None
    return tuple(sorted(pairs.items(), reverse=True))


def _reserve(text: str) -> str:
    items = text.split()
    bad = [item for item in items if not _RESERVE_ITEM.match(item)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not SIZE:COUNT[@NODE] (e.g. 2M:512@0)")
    for item in items:
        _size_kib(item.split(":", 1)[0])
        node = item.partition("@")[2]
        if node and int(node) >= MAX_NODES:
            raise ValueError(f"{item!r}: node {node} is out of range 0-{MAX_NODES - 1}")
    return " ".join(items)


# (section, key) -> (Config field, parser)
_KEYS: dict[tuple[str, str], tuple[str, Callable[[str], object]]] = {
    ("allocation", "margin_min"): ("margin_min_kib", _size_kib),
    ("allocation", "margin_percent"): ("margin_percent", _bounded(float, 0, 50)),
    ("allocation", "compact"): ("compact", _bool),
    ("allocation", "drop_caches"): ("drop_caches", _bool),
    ("allocation", "retries"): ("retries", _bounded(int, 0, 100)),
    ("allocation", "timeout"): ("timeout_s", _bounded(float, 0, MAX_SECONDS)),
    ("allocation", "lock_timeout"): ("lock_timeout_s", _bounded(float, 0, MAX_SECONDS)),
    ("allocation", "demote"): ("demote", _bool),
    ("release", "policy"): ("release_policy", _choice("release", "keep")),
    ("release", "keep_for"): ("keep_for", _keep_for),
    ("claims", "pending_timeout"): ("pending_timeout_s", _bounded(float, 1, 7 * MAX_SECONDS)),
    ("boot", "reserve"): ("boot_reserve", _reserve),
    ("hook", "log"): ("hook_log", _choice("syslog", "stderr", "none")),
}
SECTIONS = frozenset(section for section, _ in _KEYS)


def parse_config(text: str, path: str = "<config>") -> Config:
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise ConfigError(path=path, key="syntax", reason=" ".join(str(exc).split())) from exc
    values: dict[str, object] = {}
    if parser.defaults():  # [DEFAULT] keys would leak into every section, or be ignored
        raise ConfigError(path=path, key=f"[{parser.default_section}]",
                          reason=f"unknown section (known: {', '.join(sorted(SECTIONS))})")
    for section in parser.sections():
        if section not in SECTIONS:
            raise ConfigError(path=path, key=f"[{section}]",
                              reason=f"unknown section (known: {', '.join(sorted(SECTIONS))})")
        for key, raw in parser.items(section):
            spec = _KEYS.get((section, key))
            if spec is None:
                known = sorted(k for s, k in _KEYS if s == section)
                raise ConfigError(path=path, key=f"[{section}] {key}",
                                  reason=f"unknown key (known: {', '.join(known)})")
            field, parse = spec
            try:
                values[field] = parse(raw)
            except ValueError as exc:
                raise ConfigError(path=path, key=f"[{section}] {key}", reason=str(exc)) from exc
    config = Config(**values)  # type: ignore[arg-type]
    if config.lock_timeout_s <= config.timeout_s:
        raise ConfigError(path=path, key="[allocation] lock_timeout",
                          reason=f"{config.lock_timeout_s:g} s must be larger than [allocation] "
                                 f"timeout ({config.timeout_s:g} s), or a start waiting behind "
                                 "an allocation gives up first")
    return config


def load_config(path: str, explicit: bool = False) -> Config:
    """Read ``path``; a missing file is the defaults unless it was named explicitly."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        if explicit:
            raise ConfigError(path=path, key="file", reason="no such file") from exc
        return Config()
    except OSError as exc:
        raise ConfigError(path=path, key="file", reason=exc.strerror or str(exc)) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path=path, key="file", reason=f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path=path, key="file", reason="not UTF-8 text") from exc
    return parse_config(text, path)
