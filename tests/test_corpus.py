"""The proof: hugexml's plan against libvirt's own qemuxmlconf cases (.args ground truth)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import pytest
from paths import ACCEPTED_BY_9_0, CORPUS, REFUSED_BY_9_0, corpus_xml

from hugexml.core.model import HostInfo
from hugexml.core.typed import replace
from hugexml.xml.domxml import plan_xml

HOST = HostInfo(default_page_kib=2048, page_sizes_kib=(2048, 1048576), nodes=(0, 1, 2, 3),
                auto_nodes=(0, 1, 2, 3))
MOUNT_PAGE_KIB = {"/dev/hugepages2M": 2048, "/dev/hugepages1G": 1048576}

pytestmark = pytest.mark.corpus
ARGS = sorted(CORPUS.glob("*.args"))
OBJ_RE = re.compile(r"-object '(\{[^']*\})'")


def libvirt_backends(args_text: str) -> dict[str, tuple[Optional[int], int, Any]]:
    """id -> (page size KiB or None, pages, host nodes) from libvirt's -object lines."""
    out = {}
    for raw in OBJ_RE.findall(args_text.replace("\\\n", " ")):
        obj = json.loads(raw)
        if not str(obj.get("qom-type", "")).startswith("memory-backend"):
            continue
        page = None
        path = obj.get("mem-path", "")
        for prefix, kib in MOUNT_PAGE_KIB.items():
            if path.startswith(prefix):
                page = kib
        if obj.get("hugetlbsize"):
            page = obj["hugetlbsize"] // 1024
        size_kib = obj["size"] // 1024
        pages = -(-size_kib // page) if page else 0
        nodes = tuple(obj["host-nodes"]) if "host-nodes" in obj else None
        out[obj["id"]] = (page, pages, nodes)
    return out


def backend_id(c: Any, backends: dict, seen: dict) -> str:
    """libvirt's backend id; devices are matched per model in order (dimm/nvdimm aliases
    follow DIMM slots, which are shared between the two models)."""
    if c.kind == "cell":
        return f"ram-node{c.guest_cell}"
    if c.kind == "memory":
        return "pc.ram"
    prefix = "mem" + c.kind.replace("-", "")
    ids = [b for b in backends if re.fullmatch(re.escape(prefix) + r"\d+", b)]
    n = seen.get(prefix, 0)
    seen[prefix] = n + 1
    return ids[n] if n < len(ids) else f"{prefix}?"


def check_plan_against_args(plan: Any, args_text: str) -> None:
    """Both directions: every consumer matches its libvirt backend, and every memory backend
    libvirt created (memory-backend-file/-memfd/-ram) is matched by exactly one consumer."""
    backends = libvirt_backends(args_text)
    assert len(backends) == args_text.count('"qom-type":"memory-backend'), "unparsed backend"
    seen: dict[str, int] = {}
    matched: dict[str, int] = {}
    for c in plan.consumers:
        bid = backend_id(c, backends, seen)
        if bid not in backends:
            # libvirt emits no backend object for plain RAM without a binding
            assert c.page_size_kib is None, (bid, c)
            continue
        matched[bid] = matched.get(bid, 0) + 1
        page, pages, nodes = backends[bid]
        # restrictive mode binds through cgroup cpuset.mems, not the backend's host-nodes
        want_nodes = None if c.policy == "restrictive" else c.host_nodes
        assert (c.page_size_kib, c.pages, want_nodes) == (page, pages, nodes), bid
    unmatched = sorted(set(backends) - set(matched))
    assert not unmatched, f"libvirt backends the plan has no consumer for: {unmatched}"
    twice = sorted(b for b, n in matched.items() if n != 1)
    assert not twice, f"backends claimed by more than one consumer: {twice}"
    if "pc.ram" in backends:
        # the whole guest RAM as one -machine memory-backend: the plan's single 'memory'
        assert "memory-backend=pc.ram" in args_text
        assert [c.kind for c in plan.consumers] == ["memory"]


@pytest.mark.parametrize("args_path", ARGS, ids=[p.name.split(".")[0] for p in ARGS])
def test_args_case(args_path: Path) -> None:
    name = args_path.name.split(".")[0]
    plan = plan_xml(corpus_xml(name), HOST, name)
    check_plan_against_args(plan, args_path.read_text())


@pytest.mark.parametrize("name, kind", [("memory-hotplug-multiple", "virtio-mem"),
                                        ("memory-hotplug-multiple", "nvdimm"),
                                        ("memory-hotplug-dimm", "dimm"),
                                        ("hugepages-numa-nodeset", "cell")])
def test_a_dropped_consumer_is_caught(name: str, kind: str) -> None:
    """The reverse check can fail: a plan missing one device/cell does not match the .args."""

    plan = plan_xml(corpus_xml(name), HOST, name)
    last = max(i for i, c in enumerate(plan.consumers) if c.kind == kind)
    dropped = replace(
        plan, consumers=plan.consumers[:last] + plan.consumers[last + 1:])
    args_text = next(CORPUS.glob(name + ".*.args")).read_text()
    check_plan_against_args(plan, args_text)
    with pytest.raises(AssertionError, match="no consumer for"):
        check_plan_against_args(dropped, args_text)


ERRS = sorted(CORPUS.glob("*.err"))
# Salient words of libvirt's .err message that hugexml's rejection must contain.
ERR_WORDS = {
    "cpu-numa3": "Exactly one 'cell' element per guest NUMA cell allowed, non-contiguous "
                 "ranges or ranges not starting from 0 are not allowed",
    "hugepages-memaccess-invalid": "Invalid value for attribute 'memAccess' in element "
                                   "'cell': 'invalid'.",
    "memory-align-fail": "memory size of NUMA node '0' overflowed after alignment",
    "numatune-memnode-invalid-mode": "'restrictive' mode is required in memnode element when "
                                     "mode is 'restrictive' in memory element",
    "hugepages-default-1G-nodeset-2M": "two master hugepages detected: 2048 and 1048576",
    "hugepages-default-5M": "5120 KiB",
    "hugepages-nodeset-nonexist": "hugepages: node 1 not found",
    "hugepages-numa-nodeset-nonexist": "hugepages: node 4 not found",
    "memory-hotplug-invalid-targetnode": "can't add memory backend for guest node '1'",
    "memory-hotplug-nonuma": "At least one numa node has to be configured",
    "numatune-memnode-nocpu": "Element 'memnode' is invalid without any guest NUMA cells",
    "numatune-memnode-unavailable-strict": "NUMA node 999 is unavailable",
    "numatune-memnodes-problematic": "Per-node binding is not compatible",
    "numatune-memory-invalid-nodeset": "0,^0",
    "numatune-static-nodeset-exceed-hostnode": "NUMA node 4 is unavailable",
}
REFUSED = [p for p in ERRS if p.name.split(".")[0] not in ACCEPTED_BY_9_0]


@pytest.mark.parametrize("err_path", REFUSED, ids=[p.name.split(".")[0] for p in REFUSED])
def test_err_case(err_path: Path) -> None:
    from hugexml.core.errors import InvalidDomain

    name = err_path.name.split(".")[0]
    xml = CORPUS / (name + ".xml")
    with pytest.raises(InvalidDomain) as info:
        plan_xml(xml.read_bytes(), HOST, xml.name)
    assert ERR_WORDS[name] in str(info.value)
    assert "\n" not in str(info.value)


def test_err_words_cover_every_err_case():
    assert sorted(ERR_WORDS) == sorted(p.name.split(".")[0] for p in REFUSED)
    assert set(ACCEPTED_BY_9_0) <= {p.name.split(".")[0] for p in ERRS}


@pytest.mark.parametrize("name", sorted(ACCEPTED_BY_9_0))
def test_err_case_libvirt_9_0_accepts_is_accepted(name: str) -> None:
    """The corpus is newer libvirt's: its rule is not in 9.0, and hugexml follows 9.0."""
    plan_xml((CORPUS / (name + ".xml")).read_bytes(), HOST, name)


@pytest.mark.parametrize("name", sorted(REFUSED_BY_9_0))
def test_args_case_libvirt_9_0_refuses_is_refused(name: str) -> None:
    from hugexml.core.errors import InvalidDomain

    with pytest.raises(InvalidDomain) as info:
        plan_xml((CORPUS / (name + ".xml")).read_bytes(), HOST, name)
    assert str(info.value).endswith(REFUSED_BY_9_0[name][0])


# libvirt's own wording, where hugexml reports the same check (the .err file is the truth;
# the words that differ are host facts hugexml words itself, e.g. the page size in KiB).
VERBATIM = ["cpu-numa3", "hugepages-memaccess-invalid", "memory-align-fail",
            "numatune-memnode-invalid-mode",
            "hugepages-default-1G-nodeset-2M", "hugepages-nodeset-nonexist",
            "hugepages-numa-nodeset-nonexist"]


@pytest.mark.parametrize("name", VERBATIM)
def test_err_message_is_libvirts(name: str) -> None:
    from hugexml.core.errors import InvalidDomain

    err = next(CORPUS.glob(name + ".*.err")).read_text().strip()
    reason = err.split(": ", 1)[1] if err.startswith(("XML error: ", "unsupported ")) else err
    with pytest.raises(InvalidDomain) as info:
        plan_xml((CORPUS / (name + ".xml")).read_bytes(), HOST, name)
    assert str(info.value).endswith(reason)


def test_the_corpus_is_there():
    """Parametrized tests over an absent corpus would pass vacuously."""
    assert len(ARGS) >= 40 and len(ERRS) >= 10, f"libvirt corpus missing at {CORPUS}"
