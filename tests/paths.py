"""Where the tests' data lives: one place, so every test module agrees.

The libvirt corpus (tests/data/libvirt-qemuxmlconf, see its SOURCE.md) is vendored from
../shared/testdata so a clean clone tests the same cases anywhere; HUGEXML_CORPUS
points the tests at another copy.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("HUGEXML_CORPUS", REPO / "tests" / "data" / "libvirt-qemuxmlconf"))
