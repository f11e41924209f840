from __future__ import annotations

from hugexml.cli.main import run

run()
