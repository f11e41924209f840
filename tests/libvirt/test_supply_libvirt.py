"""Supply-aware ``auto`` against the real libvirt 9.0 and kernel of the test bed.

- A 1 GiB guest on a 1G page, saved and restored: while its page is kept (the default keep
  window, 1G=10m) the restore filter leaves it on 1G; with no keep window the page goes back
  at once, no 1G page can be promised, and the filter restores it on 2M pages.
- ``apply --page-size auto`` on a guest takes 1G once a stopped guest's 1G page is kept,
  2M before.
- libvirt as the oracle for what ``auto`` writes under scarce supplies: generated domains
  (tests/domgen.py), each with a random snapshot of what the host can supply, through
  ``rewrite`` (auto) and the restore refit; libvirt's ``domxml-to-native`` and ``define`` must
  accept every output hugexml gives (it refuses, exit 2, rather than write XML libvirt
  refuses).
"""
from __future__ import annotations

import collections
import json
import os
import random
from pathlib import Path

import pytest
from differential import NUMAD, shape, strip_hugepages
from domgen import generate
from libvirt_bed import MOUNTS
from test_differential import oracle  # noqa: F401  (the differential's module fixture)

from hugexml.core.errors import HugexmlError
from hugexml.planning.pagesize import Pick
from hugexml.planning.tally import HostSupply, PoolSupply
from hugexml.xml.refit import refit_for_host
from hugexml.xml.rewrite import rewrite_xml

pytestmark = pytest.mark.libvirt

M2, G1 = 2048, 1048576
SEED = 1313
COUNT = int(os.environ.get("HUGEXML_SUPPLY_DIFF_COUNT", "300"))


def pool(size_kib: int) -> dict[str, int]:
    base = f"/sys/kernel/mm/hugepages/hugepages-{size_kib}kB"
    return {k: int(Path(f"{base}/{k}_hugepages").read_text()) for k in ("nr", "free")}


def page_sizes(xml: str) -> list[str]:
    from lxml import etree

    root = etree.fromstring(xml.encode())
    return [p.get("size") for p in root.findall("./memoryBacking/hugepages/page")]


def hook_log() -> str:
    path = Path("/run/hugexml/hook.log")
    return path.read_text()[-3000:] if path.exists() else "(no /run/hugexml/hook.log)"


def test_restore_keeps_1g_while_the_page_is_kept_and_moves_to_2m_without(bed):
    name = bed.define("supply-save", memory_mib=1024, page_kib=G1)
    bed.start(name)
    image = str(Path(bed.workdir, "supply-save.img"))
    bed.virsh("save", name, image, timeout=300)
    assert bed.ledger()["kept"] == {f"0:{G1}": 1}      # the default window keeps it
    bed.virsh("restore", image, timeout=300)
    assert bed.state(name) == "running" and page_sizes(bed.dumpxml(name)) == [str(G1)]
    os.unlink(image)
    # no keep window: the page goes back when the guest stops, and nothing can promise
    # a 1G page to the restore (MemFree is only an upper bound)
    bed.write_config("[release]\nkeep_for = 1G=0 2M=0\n")
    bed.virsh("save", name, image, timeout=300)
    assert pool(G1)["nr"] == 0 and bed.ledger().get("kept", {}) == {}
    bed.virsh("restore", image, timeout=300)
    assert bed.state(name) == "running"
    log = hook_log()
    assert "refitted: memory (1G): 1G: only 0 of 1 pages can be supplied on node 0 now" in log
    assert pool(G1)["nr"] == 0
    if page_sizes(bed.dumpxml(name)) != [str(M2)]:
        # other sessions share this host: with little normal memory above the margin even
        # 2M pages cannot be promised, and the guest comes back on normal pages; say so
        assert page_sizes(bed.dumpxml(name)) == [] and "2M: only" in log, log
    else:
        assert pool(M2)["nr"] - pool(M2)["free"] == 512
    bed.destroy(name)


def test_apply_auto_takes_1g_once_a_stopped_guests_page_is_kept(bed, tmp_path):
    gig = bed.define("supply-apply", memory_mib=1024, page_kib=None)

    def apply() -> dict:
        out = bed.hugexml("apply", "--connect", "qemu:///system", "--backup-dir",
                          str(tmp_path / "bk"), gig, "--page-size", "auto", "--dry-run",
                          "--json")
        return json.loads(out.stdout)["results"][0]

    assert "<page size='2048' unit='KiB'/>" in apply()["diff"]
    one = bed.define("supply-kept", memory_mib=1024, page_kib=G1)
    bed.start(one)
    bed.destroy(one)                                   # its 1G page is kept for 10 minutes
    assert bed.ledger()["kept"] == {f"0:{G1}": 1}
    result = apply()
    assert "<page size='1048576' unit='KiB'/>" in result["diff"], result
    assert result["notes"][0].startswith("memory (1G): 1G pages: the largest host page size "
                                         "(1G, 2M) that divides 1G and can be supplied now: 1 "
                                         "pages on node 0 (free 0, kept 1, allocatable 0")


def random_supply(rng: random.Random, nodes: tuple[int, ...]) -> HostSupply:
    """Scarce and uneven: few 1G pages, sometimes few 2M pages, sometimes no room."""
    pools = {}
    for node in nodes:
        pools[(node, G1)] = PoolSupply(rng.choice([0, 0, 1, 2, 4]), rng.choice([0, 0, 1, 2]), 0,
                                       rng.choice([0, 8]))
        pools[(node, M2)] = PoolSupply(rng.choice([0, 64, 512]), 0,
                                       rng.choice([0, 100, 1000, 6000]))
    room = {node: rng.choice([-G1, 2 * G1, 32 * G1]) for node in nodes}
    return HostSupply(nodes, pools, room)


def test_libvirt_accepts_what_supply_aware_auto_and_the_refit_write(oracle):  # noqa: F811
    rng = random.Random(SEED)
    counts: collections.Counter[str] = collections.Counter()
    bad: list[tuple[str, str]] = []
    nodes = tuple(oracle.host.nodes) or (0,)
    for name, xml in generate(SEED, COUNT, prefix="hxtest-supply"):
        supply = random_supply(rng, nodes)
        outputs = []
        base = strip_hugepages(xml)
        if base is not None:
            try:
                outputs.append(("auto", rewrite_xml(base, page_size=Pick.AUTO, host=oracle.host,
                                                    supply=supply, source=name).data))
            except HugexmlError as exc:
                assert exc.exit_code == 2, (name, str(exc))
                counts["auto refused (exit 2)"] += 1
        try:
            refit = refit_for_host(xml.encode(), oracle.host, set(MOUNTS), name, supply=supply)
            if refit.changed:
                outputs.append(("refit", refit.data))
            else:
                counts["refit: nothing to change"] += 1
        except HugexmlError:
            counts["refit refused (the hook passes the XML through)"] += 1
        for what, out in outputs:
            counts[f"{what} checked"] += 1
            counts[f"{what}: sizes {sorted(set(page_sizes(out.decode())))}"] += 1
            native = oracle.native(out.decode())
            if not native.ok and NUMAD in native.message:
                native.ok = True  # a pretend start asks no numad (see differential.py)
            if not native.ok:
                bad.append((name, f"{what}: domxml-to-native: {shape(native.message)}"))
                continue
            refused = oracle.define(out.decode())
            if refused is not None:
                bad.append((name, f"{what}: define: {shape(refused)}"))
    print(f"\nsupply-aware auto and refit against libvirt, seed {SEED}, {COUNT} domains: "
          f"{dict(sorted(counts.items()))}")
    assert counts["auto checked"] > COUNT // 3 and counts["refit checked"] > 0, counts
    assert not bad, bad[:10]
