"""What the kernel's hugepage files say, as typed records, and the arithmetic on them (pure):
``NodePool`` and ``GlobalPool`` (a pool's counters), the readers of ``meminfo`` and
``buddyinfo`` text, the buddy allocator's promise (``predict_allocatable``) and the pages
a shrink cannot free while surplus pages are in use (``surplus_short``). ``hugexml.host.sysfs``
reads the files; this module only reads text it is given.
"""
from __future__ import annotations

from hugexml.core.lazyre import pattern
from hugexml.core.typed import Typed
from hugexml.core.units import MAX_NODES, ascii_uint

# The kernel's counters are unsigned longs: a value beyond that is not a counter.
MAX_COUNTER = (1 << 64) - 1
MAX_BUDDY_ORDERS = 64  # x86 has 11 (orders 0-10); more columns than this is not buddyinfo

_BUDDY_LINE = pattern(r"Node\s+([0-9]+),\s*zone\s+(\S+)((?:\s+[0-9]+)*)\s*\Z")


class NodePool(Typed, frozen=True):
    """One node's pool of one page size, in pages (``nr`` includes surplus pages)."""

    nr: int
    free: int
    surplus: int

    @property
    def used(self) -> int:
        return self.nr - self.free

    @property
    def persistent(self) -> int:
        return self.nr - self.surplus


class GlobalPool(Typed, frozen=True):
    """The whole host's pool of one page size, in pages."""

    nr: int
    free: int
    resv: int
    surplus: int
    overcommit: int

    @property
    def unreserved_free(self) -> int:
        """Free pages nobody has reserved (mmap'd but not yet faulted in)."""
        return max(0, self.free - self.resv)


_MEMINFO_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_()")


def counter(text: str) -> int:
    """A kernel counter (unsigned long): ValueError for anything else."""
    value = ascii_uint(text)
    if value is None or value > MAX_COUNTER:
        raise ValueError(f"expected a count, read {text[:40]!r}")
    return value


def parse_meminfo(text: str) -> dict[str, int]:
    """``Key:  123 kB`` (or ``Node 0 Key: 123 kB``) lines -> {key: 123}. Values are kB,
    except the ``HugePages_*`` lines, which are page counts. Unreadable lines are skipped;
    a value no kernel counter can hold is a ValueError."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "Node" and ascii_uint(words[1]) is not None:
            del words[:2]
        if not (len(words) == 2 or (len(words) == 3 and words[2] == "kB")):
            continue
        key, value = words[0][:-1], words[1]
        if not (words[0].endswith(":") and _MEMINFO_KEY.issuperset(key) and key
                and value.isascii() and value.isdigit()):
            continue
        try:
            out[key] = counter(value)
        except ValueError:
            raise ValueError(f"{key}: value {value[:40]!r} is out of range") from None
    return out


def parse_buddyinfo(text: str) -> dict[int, dict[str, list[int]]]:
    """``Node 0, zone Normal 9 1080 ...`` -> {0: {"Normal": [9, 1080, ...]}}."""
    out: dict[int, dict[str, list[int]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _BUDDY_LINE.match(line.strip())
        if not m:
            raise ValueError(f"unexpected line {line.strip()[:60]!r}")
        node, columns = int(m.group(1)), m.group(3).split()
        if node >= MAX_NODES or len(columns) > MAX_BUDDY_ORDERS:
            raise ValueError(f"implausible line {line.strip()[:60]!r}")
        out.setdefault(node, {})[m.group(2)[:40]] = [counter(x) for x in columns]
    return out


def surplus_short(pool: NodePool, count: int, pools: GlobalPool) -> int:
    """Free pages a shrink of a node (now ``pool``) to ``count`` wants freed that the kernel
    keeps only because surplus pages are in use: it frees pool pages only down to the
    reserved and in-use ones, surplus pages in use counted too (set_max_huge_pages'
    ``min_count``), i.e. at most free - resv - surplus of them. Reserved pages are not
    counted: they stay, as the kernel means them to."""
    want = min(pool.persistent - count, pool.free)
    if want <= 0:
        return 0
    return max(0, min(want, pools.free - pools.resv) - (pools.free - pools.resv - pools.surplus))


def page_order(page_kib: int, base_page_kib: int = 4) -> int:
    """Buddy order of a page size: 2048 KiB on 4 KiB pages -> 9. ValueError if not a power."""
    if page_kib <= 0 or base_page_kib <= 0 or page_kib % base_page_kib:
        raise ValueError(f"{page_kib} KiB is not a multiple of the {base_page_kib} KiB page")
    ratio = page_kib // base_page_kib
    if ratio & (ratio - 1):
        raise ValueError(f"{page_kib} KiB is not a power-of-two multiple of {base_page_kib} KiB")
    return ratio.bit_length() - 1


def predict_allocatable(orders: list[int], page_kib: int, base_page_kib: int = 4) -> int:
    """How many ``page_kib`` pages free buddy blocks could give right now, without compaction.

    ``orders[k]`` is the number of free blocks of ``2**k`` base pages (one buddyinfo zone
    row). A block of order >= the page's order yields ``2**(order - needed)`` pages. A page
    larger than the largest order (1 GiB on x86, where MAX_ORDER blocks are 4 MiB) is built
    from a contiguous run of max-order blocks that buddyinfo cannot show: the answer is 0 —
    use ``HostGateway.allocatable_if_compacted`` for an upper bound. Zone watermarks can keep
    the last few blocks back, so this is an upper estimate too.
    """
    needed = page_order(page_kib, base_page_kib)
    if needed >= len(orders):
        return 0
    return sum(max(0, int(count)) << (order - needed)
               for order, count in enumerate(orders) if order >= needed)
