"""libvirt's readers of XML values, with libvirt 9.0's syntax, bounds and messages. Pure.

- ``scaled_kib``: a memory size, ``virDomainParseMemory`` (virxml.c ``virParseScaledValue``,
  virutil.c ``virScaleInteger``): a decimal integer (``strtoull``: leading white space and a
  ``+`` are fine, nothing may follow), a unit (none: KiB; ``b``/``bytes``; ``k``..``e``
  alone or with ``iB`` for powers of 1024, with ``B`` for powers of 1000, any case), at most
  ``LLONG_MAX`` bytes, rounded up to KiB and below ``LLONG_MAX / 1024``;
- ``uint`` / ``enum`` / ``tristate``: ``virXMLPropUInt``, ``virXMLPropEnum``,
  ``virXMLPropTristateBool``;
- ``bitmap``: ``virBitmapParse`` (virbitmap.c): ``N``, ``N-M`` and ``^N`` applied left to
  right, at most 16384 bits.

Every failure raises ``units.UnitError`` with libvirt's own message, which
``domxml`` turns into one ``InvalidDomain`` line.
"""
from __future__ import annotations

from typing import Any, Optional

from hugexml.core.units import UnitError

LLONG_MAX = 2**63 - 1
UINT_MAX = 2**32 - 1
ULLONG_MAX = 2**64 - 1
INT_MAX = 2**31 - 1
BITMAP_BITS = 16384  # VIR_DOMAIN_CPUMASK_LEN
MEMORY_LIMIT_BYTES = (2**53 - 1) << 10  # VIR_DOMAIN_MEMORY_PARAM_UNLIMITED << 10
BUDGET_BITS = 1 << 18  # hugexml's bound: nodes and CPUs named in all of one document
_SPACE = " \t\n\v\f\r"
_POWERS = "kmgtpe"


def clip(text: Any, width: int = 64) -> str:
    """A value echoed in a message: libvirt prints it whole, hugexml at most ``width``
    characters, on one line."""
    text = " ".join(str(text).split()) if "\n" in str(text) else str(text)
    return text if len(text) <= width else text[: width - 3] + "..."


def text_of(el: Any) -> Optional[str]:
    """An element's XPath string value; None when empty (virXPathString)."""
    if el is None:
        return None
    return "".join(el.itertext()) or None


def strtoull(text: str) -> Optional[int]:
    """The whole of ``text`` as C's strtoull reads it in base 10, or None (libvirt's
    virStrToLong_ullp / _uip: no '-', nothing after the digits, no overflow)."""
    s = text.lstrip(_SPACE)
    if s[:1] == "+":
        s = s[1:]
    if not s or not s.isascii() or not s.isdigit() or len(s) > 40:
        return None
    value = int(s)
    return value if value <= ULLONG_MAX else None


def unit_scale(unit: Optional[str], default: int = 1024) -> int:
    """Bytes per ``unit`` as virScaleInteger; "unknown suffix" otherwise."""
    if not unit:
        return default
    low = unit.lower()
    if low in ("b", "byte", "bytes"):
        return 1
    rest = unit[1:]
    if not rest or rest.lower() == "ib":
        base = 1024
    elif rest.lower() == "b":
        base = 1000
    else:
        raise UnitError(f"unknown suffix '{clip(unit)}'")
    if low[0] not in _POWERS:
        raise UnitError(f"unknown suffix '{clip(unit)}'")
    return base ** (_POWERS.index(low[0]) + 1)


def scaled_bytes(value: Optional[str], unit: Optional[str], xpath: str, *,
                 required: bool = False, scale: int = 1024,
                 limit: int = LLONG_MAX) -> Optional[int]:
    """virParseScaledValue: None when absent and not required."""
    if not value:
        if not required:
            return None
        raise UnitError(f"missing element or attribute '{xpath}'")
    number = strtoull(value)
    if number is None:
        raise UnitError(f"Invalid value '{clip(value)}' for element or attribute '{xpath}'")
    factor = unit_scale(unit or None, scale)
    if number and number > limit // factor:
        raise UnitError(f"value too large: {clip(f'{number}{unit or str()}')}")
    return number * factor


def scaled_kib(value: Optional[str], unit: Optional[str], xpath: str, *,
               required: bool = False) -> Optional[int]:
    """virDomainParseMemory: KiB rounded up, below LLONG_MAX / 1024."""
    size = scaled_bytes(value, unit, xpath, required=required)
    if size is None:
        return None
    kib = -(-size // 1024)
    if kib >= -(-LLONG_MAX // 1024):
        raise UnitError("size value too large")
    return kib


def memory_limit_kib(value: Optional[str], unit: Optional[str], xpath: str) -> Optional[int]:
    """virDomainParseMemoryLimit (memtune limits): at most 2^53-1 KiB."""
    size = scaled_bytes(value, unit, xpath, limit=MEMORY_LIMIT_BYTES)
    return None if size is None else -(-size // 1024)


def uint(el: Any, attr: str, *, limit: int = UINT_MAX) -> Optional[int]:
    """virXMLPropUInt (base 10), None when absent; ``limit=ULLONG_MAX``: virXMLPropULongLong."""
    text = el.get(attr)
    if text is None:
        return None
    value = strtoull(text)
    if value is None or value > limit:
        raise UnitError(f"Invalid value for attribute '{attr}' in element '{el.tag}': "
                        f"'{clip(text)}'. Expected non-negative integer value")
    return value


def required_uint(el: Any, attr: str, *, limit: int = UINT_MAX) -> int:
    """:func:`uint` for an attribute libvirt requires (VIR_XML_PROP_REQUIRED)."""
    value = uint(el, attr, limit=limit)
    if value is None:
        raise _missing(el, attr)
    return value


def _missing(el: Any, attr: str) -> UnitError:
    return UnitError(f"Missing required attribute '{attr}' in element '{el.tag}'")


def enum(el: Any, attr: str, values: tuple[str, ...], *, nonzero: bool = False
         ) -> Optional[str]:
    """virXMLPropEnum, None when absent: ``values[0]`` is libvirt's zero value (refused with
    ``nonzero``)."""
    text = el.get(attr)
    if text is None:
        return None
    if text not in values or (nonzero and text == values[0]):
        raise UnitError(f"Invalid value for attribute '{attr}' in element '{el.tag}': "
                        f"'{clip(text)}'.")
    return text


def required_enum(el: Any, attr: str, values: tuple[str, ...], *, nonzero: bool = False
                  ) -> str:
    """:func:`enum` for an attribute libvirt requires."""
    value = enum(el, attr, values, nonzero=nonzero)
    if value is None:
        raise _missing(el, attr)
    return value


def tristate(el: Any, attr: str, values: tuple[str, str] = ("yes", "no")) -> Optional[bool]:
    """virXMLPropTristateBool ('yes'/'no') or TristateSwitch ('on'/'off')."""
    value = enum(el, attr, ("default", *values), nonzero=True)
    return None if value is None else value == values[0]


def bitmap(text: Optional[str], budget: Optional[list[int]] = None) -> frozenset[int]:
    """virBitmapParse, as libvirt reads it left to right (``0,^0,0`` is {0}); the result
    may be empty (callers word that). ``budget``: a one-item list of how many more bits the
    document may still name (hugexml's bound on hostile input)."""
    fail = UnitError(f"Failed to parse bitmap '{clip(text)}'")
    if text is None:
        raise fail
    if len(text) > BUDGET_BITS:
        raise UnitError(f"a node or CPU list of {len(text)} characters is more than hugexml "
                        f"reads ({BUDGET_BITS})")
    s, i, n = text, 0, len(text)

    def skip(j: int) -> int:
        while j < n and s[j] in _SPACE:
            j += 1
        return j

    def number(j: int) -> tuple[int, int]:
        """strtol from j: white space, a sign, digits; (value, end)."""
        k = skip(j)
        start = k
        if k < n and s[k] in "+-":
            k += 1
        digits = k
        while k < n and "0" <= s[k] <= "9":
            k += 1
        if k == digits:
            raise fail
        value = int(s[start:k])
        if value > INT_MAX or value < -INT_MAX - 1:
            raise fail
        return value, k

    bits: set[int] = set()
    i = skip(i)
    if i >= n:
        raise fail
    while i < n:
        neg = s[i] == "^"
        if neg:
            i += 1
        if not (i < n and "0" <= s[i] <= "9"):
            raise fail
        start, i = number(i)
        i = skip(i)
        if i >= n or s[i] == ",":
            if start >= BITMAP_BITS:
                raise fail
            spend(budget, 1)
            (bits.discard if neg else bits.add)(start)
        elif s[i] == "-":
            if neg:
                raise fail
            last, i = number(skip(i + 1))
            if last < start or last >= BITMAP_BITS:
                raise fail
            spend(budget, last - start + 1)
            bits.update(range(start, last + 1))
            i = skip(i)
        if i < n and s[i] == ",":
            i = skip(i + 1)
        elif i < n:
            raise fail
    return frozenset(bits)



def spend(budget: Optional[list[int]], count: int) -> None:
    if budget is not None:
        budget[0] -= count
        if budget[0] < 0:
            raise UnitError("the node and CPU lists of this domain name more nodes than "
                            f"hugexml reads ({BUDGET_BITS} in all)")
