"""Regenerate the tables of docs/reliability.md from fresh runs of the reliability suite.

    python scripts/reliability.py            # rewrite the tables
    python scripts/reliability.py --check    # exit 1 when an outcome differs from the page

Timing columns are rewritten but never compared. The sections live in
``tests/reliability/generate.py`` (``SECTIONS``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reliability.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
