"""Hostile input is normal input: every one is refused with ONE line, and nothing changes.

Each document goes through ``hugexml plan`` (the CLI, in process; stdin cases in a
subprocess) and through the hook's prepare on a fake kernel: exit non-zero, exactly one
stderr line naming the problem, no traceback, and the fake kernel accepted no write.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from hugexml.cli import main as cli
from hugexml.qemuhook import dispatch as hook
from hugexml.qemuhook import hooklog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fakekernel import FakeKernel  # noqa: E402

HUGE = "<memoryBacking><hugepages/></memoryBacking>"


def dom(body: str = "", memory: str = "<memory unit='MiB'>128</memory>",
        backing: str = HUGE) -> bytes:
    return (f"<domain type='kvm'><name>evil</name>{memory}{backing}{body}"
            f"<vcpu>1</vcpu></domain>").encode()


LAUGHS = ("<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY a 'hugepages'>"
          + "".join(f"<!ENTITY {chr(98 + i)} '" + f"&{chr(97 + i)};" * 10 + "'>"
                    for i in range(9))
          + "]><domain><name>&j;</name><memory>1</memory>" + HUGE + "</domain>").encode()
NESTING = 100_000
HOSTILE = [
    ("billion-laughs", LAUGHS, "not a readable domain XML"),
    ("external-entity", b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM "
                        b"'file:///etc/passwd'>]><domain><name>&x;</name>" + HUGE.encode()
                        + b"</domain>", "DOCTYPE"),
    ("external-dtd", b"<!DOCTYPE domain SYSTEM 'http://127.0.0.1:9/evil.dtd'><domain>"
                     b"<name>x</name>" + HUGE.encode() + b"</domain>",
     "DOCTYPE is not allowed"),
    ("xinclude-network", dom("<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' "
                             "href='http://127.0.0.1:9/x'/>", memory=""),
     "Memory size must be specified via <memory> or in the <numa> configuration"),
    ("parameter-entity", b"<!DOCTYPE d [<!ENTITY % p SYSTEM 'file:///etc/passwd'> %p;]>"
                         b"<domain>" + HUGE.encode() + b"</domain>", "not a readable domain XML"),
    ("over-16-MiB", dom("<description>" + "x" * (16 * 1024 * 1024) + "</description>"),
     "larger than 16 MiB"),
    ("deep-nesting", dom("<metadata>" + "<a>" * NESTING + "</a>" * NESTING + "</metadata>"),
     "not a readable domain XML"),
    ("giant-memory", dom(memory="<memory unit='EiB'>16</memory>"), "value too large: 16EiB"),
    ("giant-digits", dom(memory="<memory>" + "9" * 5000 + "</memory>"),
     "Invalid value '999999999"),
    ("negative-memory", dom(memory="<memory>-1</memory>"),
     "Invalid value '-1' for element or attribute './memory[1]'"),
    ("overflow-after-align", dom(memory="<memory>9007199254740991</memory>"),
     "initial memory size overflowed after alignment"),
    ("giant-page", dom(backing="<memoryBacking><hugepages><page size='16' unit='EiB'/>"
                               "</hugepages></memoryBacking>"), "value too large: 16EiB"),
    ("negative-page", dom(backing="<memoryBacking><hugepages><page size='-2048'/></hugepages>"
                                  "</memoryBacking>"),
     "Invalid value '-2048' for element or attribute './@size'"),
    ("zero-page", dom(backing="<memoryBacking><hugepages><page size='0'/></hugepages>"
                              "</memoryBacking>"), "hugepage size can't be zero"),
    ("cell-id-beyond", dom("<cpu><numa><cell id='4294967296' memory='1'/></numa></cpu>"),
     "Invalid value for attribute 'id' in element 'cell': '4294967296'."),
    ("host-node-beyond", dom("<numatune><memory nodeset='1048576'/></numatune>"),
     "Failed to parse bitmap '1048576'"),
    ("memnode-cell-beyond", dom("<cpu><numa><cell id='0' memory='131072'/></numa></cpu>"
                                "<numatune><memnode cellid='99999' nodeset='0'/></numatune>"),
     "Argument 'cellid' in memnode element must correspond to existing guest's NUMA cell"),
    ("huge-nodeset", dom("<numatune><memory nodeset='" + ",".join(["0-1023"] * 3000)
                         + "'/></numatune>"), "more nodes than hugexml reads"),
    ("many-cells", dom("<cpu><numa>" + "<cell memory='1'/>" * 5000 + "</numa></cpu>"),
     "too many NUMA cells"),
    ("many-devices", dom("<devices>" + "<memory model='dimm'><target><size>1</size>"
                         "</target></memory>" * 300 + "</devices>"), "too many memory devices"),
    ("non-utf8", b"<domain><name>\xff\xfe</name>" + HUGE.encode() + b"</domain>",
     "not a readable domain XML"),
    ("latin1-declared-utf8", "<?xml version='1.0' encoding='UTF-8'?><domain><name>caf\u00e9"
                             "</name>".encode("latin-1") + HUGE.encode() + b"</domain>",
     "not a readable domain XML"),
    ("nul-bytes", b"<domain>\x00" + HUGE.encode() + b"</domain>", "not a readable domain XML"),
    ("not-a-domain", b"<network><pagesize/><hugepages/></network>", "root element is <network>"),
    ("truncated", dom()[:-20], "not a readable domain XML"),
]
IDS = [h[0] for h in HOSTILE]


def one_line(err: str, words: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert words in err, err
    assert len(err) < 400, err


@pytest.mark.parametrize("data,words", [h[1:] for h in HOSTILE], ids=IDS)
def test_plan_cli_refuses_with_one_line(tmp_path, capsys, data, words):
    path = tmp_path / "domain.xml"
    path.write_bytes(data)
    code = cli.main(["--root", str(tmp_path / "noroot"), "plan", "--no-host", str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith("hugexml plan: ")
    one_line(err, words)


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    fk = FakeKernel(tmp_path / "root", nodes=2)
    monkeypatch.setenv("HUGEXML_ROOT", fk.root)
    monkeypatch.setenv("HUGEXML_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "hugexml.conf").write_text("[hook]\nlog = none\n")
    monkeypatch.setenv("HUGEXML_CONFIG", str(tmp_path / "hugexml.conf"))
    monkeypatch.setattr(hooklog, "SYSLOG_ADDRESS", str(tmp_path / "no-syslog"))
    return fk


def prepare(kernel: FakeKernel, data: bytes) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    code = hook.main(["hugexml", "evil", "prepare", "begin", "-"], io.BytesIO(data), out, err,
                     make_gateway=lambda root: kernel.gateway())
    return code, out.getvalue(), err.getvalue()


def test_the_fake_kernel_sees_a_valid_guest(kernel):
    """The harness can fail: a sane guest does allocate on the fake kernel."""
    before = kernel.writes()
    assert prepare(kernel, dom()) == (0, b"", "")
    assert kernel.writes() != before
    assert sum(kernel.pool(n, 2048).nr for n in (0, 1)) == 64


@pytest.mark.parametrize("data,words", [h[1:] for h in HOSTILE], ids=IDS)
def test_hook_prepare_refuses_with_one_line_and_changes_nothing(kernel, tmp_path, data, words):
    before = (kernel.writes(), kernel.counters())
    code, out, err = prepare(kernel, data)
    assert (code, out) == (1, b"")
    assert err.startswith("hugexml: ")
    one_line(err, words)
    assert (kernel.writes(), kernel.counters()) == before
    assert not (tmp_path / "state" / "ledger.json").exists()


def test_empty_stdin_is_refused_by_plan_and_ignored_by_the_hook(kernel):
    proc = subprocess.run([sys.executable, "-m", "hugexml", "plan", "--no-host", "-"],
                          input=b"", capture_output=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == b""
    one_line(proc.stderr.decode(), "<stdin>: not a readable domain XML: empty input")
    # libvirt never sends an empty document; the hook's cheap pre-check sees no hugepages
    before = kernel.writes()
    assert prepare(kernel, b"") == (0, b"", "")
    assert kernel.writes() == before


def test_oversized_stdin_is_refused_in_a_subprocess():
    data = dom("<description>" + "x" * (16 * 1024 * 1024) + "</description>")
    proc = subprocess.run([sys.executable, "-m", "hugexml", "plan", "--no-host", "-"],
                          input=data, capture_output=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == b""
    one_line(proc.stderr.decode(), "larger than 16 MiB")


def test_the_external_entity_is_never_read(tmp_path, capsys):
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    path = tmp_path / "d.xml"
    path.write_bytes(f"<!DOCTYPE d [<!ENTITY x SYSTEM 'file://{secret}'>]><domain>"
                     f"<name>&x;</name><memory>1</memory></domain>".encode())
    assert cli.main(["plan", "--no-host", str(path)]) == 2
    assert "TOPSECRET" not in "".join(capsys.readouterr())


@pytest.mark.parametrize("prolog", [
    b"",
    b"<?xml version='1.0'?>\n<!-- a comment -->\n<?pi data?>\n",
    b"\xef\xbb\xbf  ",
])
def test_an_external_parameter_entity_is_never_opened(tmp_path, prolog):
    path = tmp_path / "zero.xml"
    path.write_bytes(prolog + b"<!DOCTYPE d [<!ENTITY % p SYSTEM 'file:///dev/zero'> %p;]>"
                     b"<domain><name>x</name>" + HUGE.encode() + b"</domain>")
    try:
        proc = subprocess.run([sys.executable, "-m", "hugexml", "plan", "--no-host", str(path)],
                              capture_output=True, timeout=10, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("the parser read file:///dev/zero for 10 s")
    assert proc.returncode == 2
    one_line(proc.stderr.decode(), "DOCTYPE")


def test_the_resolver_opens_nothing_even_past_the_prolog_check(tmp_path):
    """Defence in depth: the parser itself resolves external entities to nothing."""
    from lxml import etree

    from hugexml.xml.xmlsafe import make_parser

    secret = tmp_path / "secret.dtd"
    secret.write_text("<!ENTITY leak 'SECRET'>")
    data = (f"<!DOCTYPE d [<!ENTITY % p SYSTEM '{secret.as_uri()}'> %p;]>"
            "<domain>&leak;</domain>").encode()
    try:
        root = etree.fromstring(data, parser=make_parser())
    except etree.XMLSyntaxError:
        return  # refused outright: nothing was read
    assert b"SECRET" not in etree.tostring(root)
