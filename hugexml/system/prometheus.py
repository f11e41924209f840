"""node-exporter textfile output, through prometheus_client (the ``metrics`` extra).

``render(status, usage)`` turns a ``hugexml status --json`` dict (per host node and page
size: pool counters, ledger claims and keeps, what hugexml added, what could still be
allocated) and the per-guest usage from ``hugexml.host.usage`` into gauge families of a
``CollectorRegistry`` and returns their exposition text (``generate_latest``).
``write_textfile(path, text)`` writes that text with ``write_to_textfile`` (a temp file
renamed over ``path``), so the textfile collector never reads half a file.

Status fields are read tolerantly: a pool row may spell a counter several ways, rows may
come flat (``pools``) or per node (``nodes[].sizes``), and a counter a row lacks is left
out rather than invented. prometheus_client is imported only here, only when called: the
hook never imports this module, and without the extra ``status --prometheus`` fails with
one line naming what to install.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from hugexml.core.errors import HostError, MissingDependency
from hugexml.core.typed import Typed

PREFIX = "hugexml"
POOL_LABELS = ("node", "page_size_kib")


class Family(Typed, frozen=True):
    name: str
    help: str
    key: str  # normalized field of a pool row
    aliases: tuple[str, ...]  # how status --json may spell it, first match wins


# Per host node and page size. Everything is a gauge: pools go up and down.
POOL_FAMILIES: tuple[Family, ...] = (
    Family("hugepages_pages", "Hugepages in the pool of a host node (nr_hugepages).",
           "total", ("total", "nr", "nr_hugepages")),
    Family("hugepages_free_pages", "Free hugepages in the pool of a host node.",
           "free", ("free", "free_hugepages")),
    Family("hugepages_reserved_pages",
           "Hugepages reserved but not yet faulted in. The kernel counts them per page size "
           "only: per node this is the most the node could hold.",
           "reserved", ("reserved", "reserved_at_most", "resv", "resv_hugepages")),
    Family("hugepages_surplus_pages", "Surplus (overcommitted) hugepages.",
           "surplus", ("surplus", "surplus_hugepages")),
    Family("hugepages_claimed_pages", "Hugepages claimed in the hugexml ledger by guests.",
           "claimed", ("claimed", "claimed_pages")),
    Family("hugepages_kept_pages",
           "Hugepages hugexml keeps in the pool after their guest stopped, for restarts "
           "([release] keep_for window, policy = keep, or the guest's own).",
           "kept", ("kept", "kept_pages")),
    Family("hugepages_kept_until_seconds",
           "When the soonest keep window of the pool's kept pages ends (Unix time); absent "
           "when none ends.",
           "kept_until", ("kept_until",)),
    Family("hugepages_added_pages", "Hugepages hugexml added to the pool for guests.",
           "added", ("added_by_hugexml", "added", "added_pages")),
    Family("hugepages_baseline_pages",
           "The pool size the admin had before hugexml first changed it.",
           "baseline", ("baseline", "baseline_pages")),
    Family("hugepages_allocatable_pages",
           "Hugepages the kernel could still allocate, predicted from free memory blocks.",
           "allocatable", ("predicted_allocatable", "allocatable", "allocatable_pages")),
)
MISMATCHED_FAMILY = Family(
    "hugepages_mismatched_guests",
    "Running guests that map or claim pages of this node and size and whose mapped "
    "hugepages differ from their ledger claim or their plan.",
    "mismatched", ())
GUEST_FAMILY = Family("guest_hugepages_pages", "Hugepages a running guest maps.", "pages", ())
MISMATCH_FAMILY = Family(
    "guest_hugepages_mismatch",
    "1 when a guest's mapped hugepages differ from its ledger claim or its plan.",
    "mismatch", ())


def metric_names() -> list[str]:
    """Every metric name render() can write (the dashboard's test checks against it)."""
    fams = (*POOL_FAMILIES, MISMATCHED_FAMILY, GUEST_FAMILY, MISMATCH_FAMILY)
    return [f"{PREFIX}_{f.name}" for f in fams]


def _client() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.parser
    except ImportError:
        raise MissingDependency(
            feature="--prometheus", package="prometheus_client",
            install="pip install 'hugexml[metrics]', or dnf install python3-prometheus_client",
        ) from None
    return prometheus_client


def _count(value: Any) -> int | None:
    """A counter from status: an int (not a bool), else absent."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def pool_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The status dict as rows ``{node, page_size_kib, <family keys present>}``.

    Accepted shapes: ``{"pools": [{node, size_kib|page_size_kib, ...}]}`` or
    ``{"nodes": [{"node": N, "sizes"|"pools": [{page_size_kib, ...}]}]}``. A top-level
    ``kept`` mapping of ``"node:size_kib"`` to pages fills rows that carry no ``kept``.
    """
    raw: list[dict[str, Any]] = []
    if isinstance(status.get("pools"), list):
        raw += [dict(row) for row in status["pools"] if isinstance(row, Mapping)]
    if isinstance(status.get("nodes"), list):
        for entry in status["nodes"]:
            if not isinstance(entry, Mapping):
                continue
            for row in entry.get("sizes", entry.get("pools")) or []:
                if isinstance(row, Mapping):
                    raw.append({"node": entry.get("node"), **row})
    kept: Mapping[str, Any] = status["kept"] if isinstance(status.get("kept"), Mapping) else {}
    out = []
    for row in raw:
        node = _count(row.get("node"))
        size = _count(row.get("page_size_kib", row.get("size_kib")))
        if node is None or size is None:
            continue
        norm: dict[str, Any] = {"node": node, "page_size_kib": size}
        for fam in POOL_FAMILIES:
            value = next((row[a] for a in fam.aliases if _count(row.get(a)) is not None), None)
            if value is not None:
                norm[fam.key] = value
        if "kept" not in norm and _count(kept.get(f"{node}:{size}")) is not None:
            norm["kept"] = kept[f"{node}:{size}"]
        out.append(norm)
    out.sort(key=lambda r: (r["node"], r["page_size_kib"]))
    return out


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _pages(mapped: Any) -> dict[tuple[int, int], int]:
    """``{(node, size_kib): pages}`` or the JSON list ``[{node, page_size_kib, pages}]``."""
    if isinstance(mapped, Mapping):
        return {(int(n), int(s)): int(p) for (n, s), p in mapped.items()}
    return {(int(r["node"]), int(r["page_size_kib"])): int(r["pages"]) for r in mapped or []}


def _family(client: Any, fam: Family, labels: Iterable[str]) -> Any:
    return client.core.GaugeMetricFamily(f"{PREFIX}_{fam.name}", fam.help, labels=list(labels))


def families(status: Mapping[str, Any], usage: Iterable[Any] = ()) -> list[Any]:
    """The gauge families of one status and usage; families without samples are left out."""
    client = _client()
    rows = pool_rows(status)
    out = []
    for fam in POOL_FAMILIES:
        gauge = _family(client, fam, POOL_LABELS)
        for r in rows:
            if fam.key in r:
                gauge.add_metric([str(r["node"]), str(r["page_size_kib"])], r[fam.key])
        out.append(gauge)
    guests = sorted(usage, key=lambda g: str(_get(g, "name")))
    flagged: dict[tuple[int, int], int] = {}
    mapped_fam = _family(client, GUEST_FAMILY, ("guest", *POOL_LABELS))
    flag_fam = _family(client, MISMATCH_FAMILY, ("guest",))
    for g in guests:
        name, mapped = str(_get(g, "name")), _pages(_get(g, "mapped"))
        bad = bool(_get(g, "mismatches"))
        for (node, size), pages in sorted(mapped.items()):
            mapped_fam.add_metric([name, str(node), str(size)], pages)
        flag_fam.add_metric([name], int(bad))
        for pool in set(mapped) | set(_pages(_get(g, "ledger"))):
            flagged[pool] = flagged.get(pool, 0) + int(bad)
    mismatched = _family(client, MISMATCHED_FAMILY, POOL_LABELS)
    pools = {(r["node"], r["page_size_kib"]) for r in rows} | set(flagged)
    for node, size in sorted(pools):
        mismatched.add_metric([str(node), str(size)], flagged.get((node, size), 0))
    out += [mismatched, mapped_fam, flag_fam]
    return [f for f in out if f.samples]


class _Families:
    """A collector that yields fixed families (the registry asks it once per exposition)."""

    def __init__(self, fams: list[Any]) -> None:
        self._fams = fams

    def collect(self) -> Iterable[Any]:
        return iter(self._fams)


def registry(status: Mapping[str, Any], usage: Iterable[Any] = ()) -> Any:
    client = _client()
    reg = client.CollectorRegistry(auto_describe=False)
    reg.register(_Families(families(status, usage)))
    return reg


def render(status: Mapping[str, Any], usage: Iterable[Any] = ()) -> str:
    """The textfile for node-exporter. ``usage``: GuestUsage objects or their JSON dicts."""
    return str(_client().generate_latest(registry(status, usage)).decode("utf-8"))


def write_textfile(path: str, text: str) -> None:
    """Write ``text`` (render's output) to ``path`` with prometheus_client's
    ``write_to_textfile``: parsed back into families, so only valid exposition text is
    written, then a temp file beside ``path`` renamed over it. Mode 0644."""
    client = _client()
    reg = client.CollectorRegistry(auto_describe=False)
    reg.register(_Families(list(client.parser.text_string_to_metric_families(text))))
    try:
        client.write_to_textfile(path, reg)
        os.chmod(path, 0o644)
    except OSError as exc:
        raise HostError(path=path, reason=f"cannot write metrics: {exc.strerror or exc}") from exc
