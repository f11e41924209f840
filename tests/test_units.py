"""Table-driven: libvirt's units (virScaleInteger + virDomainParseMemory) and nodesets."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hugexml.core import units
from hugexml.core.units import UnitError, ascii_uint, numbered

KI, MI, GI, TI, PI, EI = (1024**p for p in range(1, 7))

# (value, unit, KiB): every unit libvirt knows, in every spelling case, KB=1000 vs k=1024
TO_KIB = [
    ("1", None, 1), ("1", "", 1),
    ("1024", "b", 1), ("1024", "B", 1), ("1024", "bytes", 1), ("1024", "byte", 1),
    ("1", "k", 1), ("1", "K", 1), ("1", "KiB", 1), ("1", "kib", 1),
    ("1024", "KB", 1000), ("1024", "kb", 1000), ("1", "KB", 1),  # 1000 B rounds up to 1 KiB
    ("1", "M", KI), ("1", "m", KI), ("1", "MiB", KI), ("1", "MB", 1000**2 // KI + 1),
    ("2", "G", 2 * MI), ("1", "GiB", MI), ("1", "GB", -(-(1000**3) // KI)),
    ("1", "T", GI), ("1", "TiB", GI), ("1", "TB", -(-(1000**4) // KI)),
    ("1", "P", TI), ("1", "PiB", TI), ("1", "PB", -(-(1000**5) // KI)),
    ("1", "E", PI), ("1", "EiB", PI), ("15", "EiB", 15 * PI), ("1", "EB", -(-(1000**6) // KI)),
    # rounding up to whole KiB (virDomainParseMemory)
    ("1", "b", 1), ("1023", "b", 1), ("1025", "b", 2), ("0", "b", 0), ("0", "G", 0),
    # spacing and a leading plus, as strtoull accepts
    (" 2048 ", None, 2048), ("+4", "KiB", 4),
    # the 64-bit bound: 2^64-1 bytes is the last value that fits
    (str(2**64 - 1), "b", -(-(2**64 - 1) // KI)), (str(2**54 - 1), "KiB", 2**54 - 1),
    ("15", "E", 15 * PI),
]


@pytest.mark.parametrize("value,unit,kib", TO_KIB, ids=[f"{v}{u}" for v, u, _ in TO_KIB])
def test_to_kib(value, unit, kib):
    assert units.to_kib(value, unit) == kib


BAD_TO_KIB = [
    ("16", "E", "64 bits"), ("16", "EiB", "64 bits"), (str(2**64), "b", "64 bits"),
    (str(2**54), "KiB", "64 bits"), ("19", "EB", "64 bits"), ("9" * 25, None, "64 bits"),
    ("9" * 26, None, "not a non-negative integer"),
    ("-1", None, "not a non-negative integer"), ("1.5", "G", "not a non-negative integer"),
    ("0x10", None, "not a non-negative integer"), ("", None, "not a non-negative integer"),
    ("1G", None, "not a non-negative integer"), (None, None, "missing"),
    ("1", "Z", "unknown unit"), ("1", "KiBB", "unknown unit"), ("1", "kibibytes", "unknown unit"),
    ("1", "iB", "unknown unit"), ("1", "x", "unknown unit"),
    ("1", "\u0661", "unknown unit"),
]


@pytest.mark.parametrize("value,unit,words", BAD_TO_KIB,
                         ids=[f"{str(v)[:8]}{u}" for v, u, _ in BAD_TO_KIB])
def test_to_kib_rejects(value, unit, words):
    with pytest.raises(UnitError) as info:
        units.to_kib(value, unit, what="page size")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_non_ascii_digits_are_not_numbers():
    with pytest.raises(UnitError):
        units.to_kib("\u0661\u0662", None)  # Arabic-Indic digits: int() would take them


@pytest.mark.parametrize("text,kib", [
    ("2M", 2048), ("1G", MI), ("2MiB", 2048), ("1048576KiB", MI), ("2048", 2048),
    ("1GB", -(-(1000**3) // KI)), (" 4k ", 4),
])
def test_parse_cli_size(text, kib):
    assert units.parse_cli_size_kib(text) == kib


@pytest.mark.parametrize("text", ["", "0", "0M", "M", "-2M", "2 M B", "2Q", "1.5G", "16E"])
def test_parse_cli_size_rejects(text):
    with pytest.raises(UnitError):
        units.parse_cli_size_kib(text)


@pytest.mark.parametrize("kib,text", [(4, "4K"), (2048, "2M"), (MI, "1G"), (GI, "1T"),
                                      (3072, "3M"), (1025, "1025K"), (0, "0K")])
def test_format_kib(kib, text):
    assert units.format_kib(kib) == text


NODESETS = [
    ("0", {0}), ("0-3", {0, 1, 2, 3}), ("0-3,^2", {0, 1, 3}), ("1,3,5", {1, 3, 5}),
    (" 0 - 2 , ^ 1 ", {0, 2}), ("0-7,^6,^0", {1, 2, 3, 4, 5, 7}), ("3,3,3", {3}),
    ("1023", {1023}), ("0-1023", set(range(1024))), ("^1,1-2", {2}),
]


@pytest.mark.parametrize("text,nodes", NODESETS, ids=[t for t, _ in NODESETS])
def test_parse_nodeset(text, nodes):
    assert units.parse_nodeset(text) == frozenset(nodes)


BAD_NODESETS = [
    (None, "empty"), ("", "empty"), ("  ", "empty"), ("0,^0", "selects no node"),
    ("^3", "selects no node"), ("1024", "out of range"), ("0-1024", "out of range"),
    ("99999999999999999999", "out of range"), ("3-1", "reversed"), ("^0-2", "cannot be negated"),
    ("a", "not a valid node list"), ("1,,2", "not a valid node list"), ("-1", "not a valid"),
    ("1-", "not a valid node list"), ("0x1", "not a valid node list"), ("1;2", "not a valid"),
    ("0," * 9000 + "0", "too long"), ("\u0661", "not a valid node list"),
    ("\u00b2", "not a valid node list"), ("9" * 5000, "not a valid node list"),
    ("0-\u00b9", "not a valid node list"),
]


@pytest.mark.parametrize("text,words", BAD_NODESETS, ids=[str(t)[:12] for t, _ in BAD_NODESETS])
def test_parse_nodeset_rejects(text, words):
    with pytest.raises(UnitError) as info:
        units.parse_nodeset(text, what="numatune nodeset")
    message = str(info.value)
    assert words in message and "\n" not in message and len(message) < 200


def test_parse_nodeset_limit_is_a_parameter():
    assert units.parse_nodeset("0-3", limit=4) == frozenset(range(4))
    with pytest.raises(UnitError):
        units.parse_nodeset("4", limit=4)


@pytest.mark.parametrize("nodes,text", [({0}, "0"), ({0, 1, 2, 5}, "0-2,5"), ((), ""),
                                        ([7, 1, 2, 3], "1-3,7"), ({1, 3}, "1,3")])
def test_format_nodeset(nodes, text):
    assert units.format_nodeset(nodes) == text


@given(st.frozensets(st.integers(0, units.MAX_NODES - 1), min_size=1))
def test_nodesets_round_trip(nodes):
    assert units.parse_nodeset(units.format_nodeset(nodes)) == nodes


UNIT_WORDS = st.sampled_from(["", "b", "B", "bytes", "k", "KiB", "KB", "m", "MiB", "MB", "G",
                              "GiB", "GB", "T", "TB", "P", "PiB", "E", "EiB", "EB"])


@given(value=st.one_of(st.integers(-(2**70), 2**70).map(str), st.text(max_size=30)),
       unit=st.one_of(st.none(), UNIT_WORDS, st.text(max_size=8)))
def test_random_unit_value_pairs_raise_only_unit_errors(value, unit):
    """Any value/unit either gives a bounded KiB count or raises UnitError, nothing else."""
    try:
        kib = units.to_kib(value, unit)
    except UnitError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 <= kib <= units.MAX_KIB + 1
    assert kib * 1024 >= int(value) * units.unit_scale(unit)  # rounded up, never down


@given(value=st.integers(0, 2**64), unit=UNIT_WORDS)
def test_known_units_are_exact_or_rejected(value, unit):
    scale = units.unit_scale(unit)
    if value * scale > units.MAX_BYTES:
        with pytest.raises(UnitError):
            units.to_kib(value, unit)
    else:
        assert units.to_kib(str(value), unit) == -(-(value * scale) // 1024)


@given(st.text(max_size=60))
def test_random_nodesets_raise_only_unit_errors(text):
    try:
        nodes = units.parse_nodeset(text)
    except UnitError as exc:
        assert "\n" not in str(exc)
        return
    assert nodes and all(0 <= n < units.MAX_NODES for n in nodes)


# --- kernel names and counters (sysfs directory names, meminfo lines) -------------------
@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("2048", 2048), ("18446744073709551615", 2**64 - 1), ("", None), ("-1", None),
    ("+1", None), (" 1", None), ("1 ", None), ("²", None), ("١٢", None), ("1" * 21, None),
    ("0x10", None),
])
def test_ascii_uint(text: str, expected: object) -> None:
    assert ascii_uint(text) == expected


@pytest.mark.parametrize("name, prefix, suffix, expected", [
    ("node0", "node", "", 0), ("node12", "node", "", 12), ("node", "node", "", None),
    ("nodeX", "node", "", None), ("node1 ", "node", "", None), ("possible", "node", "", None),
    ("hugepages-2048kB", "hugepages-", "kB", 2048), ("hugepages-kB", "hugepages-", "kB", None),
    ("hugepages-2048KB", "hugepages-", "kB", None), ("hugepages-1048576kB", "hugepages-", "kB",
                                                     1048576),
    ("2048kB", "", "kB", 2048), ("kB", "", "kB", None),
])
def test_numbered(name: str, prefix: str, suffix: str, expected: object) -> None:
    assert numbered(name, prefix, suffix) == expected
