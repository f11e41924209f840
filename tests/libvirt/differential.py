"""hugexml against libvirt 9.0 as the oracle: one domain, both sides, what differs.

``Oracle`` holds one libvirt-python connection (``domainXMLToNative``, ``defineXML``);
hugexml runs in-process (``domxml.plan_xml``, ``qemuargs.from_xml`` with the test bed's
environment, ``rewrite.rewrite_xml``). ``compare`` returns the disagreements of one domain
as short *kinds* (the same kind for the same cause, so they can be counted).

Normalisations (real spelling differences between libvirt versions or forms, nothing else):
- ``-m``: libvirt 9.0 writes ``-m MiB`` for a guest without memory hotplug; hugexml (and
  newer libvirt) write ``-m size=KiBk``. Both are read as KiB.
- libvirt's ``domxml-to-native`` runs a *pretend* start: no numad is asked, so automatic
  placement is refused there ("Advice from numad is needed"). hugexml's ``qemu-args`` is run
  the same way (``QemuEnv.auto_nodes=None``); ``plan`` (the hook's prepare, which runs at a
  real start, where libvirt asks numad) is compared with that refusal waived.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from lxml import etree

from hugexml.core.errors import HugexmlError, UnsupportedPageSize
from hugexml.core.model import HostInfo
from hugexml.core.typed import fields
from hugexml.planning.pagesize import Pick
from hugexml.xml import qemuargs, qemurender
from hugexml.xml.domxml import plan_xml
from hugexml.xml.rewrite import rewrite_xml

NUMAD = "Advice from numad is needed"
MEMFD_SIZE = ("hugexml refuses a memfd page size the kernel lacks, which domxml-to-native "
              "does not check (qemu refuses it at start)")
REWRITE_SIZES: tuple[Any, ...] = (2048, 1048576, Pick.AUTO)


def pretend_env(mounts: dict[int, str], default_page_kib: Optional[int],
                thread_context: bool) -> qemuargs.QemuEnv:
    """hugexml's qemu-args set up as libvirt's domxml-to-native runs (domain id -1)."""
    kwargs: dict[str, Any] = dict(
        mounts=mounts, default_page_kib=default_page_kib, auto_nodes=None,
        memory_backing_dir="/var/lib/libvirt/qemu/ram",
        hugetlbfs_subdir="libvirt/qemu/-1-{short_name}", backing_subdir="-1-{short_name}")
    if "thread_context" in fields(qemuargs.QemuEnv):
        kwargs["thread_context"] = thread_context
    return qemuargs.QemuEnv(**kwargs)


def shape(message: str) -> str:
    """A message with its values blanked: the same rule gives the same shape."""
    message = re.sub(r"'[^']*'", "'_'", message)
    message = re.sub(r"\b\d+\b", "N", message)
    return " ".join(message.split())[:160]


def memory_part(argv: list[str]) -> dict[str, Any]:
    """-m (as KiB text) and every memory-backend / thread-context object by id."""
    out: dict[str, Any] = {"m": None, "objects": {}}
    for opt, val in zip(argv, argv[1:]):
        if opt == "-m":
            out["m"] = val if val.startswith("size=") else f"size={int(val) * 1024}k"
        elif opt == "-object" and val.startswith("{"):
            props = json.loads(val)
            if props["qom-type"].startswith("memory-backend-") \
                    or props["qom-type"] == "thread-context":
                out["objects"][props["id"]] = props
    return out


@dataclass
class Side:
    ok: bool
    message: str = ""
    part: dict[str, Any] = field(default_factory=dict)
    error: Optional[HugexmlError] = None


@dataclass
class Result:
    name: str
    xml: str
    libvirt: Side
    hugexml: Side
    kinds: list[str] = field(default_factory=list)


class Oracle:
    def __init__(self, conn: Any, host: HostInfo, mounts: dict[int, str],
                 thread_context: bool = True) -> None:
        import libvirt

        self.libvirt = libvirt
        self.uri = conn.getURI()
        self.conn = conn
        self.host = host
        self.env = pretend_env(mounts, host.default_page_kib, thread_context)
        self.calls = 0
        self.rewrites = {"refused": 0, "checked": 0, "same as another size": 0}

    def reconnect(self) -> None:
        """A new connection (after the daemon restarted)."""
        try:
            self.conn.close()
        except self.libvirt.libvirtError:
            pass
        self.conn = self.libvirt.open(self.uri)

    # --- libvirt --------------------------------------------------------------------
    def native(self, xml: str) -> Side:
        self.calls += 1
        try:
            text = self.conn.domainXMLToNative("qemu-argv", xml, 0)
        except self.libvirt.libvirtError as exc:
            return Side(False, exc.get_error_message() or str(exc))
        return Side(True, part=memory_part(shlex.split(text)))

    def define(self, xml: str) -> Optional[str]:
        """None when ``virsh define`` accepts (the domain is undefined again)."""
        self.calls += 1
        try:
            dom = self.conn.defineXML(xml)
        except self.libvirt.libvirtError as exc:
            return exc.get_error_message() or str(exc)
        self.calls += 1
        dom.undefine()
        return None

    # --- hugexml --------------------------------------------------------------------
    def ours(self, xml: bytes, name: str) -> tuple[Side, Side]:
        """(qemu-args as domxml-to-native runs, plan as the hook's prepare runs)."""
        try:
            plan_xml(xml, self.host, name)
            plan = Side(True)
        except HugexmlError as exc:
            plan = Side(False, str(exc), error=exc)
        try:
            mem = qemuargs.from_xml(xml, self.env, self.host, name)
            args = qemurender.argv(mem, objects=True)
            qa = Side(True, part=memory_part(args))
        except HugexmlError as exc:
            qa = Side(False, str(exc), error=exc)
        return qa, plan

    # --- one domain -----------------------------------------------------------------
    def compare(self, name: str, xml: str, rewrites: bool = True) -> Result:
        lv = self.native(xml)
        qa, plan = self.ours(xml.encode(), name)
        res = Result(name, xml, lv, qa)
        kinds = res.kinds
        if lv.ok and not qa.ok:
            if isinstance(qa.error, UnsupportedPageSize) and memfd_backed(xml):
                kinds.append(MEMFD_SIZE)
            else:
                kinds.append(f"hugexml refuses, libvirt accepts: {shape(qa.message)}")
        elif qa.ok and not lv.ok:
            kinds.append(f"libvirt refuses, hugexml accepts: {shape(lv.message)}")
        elif lv.ok and qa.ok:
            kinds.extend(diff_parts(lv.part, qa.part))
        if plan.ok != qa.ok and not (not qa.ok and NUMAD in lv.message and plan.ok):
            kinds.append(f"plan {'accepts' if plan.ok else 'refuses'} what qemu-args "
                         f"{'accepts' if qa.ok else 'refuses'}: "
                         f"{shape(plan.message or qa.message)}")
        if rewrites:
            kinds.extend(self.check_rewrites(name, xml))
        return res

    def check_rewrites(self, name: str, xml: str) -> list[str]:
        """``rewrite --page-size`` 2M, 1G, auto of the domain without its hugepages: libvirt
        must accept the output (domxml-to-native and define) unless hugexml refused it."""
        kinds = []
        base = strip_hugepages(xml)
        if base is None:
            return []
        seen: set[bytes] = set()
        for size in REWRITE_SIZES:
            label = "auto" if size is Pick.AUTO else f"{size // 1024}M" if size < 1048576 else "1G"
            try:
                out = rewrite_xml(base, page_size=size, host=self.host, source=name).data
            except HugexmlError as exc:
                if exc.exit_code != 2:
                    kinds.append(f"rewrite {label}: exit {exc.exit_code}: {shape(str(exc))}")
                self.rewrites["refused"] += 1
                continue
            if out in seen:
                self.rewrites["same as another size"] += 1
                continue
            seen.add(out)
            self.rewrites["checked"] += 1
            text = out.decode()
            native = self.native(text)
            if not native.ok and NUMAD in native.message:
                # a pretend start asks no numad; hugexml's qemu-args, run the same way, must
                # refuse the output too
                qa, _plan = self.ours(out, name)
                if not qa.ok and NUMAD in qa.message:
                    native = Side(True)
            if not native.ok:
                kinds.append(f"rewrite {label} output refused by domxml-to-native: "
                             f"{shape(native.message)}")
            defined = self.define(text)
            if defined is not None:
                kinds.append(f"rewrite {label} output refused by define: {shape(defined)}")
        return kinds


def diff_parts(lv: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    kinds = []
    if lv["m"] != ours["m"]:
        kinds.append("-m differs")
    lobj, oobj = lv["objects"], ours["objects"]
    for oid in sorted(set(lobj) | set(oobj)):
        a, b = lobj.get(oid), oobj.get(oid)
        if a is None or b is None:
            what = (b or a or {}).get("qom-type")
            kinds.append(f"object {what} only in {'hugexml' if a is None else 'libvirt'}")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                kinds.append(f"{a['qom-type']} '{key}' differs")
    return kinds


def memfd_backed(xml: str) -> bool:
    try:
        root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return False
    return root.findtext("memoryBacking/source[@type]") is not None and \
        root.find("memoryBacking/source").get("type") == "memfd"


def strip_hugepages(xml: str) -> Optional[bytes]:
    """The domain without <memoryBacking><hugepages> (None: not readable XML)."""
    try:
        root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return None
    for el in root.findall("memoryBacking/hugepages"):
        el.getparent().remove(el)
    return etree.tostring(root)
