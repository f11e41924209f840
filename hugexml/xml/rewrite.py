"""Rewrite a domain's ``<memoryBacking>`` page sizes, leaving every other byte as it was.

``rewrite_xml`` is ``hugexml rewrite``: an explicit page size, ``Pick.AUTO`` (per guest
cell, the largest host page size that divides the cell's memory and that the host can supply
there now, ``hugexml.planning.tally``) or ``Pick.LARGEST`` (the largest that divides, supply or
not), optionally for some cells only, optionally moving the memory to memfd. The page sizes and
the choice between them are ``hugexml.planning.pagesize``'s; ``Doc`` and ``write_backing`` are
also the migrate/restore filter's (``hugexml.xml.refit``).

How: lxml reads the document (``xmlsafe``) and ``domxml`` turns it into the model; the
decision is made on a page map {target -> PageSize} (``pagesize``); ``xmlsplice`` then
replaces only the bytes of the elements that change. The page list is written canonically
(one master page when all cells agree, else one page per size with the cells' nodeset); a
document whose map already matches is returned as is, so a second run changes nothing.
"""
from __future__ import annotations

from lxml import etree

from hugexml.core.errors import InvalidInput, InvalidXML, SelfCheckFailed
from hugexml.core.model import SYSTEM_PAGE_KIB
from hugexml.core.typed import Typed, field
from hugexml.core.units import format_nodeset
from hugexml.planning.pagesize import (
    Backing,
    Pick,
    check_page_size,
    choose_fitting,
    current_pages,
    describe,
    misfit_notes,
    target_label,
    target_memory_kib,
)
from hugexml.planning.tally import INHERITING_MODELS, Tally, device_need, guest_key_of, target_needs
from hugexml.xml import conflicts
from hugexml.xml.xmlsafe import parse_bytes
from hugexml.xml.xmlsplice import Layout, NewElement, Span, SpanMap, Splice, bind

TYPE_CHECKING = False  # not typing.TYPE_CHECKING (a cost only where lxml is not loaded)
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any, Optional

    from hugexml.core.model import Domain, HostInfo
    from hugexml.planning.pagesize import Asked, AskedMap, PageMap, PageSizeChoice
    from hugexml.planning.tally import HostSupply

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


class RewriteResult(Typed):
    data: bytes
    changed: bool
    notes: list[str] = field(default_factory=list)


class Doc:
    """A parsed domain document: bytes, lxml root, model, element spans."""

    def __init__(self, data: bytes, source: str, tree: Any = None) -> None:
        from hugexml.xml.domxml import parse_domain_tree

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


# --- the page map, written ----------------------------------------------------------------
def page_elements(desired: PageMap) -> list[NewElement]:
    """The canonical <page> list for a map: one master page when every target agrees."""
    sizes = {size for size in desired.values() if isinstance(size, int)}
    if not sizes:
        return []
    if len(sizes) == 1 and all(isinstance(size, int) for size in desired.values()):
        return [("page", (("size", str(sizes.pop())), ("unit", "KiB")), ())]
    by_size: dict[int, list[int]] = {}
    for target, size in sorted(desired.items(), key=lambda item: item[0] or 0):
        if isinstance(size, int):
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
def rewrite_xml(data: bytes, *, page_size: PageSizeChoice, host: Optional[HostInfo],
                cells: Optional[frozenset[int]] = None, memfd: bool = False,
                drop_ondemand: bool = False, source: str = "<stdin>",
                supply: Optional[HostSupply] = None) -> RewriteResult:
    """Set the page size of ``cells`` (all when None): a size in KiB, ``Pick.AUTO`` or
    ``Pick.LARGEST``; refuse (InvalidDomain) rather than return XML libvirt refuses
    (``conflicts``). ``AUTO`` with a ``supply`` counts a size only where this host can
    supply it now (``choose_fitting``); without one, and ``LARGEST``, the largest size that
    divides."""
    doc = Doc(data, source)
    domain = doc.domain
    system_kib = host.system_page_kib if host is not None else SYSTEM_PAGE_KIB
    targets = target_memory_kib(domain)
    chosen = select_targets(domain, targets, cells)
    current = current_pages(domain, system_kib)
    notes: list[str] = []
    want: PageMap = {}
    if isinstance(page_size, Pick):
        if host is None:
            raise InvalidInput(reason=f"--page-size {page_size.value} needs the host's page "
                               "sizes")
        tally = None
        if page_size is Pick.AUTO and supply is not None:
            tally = Tally(supply, guest_key_of(domain.name, domain.uuid))
            hold_the_rest(tally, domain, host, targets, current, chosen)
        for target in chosen:
            want[target], why = choose_fitting(
                target_needs(domain, target, targets[target], host), host.page_sizes_kib, tally)
            notes.append(f"{target_label(target, targets[target])}: {describe(want[target])}: "
                         f"{why}")
    elif isinstance(page_size, int):
        size = check_page_size(domain, page_size, host)
        for target in chosen:
            want[target] = Backing.NORMAL if size == system_kib else size
            notes.extend(misfit_notes(domain, target, targets[target], want[target]))
    else:
        raise InvalidInput(reason=f"page size {page_size!r} is not a size, 'auto' or "
                           "'largest'")
    desired: PageMap = {}
    for target, asked in current.items():
        if target in want:
            desired[target] = want[target]
        elif asked is Backing.HOST_DEFAULT:  # an untouched cell on the default size:
            if host is None or not host.default_page_kib:  # make it explicit
                raise InvalidInput(reason=f"domain '{domain.name}': the host's default "
                                   "hugepage size is unknown, so the cells left on it cannot be "
                                   "written explicitly; rewrite all cells")
            desired[target] = host.default_page_kib
        else:
            desired[target] = asked
    source_type = "memfd" if memfd and domain.source != "memfd" else None
    hugepages_after = bool(page_elements(desired)) if desired != current else domain.hugepages
    conflicts.resolve(doc, domain, hugepages_after, memfd, drop_ondemand, notes)
    if desired != current or source_type:
        write_backing(doc, desired if desired != current else None, source_type)
    result = doc.result(notes)
    conflicts.accepted(result.data, host, source)
    return result


def hold_the_rest(tally: Tally, domain: Domain, host: HostInfo,
                  targets: dict[Optional[int], int], current: AskedMap,
                  chosen: list[Optional[int]]) -> None:
    """What keeps its page size takes its pages first: cells outside ``--cells`` (with the
    devices that borrow their pages) and memory devices with their own <pagesize>."""
    for target, asked in current.items():
        size = host.default_page_kib if asked is Backing.HOST_DEFAULT else asked
        if target not in chosen and isinstance(size, int) and size != host.system_page_kib:
            tally.force(target_needs(domain, target, targets[target], host), size)
    for device in domain.memory_devices:
        device_kib = device.source_page_kib
        if device.model in INHERITING_MODELS and device_kib \
                and device_kib != host.system_page_kib:
            tally.force([device_need(domain, device, host)], device_kib)


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


def verify(data: bytes, source: str, desired: PageMap, backing_source: Optional[str],
           system_kib: int) -> None:
    """The rewritten bytes must read back as exactly the map we meant; else (a bug here)
    SelfCheckFailed, and the caller writes nothing."""
    from hugexml.xml.domxml import parse_domain_tree

    domain = parse_domain_tree(parse_bytes(data, source), source)
    got = current_pages(domain, system_kib)
    if got != desired or domain.source != backing_source:
        raise SelfCheckFailed(
            what=f"the rewrite of {source}",
            reason=f"it reads back as {_pages(got)} (memory source {domain.source}), meant "
                   f"{_pages(desired)} (memory source {backing_source})")


def _pages(pages: Mapping[Optional[int], Asked]) -> str:
    return ", ".join(f"{'memory' if target is None else f'cell {target}'}: {describe(size)}"
                     for target, size in pages.items())
