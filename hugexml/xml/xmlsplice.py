"""Byte-exact XML editing: find elements' byte spans in the original bytes and splice them.

lxml reads the document (``hugexml.xml.xmlsafe.parse_bytes`` has already validated it); this
module maps every lxml element to the bytes it came from, so an edit replaces only those
bytes. Everything else (comments, attribute order and quoting, indentation, CRLF, the XML
declaration, CDATA, character references, a missing final newline) comes out as it went in.

The scanner only needs to be right on well-formed XML (lxml has said so). It skips comments,
processing instructions and CDATA whole, and reads quoted attribute values whole, so a ``>``
or ``/`` inside them is harmless. After scanning, the element sequence is checked against
lxml's, name by name; a mismatch is a bug here and raises ``SelfCheckFailed`` (nothing is written).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from lxml import etree

from hugexml.core.errors import SelfCheckFailed
from hugexml.core.lazyre import pattern
from hugexml.core.typed import Typed

_TOKEN = pattern(
    rb"<(?:"
    rb"!--.*?-->"  # comment
    rb"|!\[CDATA\[.*?\]\]>"  # CDATA section
    rb"|\?.*?\?>"  # XML declaration, processing instruction
    rb"|(/)([^\s>]+)\s*>"  # 1, 2: end tag
    rb"|([^\s/>!?]+)(?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*\s*(/?)>"  # 3, 4: start
    rb"|(!))",  # 5: <!DOCTYPE ...: never in domain XML (xmlsafe refuses it)
    re.S,
)
_START = pattern(rb"<(?:!--.*?-->|!\[CDATA\[.*?\]\]>|\?.*?\?>|([^/!?]))", re.S)
_ATTR = pattern(rb"([^\s=/>]+)\s*=\s*(\"([^\"]*)\"|'([^']*)')")
_INLINE_TRAILER = pattern(rb"(?:[ \t]+|<!--.*?-->)*(?=\r?\n)", re.S)

# A new element to write: (tag, [(attribute, value), ...], [children]).
NewElement = tuple[str, Sequence[tuple[str, str]], Sequence[Any]]


class Span:
    """Where one element sits in the original bytes."""

    __slots__ = ("children", "close_start", "empty", "end", "head_end", "name", "start")

    def __init__(self, name: bytes, start: int, head_end: int, empty: bool) -> None:
        self.name = name  # qualified name as written (prefix:local)
        self.start = start  # '<' of the start tag
        self.head_end = head_end  # just after the start tag's '>'
        self.empty = empty  # written as <name .../>
        self.close_start = head_end  # '<' of the end tag (== head_end when empty)
        self.end = head_end  # just after the element
        self.children: list[Span] = []

    @property
    def local(self) -> str:
        return self.name.rpartition(b":")[2].decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"Span({self.local!r}, {self.start}, {self.end})"


def scan(data: bytes, start: int = 0) -> list[Span]:
    """The element starting at byte ``start`` (default: the root) and every element inside
    it, in document order. Assumes well-formed XML (lxml has checked)."""
    spans: list[Span] = []
    stack: list[Span] = []
    for m in _TOKEN.finditer(data, start):
        if m.group(3) is not None:
            span = Span(m.group(3), m.start(), m.end(), bool(m.group(4)))
            if stack:
                stack[-1].children.append(span)
            spans.append(span)
            if not span.empty:
                stack.append(span)
            elif not stack:
                break
        elif m.group(1) is not None:
            if not stack or stack[-1].name != m.group(2):
                raise _bug(f"unbalanced end tag at byte {m.start()}")
            span = stack.pop()
            span.close_start = m.start()
            span.end = m.end()
            if not stack:
                break
        elif m.group(5) is not None:
            raise _bug("a DOCTYPE reached the scanner")
    if stack or not spans:
        raise _bug("unclosed element")
    return spans


def _bug(reason: str) -> SelfCheckFailed:
    return SelfCheckFailed(what="the byte-exact XML edit", reason=reason)


_ELEMENT: Any = etree.Element  # iterchildren(_ELEMENT): elements only
_COUNT: Any = etree.XPath("count(/descendant-or-self::*)")
_INDEX: Any = etree.XPath("count(preceding::*) + count(ancestor::*)")  # document order


class SpanMap:
    """lxml element -> its Span, computed on demand.

    One pass finds where every start tag begins (skipping comments, CDATA and PIs); the
    count must equal lxml's element count, so the k-th start tag is lxml's k-th element in
    document order. An element's full span (end, children) is scanned only when asked for,
    and its name checked against lxml's.
    """

    def __init__(self, root: Any, data: bytes) -> None:
        self.data = data
        self.root = root
        self.starts = [m.start() for m in _START.finditer(data) if m.lastindex]
        count = int(_COUNT(root))
        if len(self.starts) != count:
            raise _bug(f"{len(self.starts)} start tags scanned, lxml has {count} elements")
        self._cache: dict[int, Span] = {}

    def index(self, element: Any) -> int:
        """Document-order position of ``element`` (0: the root)."""
        return int(_INDEX(element))

    def start(self, element: Any) -> int:
        return self.starts[self.index(element)]

    def __getitem__(self, element: Any) -> Span:
        k = self.index(element)
        span = self._cache.get(k)
        if span is None:
            span = scan(self.data, self.starts[k])[0]
            if element.tag.rpartition("}")[2] != span.local:
                raise _bug(f"scanned <{span.local}>, lxml has {element.tag}")
            self._cache[k] = span
        return span


def bind(root: Any, data: bytes) -> SpanMap:
    """Map lxml elements under ``root`` (inclusive) to their spans in ``data``."""
    return SpanMap(root, data)


class Layout(Typed, frozen=True):
    """How the document writes itself: line ending, one indentation step, attribute quote."""

    newline: bytes = b"\n"
    unit: bytes = b"  "
    quote: str = "'"

    @classmethod
    def of(cls, data: bytes, spans: SpanMap) -> Layout:
        """Read the layout from the root's start tag and its first child's indentation."""
        newline = b"\r\n" if b"\r\n" in data else b"\n"
        root_start = spans.starts[0]
        first = next(spans.root.iterchildren(_ELEMENT), None)
        quote = "'"
        for pos in (root_start, spans.start(first) if first is not None else None):
            head = _TOKEN.match(data, pos) if pos is not None else None
            m = _ATTR.search(data, pos, head.end()) if head and pos is not None else None
            if m:
                quote = m.group(2)[:1].decode("ascii")
                break
        unit = b"  "
        if first is not None:
            root_indent = indent_at(data, root_start) or b""
            indent = indent_at(data, spans.start(first))
            if indent is not None:
                if indent.startswith(root_indent) and len(indent) > len(root_indent):
                    unit = indent[len(root_indent):]
                elif b"\t" in indent:
                    unit = b"\t"
        return cls(newline, unit, quote)


def indent_at(data: bytes, pos: int) -> Optional[bytes]:
    """The blanks before ``pos`` on its line, or None when something else precedes it."""
    i = pos
    while i > 0 and data[i - 1:i] in (b" ", b"\t"):
        i -= 1
    if i == 0 or data[i - 1:i] == b"\n":
        return data[i:pos]
    return None


def indent_of(data: bytes, span: Span) -> Optional[bytes]:
    return indent_at(data, span.start)


def escape(value: str, quote: str = "'") -> bytes:
    text = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace(quote, "&apos;" if quote == "'" else "&quot;")
    return text.encode("utf-8")


def render(element: NewElement, indent: Optional[bytes], layout: Layout) -> bytes:
    """A new element in the document's style; ``indent`` None writes it on one line."""
    tag, attrs, children = element
    q = layout.quote.encode("ascii")
    head = tag.encode("utf-8") + b"".join(
        b" " + name.encode("utf-8") + b"=" + q + escape(value, layout.quote) + q
        for name, value in attrs
    )
    if not children:
        return b"<" + head + b"/>"
    if indent is None:
        inner = b"".join(render(child, None, layout) for child in children)
        return b"<" + head + b">" + inner + b"</" + tag.encode("utf-8") + b">"
    sub = indent + layout.unit
    inner = b"".join(layout.newline + sub + render(child, sub, layout) for child in children)
    return b"<" + head + b">" + inner + layout.newline + indent + b"</" + tag.encode("utf-8") + b">"


class Splice:
    """Edits against the original bytes, applied together. Edits must not overlap."""

    def __init__(self, data: bytes, layout: Union[Layout, Callable[[], Layout]]) -> None:
        self.data = data
        self._layout = layout  # or how to read it, when an edit first needs it
        self._ops: list[tuple[int, int, int, bytes]] = []

    @property
    def layout(self) -> Layout:
        if not isinstance(self._layout, Layout):
            self._layout = self._layout()
        return self._layout

    def __bool__(self) -> bool:
        return bool(self._ops)

    def replace(self, start: int, end: int, new: bytes) -> None:
        self._ops.append((start, end, len(self._ops), new))

    def insert(self, pos: int, new: bytes) -> None:
        self.replace(pos, pos, new)

    def apply(self) -> bytes:
        out: list[bytes] = []
        pos = 0
        for start, end, _, new in sorted(self._ops):
            if start < pos:
                raise _bug(f"overlapping edits at byte {start}")
            out.append(self.data[pos:start])
            out.append(new)
            pos = end
        out.append(self.data[pos:])
        return b"".join(out)

    # --- elements ---------------------------------------------------------------------
    def replace_element(self, span: Span, element: NewElement) -> None:
        self.replace(span.start, span.end, render(element, indent_of(self.data, span), self.layout))

    def remove_element(self, span: Span) -> None:
        """Remove an element; on its own line, the line goes too."""
        indent = indent_of(self.data, span)
        start = span.start
        if indent is not None and start - len(indent) > 0:
            start -= len(indent) + 1  # the '\n' before the indentation
            if self.data[start - 1:start] == b"\r":
                start -= 1
        self.replace(start, span.end, b"")

    def insert_after(self, anchor: Span, element: NewElement) -> None:
        """A new sibling right after ``anchor``, on its own line when ``anchor`` is."""
        indent = indent_of(self.data, anchor)
        if indent is None:
            self.insert(anchor.end, render(element, None, self.layout))
            return
        # Keep a comment that trails the anchor on its line with the anchor.
        m = _INLINE_TRAILER.match(self.data, anchor.end)
        pos = m.end() if m else anchor.end
        self.insert(pos, self.layout.newline + indent + render(element, indent, self.layout))

    def insert_first_child(self, parent: Span, element: NewElement) -> None:
        data, layout = self.data, self.layout
        parent_indent = indent_of(data, parent)
        if parent.children:
            first = parent.children[0]
            indent = indent_of(data, first)
            if indent is None:
                self.insert(first.start, render(element, None, layout))
            else:
                self.insert(first.start, render(element, indent, layout) + layout.newline + indent)
            return
        if parent_indent is None:
            new = render(element, None, layout)
            if parent.empty:
                self.replace(parent.start, parent.end, _open_head(data, parent) + new
                             + b"</" + parent.name + b">")
            else:
                self.insert(parent.head_end, new)
            return
        indent = parent_indent + layout.unit
        new = layout.newline + indent + render(element, indent, layout)
        if parent.empty:
            self.replace(parent.start, parent.end, _open_head(data, parent) + new
                         + layout.newline + parent_indent + b"</" + parent.name + b">")
        elif not data[parent.head_end:parent.close_start].strip():
            self.replace(parent.head_end, parent.close_start, new + layout.newline + parent_indent)
        else:
            self.insert(parent.head_end, new)

    # --- attributes and text ----------------------------------------------------------
    def set_attribute(self, span: Span, name: str, value: str) -> None:
        """Replace only the value bytes of ``name``, or add the attribute after the others."""
        key = name.encode("utf-8")
        last = span.start + 1 + len(span.name)
        for m in _ATTR.finditer(self.data, last, span.head_end):
            last = m.end()
            if m.group(1) == key:
                quote = m.group(2)[:1].decode("ascii")
                self.replace(m.start(2) + 1, m.end(2) - 1, escape(value, quote))
                return
        q = self.layout.quote.encode("ascii")
        self.insert(last, b" " + key + b"=" + q + escape(value, self.layout.quote) + q)

    def remove_attribute(self, span: Span, name: str) -> None:
        """Remove ``name`` and the white space before it (nothing when absent)."""
        key = name.encode("utf-8")
        last = span.start + 1 + len(span.name)
        for m in _ATTR.finditer(self.data, last, span.head_end):
            if m.group(1) == key:
                self.replace(last, m.end(), b"")
                return
            last = m.end()

    def set_text(self, span: Span, text: str) -> None:
        if span.empty:
            self.replace(span.start, span.end, _open_head(self.data, span) + escape(text, '"')
                         + b"</" + span.name + b">")
        else:
            self.replace(span.head_end, span.close_start, escape(text, '"'))


def attribute_value_span(data: bytes, span: Span, name: str) -> Optional[tuple[int, int]]:
    key = name.encode("utf-8")
    for m in _ATTR.finditer(data, span.start + 1 + len(span.name), span.head_end):
        if m.group(1) == key:
            return m.start(2) + 1, m.end(2) - 1
    return None


def _open_head(data: bytes, span: Span) -> bytes:
    """``<name a='b'/>`` -> ``<name a='b'>``."""
    head = data[span.start:span.head_end]
    return head[:-2].rstrip() + b">" if span.empty else head
