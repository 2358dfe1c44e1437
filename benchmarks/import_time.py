"""How long ``import crewflow`` takes, and that it loads no heavy SDK.

Run: ``python benchmarks/import_time.py`` (goal: <= 0.20 s, aim 0.15 s; for scale, ``import
crewai`` takes 2.9 s on this machine). Each measurement is a fresh interpreter, timed inside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, table

HEAVY = ("openai", "litellm", "networkx", "rich", "typer", "structlog", "httpx")
PROBE = (
    "import sys, time, json; t = time.perf_counter(); import crewflow; "
    "d = time.perf_counter() - t; "
    f"print(json.dumps([d, [m for m in {HEAVY!r} if m in sys.modules]]))"
)


def measure(runs: int = 7) -> tuple[float, list[str]]:
    """Median seconds of ``import crewflow`` in fresh interpreters, and heavy modules loaded."""
    times: list[float] = []
    heavy: list[str] = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
        ).stdout
        seconds, loaded = json.loads(out)
        times.append(seconds)
        heavy = loaded
    return median(times), heavy


def main() -> int:
    seconds, heavy = measure()
    print(
        table(
            "import crewflow (median of 7 fresh interpreters)",
            ["seconds", "goal", "ratio to goal", "heavy modules loaded"],
            [[seconds, 0.20, seconds / 0.20, ", ".join(heavy) or "none"]],
        )
    )
    return 1 if heavy else 0


if __name__ == "__main__":
    raise SystemExit(main())
