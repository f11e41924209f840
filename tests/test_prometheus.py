"""The textfile output, written through prometheus_client, parses as Prometheus exposition
format with HELP/TYPE per family; status fields are read tolerantly; the library stays
optional (the hook never imports it, and without it `status --prometheus` is one line)."""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hugexml.host.usage import GuestUsage
from hugexml.system import prometheus

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
        "hugexml_hugepages_mismatched_guests",
        "hugexml_guest_hugepages_pages",
        "hugexml_guest_hugepages_mismatch",
    }
    assert set(families) < set(prometheus.metric_names())  # no kept/baseline in STATUS
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
    # vm1 is flagged and maps 2M pages on nodes 0 and 1; nothing maps 1G.
    mismatched = {
        (s.labels["node"], s.labels["page_size_kib"]): s.value
        for s in families["hugexml_hugepages_mismatched_guests"].samples
    }
    assert mismatched == {("0", "2048"): 1, ("0", "1048576"): 0, ("1", "2048"): 1}


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


def samples(text: str, family: str) -> dict[tuple[str, str], float]:
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    return {(s.labels["node"], s.labels["page_size_kib"]): s.value
            for s in fams[family].samples} if family in fams else {}


@pytest.mark.parametrize(("status", "want"), [
    # today's status --json: flat pools keyed size_kib, the ledger's keeps at the top level
    ({"pools": [{"node": 0, "size_kib": 2048, "total": 8, "kept": None, "baseline": 2}],
      "kept": {"0:2048": 3, "1:2048": "x"}}, {("0", "2048"): 3}),
    # a per-pool kept count wins over the top-level mapping
    ({"pools": [{"node": 0, "size_kib": 2048, "total": 8, "kept": 5}], "kept": {"0:2048": 3}},
     {("0", "2048"): 5}),
    ({"nodes": [{"node": 1, "sizes": [{"page_size_kib": 1048576, "kept_pages": 1}]}]},
     {("1", "1048576"): 1}),
    # no kept anywhere: no family, nothing invented
    ({"pools": [{"node": 0, "size_kib": 2048, "total": 8}]}, {}),
])
def test_kept_is_exported_when_status_has_it(status, want):
    text = prometheus.render(status, [])
    strict_check(text)
    assert samples(text, "hugexml_hugepages_kept_pages") == want


def test_unknown_fields_and_bad_rows_are_ignored():
    status = {"pools": [{"node": 0, "size_kib": 2048, "free": 3, "quarantined": [{"x": 1}],
                         "claimed": {"pending": 1, "active": 2}, "surplus": True},
                        {"node": None, "size_kib": 2048, "free": 9}, "junk"],
              "quarantined": [{"guest": "vm9"}], "nodes": "junk"}
    text = prometheus.render(status, [])
    strict_check(text)
    assert samples(text, "hugexml_hugepages_free_pages") == {("0", "2048"): 3}
    assert samples(text, "hugexml_hugepages_claimed_pages") == {}  # not a count: left out
    assert samples(text, "hugexml_hugepages_surplus_pages") == {}  # a bool is no count
    assert samples(text, "hugexml_hugepages_mismatched_guests") == {("0", "2048"): 0}


def test_without_prometheus_client_it_is_one_line(monkeypatch):
    for name in ("prometheus_client", "prometheus_client.core", "prometheus_client.parser"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(prometheus.MissingDependency) as err:
        prometheus.render(STATUS, [])
    assert str(err.value) == (
        "--prometheus needs the Python package prometheus_client: "
        "pip install 'hugexml[metrics]', or dnf install python3-prometheus_client")


def test_status_prometheus_without_the_library_fails_in_one_line(tmp_path):
    """The CLI as a user runs it, in a python where prometheus_client cannot be imported."""
    from fakekernel import FakeKernel

    fk = FakeKernel(tmp_path / "root", nodes=1)
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from hugexml.cli.main import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", code, "--root", fk.root, "--state-dir", str(tmp_path / "s"),
            "--config", str(tmp_path / "none.conf"), "status", "--prometheus", "-"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "hugexml status: --prometheus needs the Python package prometheus_client: "
        "pip install 'hugexml[metrics]', or dnf install python3-prometheus_client"]


def test_no_module_but_this_one_imports_prometheus_client():
    """The hook and every other module stay importable without the optional library."""
    import hugexml

    names = sorted(m.name for m in pkgutil.walk_packages(hugexml.__path__, "hugexml.")
                   if m.name not in ("hugexml.system.prometheus", "hugexml.__main__"))
    assert "hugexml.cli.plan" in names and "hugexml.qemuhook.dispatch" in names
    code = ("import importlib, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('prometheus')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    for hook in ("hook.py", "qemuhook/dispatch.py"):
        assert "prometheus" not in (Path(hugexml.__path__[0]) / hook).read_text()


def test_strict_check_rejects_broken_text():
    with pytest.raises(AssertionError):
        strict_check('hugexml_x{node="0} 1\n')
    with pytest.raises(AssertionError):
        strict_check("# HELP a x\n# TYPE a gauge\nb 1\n")


def test_write_textfile_is_atomic_and_readable(tmp_path):
    path = tmp_path / "hugexml.prom"
    path.write_text("old\n")
    text = prometheus.render(STATUS, USAGE)
    prometheus.write_textfile(str(path), text)
    assert path.read_text() == text
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["hugexml.prom"]


def test_write_textfile_missing_dir_is_host_error(tmp_path):
    with pytest.raises(prometheus.HostError, match="cannot write metrics"):
        prometheus.write_textfile(str(tmp_path / "nope" / "x.prom"), prometheus.render(STATUS))


# --- the Grafana dashboard ------------------------------------------------------------
DASHBOARD = Path(__file__).resolve().parents[1] / "packaging" / "grafana" / "hugexml.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and template variables."""
    import json

    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    out.append(value)
                elif key == "query" and isinstance(value, dict):
                    out.append(str(value.get("query", "")))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return out


def test_dashboard_queries_only_metrics_hugexml_exports():
    queried = {m for q in dashboard_queries() for m in re.findall(r"\b[a-z_]+:?[a-z_]*\b", q)
               if m.startswith("hugexml_")}
    # What render really writes for a full status (kept included) and a flagged guest.
    full = {"pools": [dict(STATUS["nodes"][0]["sizes"][0], node=0, kept=2, baseline=8)]}
    written = {f.name for f in parser.text_string_to_metric_families(
        prometheus.render(full, USAGE))}
    assert queried, "no hugexml metric in the dashboard"
    assert queried <= written, f"never written by hugexml: {queried - written}"
    assert written <= set(prometheus.metric_names())


def test_dashboard_shows_each_per_node_and_size():
    import json

    panels = json.loads(DASHBOARD.read_text())["panels"]
    wanted = {"free": "hugexml_hugepages_free_pages",
              "claimed": "hugexml_hugepages_claimed_pages",
              "kept": "hugexml_hugepages_kept_pages", "added": "hugexml_hugepages_added_pages",
              "mismatches": "hugexml_hugepages_mismatched_guests"}
    for what, metric in wanted.items():
        targets = [t for p in panels for t in p.get("targets", []) if metric in t["expr"]]
        assert targets, what
        for t in targets:
            assert "{{node}}" in t["legendFormat"] and "{{page_size_kib}}" in t["legendFormat"]
            assert 'node=~"$node"' in t["expr"] and 'page_size_kib=~"$page_size_kib"' in t["expr"]
    assert len({p["id"] for p in panels}) == len(panels)
