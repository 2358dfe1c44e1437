"""Run every benchmark, one after another: ``python benchmarks/run.py``.

Each prints its own table with its ratios to the theoretical bound and to the floor (the same
calls made by a bare ``AsyncOpenAI`` client), measured in the same run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "import_time.py",
    "cold_start.py",
    "overhead.py",
    "fanout.py",
    "dag.py",
    "adaptive.py",
    "scale.py",
    "graph.py",
    "rate.py",
    "store.py",
    "report.py",
    "workflows.py",
)


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"\n### {name}\n", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / name)], check=False).returncode
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
