"""Rewrite a domain's ``<memoryBacking>`` page sizes, leaving every other byte as it was.

``rewrite_xml`` is ``hugexml rewrite``: an explicit page size, ``auto`` (per guest cell,
the largest host page size that divides the cell's memory and that the host can supply there
now, ``hugexml.supply``) or ``largest`` (the largest that divides, supply or not),
optionally for some cells only, optionally moving the memory to memfd. ``choose_fitting`` is
the one place a page size is chosen. ``refit_for_host`` (``hugexml.refit``, wrapped here
with the host's supply) is the migrate/restore hook filter.

How: lxml reads the document (``xmlsafe``) and ``domxml`` turns it into the model; the
decision is made on a map {guest cell (None: whole RAM) -> page size KiB (None: normal
RAM)}; ``xmlsplice`` then replaces only the bytes of the elements that change. The page
list is written canonically (one master page when all cells agree, else one page per size
with the cells' nodeset); a document whose map already matches is returned as is, so a
second run changes nothing.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from lxml import etree

from hugexml import conflicts
from hugexml.errors import InvalidInput, InvalidXML, UnsupportedPageSize
from hugexml.model import SYSTEM_PAGE_KIB, Domain, HostInfo
from hugexml.supply import (  # re-exported: what borrows a cell's pages is refit's too
    INHERITING_MODELS,
    HostSupply,
    Need,
    Tally,
    device_need,
    guest_key_of,
    inheriting_devices,
    target_needs,
)
from hugexml.units import format_kib, format_nodeset
from hugexml.xmlsafe import parse_bytes
from hugexml.xmlsplice import Layout, NewElement, Span, SpanMap, Splice, bind

# --- XPaths (relative to <domain>), declared once ----------------------------------------
# (typed Any: each selects elements only, a list, which lxml-stubs cannot express)
MEMORY_BACKING: Any = etree.XPath("./memoryBacking")
BACKING_HUGEPAGES: Any = etree.XPath("./hugepages")  # relative to <memoryBacking>
BACKING_SOURCE: Any = etree.XPath("./source")  # @type: file | anonymous | memfd
NUMATUNE: Any = etree.XPath("./numatune")
NUMATUNE_MEMORY: Any = etree.XPath("./numatune/memory")  # @mode @nodeset @placement
NUMATUNE_MEMNODES: Any = etree.XPath("./numatune/memnode")  # @cellid @mode @nodeset
MEMORY_DEVICES: Any = etree.XPath("./devices/memory")  # @model
DEVICE_SOURCE: Any = etree.XPath("./source")  # relative to <memory>
DEVICE_PAGESIZE: Any = etree.XPath("./source/pagesize")  # text, @unit
DEVICE_NODEMASK: Any = etree.XPath("./source/nodemask")  # text

ELEMENT: Any = etree.Element  # iterchildren(ELEMENT): elements, not comments or PIs
# libvirt's formatting order (virDomainDefFormatInternal, virDomainMemorybackingFormat):
# a new <memoryBacking> goes after the last of these, its children in this order.
DOMAIN_ORDER = ("name", "uuid", "genid", "title", "description", "metadata", "maxMemory",
                "memory", "currentMemory", "blkiotune", "memtune", "memoryBacking")
BACKING_ORDER = ("hugepages", "nosharepages", "locked", "source", "access", "allocation",
                 "discard")
BARE = 0  # a bare <hugepages/> (or <page> without size): the host's default size
CELL_ALIGN_KIB = 1024  # libvirt aligns guest RAM and cells to 1 MiB (x86)

PageMap = dict[Optional[int], Optional[int]]  # guest cell (None: no cells) -> size KiB
PageSizeOption = Union[int, str, None]


@dataclass
class RewriteResult:
    data: bytes
    changed: bool
    notes: list[str] = field(default_factory=list)


class Doc:
    """A parsed domain document: bytes, lxml root, model, element spans."""

    def __init__(self, data: bytes, source: str, tree: Any = None) -> None:
        from hugexml.domxml import parse_domain_tree

        self.data = data
        self.source = source
        if tree is None:
            tree = parse_bytes(data, source)
        self.root = tree.getroot()
        if self.root.tag != "domain":
            raise InvalidXML(source=source, reason=f"the root element is <{self.root.tag}>, "
                             "not <domain>")
        self.domain: Domain = parse_domain_tree(tree, source)
        self._spans: Optional[SpanMap] = None  # scanned when the first edit needs a span
        self.splice = Splice(data, lambda: Layout.of(data, self.spans))

    @property
    def spans(self) -> SpanMap:
        if self._spans is None:
            self._spans = bind(self.root, self.data)
        return self._spans

    def span(self, element: Any) -> Span:
        return self.spans[element]

    def backing(self) -> Any:
        found = MEMORY_BACKING(self.root)
        return found[0] if found else None

    def result(self, notes: list[str]) -> RewriteResult:
        if not self.splice:
            return RewriteResult(self.data, False, notes)
        return RewriteResult(self.splice.apply(), True, notes)


# --- the page map ------------------------------------------------------------------------
def target_memory_kib(domain: Domain) -> dict[Optional[int], int]:
    """What each target holds: every guest cell, or the whole RAM (None), aligned to 1 MiB."""
    def align(kib: int) -> int:
        return -(-kib // CELL_ALIGN_KIB) * CELL_ALIGN_KIB

    if domain.cells:
        return {cell.cell_id: align(cell.memory_kib) for cell in domain.cells}
    return {None: align(domain.memory_kib)}


def current_pages(domain: Domain, system_page_kib: int = SYSTEM_PAGE_KIB) -> PageMap:
    """Per target, the page size the domain asks for now (BARE: the default; None: normal)."""
    targets = target_memory_kib(domain)
    if not domain.hugepages:
        return dict.fromkeys(targets)
    pages = domain.pages or ()
    master: Optional[int] = None
    has_master = not pages
    if not pages:
        master = BARE
    for page in pages:
        if page.guest_cells is None:
            has_master = True
            master = BARE if page.size_kib is None else page.size_kib
    result: PageMap = {}
    for target in targets:
        size: Optional[int] = master if has_master else None
        cell = 0 if target is None else target
        for page in pages:
            if page.guest_cells is not None and cell in page.guest_cells:
                size = BARE if page.size_kib is None else page.size_kib
                break
        result[target] = None if size == system_page_kib else size
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
                   tally: Optional[Tally] = None) -> tuple[Optional[int], str]:
    """The one place a page size is chosen: the largest host page size dividing the memory
    of every need (a target and the devices that borrow its pages); with a ``tally``, only a
    size the host can supply there now (``supply``), else the next one down, down to normal
    pages (the tally keeps what the chosen size takes).

    Returns the size (None: normal pages) and why, for the notes.
    """
    sizes = sorted(set(host_sizes), reverse=True)
    amounts = [need.memory_kib for need in needs]
    listed = ", ".join(format_kib(s) for s in sizes) or "none"
    what = " and ".join([format_kib(amounts[0])] + [f"{need.label} ({format_kib(need.memory_kib)})"
                                                    for need in needs[1:]])
    dividing = [size for size in sizes if all(amount % size == 0 for amount in amounts)]
    if not dividing:
        return None, f"no host page size ({listed}) divides {what}"
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
    return None, "; ".join(refused)


def describe(size_kib: Optional[int]) -> str:
    return f"{format_kib(size_kib)} pages" if size_kib else "normal pages"


def page_elements(desired: PageMap) -> list[NewElement]:
    """The canonical <page> list for a map: one master page when every target agrees."""
    sizes = {size for size in desired.values() if size}
    if not sizes:
        return []
    if len(sizes) == 1 and all(desired.values()):
        return [("page", (("size", str(sizes.pop())), ("unit", "KiB")), ())]
    by_size: dict[int, list[int]] = {}
    for target, size in sorted(desired.items(), key=lambda item: item[0] or 0):
        if size:
            by_size.setdefault(size, []).append(target or 0)
    return [
        ("page", (("size", str(size)), ("unit", "KiB"), ("nodeset", format_nodeset(cells))), ())
        for size, cells in by_size.items()
    ]


# --- editing <memoryBacking> -------------------------------------------------------------
def write_backing(doc: Doc, desired: Optional[PageMap], source_type: Optional[str]) -> None:
    """Edit <memoryBacking>: the page list (when ``desired`` is given) and <source type>."""
    splice = doc.splice
    pages = page_elements(desired) if desired is not None else None
    hugepages: Optional[NewElement] = ("hugepages", (), pages) if pages else None
    source: Optional[NewElement] = ("source", (("type", source_type),), ()) if source_type \
        else None
    backing = doc.backing()
    if backing is None:
        children = [child for child in (hugepages, source) if child is not None]
        if children:
            insert_ordered(doc, doc.root, ("memoryBacking", (), children), DOMAIN_ORDER)
        return
    backing_span = doc.span(backing)
    found_hugepages = BACKING_HUGEPAGES(backing)
    found_source = BACKING_SOURCE(backing)
    kept = [child for child in backing_span.children
            if desired is None or child.local != "hugepages"]
    if not kept and hugepages is None and source is None:
        splice.remove_element(backing_span)  # it would be left empty
        return
    if not backing_span.children:  # <memoryBacking/>: write it whole
        children = [child for child in (hugepages, source) if child is not None]
        splice.replace_element(backing_span, ("memoryBacking", (), children))
        return
    if desired is not None:
        if found_hugepages:
            if hugepages is None:
                splice.remove_element(doc.span(found_hugepages[0]))
            else:
                splice.replace_element(doc.span(found_hugepages[0]), hugepages)
        elif hugepages is not None:
            insert_ordered(doc, backing, hugepages, BACKING_ORDER)
    if source is not None and source_type is not None:
        if found_source:
            splice.set_attribute(doc.span(found_source[0]), "type", source_type)
        else:
            insert_ordered(doc, backing, source, BACKING_ORDER)


def insert_ordered(doc: Doc, parent: Any, element: NewElement, order: tuple[str, ...]) -> None:
    """Insert ``element`` where libvirt's ``order`` puts it among ``parent``'s children.

    The anchor is found with lxml, so only the anchor's bytes are scanned.
    """
    rank = order.index(element[0])
    anchor = None
    for child in parent.iterchildren(ELEMENT):
        if child.tag in order and order.index(child.tag) < rank:
            anchor = child
    if anchor is None:
        doc.splice.insert_first_child(doc.span(parent), element)
    else:
        doc.splice.insert_after(doc.span(anchor), element)


# --- hugexml rewrite ---------------------------------------------------------------------
def rewrite_xml(data: bytes, *, page_size_kib: PageSizeOption, host: Optional[HostInfo],
                cells: Optional[frozenset[int]] = None, memfd: bool = False,
                drop_ondemand: bool = False, source: str = "<stdin>",
                supply: Optional[HostSupply] = None) -> RewriteResult:
    """Set the page size of ``cells`` (all when None), explicitly, ``"auto"`` or
    ``"largest"``; refuse (InvalidDomain) rather than return XML libvirt refuses
    (``conflicts``). ``auto`` with a ``supply`` counts a size only where this host can
    supply it now (``choose_fitting``); without one, and ``largest``, the largest size that
    divides."""
    doc = Doc(data, source)
    domain = doc.domain
    system_kib = host.system_page_kib if host is not None else SYSTEM_PAGE_KIB
    targets = target_memory_kib(domain)
    chosen = select_targets(domain, targets, cells)
    current = current_pages(domain, system_kib)
    notes: list[str] = []
    want: PageMap = {}
    if page_size_kib is None or page_size_kib in ("auto", "largest"):
        if host is None:
            raise InvalidInput(reason=f"--page-size {page_size_kib or 'auto'} needs the host's "
                               "page sizes")
        tally = None
        if page_size_kib != "largest" and supply is not None:
            tally = Tally(supply, guest_key_of(domain.name, domain.uuid))
            hold_the_rest(tally, domain, host, targets, current, chosen)
        for target in chosen:
            want[target], why = choose_fitting(
                target_needs(domain, target, targets[target], host), host.page_sizes_kib, tally)
            notes.append(f"{target_label(target, targets[target])}: {describe(want[target])}: "
                         f"{why}")
    elif isinstance(page_size_kib, int):
        size = check_page_size(domain, page_size_kib, host)
        for target in chosen:
            want[target] = None if size == system_kib else size
            notes.extend(misfit_notes(domain, target, targets[target], want[target]))
    else:
        raise InvalidInput(reason=f"page size {page_size_kib!r} is not a size, 'auto' or "
                           "'largest'")
    desired: PageMap = dict(current)
    desired.update(want)
    for target, asked in desired.items():
        if asked == BARE:  # an untouched cell on the default size: make it explicit
            if host is None or not host.default_page_kib:
                raise InvalidInput(reason=f"domain '{domain.name}': the host's default "
                                   "hugepage size is unknown, so the cells left on it cannot be "
                                   "written explicitly; rewrite all cells")
            desired[target] = host.default_page_kib
    source_type = "memfd" if memfd and domain.source != "memfd" else None
    hugepages_after = bool(page_elements(desired)) if desired != current else domain.hugepages
    conflicts.resolve(doc, domain, hugepages_after, memfd, drop_ondemand, notes)
    if desired != current or source_type:
        write_backing(doc, desired if desired != current else None, source_type)
    result = doc.result(notes)
    conflicts.accepted(result.data, host, source)
    return result


def hold_the_rest(tally: Tally, domain: Domain, host: HostInfo,
                  targets: dict[Optional[int], int], current: PageMap,
                  chosen: list[Optional[int]]) -> None:
    """What keeps its page size takes its pages first: cells outside ``--cells`` (with the
    devices that borrow their pages) and memory devices with their own <pagesize>."""
    for target, size in current.items():
        size = host.default_page_kib if size == BARE else size
        if target not in chosen and size and size != host.system_page_kib:
            tally.force(target_needs(domain, target, targets[target], host), size)
    for device in domain.memory_devices:
        size = device.source_page_kib
        if device.model in INHERITING_MODELS and size and size != host.system_page_kib:
            tally.force([device_need(domain, device, host)], size)


def select_targets(domain: Domain, targets: dict[Optional[int], int],
                   cells: Optional[frozenset[int]]) -> list[Optional[int]]:
    if cells is None:
        return list(targets)
    if not domain.cells:
        raise InvalidInput(reason=f"domain '{domain.name}' has no guest NUMA cells; "
                           "--cells needs <cpu><numa><cell>")
    known = [cell.cell_id for cell in domain.cells]
    missing = sorted(set(cells) - set(known))
    if missing:
        raise InvalidInput(reason=f"domain '{domain.name}' has no guest cell "
                           f"{format_nodeset(missing)} (cells: {format_nodeset(known)})")
    return [cell for cell in sorted(cells)]


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
                 size_kib: Optional[int]) -> list[str]:
    if not size_kib:
        return []
    notes = []
    if memory_kib % size_kib:
        pages = -(-memory_kib // size_kib)
        notes.append(f"warning: {target_label(target, memory_kib)} is not a multiple of "
                     f"{format_kib(size_kib)}: it takes {pages} pages "
                     f"({format_kib(pages * size_kib)})")
    for dev in inheriting_devices(domain, target):
        name, kib = f"{dev.model} #{dev.index}", dev.size_kib
        if kib % size_kib:
            notes.append(f"warning: {name} ({format_kib(kib)}) uses the {format_kib(size_kib)} "
                         f"pages of cell {target} but is not a multiple of them; qemu will "
                         "refuse it")
    return notes


def verify(data: bytes, source: str, desired: PageMap, backing_source: Optional[str],
           system_kib: int) -> None:
    """The rewritten bytes must read back as exactly the map we meant (else: a bug here)."""
    from hugexml.domxml import parse_domain_tree

    domain = parse_domain_tree(parse_bytes(data, source), source)
    got = current_pages(domain, system_kib)
    if got != desired or domain.source != backing_source:
        raise AssertionError(f"rewrite produced {got} / source {domain.source}, meant "
                             f"{desired} / {backing_source}")


def refit_for_host(data: bytes, host: HostInfo, mounted_sizes_kib: Optional[Iterable[int]] = None,
                   source: str = "<stdin>") -> RewriteResult:
    """The migrate/restore filter as the hook calls it (see ``hugexml.refit``), with what
    this host can supply now (``supply.from_env``: the host, state dir and config the
    environment names). When that cannot be read, sizes are judged as before and a note
    says so: the supply never makes the filter fail."""
    from hugexml.refit import refit_for_host as refit
    from hugexml.supply import from_env

    supply, unknown = from_env()
    result = refit(data, host, mounted_sizes_kib, source, supply=supply)
    if unknown is not None:
        result.notes.append(unknown)
    elif result.changed and supply is not None:
        result.notes.extend(supply.notes)
    return result
