"""libvirt 9.0's memory/NUMA rules (tests/rules.py), one domain per rule: hugexml refuses each
with libvirt's message, and docs/libvirt-validation.md lists every rule.

The same domains go through the real daemon in tests/libvirt/test_differential.py, which
checks that libvirt 9.0 refuses each with exactly that message, at that stage.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rules import RULES, domain

from hugexml.core.errors import InvalidDomain
from hugexml.core.model import HostInfo
from hugexml.xml import qemuargs
from hugexml.xml.domxml import plan_xml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "libvirt-validation.md"
# the test bed's host: one node, 2M (default) and 1G pages, both mounted
HOST = HostInfo(default_page_kib=2048, page_sizes_kib=(2048, 1048576), nodes=(0,))
PRETEND = qemuargs.QemuEnv(mounts={2048: "/dev/hugepages", 1048576: "/dev/hugepages1G"},
                           default_page_kib=2048, auto_nodes=None)


def refusal(rule_id: str) -> str:
    rule = RULES[rule_id]
    data = rule.xml(rule_id)
    with pytest.raises(InvalidDomain) as info:
        if rule.via == "qemu-args":
            qemuargs.from_xml(data, PRETEND, HOST, rule_id)
        else:
            plan_xml(data, HOST, rule_id)
    return str(info.value)


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_hugexml_refuses_with_libvirts_words(rule_id: str) -> None:
    rule = RULES[rule_id]
    message = refusal(rule_id)
    assert message.startswith(f"domain 'hxtest-rule-{rule_id}': ") and "\n" not in message
    assert (rule.ours or rule.message) in message


def test_the_base_domain_is_accepted() -> None:
    """Every rule's domain differs from this one in that rule only."""
    plan = plan_xml(domain("hxtest-rule-base"), HOST)
    assert [c.page_size_kib for c in plan.consumers] == [2048, 2048]


@pytest.mark.parametrize("rule_id", ["numad-advice"])
def test_the_hooks_plan_takes_automatic_placement(rule_id: str) -> None:
    """A real start asks numad; only the pretend start of qemu-args has no advice."""
    plan = plan_xml(RULES[rule_id].xml(rule_id), HOST)
    assert all(c.host_nodes == (0,) for c in plan.consumers)


def test_a_device_node_without_cells() -> None:
    """virDomainMemoryDefValidate's first check: the qemu driver's hotplug checks run before
    it, so only validate_device itself shows it."""
    from hugexml.core.model import Domain, MemoryDevice
    from hugexml.planning.validate import validate_device

    dev = MemoryDevice("dimm", 0, 524288, 0)
    with pytest.raises(InvalidDomain, match="can't add memory backend as guest has no NUMA "
                                            "nodes configured"):
        validate_device(Domain("g", None, 1048576, False, memory_devices=(dev,)), dev)


def doc_rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| #") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_doc_lists_every_rule_and_proves_each_enforced_one() -> None:
    rows = doc_rows()
    tested = set()
    for row in rows:
        assert len(row) == 6, row
        number, _rule, _message, _source, hugexml, test = row
        ids = set(re.findall(r"`rule:([a-z0-9-]+)`", test))
        assert ids <= set(RULES), (number, ids - set(RULES))
        if hugexml.startswith("yes"):
            assert ids or "test_" in test, f"row {number}: enforced, but no test named"
        tested |= ids
    assert tested == set(RULES), f"rules without a row: {sorted(set(RULES) - tested)}"
    numbers = [int(row[0]) for row in rows]
    assert numbers == list(range(1, len(rows) + 1))
    kinds = [row[4].split(":")[0].split(";")[0].split()[0] for row in rows]
    summary = (f"{len(rows)} rows: {kinds.count('yes')} enforced by hugexml (*yes*), "
               f"{kinds.count('n/a')} that cannot happen with this libvirt and qemu")
    assert summary in " ".join(DOC.read_text().split()), summary
    assert f"{len(RULES)} domains in" in DOC.read_text()


# --- named regression cases of the differential test (tests/data/differential) --------------
CASES_DIR = REPO / "tests" / "data" / "differential"
CASES = json.loads((CASES_DIR / "cases.json").read_text())
LIBVIRT_PREFIXES = ("XML error: ", "unsupported configuration: ", "internal error: ",
                    "invalid argument: ", "numerical overflow: ")
# host facts hugexml words itself: libvirt's words -> hugexml's
HOST_WORDS = {r"Unable to find any usable hugetlbfs mount for (\d+) KiB":
              r"hugepage size \1 KiB is not supported by this host"}


def libvirts_reason(message: str) -> str:
    for prefix in LIBVIRT_PREFIXES:
        if message.startswith(prefix):
            message = message[len(prefix):]
    for theirs, ours in HOST_WORDS.items():
        message = re.sub(theirs, ours, message)
    return message


@pytest.mark.parametrize("name", sorted(CASES))
def test_regression_cases(name: str) -> None:
    """hugexml's qemu-args, run as libvirt's domxml-to-native runs, agrees with what libvirt
    9.0 did with each case (the daemon test checks the record itself)."""
    data = (CASES_DIR / f"{name}.xml").read_bytes()
    verdict = CASES[name]["libvirt"]
    if verdict == "accept":
        qemuargs.from_xml(data, PRETEND, HOST, name)
        return
    with pytest.raises(InvalidDomain) as info:
        qemuargs.from_xml(data, PRETEND, HOST, name)
    assert libvirts_reason(verdict) in str(info.value)


def test_every_case_file_is_recorded() -> None:
    assert {p.stem for p in CASES_DIR.glob("*.xml")} == set(CASES)
