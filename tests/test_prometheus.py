"""The textfile output parses as Prometheus exposition format, with HELP/TYPE per family."""

from __future__ import annotations

import os
import re

import pytest

from hugexml import prometheus
from hugexml.usage import GuestUsage

parser = pytest.importorskip("prometheus_client.parser")

STATUS = {
    "nodes": [
        {
            "node": 0,
            "sizes": [
                {
                    "page_size_kib": 2048,
                    "total": 512,
                    "free": 100,
                    "reserved": 4,
                    "surplus": 0,
                    "claimed": 64,
                    "added_by_hugexml": 64,
                    "predicted_allocatable": 9000,
                },
                {
                    "page_size_kib": 1048576,
                    "nr": 2,
                    "free": 2,
                    "resv": 0,
                    "surplus": 0,
                    "claimed": 0,
                    "added": 0,
                    "allocatable": 3,
                },
            ],
        },
        {
            "node": 1,
            "sizes": [
                {
                    "page_size_kib": 2048,
                    "total": 0,
                    "free": 0,
                    "reserved": 0,
                    "surplus": 0,
                    "claimed": 0,
                    "added_by_hugexml": 0,
                    "predicted_allocatable": 12,
                },
            ],
        },
    ]
}
USAGE = [
    GuestUsage(name='we"ird\\name\nx', pid=5, uuid=None, mapped={(0, 2048): 64}),
    GuestUsage(
        name="vm1",
        pid=6,
        uuid=None,
        mapped={(0, 2048): 10, (1, 2048): 2},
        mismatches=["node 0: maps 10, the ledger claims 12"],
    ),
]

# One sample line of the text format 0.0.4 (no timestamps written by hugexml).
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? '
    r"(-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|[+-]Inf)$"
)


def strict_check(text: str) -> None:
    """Every family has HELP then TYPE before its samples; no family twice; names valid."""
    assert text.endswith("\n")
    seen: set[str] = set()
    current = None
    typed = False
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in seen, f"family {name} twice"
            seen.add(name)
            current, typed = name, False
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name == current and kind == "gauge"
            typed = True
        else:
            assert SAMPLE.match(line), line
            assert typed and line.split("{")[0].split(" ")[0] == current, line


def test_render_parses_with_prometheus_client():
    text = prometheus.render(STATUS, USAGE)
    strict_check(text)
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert set(families) == {
        "hugexml_hugepages_pages",
        "hugexml_hugepages_free_pages",
        "hugexml_hugepages_reserved_pages",
        "hugexml_hugepages_surplus_pages",
        "hugexml_hugepages_claimed_pages",
        "hugexml_hugepages_added_pages",
        "hugexml_hugepages_allocatable_pages",
        "hugexml_guest_hugepages_pages",
        "hugexml_guest_hugepages_mismatch",
    }
    for fam in families.values():
        assert fam.type == "gauge" and fam.documentation
    total = {
        (s.labels["node"], s.labels["page_size_kib"]): s.value
        for s in families["hugexml_hugepages_pages"].samples
    }
    assert total == {("0", "2048"): 512, ("0", "1048576"): 2, ("1", "2048"): 0}
    alloc = {
        (s.labels["node"], s.labels["page_size_kib"]): s.value
        for s in families["hugexml_hugepages_allocatable_pages"].samples
    }
    assert alloc[("0", "1048576")] == 3 and alloc[("1", "2048")] == 12
    guests = {
        (s.labels["guest"], s.labels["node"]): s.value
        for s in families["hugexml_guest_hugepages_pages"].samples
    }
    assert guests == {('we"ird\\name\nx', "0"): 64, ("vm1", "0"): 10, ("vm1", "1"): 2}
    flags = {
        s.labels["guest"]: s.value for s in families["hugexml_guest_hugepages_mismatch"].samples
    }
    assert flags == {"vm1": 1, 'we"ird\\name\nx': 0}


def test_render_accepts_flat_pools_and_json_usage():
    status = {"pools": [{"node": 3, "page_size_kib": 2048, "total": 7, "free": 1}]}
    usage_json = [USAGE[1].to_json()]
    text = prometheus.render(status, usage_json)
    strict_check(text)
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert [s.value for s in fams["hugexml_hugepages_pages"].samples] == [7]
    assert "hugexml_hugepages_claimed_pages" not in fams  # absent counters are not invented
    assert len(fams["hugexml_guest_hugepages_pages"].samples) == 2


def test_render_empty_status_is_empty():
    assert prometheus.render({}, []) == ""


def test_strict_check_rejects_broken_text():
    with pytest.raises(AssertionError):
        strict_check('hugexml_x{node="0} 1\n')
    with pytest.raises(AssertionError):
        strict_check("# HELP a x\n# TYPE a gauge\nb 1\n")


def test_write_textfile_is_atomic_and_readable(tmp_path):
    path = tmp_path / "hugexml.prom"
    path.write_text("old\n")
    prometheus.write_textfile(str(path), "new 1\n")
    assert path.read_text() == "new 1\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["hugexml.prom"]


def test_write_textfile_missing_dir_is_host_error(tmp_path):
    with pytest.raises(prometheus.HostError, match="cannot write metrics"):
        prometheus.write_textfile(str(tmp_path / "nope" / "x.prom"), "a 1\n")
