"""Reading what this host can supply now into ``hugexml.planning.tally``'s records.

``read_supply`` fills the snapshot: one view read through the HostGateway, buddyinfo, one
read of the state store (no lock taken for long, nothing written, no libvirt).
``host_supply`` adds the margin from the config; ``for_filter`` is the hook filter's reader,
which never raises (a failure is a note and sizes are judged as before).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from hugexml.planning.tally import HostSupply, Pool, PoolSupply

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the filter's path imports this module
if TYPE_CHECKING:  # pragma: no cover
    from hugexml.core.config import Config
    from hugexml.core.root import HostRoot
    from hugexml.host.gateway import Gateway
    from hugexml.planning.fit import HostView, Margin


def read_supply(gateway: Gateway, state_dir: Optional[str], margin: Margin,
                clock: Callable[[], float] = time.time, wait: bool = True) -> HostSupply:
    """The snapshot: the kernel's counters (one view read), buddyinfo, and the state store
    (kept pages, pending claims, what each guest holds). ``wait``: read under the store's
    shared lock (bounded); without it, the files as they are (the hook's filter). Raises
    HugexmlError when the kernel cannot be read; a state that cannot be read is a note."""
    from hugexml.alloc.txn import predicted_allocatable, read_view
    from hugexml.planning.fit import available

    sizes = tuple(sorted(set(gateway.page_sizes_kib())))
    view = read_view(gateway, sizes)
    notes: list[str] = []
    kept: dict[Pool, int] = {}
    held: dict[str, dict[Pool, int]] = {}
    if state_dir is not None:
        kept, held = _read_state(gateway, state_dir, view, clock(), wait, notes)
    buddy = gateway.buddyinfo()
    pools: dict[Pool, PoolSupply] = {}
    for node, size_kib in sorted(view.pools):
        avail = available(view, node, size_kib)
        ours = min(kept.get((node, size_kib), 0), avail)
        try:
            pages, promised = predicted_allocatable(gateway, node, size_kib, buddy)
        except ValueError:  # a size that is no power-of-two multiple of the base page
            pages, promised = 0, False
        pools[(node, size_kib)] = PoolSupply(
            free=avail - ours, kept=ours, allocatable=max(0, pages) if promised else 0,
            bound=0 if promised else max(0, pages))
    room = {n: view.mem_free_kib.get(n, 0) - margin.floor_kib(view.mem_total_kib.get(n, 0))
            for n in view.nodes}
    return HostSupply(view.nodes, pools, room, held, tuple(notes))


def _read_state(gateway: Gateway, state_dir: str, view: HostView, now: float, wait: bool,
                notes: list[str]) -> tuple[dict[Pool, int], dict[str, dict[Pool, int]]]:
    """Kept pages per pool and the pages each guest holds; pending claims go into
    ``view.claims``. A store that cannot be read counts nothing, with a note."""
    from hugexml.alloc.ledger import Store
    from hugexml.core.errors import HugexmlError

    boot_id = getattr(gateway, "boot_id", None)
    store = Store(state_dir, boot_id=boot_id() if callable(boot_id) else "")
    known = set(view.pools)
    try:
        state = store.read(known) if wait else store.load(known, repair=False)
    except (HugexmlError, OSError) as exc:
        notes.append(f"hugexml's state in {state_dir} cannot be read ({exc}): kept pages and "
                     "other guests' pending claims are not counted")
        return {}, {}
    if state.notes:
        notes.append(f"hugexml's state in {state_dir} was read with {len(state.notes)} "
                     f"problem(s) (first: {state.notes[0]}): kept pages may be undercounted")
    kept = {pool: sum(lot.pages for lot in book.kept if lot.until is None or lot.until > now)
            for pool, book in state.journal.pools.items()}
    held: dict[str, dict[Pool, int]] = {}
    for key, rec in state.guests.items():
        held[key] = {pool: pages for pool, pages in rec.claimed.items() if pages}
        if rec.state == "pending":
            for pool, pages in rec.claimed.items():
                if pool in view.pools:
                    view.claims[pool] = view.claims.get(pool, 0) + pages
    return {p: n for p, n in kept.items() if n}, held


def host_supply(root: HostRoot, state_dir: Optional[str], config: Config,
                gateway: Optional[Gateway] = None, wait: bool = True) -> HostSupply:
    """``read_supply`` for a host root, with the config's margin. Raises HugexmlError."""
    from hugexml.planning.fit import Margin

    if gateway is None:
        from hugexml.host.sysfs import HostGateway

        gateway = HostGateway(root)
    return read_supply(gateway, state_dir, Margin.of(config), wait=wait)


def unknown_note(exc: BaseException) -> str:
    from hugexml.core.errors import HugexmlError, printable

    reason = str(exc) if isinstance(exc, HugexmlError) else f"{type(exc).__name__}: {exc}"
    return (f"what this host can supply now is unknown ({printable(reason)[:300]}): page "
            "sizes judged as with --page-size largest")


def for_filter(root: HostRoot, state_dir: str, config: Callable[[], Config]
               ) -> tuple[Optional[HostSupply], Optional[str]]:
    """The hook filter's reader: the hook call's host, state dir and config (loaded here,
    inside the containment), the state files read as they are (no lock wait). Never raises:
    (None, why) when anything fails, so the filter keeps its fail-open contract."""
    try:
        return host_supply(root, state_dir, config(), wait=False), None
    except Exception as exc:  # the filter fails open: a bug here must not stop a restore
        return None, unknown_note(exc)
