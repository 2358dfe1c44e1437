"""Store: what recording every run in SQLite costs, and how fast ``crewflow runs`` reads it.

Three measurements, each on a fresh database in a temporary directory:

- the store alone: ``SQLiteStore.save_task`` (one output and one attempt, what the runtime
  writes per finished task) awaited one after another, and 1,000 in flight at once (a parallel
  crew: they share transactions); then the same with the attempt's prompts recorded (one LLM
  call: a 200-character system message, a 2,000-character user message, a 1,000-character
  reply), and the ratio;
- recording overhead: 1,000-task crews on ``OfflineLLM(latency=0)`` (nothing waits on I/O, so
  the difference is all recording), with ``store=SQLiteStore(path)`` vs ``store=None``, run
  alternately: a chain (``sequential``: each task waits for the previous one's checkpoint) and
  a fan-out (``parallel``, 1,000 independent tasks). Goal: <= 0.25 ms per task, so that
  ``overhead.py``'s 1.15x the bare client still holds with the store on by default. A
  ``MemoryStore`` run tells the runtime's own part (building the records) from SQLite's, and a
  SQLite run with ``record_prompts=False`` what recording each call's prompts costs (on by
  default); overheads are medians of the differences within each round of alternating
  kickoffs;
- ``crewflow runs --db PATH`` end to end (a fresh interpreter, as a user types it) on a
  database of 10,000 runs, made through ``SQLiteStore.start_run`` (concurrent calls, so they
  are committed in batches). Goal: < 0.5 s, with bytecode cached as an install has it (also
  shown: this environment as it is, e.g. ``PYTHONDONTWRITEBYTECODE=1``). When missed, the
  slowest imports of the command (``python -X importtime``) are listed.

Run: ``python benchmarks/store.py [--tasks 1000] [--repeats 5] [--runs 10000] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, median, table

from crewflow.llm._types import Usage
from crewflow.store import (
    AttemptRecord,
    MemoryStore,
    OutputRow,
    RunRecord,
    RunStatus,
    SQLiteStore,
)

if TYPE_CHECKING:
    from collections.abc import Callable

GOAL_MS_PER_TASK = 0.25
GOAL_RUNS_SECONDS = 0.5


# -- the store alone -----------------------------------------------------------------------------


def task_rows(
    run_id: str, index: int, *, prompts: bool = False
) -> tuple[OutputRow, list[AttemptRecord]]:
    """What the runtime saves when a task finishes: its output and its one attempt (with the
    prompts of its one LLM call when ``prompts``)."""
    now = datetime.now(UTC)
    task = f"task_{index}"
    output = OutputRow(
        run_id=run_id, task=task, text="an answer " * 30, agent="Worker", model="offline",
        finished_at=now,
    )  # fmt: skip
    attempt = AttemptRecord(
        task=task, number=1, agent="Worker", start=now - timedelta(seconds=1), end=now,
        duration=1.0, status="completed", model="offline",
        usage=Usage(requests=1, prompt_tokens=120, completion_tokens=60),
    )  # fmt: skip
    if prompts and has_prompts():
        from crewflow.llm import Message
        from crewflow.store import PromptRecord

        sent = PromptRecord(
            messages=(Message("system", "s" * 200), Message("user", f"{index} " + "u" * 2_000)),
            reply=Message("assistant", "r" * 1_000),
        )
        attempt = attempt.model_copy(update={"prompts": (sent,)})
    return output, [attempt]


def has_prompts() -> bool:
    """Whether this crewflow records prompts (``Crew(record_prompts=...)``)."""
    from crewflow import Crew

    return "record_prompts" in Crew.model_fields


async def store_alone(
    folder: Path, calls: int, repeats: int, *, prompts: bool = False
) -> tuple[float, float]:
    """Median microseconds per ``save_task``: awaited one by one, and ``calls`` at once."""
    import anyio

    one_by_one, at_once = [], []
    async with SQLiteStore(folder / f"alone{'-prompts' if prompts else ''}.db") as store:
        for repeat in range(repeats + 1):  # the first round warms up
            run_id = f"run-{repeat}"
            await store.start_run(RunRecord(run_id=run_id, crew="bench", started=datetime.now(UTC)))
            rows = [task_rows(run_id, index, prompts=prompts) for index in range(2 * calls)]
            started = time.perf_counter()
            for output, attempts in rows[:calls]:
                await store.save_task(output, attempts)
            sequential = time.perf_counter() - started
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                for output, attempts in rows[calls:]:
                    group.start_soon(store.save_task, output, attempts)
            concurrent = time.perf_counter() - started
            if repeat:
                one_by_one.append(sequential / calls * 1e6)
                at_once.append(concurrent / calls * 1e6)
    return median(one_by_one), median(at_once)


# -- recording overhead in a crew ----------------------------------------------------------------


def crew_has_store() -> bool:
    from crewflow import Crew

    return "store" in Crew.model_fields


def paired(slow: list[float], fast: list[float]) -> float:
    """The median of the differences within each round: a slow moment hits both of a pair."""
    return median([one - other for one, other in zip(slow, fast, strict=True)])


async def crew_overhead(
    folder: Path, tasks: int, repeats: int, figures: Figures
) -> list[list[object]]:
    """Per shape: median ms/task without a store, with `MemoryStore` (the runtime's own part
    of recording: building the rows) and with SQLite, and the overheads; and with SQLite
    without prompts (``record_prompts=False``): what recording them costs."""
    from crewflow import Agent, Crew, Task
    from crewflow.llm.offline import OfflineLLM

    agent = Agent(role="Worker", goal="Do one step", llm=OfflineLLM(latency=0))
    shapes: dict[str, tuple[str, Callable[[int], Task]]] = {
        "chain": ("sequential", lambda i: Task(f"Step {i}", name=f"step_{i}")),
        "fan-out": ("parallel", lambda i: Task(f"Item {i}", name=f"item_{i}", context=[])),
    }
    prompts = has_prompts()
    rows: list[list[object]] = []
    for shape, (process, make) in shapes.items():
        crew_tasks = [make(i) for i in range(tasks)]
        store = SQLiteStore(folder / f"{shape}.db")
        options: dict[str, dict[str, Any]] = {
            "none": {"store": None},
            "memory": {"store": MemoryStore()},
            "sqlite": {"store": store},
        }
        if prompts:
            options["sqlite, no prompts"] = {"store": store, "record_prompts": False}
        crews = {
            name: Crew(tasks=crew_tasks, agents=[agent], process=process, **fields)
            for name, fields in options.items()
        }
        times: dict[str, list[float]] = {name: [] for name in crews}
        for crew in crews.values():  # warm up both
            await crew.kickoff()
        for _ in range(repeats):
            for name, crew in crews.items():  # alternate, so that drift hits both alike
                started = time.perf_counter()
                result = await crew.kickoff()
                times[name].append(time.perf_counter() - started)
                assert len(result.outputs) == tasks
        await store.close()
        bare, in_memory, recorded = (
            median(times[name]) / tasks * 1e3 for name in ("none", "memory", "sqlite")
        )
        extra = paired(times["sqlite"], times["none"]) / tasks * 1e3
        sqlite_part = paired(times["sqlite"], times["memory"]) / tasks * 1e3
        case = f"{shape.replace('-', '')}{tasks}"
        prompt_cells: list[object] = ["-", "-"]
        if prompts:
            without = median(times["sqlite, no prompts"]) / tasks * 1e3
            prompt_part = paired(times["sqlite"], times["sqlite, no prompts"]) / tasks * 1e3
            prompt_cells = [prompt_part, recorded / without]
            figures.add(f"{case}.prompts_ms_per_task", prompt_part)
            figures.add(f"{case}.prompts_ratio", recorded / without)
        rows.append(
            [
                f"{shape} ({process})",
                bare,
                in_memory,
                recorded,
                extra,
                sqlite_part,
                *prompt_cells,
                recorded / bare,
                f"{'met' if extra <= GOAL_MS_PER_TASK else 'MISSED'} (<= {GOAL_MS_PER_TASK})",
            ]
        )
        figures.add(f"{case}.no_store_ms_per_task", bare)
        figures.add(f"{case}.memory_store_ms_per_task", in_memory)
        figures.add(f"{case}.sqlite_ms_per_task", recorded)
        figures.add(f"{case}.overhead_ms_per_task", extra)
        figures.add(f"{case}.sqlite_part_ms_per_task", sqlite_part)
    return rows


# -- crewflow runs on a large database -----------------------------------------------------------


async def fill(path: Path, runs: int) -> float:
    """Seconds to record ``runs`` finished runs through the store (concurrent ``start_run``
    calls, 500 at a time, so that the store commits them in batches)."""
    import anyio

    started_at = datetime(2026, 1, 1, tzinfo=UTC)
    graph = {"facts": [], "draft": ["facts"], "review": ["draft"]}
    started = time.perf_counter()
    async with SQLiteStore(path) as store:
        for first in range(0, runs, 500):
            async with anyio.create_task_group() as group:
                for index in range(first, min(first + 500, runs)):
                    begun = started_at + timedelta(minutes=index)
                    record = RunRecord(
                        run_id=f"run-{index:05d}", crew=f"crew-{index % 7}",
                        fingerprint="sha256:" + "ab" * 32, process="sequential",
                        process_reason="3 tasks in a chain", inputs={"topic": f"topic {index}"},
                        status=RunStatus.COMPLETED, started=begun,
                        ended=begun + timedelta(seconds=42),
                        usage=Usage(requests=3, prompt_tokens=900, completion_tokens=300),
                        graph=graph,
                    )  # fmt: skip
                    group.start_soon(store.start_run, record)
    return time.perf_counter() - started


def timed_command(
    command: list[str], repeats: int, env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Median wall-clock seconds of ``command`` in a fresh interpreter (after one warm-up)."""
    times = []
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        times.append(time.perf_counter() - started)
    return median(times), done


def slowest_imports(command: list[str], env: dict[str, str], count: int = 10) -> list[list[object]]:
    """The ``count`` imports with the largest cumulative time under ``python -X importtime``."""
    stderr = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    ).stderr
    found: list[tuple[int, int, str]] = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (.*)$", line)
        if match:
            found.append((int(match[2]), int(match[1]), match[3].rstrip()))
    found.sort(reverse=True)
    return [[name.strip(), cumulative / 1e3, own / 1e3] for cumulative, own, name in found[:count]]


def environments(folder: Path) -> dict[str, dict[str, str]]:
    """Bytecode compiled once and cached (as an installed package is: pip compiles it; here in
    a temporary folder, so the checkout stays clean), and this environment as it is (which may
    set ``PYTHONDONTWRITEBYTECODE``: every module compiled on every run)."""
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    as_is = "no bytecode cache" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "as set here"
    return {"bytecode cached": cached, as_is: dict(os.environ)}


def runs_command(folder: Path, runs: int, repeats: int, figures: Figures) -> None:
    path = folder / "many.db"
    setup = asyncio.run(fill(path, runs))
    figures.add(f"runs{runs}.start_run_all_s", setup)
    command = [sys.executable, "-m", "crewflow", "runs", "--db", str(path)]
    rows: list[list[object]] = []
    for label, env in environments(folder).items():
        seconds, done = timed_command(command, repeats, env)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:]
            print(f"`crewflow runs --db` failed (exit {done.returncode}): {last}; not measured.")
            return
        python, _ = timed_command([sys.executable, "-c", "pass"], repeats, env)
        imports, _ = timed_command([sys.executable, "-c", "import crewflow.cli"], repeats, env)
        listed = sum(1 for line in done.stdout.splitlines() if "run-" in line)
        rows.append([label, seconds, python, imports, listed])
        key = "cached" if label == "bytecode cached" else "as_is"
        figures.add(f"runs{runs}.crewflow_runs_{key}_s", seconds)
        figures.add(f"runs{runs}.import_cli_{key}_s", imports)
    seconds = float(rows[0][1])  # type: ignore[arg-type]  # the goal is for an install
    rows[0].append(f"{'met' if seconds < GOAL_RUNS_SECONDS else 'MISSED'} (< {GOAL_RUNS_SECONDS})")
    rows[1].append("-")
    print(
        table(
            f"`crewflow runs --db PATH` on {runs:,} runs (made in {setup:.1f} s by concurrent "
            f"start_run calls), fresh interpreter, median of {repeats}",
            [
                "python",
                "crewflow runs s",
                "python -c pass s",
                "import crewflow.cli s",
                "runs listed",
                "goal",
            ],
            rows,
        )
    )
    if seconds >= GOAL_RUNS_SECONDS:
        print()
        print(
            table(
                "slowest imports of `crewflow runs`, bytecode cached (python -X importtime, top 10 "
                "cumulative)",
                ["module", "cumulative ms", "self ms"],
                slowest_imports(command, environments(folder)["bytecode cached"]),
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10_000)
    add_json_option(parser)
    args = parser.parse_args()
    figures = Figures("store")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        sequential, concurrent = asyncio.run(store_alone(folder, args.tasks, args.repeats))
        figures.add(f"save_task{args.tasks}.one_by_one_us_per_call", sequential)
        figures.add(f"save_task{args.tasks}.at_once_us_per_call", concurrent)
        alone: list[list[object]] = [
            ["without prompts", sequential, concurrent, f"{1e6 / concurrent:,.0f}", "-", "-"]
        ]
        if has_prompts():
            with_prompts = asyncio.run(store_alone(folder, args.tasks, args.repeats, prompts=True))
            one, many = with_prompts
            figures.add(f"save_task{args.tasks}.prompts_one_by_one_us_per_call", one)
            figures.add(f"save_task{args.tasks}.prompts_at_once_us_per_call", many)
            figures.add(f"save_task{args.tasks}.prompts_one_by_one_ratio", one / sequential)
            alone.append(
                [
                    "with 3.2k chars of prompts",
                    one,
                    many,
                    f"{1e6 / many:,.0f}",
                    one / sequential,
                    many / concurrent,
                ]
            )
        print(
            table(
                f"store alone: SQLiteStore.save_task (1 output + 1 attempt), "
                f"{args.tasks} calls, median of {args.repeats}",
                [
                    "attempt",
                    "awaited one by one us/call",
                    f"{args.tasks} at once us/call",
                    "at once calls/s",
                    "one by one ratio",
                    "at once ratio",
                ],
                alone,
            )
        )
        print()
        if crew_has_store():
            rows: list[Any] = asyncio.run(crew_overhead(folder, args.tasks, args.repeats, figures))
            print(
                table(
                    f"recording overhead: {args.tasks}-task crews, OfflineLLM(latency=0), "
                    f"median of {args.repeats} kickoffs each, alternating",
                    [
                        "crew",
                        "store=None ms/task",
                        "MemoryStore ms/task",
                        "SQLiteStore ms/task",
                        "overhead ms/task",
                        "of which SQLite ms/task",
                        "of which prompts ms/task",
                        "prompts on/off ratio",
                        "ratio",
                        "goal",
                    ],
                    rows,
                )
            )
        else:
            print(
                "Crew(store=...) is not available yet: recording overhead in a crew not measured."
            )
        print()
        runs_command(folder, args.runs, args.repeats, figures)
    figures.write(args.json)


if __name__ == "__main__":
    main()
