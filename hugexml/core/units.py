"""Sizes, units and nodesets exactly as libvirt reads them. Pure: no I/O.

libvirt's unit rules (virScaleInteger): no unit means the caller's default (KiB for
memory); ``b``/``bytes`` is 1; otherwise the first letter names the power (k, m, g, t, p,
e), a bare letter or the ``iB`` suffix means a power of 1024 and the ``B`` suffix a power of
1000; case does not matter. Memory values are then rounded up to whole KiB
(virDomainParseMemory).
"""
from __future__ import annotations

from hugexml.core.lazyre import pattern

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

MAX_BYTES = 2**64 - 1
MAX_KIB = MAX_BYTES // 1024
# The kernel's MAX_NUMNODES is at most 1 << CONFIG_NODES_SHIFT (10): node ids are < 1024.
MAX_NODES = 1024
_POWERS = "kmgtpe"
_NUMBER = pattern(r"\s*\+?([0-9]{1,25})\s*\Z")
# ASCII only (str.isdigit() takes superscripts, Arabic-Indic digits), <= 25 digits
# (int() refuses more than 4300)
_DIGITS = pattern(r"\s*[0-9]{1,25}\s*\Z")
_CLI_SIZE = pattern(r"\s*([0-9]{1,25})\s*([A-Za-z]*)\s*\Z")


def ascii_uint(text: str, max_digits: int = 20) -> Optional[int]:
    """``text`` as an unsigned integer when it is 1..``max_digits`` ASCII digits, else None
    (no sign, no space: ``str.isdigit`` alone takes superscripts and Arabic-Indic digits)."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def numbered(name: str, prefix: str, suffix: str = "") -> Optional[int]:
    """The number in a kernel name ``<prefix><digits><suffix>`` (``node3``,
    ``hugepages-2048kB``), else None."""
    if len(name) > len(prefix) + len(suffix) and name.startswith(prefix) \
            and name.endswith(suffix):
        return ascii_uint(name[len(prefix):len(name) - len(suffix)])
    return None


class UnitError(ValueError):
    """A size, unit or nodeset that cannot be read (message is one line)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def unit_scale(unit: str | None, default: int = 1024) -> int:
    """Bytes per unit, as libvirt's virScaleInteger."""
    if unit is None or unit == "":
        return default
    low = unit.strip().lower()
    if low in ("b", "byte", "bytes"):
        return 1
    if not low or low[0] not in _POWERS:
        raise UnitError(f"unknown unit {unit!r}")
    power = _POWERS.index(low[0]) + 1
    rest = low[1:]
    if rest in ("", "ib"):
        return 1024**power
    if rest == "b":
        return 1000**power
    raise UnitError(f"unknown unit {unit!r}")


def parse_number(text: str | None, what: str = "value") -> int:
    if text is None:
        raise UnitError(f"missing {what}")
    m = _NUMBER.match(text)
    if not m:
        raise UnitError(f"{what} '{_clip(text)}' is not a non-negative integer")
    return int(m.group(1))


def to_kib(value: str | int | None, unit: str | None = None, *, what: str = "size") -> int:
    """A libvirt memory value (default unit KiB) in KiB, rounded up, bounded to 64 bits."""
    number = value if isinstance(value, int) else parse_number(value, what)
    try:
        scale = unit_scale(unit)
    except UnitError as exc:
        raise UnitError(f"{what}: {exc}") from None
    size_bytes = number * scale
    if size_bytes > MAX_BYTES:
        raise UnitError(f"{what} {number} {unit or 'KiB'} does not fit in 64 bits")
    return -(-size_bytes // 1024)


def parse_cli_size_kib(text: str) -> int:
    """Command-line sizes: ``2M``, ``1G``, ``2MiB``, ``1048576KiB``, ``2048`` (KiB)."""
    m = _CLI_SIZE.match(text or "")
    if not m:
        raise UnitError(f"size '{_clip(text)}' is not a size like 2M, 1G or 2048KiB")
    kib = to_kib(int(m.group(1)), m.group(2) or None, what="size")
    if kib <= 0:
        raise UnitError(f"size '{_clip(text)}' must be positive")
    return kib


def format_kib(size_kib: int) -> str:
    """2048 -> '2M', 1048576 -> '1G', 4 -> '4K' (exact, largest whole unit)."""
    for suffix, scale in (("T", 1024**3), ("G", 1024**2), ("M", 1024), ("K", 1)):
        if size_kib and size_kib % scale == 0:
            return f"{size_kib // scale}{suffix}"
    return f"{size_kib}K"


def parse_nodeset(
    text: str | None, *, limit: int = MAX_NODES, what: str = "nodeset"
) -> frozenset[int]:
    """libvirt bitmap syntax: ``0-3,^2``, ``1,3,5``. Empty results are rejected."""
    if text is None or not text.strip():
        raise UnitError(f"{what} is empty")
    if len(text) > 16 * limit:
        raise UnitError(f"{what} is too long")
    include: set[int] = set()
    exclude: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        neg = item.startswith("^")
        if neg:
            item = item[1:].strip()
        lo_text, sep, hi_text = item.partition("-")
        if not _DIGITS.match(lo_text) or (sep and not _DIGITS.match(hi_text)):
            raise UnitError(f"{what} '{_clip(text)}' is not a valid node list")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        if neg and sep:
            raise UnitError(f"{what} '{_clip(text)}': a range cannot be negated")
        if hi < lo:
            raise UnitError(f"{what} '{_clip(text)}': range {lo}-{hi} is reversed")
        if hi >= limit:
            raise UnitError(f"{what} '{_clip(text)}': node {hi} is out of range (max {limit - 1})")
        (exclude if neg else include).update(range(lo, hi + 1))
    result = frozenset(include - exclude)
    if not result:
        raise UnitError(f"{what} '{_clip(text)}' selects no node")
    return result


def format_nodeset(nodes: frozenset[int] | set[int] | list[int] | tuple[int, ...]) -> str:
    """Sorted ranges: {0,1,2,5} -> '0-2,5'."""
    out: list[str] = []
    ordered = sorted(nodes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def _clip(text: str | None, width: int = 40) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


# --- durations -----------------------------------------------------------------------------
MAX_DURATION_S = 30 * 24 * 3600
_DURATION = pattern(r"([0-9]{1,9}(?:\.[0-9]{1,3})?)([smhd]?)\Z")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text: str) -> float:
    """``0``, ``90``, ``90s``, ``10m``, ``2h``, ``1d`` -> seconds (at most 30 days);
    ValueError naming the text otherwise."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise ValueError(f"{text.strip()[:40]!r} is not a duration (e.g. 0, 90s, 10m, 2h, 1d)")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text.strip()!r} is longer than 30 days")
    return seconds
