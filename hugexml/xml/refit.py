"""The migrate/restore hook filter: refit a domain's XML to this host, byte-exact elsewhere.

- a page size this host cannot give becomes the largest one it can that divides the memory
  (of the cell and of the devices that borrow its pages; a memory device's own
  ``<pagesize>`` alike); normal pages when none divides. For file-backed memory (the
  default) "can give" also means a hugetlbfs mount the libvirt daemon knows
  (``mounted_sizes_kib``); memfd-backed memory needs no mount. With a ``supply``
  (``hugexml.alloc.supply``), "can give" also means the host can supply the pages there now
  (free, kept, or what buddyinfo says the node can add, within the margin): a size it
  cannot becomes the next smaller one it can (``pagesize.choose_fitting``);
- ``<numatune>`` nodesets and memory devices' ``<nodemask>`` lose the host nodes that do not
  exist here; a binding left with no node is removed.

The memory source is never changed: libvirt checks a restored or incoming domain's ABI
against the saved one, and a different ``<memoryBacking><source>`` fails that check
("Target memoryBacking source 'memfd' doesn't match source memoryBacking source'none'",
observed with libvirt 9.0); a page size or a host binding passes it.

Only the bytes of what changes are touched (attribute values, a text, one element); input
that already fits comes back as the same bytes with ``changed=False``. A document whose root
is not ``<domain>`` passes through.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from hugexml.core.errors import InvalidDomain
from hugexml.core.model import MEMORY_DEVICE_MODELS, Domain, HostInfo
from hugexml.core.units import UnitError, format_kib, format_nodeset, parse_nodeset
from hugexml.planning.pagesize import (
    choose_fitting,
    current_pages,
    describe,
    resolve,
    target_label,
    target_memory_kib,
)
from hugexml.planning.tally import (
    INHERITING_MODELS,
    HostSupply,
    Need,
    Tally,
    device_need,
    guest_key_of,
    target_needs,
)
from hugexml.xml import conflicts
from hugexml.xml.rewrite import (
    DEVICE_NODEMASK,
    DEVICE_PAGESIZE,
    DEVICE_SOURCE,
    MEMORY_DEVICES,
    NUMATUNE,
    NUMATUNE_MEMNODES,
    NUMATUNE_MEMORY,
    Doc,
    RewriteResult,
    verify,
    write_backing,
)
from hugexml.xml.xmlsafe import parse_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from hugexml.planning.pagesize import Asked, PageMap, PageSize


class Usable:
    """The page sizes this host can give this domain, and why another one cannot be had."""

    def __init__(self, host: HostInfo, mounted_sizes_kib: Optional[Iterable[int]],
                 file_backed: bool) -> None:
        self.host = host
        self.mounted = frozenset(mounted_sizes_kib) if mounted_sizes_kib is not None else None
        sizes = set(host.page_sizes_kib)
        if file_backed and self.mounted is not None:
            sizes &= self.mounted
        self.sizes = tuple(sorted(sizes))

    def why_not(self, size: Asked) -> str:
        if not isinstance(size, int):
            return "no default hugepage size on this host"
        size_kib = size
        if size_kib not in self.host.page_sizes_kib:
            return f"no {format_kib(size_kib)} pages on this host"
        return f"no hugetlbfs mount for {format_kib(size_kib)} pages that the libvirt daemon knows"


def refit_for_host(data: bytes, host: HostInfo, mounted_sizes_kib: Optional[Iterable[int]] = None,
                   source: str = "<stdin>", supply: Optional[HostSupply] = None
                   ) -> RewriteResult:
    """Refit ``data`` to ``host``. ``mounted_sizes_kib``: the hugetlbfs page sizes the libvirt
    daemon can use (None: unknown, mounts are not considered). ``supply``: what the host can
    supply now (None: not considered)."""
    tree = parse_bytes(data, source)
    if tree.getroot().tag != "domain":  # e.g. a <domstatus>: not ours to change
        return RewriteResult(data, False, [])
    doc = Doc(data, source, tree)
    usable = Usable(host, mounted_sizes_kib, doc.domain.source != "memfd")
    tally = Tally(supply, guest_key_of(doc.domain.name, doc.domain.uuid)) \
        if supply is not None else None
    notes: list[str] = []
    node_notes: list[str] = []
    if host.nodes:
        refit_numatune(doc, frozenset(host.nodes), node_notes)
        refit_nodemasks(doc, frozenset(host.nodes), node_notes)
    bound = bound_here(doc, source) if tally is not None else doc.domain
    desired = refit_pages(doc, bound, usable, tally, notes)
    refit_devices(doc, bound, usable, tally, notes)
    notes += node_notes
    if desired is not None:
        write_backing(doc, desired, None)
    result = doc.result(notes)
    if desired is not None:  # the hook has no second chance: read the result back
        verify(result.data, source, desired, doc.domain.source, host.system_page_kib)
    if result.changed:  # never print XML libvirt refuses: the hook then prints the input
        conflicts.accepted(result.data, host, source)
    return result


def bound_here(doc: Doc, source: str) -> Domain:
    """The domain with the node bindings refitted so far: where each memory may take pages
    here (a binding whose nodes are all gone gives way to the one above it, as libvirt
    reads what the refit writes)."""
    if not doc.splice:
        return doc.domain
    from hugexml.xml.domxml import parse_domain_tree

    return parse_domain_tree(parse_bytes(doc.splice.apply(), source), source)


def refit_size(needs: list[Need], size: PageSize, usable: Usable, tally: Optional[Tally]
               ) -> Optional[tuple[PageSize, str]]:
    """None when ``size`` can be had (and, with a tally, supplied now: it then takes its
    pages); else (the size it becomes, why, for the notes)."""
    if not isinstance(size, int):  # normal pages can always be had
        return None
    if size not in usable.sizes:
        new, why = choose_fitting(needs, usable.sizes, tally)
        return new, f"{usable.why_not(size)}; now {describe(new)} ({why})"
    if tally is None:
        return None
    short = tally.take(needs, size)
    if short is None:
        return None
    new, why = choose_fitting(needs, [s for s in usable.sizes if s < size], tally)
    return new, f"{short}; now {describe(new)} ({why})"


def refit_pages(doc: Doc, bound: Domain, usable: Usable, tally: Optional[Tally],
                notes: list[str]) -> Optional[PageMap]:
    """The page map with every size that cannot be had replaced; None when all fit.
    ``bound``: the domain with its node bindings as refitted (where pages may come from)."""
    domain, host = doc.domain, usable.host
    current = current_pages(domain, host.system_page_kib)
    targets = target_memory_kib(domain)
    desired: PageMap = {}
    changed = False
    for target, asked in current.items():
        needs = target_needs(bound, target, targets[target], host)
        size = resolve(asked, host)
        refit: Optional[tuple[PageSize, str]]
        if size is None:  # the host's default size, and this host has none
            size, why = choose_fitting(needs, usable.sizes, tally)
            refit = (size, f"{usable.why_not(asked)}; now {describe(size)} ({why})")
        else:
            refit = refit_size(needs, size, usable, tally)
        if refit is not None:
            size = refit[0]
            notes.append(f"{target_label(target, targets[target])}: {refit[1]}")
            changed = True
        desired[target] = size
    return desired if changed else None


def device_elements(doc: Doc) -> list[Any]:
    """<devices><memory> elements in the order of ``Domain.memory_devices``."""
    return [el for el in MEMORY_DEVICES(doc.root) if el.get("model") in MEMORY_DEVICE_MODELS]


def refit_devices(doc: Doc, bound: Domain, usable: Usable, tally: Optional[Tally],
                  notes: list[str]) -> None:
    """Memory devices' own <pagesize>: a size that cannot be had becomes one that can."""
    system_kib = usable.host.system_page_kib
    elements = device_elements(doc)
    for device in doc.domain.memory_devices:
        size = device.source_page_kib
        if device.model not in INHERITING_MODELS or size is None or size == system_kib:
            continue
        refit = refit_size([device_need(bound, bound.memory_devices[device.index], usable.host)],
                           size, usable, tally)
        if refit is None:
            continue
        new = refit[0] if isinstance(refit[0], int) else system_kib
        span = doc.span(DEVICE_PAGESIZE(elements[device.index])[0])
        doc.splice.set_text(span, str(new))
        doc.splice.set_attribute(span, "unit", "KiB")
        notes.append(f"{device.model} #{device.index} ({format_kib(device.size_kib)}): "
                     f"{refit[1]}")


def fit_nodes(text: Optional[str], nodes: frozenset[int], doc: Doc, what: str,
              notes: list[str]) -> Optional[frozenset[int]]:
    """The nodeset without the nodes this host lacks; None when nothing is missing."""
    try:
        wanted = parse_nodeset(text, what=what)
    except UnitError as exc:
        raise InvalidDomain(domain=doc.domain.name, reason=str(exc)) from None
    if wanted <= nodes:
        return None
    kept = wanted & nodes
    notes.append(f"{what} {format_nodeset(wanted)}: host node(s) {format_nodeset(wanted - nodes)} "
                 f"do not exist here (nodes: {format_nodeset(nodes)}); "
                 + (f"now {format_nodeset(kept)}" if kept else "binding removed"))
    return kept


def refit_numatune(doc: Doc, nodes: frozenset[int], notes: list[str]) -> None:
    edits: list[tuple[Any, Optional[frozenset[int]]]] = []
    for element in NUMATUNE_MEMORY(doc.root):
        if element.get("nodeset") is None or element.get("placement") == "auto":
            continue
        kept = fit_nodes(element.get("nodeset"), nodes, doc, "numatune memory nodeset",
                         notes)
        if kept is not None:
            edits.append((element, kept))
    for element in NUMATUNE_MEMNODES(doc.root):
        kept = fit_nodes(element.get("nodeset"), nodes, doc,
                         f"numatune memnode cellid {element.get('cellid')} nodeset", notes)
        if kept is not None:
            edits.append((element, kept))
    if not edits:
        return
    numatune = NUMATUNE(doc.root)[0]
    removed = [element for element, kept in edits if not kept]
    if len(removed) == len(doc.span(numatune).children):
        doc.splice.remove_element(doc.span(numatune))
        return
    for element, kept in edits:
        if kept:
            doc.splice.set_attribute(doc.span(element), "nodeset", format_nodeset(kept))
        else:
            doc.splice.remove_element(doc.span(element))


def refit_nodemasks(doc: Doc, nodes: frozenset[int], notes: list[str]) -> None:
    elements = device_elements(doc)
    for device in doc.domain.memory_devices:
        if device.source_nodemask is None:
            continue
        element = elements[device.index]
        mask = DEVICE_NODEMASK(element)[0]
        kept = fit_nodes(mask.text, nodes, doc, f"{device.model} #{device.index} nodemask",
                         notes)
        if kept is None:
            continue
        if kept:
            doc.splice.set_text(doc.span(mask), format_nodeset(kept))
        elif len(doc.span(DEVICE_SOURCE(element)[0]).children) == 1:
            doc.splice.remove_element(doc.span(DEVICE_SOURCE(element)[0]))
        else:
            doc.splice.remove_element(doc.span(mask))
