"""What this host can supply now, per NUMA node and page size, as records, and the pure
arithmetic ``auto`` judges by (no I/O: ``hugexml.alloc.supply`` reads the host into these records).

``HostSupply`` is a typed snapshot. Per (node, size) a ``PoolSupply``:

- ``free``: free pages nobody reserved and no pending guest was promised, hugexml's kept
  pages not included (``fit.available`` minus ``kept``);
- ``kept``: hugexml's kept pages (free in the kernel's pool, their keep window still open;
  the host journal's books);
- ``allocatable``: the pages buddyinfo says the node can still add without compaction
  (``txn.predicted_allocatable``); 0 when only an upper bound is known;
- ``bound``: that upper bound (1G on x86: MemFree in whole pages), shown, never counted;

per node the normal memory above the margin's floor (``room_kib``: growing a pool may not
take more), and per guest record the pages the guest holds (``held``: promised while it
starts, mapped while it runs). A guest's own pages count for that guest: a pending claim is
its own, a running guest's pages are free again when it stops.

``Tally`` is pure: the supply left as a guest's memory takes it, target by target, with the
node binding of each (``Need``; strict/restrictive: its node set, preferred: its node first,
then every node, interleave: an even share on each node, unbound: any node, as
``fit.place`` places them) and the margin, so two cells bound to one node cannot count the
same page. ``target_needs`` says what takes a target's page size (the cell and the memory
devices that borrow its pages, bound as ``plan.binding`` binds them).
``pagesize.choose_fitting`` asks the tally whether a size can be supplied (``take``); a
``Short`` says why not, in one clause.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from hugexml.core.model import Domain, HostInfo, MemoryDevice
from hugexml.core.typed import Typed, field
from hugexml.core.units import format_kib, format_nodeset

Pool = tuple[int, int]  # (node, size_kib)


class PoolSupply(Typed, frozen=True):
    free: int = 0
    kept: int = 0
    allocatable: int = 0
    bound: int = 0

    def __post_init__(self) -> None:
        for name in ("free", "kept", "allocatable", "bound"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"PoolSupply.{name}: {value!r} is not a page count")


class HostSupply(Typed, frozen=True):
    nodes: tuple[int, ...]
    pools: Mapping[Pool, PoolSupply]
    room_kib: Mapping[int, int] = field(default_factory=dict)  # MemFree - margin floor
    held: Mapping[str, Mapping[Pool, int]] = field(default_factory=dict)  # record key ->
    notes: tuple[str, ...] = ()  # what the read could not see


class Need(Typed, frozen=True):
    """Memory that takes pages of one size: a guest cell (or the whole RAM), or a device."""

    label: str
    memory_kib: int
    nodes: Optional[tuple[int, ...]] = None  # host nodes it may use; None: any
    policy: Optional[str] = None  # numatune mode; None: unbound

    def pages(self, size_kib: int) -> int:
        return -(-self.memory_kib // size_kib)


def guest_key_of(name: str, uuid: Optional[str]) -> Optional[str]:
    """The state store's key of a guest (its record's file name), None when it cannot have
    one (then no pages count as its own)."""
    from hugexml.planning.records import RecordError, guest_key

    try:
        return guest_key(name, uuid)
    except RecordError:
        return None


def where(nodes: Sequence[int]) -> str:
    if not nodes:
        return "this host"
    return f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {format_nodeset(list(nodes))}"


class Short(Typed, frozen=True):
    """A size the host cannot supply now for one need: what it got, of what, and why."""

    size_kib: int
    label: str
    needed: int
    got: int
    nodes: tuple[int, ...]
    detail: str

    def __str__(self) -> str:
        whose = f" for {self.label}" if self.label else ""
        return (f"{format_kib(self.size_kib)}: only {self.got} of {self.needed} pages{whose} "
                f"can be supplied on {where(self.nodes)} now ({self.detail})")


class _Trial:
    """The tally's counters while one target tries a size (committed only when it fits)."""

    def __init__(self, ready: dict[Pool, int], grown: dict[Pool, int],
                 planned_kib: dict[int, int]) -> None:
        self.ready = dict(ready)
        self.grown = dict(grown)
        self.planned_kib = dict(planned_kib)


class Tally:
    """The supply left for one guest as its memory takes it (pure)."""

    def __init__(self, supply: HostSupply, guest_key: Optional[str] = None) -> None:
        self.supply = supply
        self.own: dict[Pool, int] = dict(supply.held.get(guest_key, {})) if guest_key else {}
        self._now = _Trial({pool: s.free + s.kept + self.own.get(pool, 0)
                            for pool, s in supply.pools.items()}, {}, {})

    # --- where a need may take pages -------------------------------------------------
    def nodes_for(self, need: Need, size_kib: int) -> tuple[int, ...]:
        present = [n for n in self.supply.nodes if (n, size_kib) in self.supply.pools]
        if need.nodes is None:
            return tuple(present)
        listed = [n for n in dict.fromkeys(need.nodes) if (n, size_kib) in self.supply.pools]
        if not listed:  # none of its nodes here: a refit removes the binding
            return tuple(present)
        if need.policy == "preferred":
            return (listed[0], *[n for n in present if n != listed[0]])
        return tuple(listed)

    def _growable(self, trial: _Trial, node: int, size_kib: int) -> int:
        pool = self.supply.pools.get((node, size_kib))
        if pool is None:
            return 0
        room = self.supply.room_kib.get(node, 0) - trial.planned_kib.get(node, 0)
        return max(0, min(pool.allocatable - trial.grown.get((node, size_kib), 0),
                          room // size_kib))

    def _fill(self, trial: _Trial, nodes: Sequence[int], size_kib: int, pages: int,
              in_order: bool) -> int:
        """Free (and kept, own) pages first, then pages the nodes can add; what is left."""
        def ready(n: int) -> int:
            return trial.ready.get((n, size_kib), 0)

        for node in nodes if in_order else sorted(nodes, key=lambda n: (-ready(n), n)):
            used = min(pages, ready(node))
            trial.ready[(node, size_kib)] = ready(node) - used
            pages -= used
        for node in nodes if in_order else sorted(
                nodes, key=lambda n: (-self._growable(trial, n, size_kib), n)):
            added = min(pages, self._growable(trial, node, size_kib))
            trial.grown[(node, size_kib)] = trial.grown.get((node, size_kib), 0) + added
            trial.planned_kib[node] = trial.planned_kib.get(node, 0) + added * size_kib
            pages -= added
        return pages

    def _place(self, trial: _Trial, need: Need, size_kib: int) -> Optional[Short]:
        from hugexml.planning.fit import even_split

        pages = need.pages(size_kib)
        nodes = self.nodes_for(need, size_kib)
        groups: list[tuple[tuple[int, ...], int]]
        if need.policy == "interleave" and len(nodes) > 1:
            groups = [((n,), share) for n, share in zip(nodes, even_split(pages, len(nodes)))]
        else:
            groups = [(nodes, pages)]
        for group, want in groups:
            if want <= 0:
                continue
            if need.policy == "preferred":  # its node first, then the rest
                left = self._fill(trial, group[:1], size_kib, want, True)
                left = self._fill(trial, group[1:], size_kib, left, False)
            else:
                left = self._fill(trial, group, size_kib, want, False)
            if left:
                return Short(size_kib, need.label, want, want - left, group,
                             self.detail(group, size_kib, trial, want - left))
        return None

    # --- taking --------------------------------------------------------------------------
    def take(self, needs: Sequence[Need], size_kib: int) -> Optional[Short]:
        """Take ``size_kib`` pages for every need when the host can supply them all now;
        else take nothing and return the first shortfall."""
        trial = _Trial(self._now.ready, self._now.grown, self._now.planned_kib)
        for need in needs:
            short = self._place(trial, need, size_kib)
            if short is not None:
                return short
        self._now = trial
        return None

    def force(self, needs: Sequence[Need], size_kib: int) -> None:
        """Memory whose size is not being chosen: take what the host has for it."""
        for need in needs:
            trial = _Trial(self._now.ready, self._now.grown, self._now.planned_kib)
            self._place(trial, need, size_kib)  # a shortfall still took what there was
            self._now = trial

    # --- explaining ------------------------------------------------------------------------
    def detail(self, nodes: Sequence[int], size_kib: int, trial: Optional[_Trial] = None,
               got: int = 0) -> str:
        """The supply of ``nodes`` for this size: free, kept, own, allocatable (within the
        margin), the bound that is not counted, what other memory of the guest took."""
        trial = trial or self._now
        pools = [(n, self.supply.pools.get((n, size_kib), PoolSupply())) for n in nodes]
        clipped = [min(p.allocatable, max(0, self.supply.room_kib.get(n, 0)) // size_kib)
                   for n, p in pools]
        free = sum(p.free for _, p in pools)
        kept = sum(p.kept for _, p in pools)
        own = sum(self.own.get((n, size_kib), 0) for n in nodes)
        alloc = sum(clipped)
        parts = [f"free {free}", f"kept {kept}"] + ([f"this guest's own {own}"] if own else [])
        raw = sum(p.allocatable for _, p in pools)
        parts.append(f"allocatable {alloc}" + (f" within the margin, {raw} without"
                                               if raw > alloc else ""))
        text = ", ".join(parts)
        bound = sum(min(p.bound, max(0, self.supply.room_kib.get(n, 0)) // size_kib)
                    for n, p in pools)
        if bound:
            text += f"; MemFree allows up to {bound} more, not a promise: not counted"
        left = sum(trial.ready.get((n, size_kib), 0) + self._growable(trial, n, size_kib)
                   for n in nodes)
        counted = free + kept + own + alloc - left - got
        if counted > 0:
            text += f"; {counted} already counted for this guest's other memory"
        return text

    def describe(self, needs: Sequence[Need], size_kib: int) -> str:
        """Before taking: '<pages> pages on <nodes> (<detail>)'."""
        nodes = sorted({n for need in needs for n in self.nodes_for(need, size_kib)})
        pages = sum(need.pages(size_kib) for need in needs)
        return f"{pages} pages on {where(nodes)} ({self.detail(nodes, size_kib)})"


# --- what a guest's memory takes ----------------------------------------------------------
# Memory devices whose RAM follows the target cell's <page> when they have no <pagesize>.
INHERITING_MODELS = ("dimm", "virtio-mem")


def inheriting_devices(domain: Domain, target: Optional[int]) -> list[MemoryDevice]:
    """Memory devices backed by ``target``'s page size (they have no <pagesize>)."""
    return [dev for dev in domain.memory_devices
            if dev.model in INHERITING_MODELS and dev.source_page_kib is None
            and target is not None and dev.target_node == target]


def device_need(domain: Domain, device: MemoryDevice, host: Optional[HostInfo]) -> Need:
    """A memory device's pages: its own <nodemask> (strict), else its target cell's binding."""
    from hugexml.planning.plan import binding

    if device.source_nodemask is not None:
        return Need(f"{device.model} #{device.index}", device.size_kib,
                    tuple(sorted(device.source_nodemask)), "strict")
    nodes, policy = binding(domain, host, device.target_node)
    return Need(f"{device.model} #{device.index}", device.size_kib, nodes, policy)


def target_needs(domain: Domain, target: Optional[int], memory_kib: int,
                 host: Optional[HostInfo]) -> list[Need]:
    """What takes a target's page size (a guest cell, or the whole RAM: None): the target
    itself (unlabelled: the notes name it) and the memory devices that borrow its pages,
    each with its host nodes as ``plan`` binds them."""
    from hugexml.planning.plan import binding

    nodes, policy = binding(domain, host, target)
    return [Need("", memory_kib, nodes, policy)] + [
        device_need(domain, dev, host) for dev in inheriting_devices(domain, target)]
