"""Supply-aware ``auto``: the page size of a cell counts only where the host can supply it now.

Pure tables first (``choose_fitting`` over injected ``HostSupply`` snapshots: node sets,
several cells, devices that borrow a cell's pages, kept pages, a bound that is no promise,
the margin), then ``read_supply`` on the sysfs fake kernel with a state dir that holds kept
pages and other guests' claims, made by the allocator itself.
"""
from __future__ import annotations

from typing import Any, Optional

import pytest
from allocfix import G1, M2, guest, plan
from simkernel import GIB, make_kernel
from supplyfix import Clock, keep_pages, supply_table

from hugexml.alloc.allocator import Allocator
from hugexml.alloc.supply import for_filter, host_supply, read_supply
from hugexml.core.config import Config, load_config
from hugexml.core.errors import HostError
from hugexml.core.root import HostRoot
from hugexml.planning.fit import Margin
from hugexml.planning.pagesize import Backing, choose_fitting
from hugexml.planning.tally import HostSupply, Need, PoolSupply, Tally, guest_key_of

SIZES = (M2, G1)
ROOMY = 64 * GIB  # normal memory above the margin: never the limit unless a case says so


def snapshot(pools: dict[tuple[int, int], tuple[int, ...]], nodes: tuple[int, ...] = (0, 1),
             room: Optional[dict[int, int]] = None,
             held: Optional[dict[str, dict[tuple[int, int], int]]] = None) -> HostSupply:
    """{(node, size): (free, kept, allocatable[, bound])}; pools not named are empty."""
    return supply_table(pools, nodes, held, alloc_2m=0, room_kib=room or ROOMY)


def cell(gib: float, nodes: Optional[tuple[int, ...]] = None, policy: Optional[str] = None,
         label: str = "") -> Need:
    return Need(label, int(gib * GIB), nodes, policy)


# name -> (supply, needs, chosen size, what the reason must say)
CASES: dict[str, tuple[HostSupply, list[Need], Optional[int], list[str]]] = {
    "a kept page makes 1G possible": (
        snapshot({(0, G1): (1, 1, 0)}), [cell(2, (0,), "strict")], G1,
        ["can be supplied now: 2 pages on node 0 (free 1, kept 1, allocatable 0)"]),
    "one kept page is not two": (
        snapshot({(0, G1): (0, 1, 0), (0, M2): (0, 0, 5000)}), [cell(2, (0,), "strict")], M2,
        ["1G: only 1 of 2 pages can be supplied on node 0 now (free 0, kept 1, allocatable 0)",
         "2M chosen"]),
    "an upper bound is not a promise": (
        snapshot({(0, G1): (0, 0, 0, 20), (0, M2): (0, 0, 5000)}), [cell(2, (0,), "strict")],
        M2, ["only 0 of 2 pages", "MemFree allows up to 20 more, not a promise: not counted"]),
    "buddyinfo's promise counts": (
        snapshot({(0, M2): (0, 0, 1024)}, nodes=(0,)), [cell(2)], M2,
        ["1024 pages on node 0 (free 0, kept 0, allocatable 1024)"]),
    "nothing to supply: normal pages": (
        snapshot({(0, M2): (10, 0, 100)}, nodes=(0,)), [cell(2)], Backing.NORMAL,
        ["2M: only 110 of 1024 pages", "no host page size that divides 2G can be supplied now"]),
    "the margin keeps allocatable pages back": (
        snapshot({(0, M2): (0, 0, 5000)}, nodes=(0,), room={0: GIB}), [cell(2)], Backing.NORMAL,
        ["only 512 of 1024 pages", "allocatable 512 within the margin, 5000 without"]),
    "below the margin nothing can be added": (
        snapshot({(0, M2): (0, 0, 5000)}, nodes=(0,), room={0: -GIB}), [cell(1)], Backing.NORMAL,
        ["allocatable 0 within the margin, 5000 without"]),
    "strict: another node's pages do not count": (
        snapshot({(1, G1): (4, 0, 0), (0, M2): (0, 0, 5000)}), [cell(2, (0,), "strict")], M2,
        ["1G: only 0 of 2 pages can be supplied on node 0 now"]),
    "unbound: any node's pages count": (
        snapshot({(0, G1): (1, 0, 0), (1, G1): (0, 1, 0)}), [cell(2)], G1,
        ["2 pages on nodes 0-1 (free 1, kept 1, allocatable 0)"]),
    "preferred: the other nodes count after its own": (
        snapshot({(1, G1): (2, 0, 0)}), [cell(2, (0,), "preferred")], G1, ["nodes 0-1"]),
    "interleave: a share on every node": (
        snapshot({(0, G1): (2, 0, 0), (1, M2): (0, 0, 600), (0, M2): (0, 0, 600)}),
        [cell(2, (0, 1), "interleave")], M2,
        ["1G: only 0 of 1 pages can be supplied on node 1 now"]),
    "interleave: one page on each node is enough": (
        snapshot({(0, G1): (1, 0, 0), (1, G1): (1, 0, 0)}), [cell(2, (0, 1), "interleave")],
        G1, []),
    "a device borrows the cell's pages": (
        snapshot({(0, G1): (2, 0, 0), (0, M2): (0, 0, 5000)}),
        [cell(2, (0,), "strict"), cell(1, (0,), "strict", "dimm #0")], M2,
        ["1G: only 0 of 1 pages for dimm #0 can be supplied on node 0 now", "2 already counted"]),
    "a device on its own nodemask": (
        snapshot({(0, G1): (2, 0, 0), (1, G1): (1, 0, 0)}),
        [cell(2, (0,), "strict"), cell(1, (1,), "strict", "dimm #0")], G1,
        ["3 pages on nodes 0-1"]),
    "a size that does not divide is skipped": (
        snapshot({(0, G1): (4, 0, 0), (0, M2): (768, 0, 0)}), [cell(1.5, (0,), "strict")], M2,
        ["1G does not divide 1536M; 2M chosen"]),
    "nodes this host lacks: any node (the refit drops the binding)": (
        snapshot({(1, G1): (2, 0, 0)}), [cell(2, (5,), "strict")], G1, []),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_choice_given_the_supply(name: str) -> None:
    supply, needs, expected, says = CASES[name]
    size, why = choose_fitting(needs, SIZES, Tally(supply))
    assert size == expected, why
    for text in says:
        assert text in why, why
    assert "\n" not in why


def test_without_a_tally_the_largest_that_divides_as_before() -> None:
    size, why = choose_fitting([cell(2, (0,), "strict")], SIZES)
    assert size == G1 and why == "the largest host page size (1G, 2M) that divides 2G"


def test_cells_on_one_node_cannot_count_the_same_page() -> None:
    """Two 1G cells bound to node 0, one free 1G page there: the first takes it."""
    tally = Tally(snapshot({(0, G1): (1, 0, 0), (0, M2): (0, 0, 5000)}))
    first, _ = choose_fitting([cell(1, (0,), "strict")], SIZES, tally)
    second, why = choose_fitting([cell(1, (0,), "strict")], SIZES, tally)
    assert (first, second) == (G1, M2)
    assert why.startswith("1G: only 0 of 1 pages can be supplied on node 0 now (free 1, kept 0, "
                          "allocatable 0; 1 already counted for this guest's other memory)")
    # the 512 x 2M pages the second took count against the 5000 the node can add
    assert tally.take([Need("", (5000 - 511) * M2, (0,), "strict")], M2) is not None
    assert tally.take([Need("", (5000 - 512) * M2, (0,), "strict")], M2) is None


def test_grown_pages_of_one_size_use_the_room_of_the_other() -> None:
    """Growing a pool takes normal memory: 2M pages added for one cell leave less room for
    the next, whatever its size (the margin is per node, not per size)."""
    supply = snapshot({(0, M2): (0, 0, 5000), (0, G1): (0, 0, 4)}, nodes=(0,), room={0: 3 * GIB})
    tally = Tally(supply)
    assert choose_fitting([cell(2)], (M2,), tally)[0] == M2
    size, why = choose_fitting([cell(2)], (G1,), tally)
    assert size is Backing.NORMAL and "only 1 of 2 pages" in why


def test_a_guests_own_pages_count_for_it_alone() -> None:
    """A running 2 x 1G guest holds its pages (not free now, free when it stops)."""
    key = guest_key_of("vm1", "0D2B6A0E-1C1A-4A4E-8D7B-5B0E3C6F9A10")
    supply = snapshot({(0, M2): (0, 0, 5000)}, held={key: {(0, G1): 2}})
    size, why = choose_fitting([cell(2, (0,), "strict")], SIZES, Tally(supply, key))
    assert size == G1 and "this guest's own 2" in why
    other = guest_key_of("vm2", None)
    assert choose_fitting([cell(2, (0,), "strict")], SIZES, Tally(supply, other))[0] == M2


def test_force_takes_what_there_is() -> None:
    tally = Tally(snapshot({(0, G1): (1, 0, 0)}))
    tally.force([cell(2, (0,), "strict")], G1)        # short by one: still takes the one
    assert tally.take([cell(1, (0,), "strict")], G1) is not None


@pytest.mark.parametrize("bad", [{"free": -1}, {"kept": 1.5}, {"allocatable": True}])
def test_pool_supply_is_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="is not a page count"):
        PoolSupply(**bad)


# --- read_supply on the fake kernel --------------------------------------------------------
MARGIN = Margin(1024 * 1024, 5.0)


@pytest.fixture
def kernel(tmp_path):
    return make_kernel("fake", str(tmp_path / "root"), nodes=2, mem_total_kib=16 * GIB,
                       mem_free_kib=12 * GIB)


def keep_two_1g_pages(kernel: Any, state_dir: str, clock: Clock) -> Allocator:
    return keep_pages(kernel, state_dir, 2, 0, G1, clock=clock)


def test_read_supply_counts_kept_pages_and_other_guests_claims(kernel, tmp_path) -> None:
    state = str(tmp_path / "state")
    clock = Clock()
    a = keep_two_1g_pages(kernel, state, clock)
    # another guest starting (pending) was promised 64 x 2M pages on node 1
    a.reserve(plan("starting", (64, (1,), "strict", M2)), guest("starting"))
    supply = read_supply(kernel.gw, state, MARGIN, clock=clock)
    assert supply.nodes == (0, 1)
    assert supply.pools[(0, G1)] == PoolSupply(free=0, kept=2, allocatable=0,
                                               bound=supply.pools[(0, G1)].bound)
    assert supply.pools[(0, G1)].bound > 0            # MemFree in whole 1G pages: no promise
    assert supply.pools[(1, M2)].free == 0            # its 64 free pages are promised
    assert supply.pools[(1, M2)].allocatable > 0      # buddyinfo: 2M blocks to spare
    assert supply.held == {guest_key_of("starting", None): {(1, M2): 64}}
    floor = MARGIN.floor_kib(16 * GIB)
    assert supply.room_kib[0] == kernel.fk.mem_free_kib(0) - floor
    # the 2 x 1G guest on node 0 now: its 1G pages can be supplied, thanks to the kept ones
    size, why = choose_fitting([cell(2, (0,), "strict")], SIZES, Tally(supply))
    assert size == G1 and "kept 2" in why
    # once the keep window ended, kept pages are free pages nobody owns (until given back)
    clock.now += 601
    later = read_supply(kernel.gw, state, MARGIN, clock=clock)
    assert later.pools[(0, G1)].kept == 0 and later.pools[(0, G1)].free == 2


def test_read_supply_changes_nothing(kernel, tmp_path) -> None:
    state = tmp_path / "state"
    keep_two_1g_pages(kernel, str(state), Clock())
    before = ({p: (v.nr, v.free) for p, v in kernel.pools.items()},
              {p.name: p.read_bytes() for p in state.rglob("*") if p.is_file()})
    writes = len(kernel.fk.writes())
    read_supply(kernel.gw, str(state), MARGIN)
    read_supply(kernel.gw, str(state), MARGIN, wait=False)
    after = ({p: (v.nr, v.free) for p, v in kernel.pools.items()},
             {p.name: p.read_bytes() for p in state.rglob("*") if p.is_file()})
    assert after == before and len(kernel.fk.writes()) == writes


def test_a_state_that_cannot_be_read_is_a_note(kernel, tmp_path) -> None:
    state = tmp_path / "state"
    (state / "guests").mkdir(parents=True)
    (state / "guests" / "x").mkdir()  # not a record name: read-only load notes it
    (state / "host.json").write_text("{not json")
    supply = read_supply(kernel.gw, str(state), MARGIN)
    assert supply.pools[(0, M2)].allocatable > 0
    assert len(supply.notes) == 1 and "kept pages may be undercounted" in supply.notes[0]
    # guests/ that cannot be listed: nothing of the state counts, the kernel still does
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "guests").write_text("")
    supply = read_supply(kernel.gw, str(broken), MARGIN)
    assert supply.pools[(0, M2)].allocatable > 0
    assert len(supply.notes) == 1 and "cannot be read" in supply.notes[0]
    assert "kept pages and other guests' pending claims are not counted" in supply.notes[0]


def test_a_kernel_that_cannot_be_read_raises_one_host_error(kernel, tmp_path) -> None:
    kernel.fk.fail_next_read("proc/buddyinfo")
    with pytest.raises(HostError):
        read_supply(kernel.gw, str(tmp_path / "state"), MARGIN)


def test_host_supply_reads_the_margin_from_the_config(kernel, tmp_path) -> None:
    conf = tmp_path / "hugexml.conf"
    conf.write_text("[allocation]\nmargin_min = 15G\nmargin_percent = 0\n")
    supply = host_supply(kernel.fk.host_root, str(tmp_path / "state"),
                         load_config(str(conf), True))
    assert supply.room_kib[0] == kernel.fk.mem_free_kib(0) - 15 * GIB < 0
    size, why = choose_fitting([cell(1)], (M2,), Tally(supply))
    assert size is Backing.NORMAL and "allocatable 0 within the margin" in why


def test_the_filters_reader_never_raises(kernel, tmp_path) -> None:
    state = str(tmp_path / "state")
    supply, why = for_filter(HostRoot(str(tmp_path / "nothing-here")), state, Config)
    assert supply is None and why is not None
    assert why.startswith("what this host can supply now is unknown (")
    assert why.endswith("page sizes judged as with --page-size largest")
    missing = str(tmp_path / "missing.conf")  # named: must exist
    assert for_filter(kernel.fk.host_root, state, lambda: load_config(missing, True))[0] is None


def test_the_filters_reader_reads_the_fake_host(kernel, tmp_path) -> None:
    state = str(tmp_path / "state")
    keep_two_1g_pages(kernel, state, Clock())
    supply, why = for_filter(kernel.fk.host_root, state, Config)
    assert why is None and supply is not None and supply.pools[(0, G1)].kept == 2
