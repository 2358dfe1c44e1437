"""PostgreSQL store: what recording a crew's tasks in PostgreSQL costs, beside SQLite and none.

Two shapes on ``OfflineLLM(latency=0)`` (nothing waits on a model, so the differences are all
recording): a 200-task fan-out (``parallel``: every checkpoint is written while others are in
flight) and a 50-task chain (``sequential``: each task waits for the previous one's checkpoint,
so each write's round trip is on the critical path). Each shape runs with ``store=None``, a
`SQLiteStore` in a temporary directory and a `PostgresStore` on a throw-away local server
(``initdb`` in a temporary directory, on a random loopback port, as ``tests/postgres.py`` makes
it: ``fsync`` off, so the figures are the store's own cost, not the disk's), alternately, and
reports the median ms per task of each, and the paired median overhead over no store.

Run: ``python benchmarks/postgres_store.py [--repeats 7] [--json PATH]``. Needs PostgreSQL's
server binaries (``apt-get install postgresql``) and ``pip install 'crewflow[postgres]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Figures, add_json_option, median, table

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewflow import Task

SHAPES = {"fan-out": ("parallel", 200), "chain": ("sequential", 50)}


def paired(slow: list[float], fast: list[float]) -> float:
    """The median of the differences within each round: a slow moment hits both of a pair."""
    return median([one - other for one, other in zip(slow, fast, strict=True)])


async def measure(url: str, folder: Path, repeats: int, figures: Figures) -> list[list[object]]:
    from crewflow import Agent, Crew, Task
    from crewflow.llm.offline import OfflineLLM
    from crewflow.store import SQLiteStore
    from crewflow.store.postgres import PostgresStore

    agent = Agent(role="Worker", goal="Do one step", llm=OfflineLLM(latency=0))
    rows: list[list[object]] = []
    for shape, (process, tasks) in SHAPES.items():
        make: Callable[[int], Task] = (
            (lambda i: Task(f"Item {i}", name=f"item_{i}", context=[]))
            if process == "parallel"
            else (lambda i: Task(f"Step {i}", name=f"step_{i}"))
        )
        crew_tasks = [make(i) for i in range(tasks)]
        stores: dict[str, Any] = {
            "none": None,
            "sqlite": SQLiteStore(folder / f"{shape}.db"),
            "postgres": PostgresStore(url),
        }
        crews = {
            name: Crew(tasks=crew_tasks, agents=[agent], process=process, store=store)
            for name, store in stores.items()
        }
        times: dict[str, list[float]] = {name: [] for name in crews}
        for crew in crews.values():  # warm up each (connections, schema, caches)
            await crew.kickoff()
        for _ in range(repeats):
            for name, crew in crews.items():  # alternate, so that drift hits each alike
                started = time.perf_counter()
                result = await crew.kickoff()
                times[name].append(time.perf_counter() - started)
                assert len(result.outputs) == tasks
        for store in stores.values():
            if store is not None:
                await store.close()
        per_task = {name: median(found) / tasks * 1e3 for name, found in times.items()}
        extra = {
            name: paired(times[name], times["none"]) / tasks * 1e3
            for name in ("sqlite", "postgres")
        }
        case = f"{shape.replace('-', '')}{tasks}"
        rows.append(
            [
                f"{shape} ({process}, {tasks} tasks)",
                per_task["none"],
                per_task["sqlite"],
                per_task["postgres"],
                extra["sqlite"],
                extra["postgres"],
            ]
        )
        for name, value in per_task.items():
            figures.add(f"{case}.{name}_ms_per_task", value)
        figures.add(f"{case}.postgres_overhead_ms_per_task", extra["postgres"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="kickoffs per store and shape")
    add_json_option(parser)
    args = parser.parse_args()
    from tests import postgres

    figures = Figures("postgres_store")
    with postgres.server() as server, tempfile.TemporaryDirectory() as folder:
        url = postgres.fresh_database(server)
        rows = asyncio.run(measure(url, Path(folder), args.repeats, figures))
    print(
        table(
            f"recording, OfflineLLM(latency=0), median ms per task of {args.repeats} kickoffs "
            "each, alternating",
            ["shape", "no store", "SQLite", "PostgreSQL", "SQLite extra", "PostgreSQL extra"],
            rows,
        )
    )
    figures.write(args.json)


if __name__ == "__main__":
    main()
