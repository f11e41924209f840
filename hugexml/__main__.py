from __future__ import annotations

from hugexml.cli import run

run()
