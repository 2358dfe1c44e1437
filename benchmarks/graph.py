"""Graph work alone: the task graph's share of construction and of a run's dispatcher, 1k-10k tasks.

The same random DAGs as ``scale.py`` (each task depends on 1-3 earlier ones), no run, no store:

- construction: ``TaskGraph(tasks)``, what ``Crew(tasks=..., process="parallel")`` builds (the
  ``Task`` objects are made before the clock starts);
- sequential: ``TaskGraph`` of as many tasks without ``context``, then ``chain_undeclared()``,
  what a sequential crew's construction adds;
- dispatch start: ``crew.graph.copy()`` and ``remaining_paths()``, the graph work of each kickoff
  before the first task starts (the dispatcher ranks every task at the start of ``run_ready()``);
- add 10: the same after the run adds a plan of 10 tasks (``add_tasks``: the dispatcher ranks
  every task again);
- topological order and critical path, for reference (no run calls them).

Each figure is the median of ``--repeats`` runs, in milliseconds.

Run: ``python benchmarks/graph.py [--sizes 1000,2000,5000,10000] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, table

if TYPE_CHECKING:
    from collections.abc import Callable


def random_deps(size: int, seed: int) -> list[list[int]]:
    """As ``scale.py``: each task depends on 1-3 tasks chosen among the earlier ones."""
    rng = random.Random(seed)
    return [rng.sample(range(i), min(i, rng.choice((1, 2, 3)))) for i in range(size)]


def ms(call: Callable[[], object], repeats: int, after: Callable[[], None] | None = None) -> float:
    """Median milliseconds of ``call`` (``after``, when given, runs first, off the clock)."""
    times = []
    for _ in range(repeats):
        if after is not None:
            after()
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return median(times) * 1e3


def measure(size: int, seed: int, repeats: int) -> list[float]:
    """The figures of one size, in the order of the table's columns."""
    from crewflow import Agent, Task
    from crewflow.graph import TaskGraph

    agent = Agent(role="Worker", goal="Do one step")
    tasks: list[Task] = []
    for index, wanted in enumerate(random_deps(size, seed)):
        context = [tasks[d] for d in sorted(wanted)]
        tasks.append(Task(f"Step {index}", name=f"s{index}", context=context))
    loose = [Task(f"Step {index}", name=f"s{index}") for index in range(size)]
    plan = [
        Task(f"Plan step {index}", name=f"plan.{index}", context=[tasks[-1 - index]])
        for index in range(10)
    ]
    graph = TaskGraph(tasks, agents=[agent])

    runs = [graph.copy()]

    def dispatch_start() -> None:
        runs[0] = graph.copy()
        runs[0].remaining_paths({})

    def add_ten() -> None:
        runs[0]._extend(plan)
        runs[0].remaining_paths({})

    return [
        ms(lambda: TaskGraph(tasks, agents=[agent]), repeats),
        ms(lambda: TaskGraph(loose, agents=[agent]).chain_undeclared(), repeats),
        ms(dispatch_start, repeats),
        ms(add_ten, repeats, after=dispatch_start),
        ms(graph.topological_order, repeats),
        ms(graph.critical_path, repeats),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rows = [
        [size, *measure(size, args.seed, args.repeats)]
        for size in (int(s) for s in args.sizes.split(","))
    ]
    print(
        table(
            f"graph: random DAG, ~2 deps/task, no run; ms, median of {args.repeats}",
            [
                "tasks",
                "construction",
                "sequential",
                "dispatch start",
                "add 10",
                "topological order",
                "critical path",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
