"""The byte-span scanner and splicer behind hugexml rewrite / refit."""
from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from hugexml.core.errors import SelfCheckFailed
from hugexml.xml.xmlsafe import parse_bytes
from hugexml.xml.xmlsplice import Layout, Splice, bind, indent_of, scan


def spans_by_name(data: bytes) -> tuple[dict, Layout]:
    root = parse_bytes(data, "t").getroot()
    spans = bind(root, data)
    by_name = {}
    for element in root.iter(etree.Element):
        by_name.setdefault(element.tag.rpartition("}")[2], spans[element])
    return by_name, Layout.of(data, spans)


def test_every_corpus_file_scans_like_lxml(corpus: Path) -> None:
    files = sorted(corpus.glob("*.xml"))
    assert len(files) > 30
    for path in files:
        data = path.read_bytes()
        root = parse_bytes(data, path.name).getroot()
        spans = bind(root, data)
        assert [s.start for s in scan(data)] == spans.starts
        for span in (spans[element] for element in root.iter(etree.Element)):
            assert data[span.start:span.start + 1 + len(span.name)] == b"<" + span.name
            assert data[span.end - 1:span.end] == b">"
            if not span.empty:
                assert data[span.close_start:span.end].startswith(b"</" + span.name)


TRICKY = (
    b"\xef\xbb\xbf<?xml version='1.0'?>\n<?pi with > inside?>\n<!-- <a> </b> -->\n"
    b"<a x='1>2' y=\"/>\" z='\"'>\n"
    b"  <b><![CDATA[</a><c/>]]></b>\n"
    b"  <ns:c xmlns:ns='urn:x' ns:v = 'q' />\n"
    b"  <d>text &amp; &apos;more&apos; > still text</d>\n"
    b"  <e\n     f='1'\n  ></e>\n"
    b"</a>"
)


def test_tricky_markup() -> None:
    spans = scan(TRICKY)
    assert [s.local for s in spans] == ["a", "b", "c", "d", "e"]
    root = parse_bytes(TRICKY, "t").getroot()
    bound = bind(root, TRICKY)
    assert [bound[e].local for e in root.iter()] == ["a", "b", "c", "d", "e"]
    b, c = spans[1], spans[2]
    assert TRICKY[b.start:b.end] == b"<b><![CDATA[</a><c/>]]></b>"
    assert c.empty and TRICKY[c.start:c.end].endswith(b"'q' />")
    assert [child.local for child in spans[0].children] == ["b", "c", "d", "e"]


def test_scanner_refuses_a_mismatch() -> None:
    root = parse_bytes(b"<a><b/></a>", "t").getroot()
    with pytest.raises(SelfCheckFailed):
        bind(root, b"<a><b/><c/></a>")  # count
    with pytest.raises(SelfCheckFailed):
        bind(root, b"<a><c/></a>")[root[0]]  # name


def test_set_attribute_touches_only_the_value() -> None:
    data = b'<a>\n  <m mode = "strict"  nodeset="0-3"/>\n</a>\n'
    spans, layout = spans_by_name(data)
    splice = Splice(data, layout)
    splice.set_attribute(spans["m"], "nodeset", "0-1")
    assert splice.apply() == data.replace(b"0-3", b"0-1")
    splice = Splice(data, layout)
    splice.set_attribute(spans["m"], "placement", "static")
    # the document's own quote (the root's, else its first child's) for a new attribute
    assert splice.apply() == data.replace(b'"0-3"', b'"0-3" placement="static"')


def test_set_text_and_escaping() -> None:
    data = b"<a><n>0-3</n><e/></a>"
    spans, layout = spans_by_name(data)
    splice = Splice(data, layout)
    splice.set_text(spans["n"], "1")
    splice.set_text(spans["e"], "x<y&z")
    assert splice.apply() == b"<a><n>1</n><e>x&lt;y&amp;z</e></a>"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_remove_element_takes_its_line(newline: bytes) -> None:
    data = newline.join([b"<a>", b"  <b/>", b"  <c>x</c>", b"  <d/>", b"</a>"])
    spans, layout = spans_by_name(data)
    splice = Splice(data, layout)
    splice.remove_element(spans["c"])
    assert splice.apply() == newline.join([b"<a>", b"  <b/>", b"  <d/>", b"</a>"])


@pytest.mark.parametrize("before, after", [
    (b"<a>\n\t<p/>\n</a>", b"<a>\n\t<p>\n\t\t<n v='1'/>\n\t</p>\n</a>"),
    (b"<a>\n\t<p></p>\n</a>", b"<a>\n\t<p>\n\t\t<n v='1'/>\n\t</p>\n</a>"),
    (b"<a>\n\t<p>\n\t\t<x/>\n\t</p>\n</a>", b"<a>\n\t<p>\n\t\t<n v='1'/>\n\t\t<x/>\n\t</p>\n</a>"),
    (b"<a><p/></a>", b"<a><p><n v='1'/></p></a>"),
    (b'<a k="v">\n    <p/>\n</a>', b'<a k="v">\n    <p>\n        <n v="1"/>\n    </p>\n</a>'),
])
def test_insert_first_child_follows_the_document(before: bytes, after: bytes) -> None:
    spans, layout = spans_by_name(before)
    splice = Splice(before, layout)
    splice.insert_first_child(spans["p"], ("n", (("v", "1"),), ()))
    assert splice.apply() == after


def test_insert_after_keeps_a_trailing_comment_with_its_line() -> None:
    data = b"<a>\n  <b/> <!-- about b -->\n  <c/>\n</a>\n"
    spans, layout = spans_by_name(data)
    splice = Splice(data, layout)
    splice.insert_after(spans["b"], ("n", (), ()))
    assert splice.apply() == b"<a>\n  <b/> <!-- about b -->\n  <n/>\n  <c/>\n</a>\n"


def test_layout_and_indent() -> None:
    data = b'<a t="1">\r\n    <b/>\r\n</a>'
    spans, layout = spans_by_name(data)
    assert layout == Layout(newline=b"\r\n", unit=b"    ", quote='"')
    assert indent_of(data, spans["b"]) == b"    " and indent_of(data, spans["a"]) == b""
    assert indent_of(b"<a><b/></a>", scan(b"<a><b/></a>")[1]) is None


def test_overlapping_edits_are_a_bug() -> None:
    data = b"<a><b/></a>"
    spans, layout = spans_by_name(data)
    splice = Splice(data, layout)
    splice.replace_element(spans["b"], ("c", (), ()))
    splice.remove_element(spans["b"])
    with pytest.raises(SelfCheckFailed):
        splice.apply()
