"""Page sizes as explicit types, and the one place a page size is chosen (pure, no I/O).

What a target's memory is backed by (a target: a guest cell, or the whole RAM when the
domain has no cells):

- ``PageSize``: hugepages of an ``int`` size in KiB, or ``Backing.NORMAL``: normal pages
  (no ``<hugepages>``, or a ``<page>`` the size of a system page);
- ``Asked``: what a domain's XML asks for, which may also be ``Backing.HOST_DEFAULT``: a bare
  ``<hugepages/>`` or a ``<page>`` without a size, the host's default hugepage size. It is
  resolved against a host before anything is written (``resolve``).

``--page-size`` is a ``PageSizeChoice``: a size in KiB, or a ``Pick``: ``AUTO`` (per target,
the largest host page size that divides its memory and that the host can supply there now,
``hugexml.planning.tally``) or ``LARGEST`` (the largest that divides, supply or not).

``current_pages`` reads a domain's page map; ``choose_fitting`` chooses a size for a target
and the devices that borrow its pages.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from hugexml.core.errors import InvalidInput, UnsupportedPageSize
from hugexml.core.model import SYSTEM_PAGE_KIB
from hugexml.core.units import format_kib, parse_cli_size_kib
from hugexml.planning.tally import inheriting_devices

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the hook's filter imports this module
if TYPE_CHECKING:  # pragma: no cover
    from typing import Literal, Optional, Union

    from hugexml.core.model import Domain, HostInfo
    from hugexml.planning.tally import Need, Tally

CELL_ALIGN_KIB = 1024  # libvirt aligns guest RAM and cells to 1 MiB (x86)


class Backing(enum.Enum):
    NORMAL = "normal pages"
    HOST_DEFAULT = "the host's default hugepage size"


class Pick(enum.Enum):
    AUTO = "auto"
    LARGEST = "largest"


if TYPE_CHECKING:  # pragma: no cover
    PageSize = Union[int, Literal[Backing.NORMAL]]
    Asked = Union[int, Backing]
    PageMap = dict[Optional[int], PageSize]  # target (None: the whole RAM) -> what backs it
    AskedMap = dict[Optional[int], Asked]
    PageSizeChoice = Union[int, Pick]


def parse_choice(text: str) -> PageSizeChoice:
    """``--page-size``: ``auto``, ``largest`` or a size (``2M``, ``1G``, ``2048KiB``);
    UnitError when it is none of them."""
    word = (text or "").strip().lower()
    for pick in Pick:
        if word == pick.value:
            return pick
    return parse_cli_size_kib(text)


def describe(size: Asked) -> str:
    return f"{format_kib(size)} pages" if isinstance(size, int) else size.value


def resolve(asked: Asked, host: HostInfo) -> Optional[PageSize]:
    """What ``asked`` means on ``host``: HOST_DEFAULT becomes the host's default size (None
    when the host has none); the system page size is NORMAL."""
    if asked is Backing.HOST_DEFAULT:
        if not host.default_page_kib:
            return None
        asked = host.default_page_kib
    if asked == host.system_page_kib:
        return Backing.NORMAL
    return asked


# --- the page map ------------------------------------------------------------------------
def target_memory_kib(domain: Domain) -> dict[Optional[int], int]:
    """What each target holds: every guest cell, or the whole RAM (None), aligned to 1 MiB."""
    def align(kib: int) -> int:
        return -(-kib // CELL_ALIGN_KIB) * CELL_ALIGN_KIB

    if domain.cells:
        return {cell.cell_id: align(cell.memory_kib) for cell in domain.cells}
    return {None: align(domain.memory_kib)}


def current_pages(domain: Domain, system_page_kib: int = SYSTEM_PAGE_KIB) -> AskedMap:
    """Per target, what the domain asks for now."""
    targets = target_memory_kib(domain)
    if not domain.hugepages:
        return dict.fromkeys(targets, Backing.NORMAL)
    pages = domain.pages or ()
    master: Asked = Backing.HOST_DEFAULT
    has_master = not pages
    for page in pages:
        if page.guest_cells is None:
            has_master = True
            master = Backing.HOST_DEFAULT if page.size_kib is None else page.size_kib
    result: AskedMap = {}
    for target in targets:
        size: Asked = master if has_master else Backing.NORMAL
        cell = 0 if target is None else target
        for page in pages:
            if page.guest_cells is not None and cell in page.guest_cells:
                size = Backing.HOST_DEFAULT if page.size_kib is None else page.size_kib
                break
        result[target] = Backing.NORMAL if size == system_page_kib else size
    return result


def largest_dividing(sizes_kib: Iterable[int], amounts_kib: Iterable[int]) -> Optional[int]:
    amounts = list(amounts_kib)
    for size in sorted(sizes_kib, reverse=True):
        if all(amount % size == 0 for amount in amounts):
            return size
    return None


def target_label(target: Optional[int], memory_kib: int) -> str:
    name = "memory" if target is None else f"cell {target}"
    return f"{name} ({format_kib(memory_kib)})"


def choose_fitting(needs: Sequence[Need], host_sizes: Iterable[int],
                   tally: Optional[Tally] = None) -> tuple[PageSize, str]:
    """The one place a page size is chosen: the largest host page size dividing the memory
    of every need (a target and the devices that borrow its pages); with a ``tally``, only a
    size the host can supply there now (``supply``), else the next one down, down to normal
    pages (the tally keeps what the chosen size takes).

    Returns the size and why, for the notes.
    """
    sizes = sorted(set(host_sizes), reverse=True)
    amounts = [need.memory_kib for need in needs]
    listed = ", ".join(format_kib(s) for s in sizes) or "none"
    what = " and ".join([format_kib(amounts[0])] + [f"{need.label} ({format_kib(need.memory_kib)})"
                                                    for need in needs[1:]])
    dividing = [size for size in sizes if all(amount % size == 0 for amount in amounts)]
    if not dividing:
        return Backing.NORMAL, f"no host page size ({listed}) divides {what}"
    if tally is None:
        chosen = dividing[0]
        why = f"the largest host page size ({listed}) that divides {what}"
        larger = [size for size in sizes if size > chosen]
        if larger:
            why += f" ({', '.join(format_kib(size) for size in larger)}: no)"
        return chosen, why
    refused: list[str] = [f"{format_kib(size)} does not divide {what}"
                          for size in sizes if size > dividing[0]]
    for size in dividing:
        supplied = tally.describe(needs, size)
        short = tally.take(needs, size)
        if short is None:
            why = (f"the largest host page size ({listed}) that divides {what} and can be "
                   f"supplied now: {supplied}")
            if refused:
                why = "; ".join(refused) + f"; {format_kib(size)} chosen: {why}"
            return size, why
        refused.append(str(short))
    refused.append(f"no host page size that divides {what} can be supplied now")
    return Backing.NORMAL, "; ".join(refused)


def check_page_size(domain: Domain, size_kib: int, host: Optional[HostInfo]) -> int:
    if size_kib <= 0 or size_kib & (size_kib - 1):
        raise InvalidInput(reason=f"page size {size_kib} KiB is not a power of two")
    if host is not None and size_kib not in host.page_sizes_kib \
            and size_kib != host.system_page_kib:
        raise UnsupportedPageSize(
            domain=domain.name, size_kib=size_kib,
            supported=", ".join(format_kib(s) for s in host.page_sizes_kib) or "none")
    return size_kib


def misfit_notes(domain: Domain, target: Optional[int], memory_kib: int,
                 size: PageSize) -> list[str]:
    if not isinstance(size, int):
        return []
    notes = []
    if memory_kib % size:
        pages = -(-memory_kib // size)
        notes.append(f"warning: {target_label(target, memory_kib)} is not a multiple of "
                     f"{format_kib(size)}: it takes {pages} pages "
                     f"({format_kib(pages * size)})")
    for dev in inheriting_devices(domain, target):
        name, kib = f"{dev.model} #{dev.index}", dev.size_kib
        if kib % size:
            notes.append(f"warning: {name} ({format_kib(kib)}) uses the {format_kib(size)} "
                         f"pages of cell {target} but is not a multiple of them; qemu will "
                         "refuse it")
    return notes
