"""What ``rewrite``, ``apply`` and the migrate/restore filter must not leave behind: XML that
libvirt 9.0 refuses.

Two things in ``<memoryBacking>`` make libvirt refuse any ``<hugepages>``
(qemu_validate.c ``qemuValidateDomainDefMemory``): ``<allocation mode='ondemand'/>`` and
``<source type='anonymous'/>``. ``resolve`` changes them only when asked
(``--drop-ondemand`` removes the mode, ``--memfd`` makes the source memfd) and otherwise
refuses in one line naming each element and the option that resolves it. ``accepted`` is
the last step of every rewrite: the output must read and plan as libvirt reads and checks
it (``domxml``, ``validate``, the host's page sizes and nodes), or it is not written.
"""
from __future__ import annotations

from typing import Any, Optional

from hugexml.core.errors import InvalidDomain
from hugexml.core.model import Domain, HostInfo

# (what the domain has, libvirt's refusal, the option, what the option does)
ONDEMAND = ("<allocation mode='ondemand'/>", "hugepages are not allowed with memory "
            "allocation ondemand", "--drop-ondemand", "removes it")
ANONYMOUS = ("<source type='anonymous'/>", "hugepages are not allowed with anonymous memory "
             "source", "--memfd", "replaces it with memfd")


def resolve(doc: Any, domain: Domain, hugepages_after: bool, memfd: bool,
            drop_ondemand: bool, notes: list[str]) -> None:
    """Refuse, or (when asked) edit ``doc``, for what conflicts with the hugepages the
    rewrite leaves (``hugepages_after``). The memfd source itself is written by the
    caller."""
    if not hugepages_after:
        return
    conflicts = []
    if domain.allocation == "ondemand" and not drop_ondemand:
        conflicts.append(ONDEMAND)
    if domain.source == "anonymous" and not memfd:
        conflicts.append(ANONYMOUS)
    if conflicts:
        raise InvalidDomain(domain=domain.name, reason="; ".join(
            f"<memoryBacking>{have} does not allow hugepages (libvirt: '{rule}'): {option} "
            f"{does}" for have, rule, option, does in conflicts))
    if domain.allocation == "ondemand":
        drop_ondemand_allocation(doc)
        notes.append("<allocation mode='ondemand'/> dropped: libvirt allocates hugepages "
                     "when the guest starts")
    if domain.source == "anonymous":
        notes.append("<source type='anonymous'/> replaced with memfd")


def drop_ondemand_allocation(doc: Any) -> None:
    """Remove mode='ondemand' from <allocation>; the element too when nothing else is left."""
    backing = doc.backing()
    element = backing.find("allocation")
    span = doc.span(element)
    if set(element.attrib) == {"mode"} and not span.children and not len(element):
        doc.splice.remove_element(span)
    else:
        doc.splice.remove_attribute(span, "mode")


def accepted(data: bytes, host: Optional[HostInfo], source: str) -> None:
    """Raise the InvalidDomain libvirt's rules give ``data`` (on ``host`` when given)."""
    from hugexml.planning.plan import make_plan
    from hugexml.xml.domxml import load_domain

    make_plan(load_domain(data, source), host)
