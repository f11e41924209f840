"""node-exporter textfile output (Prometheus text exposition format 0.0.4).

``render(status, usage)`` turns a ``hugexml status --json`` dict (per host node and page
size: pool counters, ledger claims, what hugexml added, what could still be allocated) and
the per-guest usage from ``hugexml.usage`` into one text document with HELP and TYPE lines
for every family. ``write_textfile(path, text)`` replaces the file atomically, so the
node-exporter textfile collector never reads half a file. Pure except for the write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hugexml.errors import HostError

PREFIX = "hugexml"


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    key: str  # field in a pool row


# Per host node and page size. Everything is a gauge: pools go up and down.
POOL_FAMILIES: tuple[Family, ...] = (
    Family("hugepages_pages", "Hugepages in the pool of a host node (nr_hugepages).", "total"),
    Family("hugepages_free_pages", "Free hugepages in the pool of a host node.", "free"),
    Family(
        "hugepages_reserved_pages",
        "Hugepages reserved but not yet faulted in. The kernel counts them per page size "
        "only: per node this is the most the node could hold.",
        "reserved",
    ),
    Family("hugepages_surplus_pages", "Surplus (overcommitted) hugepages.", "surplus"),
    Family(
        "hugepages_claimed_pages", "Hugepages claimed in the hugexml ledger by guests.", "claimed"
    ),
    Family(
        "hugepages_added_pages",
        "Hugepages hugexml added to the pool for guests.",
        "added_by_hugexml",
    ),
    Family(
        "hugepages_allocatable_pages",
        "Hugepages the kernel could still allocate, predicted from free memory blocks.",
        "predicted_allocatable",
    ),
)
GUEST_FAMILY = Family("guest_hugepages_pages", "Hugepages a running guest maps.", "pages")
MISMATCH_FAMILY = Family(
    "guest_hugepages_mismatch",
    "1 when a guest's mapped hugepages differ from its ledger claim or its plan.",
    "mismatch",
)

# Field aliases accepted in a status pool row (status --json may spell them differently).
_ALIASES: dict[str, tuple[str, ...]] = {
    "total": ("total", "nr", "nr_hugepages"),
    "free": ("free", "free_hugepages"),
    "reserved": ("reserved", "reserved_at_most", "resv", "resv_hugepages"),
    "surplus": ("surplus", "surplus_hugepages"),
    "claimed": ("claimed", "claimed_pages"),
    "added_by_hugexml": ("added_by_hugexml", "added", "added_pages"),
    "predicted_allocatable": ("predicted_allocatable", "allocatable", "allocatable_pages"),
}


def escape_label(value: str) -> str:
    """Label values: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


def pool_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten the status dict into rows with node, page_size_kib and the counters.

    Accepted shapes: ``{"pools": [{node, page_size_kib, ...}]}`` or
    ``{"nodes": [{"node": N, "sizes"|"pools": [{page_size_kib, ...}]}]}``.
    """
    rows: list[dict[str, Any]] = []
    if isinstance(status.get("pools"), list):
        for row in status["pools"]:
            rows.append(dict(row))
    nodes = status.get("nodes")
    if isinstance(nodes, list):
        for entry in nodes:
            if not isinstance(entry, Mapping):
                continue
            sizes = entry.get("sizes", entry.get("pools", []))
            for row in sizes or []:
                merged = dict(row)
                merged.setdefault("node", entry.get("node"))
                rows.append(merged)
    out = []
    for row in rows:
        size = row.get("page_size_kib", row.get("size_kib"))
        if row.get("node") is None or size is None:
            continue
        norm: dict[str, Any] = {"node": int(row["node"]), "page_size_kib": int(size)}
        for key, names in _ALIASES.items():
            for name in names:
                if row.get(name) is not None:
                    norm[key] = row[name]
                    break
        out.append(norm)
    out.sort(key=lambda r: (r["node"], r["page_size_kib"]))
    return out


def _guest_name(item: Any) -> str:
    return str(item["name"] if isinstance(item, Mapping) else item.name)


def _guest_get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def render(status: Mapping[str, Any], usage: Iterable[Any] = ()) -> str:
    """The textfile for node-exporter. ``usage``: GuestUsage objects or their JSON dicts."""
    lines: list[str] = []
    rows = pool_rows(status)
    for fam in POOL_FAMILIES:
        samples = [r for r in rows if isinstance(r.get(fam.key), (int, float))]
        if not samples:
            continue
        name = f"{PREFIX}_{fam.name}"
        lines.append(f"# HELP {name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {name} gauge")
        for r in samples:
            labels = _labels((("node", str(r["node"])), ("page_size_kib", str(r["page_size_kib"]))))
            lines.append(f"{name}{labels} {format_value(r[fam.key])}")
    guests = sorted(usage, key=_guest_name)
    if guests:
        name = f"{PREFIX}_{GUEST_FAMILY.name}"
        lines.append(f"# HELP {name} {escape_help(GUEST_FAMILY.help)}")
        lines.append(f"# TYPE {name} gauge")
        for g in guests:
            for node, size_kib, pages in _mapped_triples(_guest_get(g, "mapped")):
                labels = _labels(
                    (
                        ("guest", _guest_name(g)),
                        ("node", str(node)),
                        ("page_size_kib", str(size_kib)),
                    )
                )
                lines.append(f"{name}{labels} {format_value(pages)}")
        name = f"{PREFIX}_{MISMATCH_FAMILY.name}"
        lines.append(f"# HELP {name} {escape_help(MISMATCH_FAMILY.help)}")
        lines.append(f"# TYPE {name} gauge")
        for g in guests:
            flagged = bool(_guest_get(g, "mismatches"))
            lines.append(f"{name}{_labels((('guest', _guest_name(g)),))} {format_value(flagged)}")
    return "\n".join(lines) + "\n" if lines else ""


def _mapped_triples(mapped: Any) -> list[tuple[int, int, int]]:
    """``{(node, size_kib): pages}`` or the JSON list ``[{node, page_size_kib, pages}]``."""
    out: list[tuple[int, int, int]] = []
    if isinstance(mapped, Mapping):
        for (node, size_kib), pages in mapped.items():
            out.append((int(node), int(size_kib), int(pages)))
    elif mapped:
        for row in mapped:
            out.append((int(row["node"]), int(row["page_size_kib"]), int(row["pages"])))
    return sorted(out)


def write_textfile(path: str, text: str) -> None:
    """Replace ``path`` atomically (node_exporter never reads half a file)."""
    from hugexml.fsutil import write_atomic

    try:
        write_atomic(path, text.encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise HostError(path=path, reason=f"cannot write metrics: {exc.strerror or exc}") from exc
