"""How long importing crewflow's main names takes, and that it loads no heavy SDK.

Run: ``python benchmarks/import_time.py [--json PATH]`` (goal: <= 0.20 s, aim 0.15 s; for scale,
``import crewai`` takes 2.9 s on this machine). Each measurement is a fresh interpreter, timed
inside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, median, table

HEAVY = ("openai", "litellm", "networkx", "rich", "typer", "structlog", "httpx")
# What a script starts with. (``import crewflow`` alone loads each name on first use, so it
# says little; the names a crew needs are what the goal is about.)
IMPORT = "from crewflow import Agent, Crew, Task"
# What a script does next: first construction builds the specs' schemas and loads networkx.
FIRST_CREW = "Crew(tasks=[Task('x', agent=Agent(role='r', goal='g'))])"


def probe(statement: str) -> str:
    return (
        "import sys, time, json; t = time.perf_counter(); "
        f"{statement}; d = time.perf_counter() - t; "
        f"print(json.dumps([d, [m for m in {HEAVY!r} if m in sys.modules]]))"
    )


def measure(statement: str, runs: int = 7) -> tuple[float, list[str]]:
    """Median seconds of ``statement`` in fresh interpreters, and the heavy modules it loaded."""
    times: list[float] = []
    heavy: list[str] = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", probe(statement)], capture_output=True, text=True, check=True
        ).stdout
        seconds, loaded = json.loads(out)
        times.append(seconds)
        heavy = loaded
    return median(times), heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_json_option(parser)
    args = parser.parse_args()
    seconds, heavy = measure(IMPORT)
    both, loaded = measure(f"{IMPORT}; {FIRST_CREW}")
    print(
        table(
            "import time (median of 7 fresh interpreters)",
            ["what", "seconds", "goal", "ratio to goal", "heavy modules loaded"],
            [
                [IMPORT, seconds, 0.20, seconds / 0.20, ", ".join(heavy) or "none"],
                ["... then build a first crew", both, "-", "-", ", ".join(loaded) or "none"],
            ],
        )
    )
    figures = Figures("import_time")
    figures.add("main_names.import_s", seconds)
    figures.add("main_names.heavy_modules", len(heavy))
    figures.add("first_crew.import_and_build_s", both)
    figures.write(args.json)
    return 1 if heavy else 0


if __name__ == "__main__":
    raise SystemExit(main())
