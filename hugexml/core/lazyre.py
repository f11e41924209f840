"""Regular expressions compiled on first use, not at import.

A module-level ``re.compile`` costs 0.1-0.5 ms at import, whether the process ever needs the
pattern or not; the hook's and the CLI's paths import modules with dozens of them.
``pattern(...)`` returns an object used exactly like a compiled pattern (``.match``,
``.fullmatch``, ``.search``, ``.sub``, ``.finditer``, ...) that compiles itself the first
time one of those is called.
"""
from __future__ import annotations

import re

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Union


class LazyPattern:
    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: Union[str, bytes], flags: int = 0) -> None:
        self._source, self._flags = source, flags
        self._compiled: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._compiled is None:
            self._compiled = re.compile(self._source, self._flags)
        return getattr(self._compiled, name)


def pattern(source: Union[str, bytes], flags: int = 0) -> Any:
    """A pattern compiled when first used (typed as ``Any``: a ``re.Pattern`` in use)."""
    return LazyPattern(source, flags)
