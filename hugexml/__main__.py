from __future__ import annotations

import sys

from hugexml.cli import main

sys.exit(main())
