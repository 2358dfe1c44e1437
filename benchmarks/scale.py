"""Scale: random DAGs of 1k to 10k tasks on the offline model, process parallel, no HTTP.

Each task depends on 1-3 (2 on average) tasks chosen uniformly among the earlier ones; every
agent uses ``OfflineLLM(latency=0)``, whose answers are a few hundred characters. Nothing waits on
I/O, so all the time measured is crewflow's (plus the offline model's own small work):

- construction: ``Crew(tasks=...)`` (graph building and validation), per size; the ``Task``
  objects are made before the clock starts;
- run: one ``kickoff`` (median of a few), as seconds per task: the scheduling overhead per task
  (goal <= 0.15 ms at 10k, issue 13's, with the collector in its default state); also the
  process's CPU time per task, which other load on the machine disturbs less than the wall
  clock; and one ``kickoff_sync()`` (what a script calls),
  whose event loop returns the `CrewResult` itself (``run`` awaits ``kickoff`` inside one loop);
  the run again with the cyclic garbage collector off (``gc.disable()``: the part of the time
  that grows with the heap); and, for reference, an anyio task group running as many no-op
  tasks (the parallel process spawns one task per crew task: this part of the cost is anyio's);
- memory: the peak resident set of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``),
  in a fresh subprocess per size, after a warm-up crew has loaded every module; reported as the
  total peak (goal <= 120 MB at 10k) and as the growth over the warm process, per task;
- first kickoff: the warm-up crew's (50 tasks), the first kickoff of each fresh subprocess.

Linear growth shows as flat per-task columns from 1k to 10k.

Run: ``python benchmarks/scale.py [--sizes 1000,2000,5000,10000] [--repeats 3] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, median, table

# Issue 13's goals for the 10,000-task DAG (store on, collector in its default state); they were
# 0.2 ms and 300 MB before it.
GOAL_MS_PER_TASK = 0.15
GOAL_PEAK_MB = 120


def rss_mb() -> float:
    """Peak resident set of this process so far, in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_deps(size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [rng.sample(range(i), min(i, rng.choice((1, 2, 3)))) for i in range(size)]


def child(size: int, seed: int, repeats: int) -> dict[str, float]:
    """Measure one size in this (fresh) process."""
    from crewflow import Agent, Crew, Task
    from crewflow.llm.offline import OfflineLLM

    agent = Agent(role="Worker", goal="Do one step", llm=OfflineLLM(latency=0))

    def tasks_for(deps: list[list[int]]) -> list[Task]:
        tasks: list[Task] = []
        for index, wanted in enumerate(deps):
            context = [tasks[d] for d in sorted(wanted)]
            tasks.append(Task(f"Step {index}", name=f"s{index}", context=context))
        return tasks

    async def kickoff(crew: Crew) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        result = await crew.kickoff()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert len(result.outputs) == len(crew.tasks)
        return elapsed, cpu

    # Warm up: load every module the run needs, so the baseline is a warm process.
    warm = Crew(tasks=tasks_for(random_deps(50, seed)), agents=[agent], process="parallel")
    first_kickoff, _ = asyncio.run(kickoff(warm))
    del warm
    gc.collect()
    baseline = rss_mb()

    deps = random_deps(size, seed)
    tasks = tasks_for(deps)
    started = time.perf_counter()
    crew = Crew(tasks=tasks, agents=[agent], process="parallel")
    construction = time.perf_counter() - started

    async def runs() -> list[tuple[float, float]]:
        return [await kickoff(crew) for _ in range(repeats)]

    timings = asyncio.run(runs())
    peak = rss_mb()
    spawn = median([asyncio.run(anyio_spawn(size)) for _ in range(3)])
    gc.collect()
    gc.disable()  # how much of the run is the cyclic garbage collector, which grows with the heap
    try:
        no_gc = median([wall for wall, _ in asyncio.run(runs())])
    finally:
        gc.enable()
    started = time.perf_counter()
    crew.kickoff_sync()  # what a script calls: its event loop returns the CrewResult
    sync = time.perf_counter() - started
    return {
        "tasks": size,
        "edges": sum(len(d) for d in deps),
        "construction": construction,
        "run": median([wall for wall, _ in timings]),
        "run_cpu": median([cpu for _, cpu in timings]),
        "sync": sync,
        "spawn": spawn,
        "no_gc": no_gc,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "first_kickoff": first_kickoff,
    }


async def anyio_spawn(size: int) -> float:
    """Seconds to run ``size`` no-op tasks in one anyio task group: what one task per crew task
    costs by itself (the parallel process spawns one per task), and a gauge of this machine."""
    import anyio

    async def noop() -> None:
        pass

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(size):
            group.start_soon(noop)
    return time.perf_counter() - started


def measure(size: int, seed: int, repeats: int) -> dict[str, float]:
    """Run `child` in a fresh interpreter and return what it measured."""
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(size),
            "--seed",
            str(seed),
            "--repeats",
            str(repeats),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def add_figures(figures: Figures, result: dict[str, float]) -> None:
    """The key figures of one size, all per task except the peak RSS (the run with the garbage
    collector off is a diagnosis, not a cost users pay: shown, not a figure)."""
    tasks = result["tasks"]
    size = int(tasks)
    figures.add(f"{size}.construction_us_per_task", result["construction"] / tasks * 1e6)
    figures.add(f"{size}.ms_per_task", result["run"] / tasks * 1e3)
    figures.add(f"{size}.cpu_ms_per_task", result["run_cpu"] / tasks * 1e3)
    figures.add(f"{size}.kickoff_sync_ms_per_task", result["sync"] / tasks * 1e3)
    figures.add(f"{size}.peak_rss_mb", result["peak_mb"])
    growth = (result["peak_mb"] - result["baseline_mb"]) * 1024 / tasks
    figures.add(f"{size}.rss_growth_kb_per_task", growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seed, args.repeats)))
        return
    rows, results = [], []
    figures = Figures("scale")
    for size in (int(s) for s in args.sizes.split(",")):
        result = measure(size, args.seed, args.repeats)
        results.append(result)
        tasks = result["tasks"]
        add_figures(figures, result)
        rows.append(
            [
                int(tasks),
                int(result["edges"]),
                result["construction"],
                result["construction"] / tasks * 1e6,
                result["run"],
                result["run"] / tasks * 1e3,
                result["run_cpu"] / tasks * 1e3,
                result["no_gc"] / tasks * 1e3,
                result["spawn"] / tasks * 1e3,
                result["sync"],
                result["peak_mb"],
                (result["peak_mb"] - result["baseline_mb"]) * 1024 / tasks,
            ]
        )
    print(
        table(
            f"scale: random DAG, ~2 deps/task, OfflineLLM(latency=0), parallel, no HTTP; run = "
            f"median of {args.repeats} kickoffs; RSS = ru_maxrss peak of a fresh subprocess per "
            "size (store: SQLite, the default)",
            [
                "tasks",
                "edges",
                "construction s",
                "construction us/task",
                "run s",
                "run ms/task",
                "run cpu ms/task",
                "run ms/task, gc off",
                "anyio spawn ms/task",
                "kickoff_sync s",
                "peak RSS MB",
                "RSS growth KB/task",
            ],
            rows,
        )
    )
    last = results[-1]
    per_task = last["run"] / last["tasks"] * 1e3
    print(
        f"goal at {int(last['tasks'])} tasks: <= {GOAL_MS_PER_TASK} ms/task: "
        f"{'met' if per_task <= GOAL_MS_PER_TASK else 'MISSED'} ({per_task:.3f}); "
        f"peak RSS <= {GOAL_PEAK_MB} MB: "
        f"{'met' if last['peak_mb'] <= GOAL_PEAK_MB else 'MISSED'} ({last['peak_mb']:.0f} MB)"
    )
    first = median([result["first_kickoff"] for result in results])
    print(
        f"first kickoff in a fresh process (the 50-task warm-up crew): {first * 1e3:.1f} ms, "
        f"median of the {len(results)} subprocesses"
    )
    figures.add("warmup50.first_kickoff_s", first)
    figures.write(args.json)


if __name__ == "__main__":
    main()
