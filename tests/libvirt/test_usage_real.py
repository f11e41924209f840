"""Per-guest usage and metrics on a real running 2M guest (test bed with the hook)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.libvirt


def wait_usage(name: str, timeout_s: float = 10.0):
    from hugexml.core.root import HostRoot
    from hugexml.host.usage import guest_usage

    deadline = time.monotonic() + timeout_s
    while True:
        found = [u for u in guest_usage(HostRoot("/")) if u.name == name]
        if (found and found[0].mapped) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_running_2m_guest_reports_its_real_pages(bed):
    name = bed.define("usage-2m", memory_mib=128, page_kib=2048)
    bed.start(name)
    [usage] = wait_usage(name)
    assert usage.mapped == {(0, 2048): 64}
    assert usage.demand == {2048: 64}
    assert usage.uuid == bed.uuid(name)
    ledger = bed.ledger()
    if ledger.get("guests"):
        from hugexml.host.usage import compare, ledger_claims

        usage.ledger = ledger_claims(ledger, name, usage.uuid)
        assert compare(usage) == [], ledger
    # The metrics text carries the guest's pages.
    from prometheus_client.parser import text_string_to_metric_families

    from hugexml.system.prometheus import render

    text = render({"pools": [{"node": 0, "page_size_kib": 2048, "total": 64, "free": 0}]}, [usage])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    [sample] = fams["hugexml_guest_hugepages_pages"].samples
    assert sample.labels == {"guest": name, "node": "0", "page_size_kib": "2048"}
    assert sample.value == 64
    json.dumps(usage.to_json())


def test_guest_without_hugepages_maps_none(bed):
    name = bed.define("usage-plain", memory_mib=64, page_kib=None)
    bed.start(name)
    time.sleep(0.5)
    from hugexml.core.root import HostRoot
    from hugexml.host.usage import guest_usage

    [usage] = [u for u in guest_usage(HostRoot("/")) if u.name == name]
    assert usage.mapped == {} and usage.demand in ({}, None) and usage.mismatches == []


def test_status_guests_cli_reports_the_real_pages(bed):
    """``hugexml status --guests --json`` and ``--prometheus``."""
    name = bed.define("usage-cli", memory_mib=128, page_kib=2048)
    bed.start(name)
    wait_usage(name)
    out = bed.hugexml("status", "--guests", "--json", check=False)
    report = json.loads(out.stdout)
    [mine] = [g for g in report["guest_usage"] if g["name"] == name]
    assert mine["mapped"] == [{"node": 0, "page_size_kib": 2048, "pages": 64}]
    assert out.returncode == (1 if any(g["mismatches"] for g in report["guest_usage"]) else 0)
    from prometheus_client.parser import text_string_to_metric_families

    text = bed.hugexml("status", "--prometheus").stdout
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    pages = {s.labels["guest"]: s.value for s in fams["hugexml_guest_hugepages_pages"].samples}
    assert pages[name] == 64
