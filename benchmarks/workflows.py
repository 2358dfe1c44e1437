"""Workflows: the scheduling overhead of a map item, on the offline model with no latency.

A map of N items (``Task(map_over=...)``, process parallel, the default SQLite store) against the
floor of the same N tasks declared as independent tasks of a parallel crew: the framework's own
cost per task, which every map item pays too. Both crews spend nothing waiting (``OfflineLLM``,
latency 0), so the difference per item is what the map adds: recording the list, adding N tasks
to the running graph, and gathering their outputs. The theoretical bound of that difference is 0.

Printed per item: the map's wall time, the plain tasks' wall time, the map's overhead over them,
and CPU time per item (less disturbed by other load on the machine); the first kickoff of this
process and the median of warm ones. Goal: the overhead of a map item under 0.2 ms.

Run: ``python benchmarks/workflows.py [--items 1000] [--repeats 7] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, median, table

GOAL_MS_PER_ITEM = 0.2


def crews(items: int) -> tuple[object, object]:
    from crewflow import Agent, Crew, Task
    from crewflow.llm.offline import OfflineLLM

    agent = Agent(role="Reader", goal="Read", llm=OfflineLLM(latency=0))
    listing = Task("list the documents", name="docs", context=[])
    mapped = Task(
        "Summarise document {item}",
        name="summarise",
        context=[listing],
        map_over=lambda outputs: list(range(items)),
    )
    mapped_crew = Crew(tasks=[listing, mapped], agents=[agent], process="parallel", name="map")
    plain = [Task("list the documents", name="docs", context=[])]
    plain += [
        Task(f"Summarise document {n}", name=f"summarise[{n}]", context=[plain[0]])
        for n in range(items)
    ]
    plain_crew = Crew(tasks=plain, agents=[agent], process="parallel", name="plain")
    return mapped_crew, plain_crew


def timed(crew: object) -> tuple[float, float]:
    """One ``kickoff_sync``: (wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    crew.kickoff_sync()  # type: ignore[attr-defined]
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    add_json_option(parser)
    args = parser.parse_args()
    os.environ.setdefault("CREWFLOW_HOME", tempfile.mkdtemp(prefix="crewflow-bench-"))
    mapped, plain = crews(args.items)
    first_map = timed(mapped)
    first_plain = timed(plain)
    runs: dict[str, list[tuple[float, float]]] = {"map": [], "plain": []}
    for _ in range(args.repeats):  # alternated: the machine's drift falls on both alike
        runs["map"].append(timed(mapped))
        runs["plain"].append(timed(plain))
    per = 1000 / args.items  # seconds per crew -> ms per item

    def ms(values: list[tuple[float, float]], index: int) -> float:
        return median([value[index] for value in values]) * per

    warm_map, warm_plain = ms(runs["map"], 0), ms(runs["plain"], 0)
    cpu_map, cpu_plain = ms(runs["map"], 1), ms(runs["plain"], 1)
    overhead, cpu_overhead = warm_map - warm_plain, cpu_map - cpu_plain
    rows = [
        [
            "first kickoff",
            first_map[0] * per,
            first_plain[0] * per,
            (first_map[0] - first_plain[0]) * per,
            "-",
        ],
        ["warm (median)", warm_map, warm_plain, overhead, cpu_overhead],
    ]
    print(
        table(
            f"a map of {args.items} items vs {args.items} plain tasks (ms per item; "
            f"goal: overhead < {GOAL_MS_PER_ITEM} ms; bound 0)",
            ["kickoff", "map", "plain tasks (floor)", "overhead", "overhead (CPU)"],
            rows,
        )
    )
    print(f"ratio to the floor (map / plain tasks, warm): {warm_map / warm_plain:.3f}")
    figures = Figures("workflows")
    figures.add("map1000.item_ms", warm_map)
    figures.add("map1000.overhead_ms_per_item", max(overhead, 0.0))
    figures.add("map1000.ratio_to_floor", warm_map / warm_plain)
    figures.add("map1000.first_kickoff_s", first_map[0])
    figures.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
