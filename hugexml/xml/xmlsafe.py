"""The one XML parser hugexml uses on untrusted input.

Entity resolution, DTD loading and network access are off; a DOCTYPE is refused outright
(libvirt never writes one), input is capped, and every failure is one ``InvalidXML`` line.
"""
from __future__ import annotations

import re
from typing import Any

from hugexml.core.errors import InvalidXML
from hugexml.core.lazyre import pattern

MAX_XML_BYTES = 16 * 1024 * 1024
# The prolog up to a DOCTYPE: XML declaration, whitespace, comments and PIs. A DOCTYPE is
# refused before libxml2 sees it, because libxml2 loads external *parameter* entities
# even with load_dtd=False (a DTD naming file:///dev/zero would hang the hook).
_DOCTYPE_IN_PROLOG = pattern(
    rb"\A(?:\xef\xbb\xbf)?(?:\s|<\?.*?\?>|<!--.*?-->)*<!DOCTYPE", re.S)


def make_parser() -> Any:
    from lxml import etree

    class _NoExternal(etree.Resolver):
        """Defence in depth: every external entity or DTD resolves to nothing."""

        def resolve(self, url: Any, pubid: Any, context: Any) -> Any:  # type: ignore[override]
            return self.resolve_string("", context)  # type: ignore[call-arg]

    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        remove_comments=False,
        remove_pis=False,
        strip_cdata=False,
        collect_ids=False,
    )
    parser.resolvers.add(_NoExternal())
    return parser


def read_limited(stream: Any, source: str, limit: int = MAX_XML_BYTES) -> bytes:
    """Read at most ``limit`` bytes from a binary stream; more is an error."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InvalidXML(source=source, reason=f"larger than {limit // (1024 * 1024)} MiB")
    return bytes(data)


def parse_bytes(data: bytes, source: str = "<stdin>") -> Any:
    """Parse bytes into an lxml ElementTree, or raise InvalidXML with one line."""
    from lxml import etree

    if len(data) > MAX_XML_BYTES:
        raise InvalidXML(source=source, reason=f"larger than {MAX_XML_BYTES // (1024 * 1024)} MiB")
    if not data.strip():
        raise InvalidXML(source=source, reason="empty input")
    if _DOCTYPE_IN_PROLOG.match(data):
        raise InvalidXML(source=source, reason="a DOCTYPE is not allowed in domain XML")
    try:
        root = etree.fromstring(data, parser=make_parser())
    except etree.XMLSyntaxError as exc:
        raise InvalidXML(source=source, reason=_first_line(exc)) from None
    except ValueError as exc:  # e.g. str with an encoding declaration
        raise InvalidXML(source=source, reason=_first_line(exc)) from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise InvalidXML(source=source, reason="a DOCTYPE is not allowed in domain XML")
    for node in root.iter(etree.Entity):
        raise InvalidXML(source=source, reason=f"entity reference &{node.name}; is not allowed")
    return tree


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else exc.__class__.__name__
