"""Fan-out / fan-in: 60 independent 0.2 s tasks and one aggregator that depends on all of them.

``process="parallel"`` with ``max_concurrency=10``, against the loopback server (its own process)
answering every request after 0.2 s, over a real socket, in the same run, alternating:

- floor: a bare ``openai.AsyncOpenAI`` client (made once, outside the timing) with
  ``asyncio.Semaphore(10)`` around each of the 60 calls and ``asyncio.gather``, then the
  aggregator's call with the 60 answers as context, the same messages crewflow sends;
- crewflow: ``Crew(tasks=[60 tasks, aggregator], process="parallel", max_concurrency=10)`` with an
  ``OpenAIChat`` agent, ``kickoff`` (which opens and closes its own client: that is timed);
- floor, new client: the floor again, but opening and closing its own client inside the timing
  as a kickoff does (fresh connections): shows how much of the gap is the client's life cycle.

Bound: 6 waves x 0.2 s + 0.2 s for the aggregator = 1.4 s. Goal: crewflow <= 1.05x the floor,
and the server never sees more than 10 requests at once (its own in-flight peak, read from it).
Also shown: crewflow's warm-up kickoff, the first of this fresh process (after the floor's warm-up
has imported openai), apart from the warm runs; and each side's first run in ``--processes`` fresh
interpreters, alternating (`_common.fresh_first_runs`): after the same imports, crewflow builds its
crew and store and runs ``asyncio.run(kickoff)``, the floor runs "floor, new client" in
``asyncio.run``. Goal: crewflow's median <= 1.06x the floor's.

Run: ``python benchmarks/fanout.py [--tasks 60] [--concurrency 10] [--repeats 5] [--processes 5]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PROBE,
    Figures,
    add_json_option,
    counting_server,
    first_kickoff_table,
    fresh_first_runs,
    median,
    probe,
    spread,
    table,
    timed_kickoff,
    user_message,
)

from crewflow import Agent, Crew, Task
from crewflow.llm.openai import OpenAIChat

if TYPE_CHECKING:
    from _common import CountingServer
    from openai import AsyncOpenAI

MODEL = "bench-model"
ROLE, GOAL = "Researcher", "Find one fact per item, then combine them"
SYSTEM = f"You are {ROLE}. Your goal: {GOAL}"
LATENCY = 0.2


def item(index: int) -> str:
    return f"Find a fact about item {index}"


AGGREGATE = "Combine every finding into one summary"


async def bare_fanout_new_client(base_url: str, tasks: int, concurrency: int) -> float:
    """The floor with a client of its own per run, made and closed inside the timing."""
    from openai import AsyncOpenAI

    started = time.perf_counter()
    async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
        await bare_fanout(client, tasks, concurrency)
    return time.perf_counter() - started


async def bare_fanout(client: AsyncOpenAI, tasks: int, concurrency: int) -> float:
    """The floor: the same calls with a bare client, a semaphore and gather."""
    semaphore = asyncio.Semaphore(concurrency)

    async def ask(user: str) -> str:
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        )
        return response.choices[0].message.content or ""

    async def one(index: int) -> str:
        async with semaphore:
            return await ask(item(index))

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(1, tasks + 1)))
    context = [(f"item_{i}", text) for i, text in enumerate(answers, start=1)]
    await ask(user_message(AGGREGATE, context))
    return time.perf_counter() - started


def build_crew(base_url: str, tasks: int, concurrency: int) -> Crew:
    agent = Agent(role=ROLE, goal=GOAL, llm=OpenAIChat(MODEL, base_url=base_url, api_key="bench"))
    items = [Task(item(i), name=f"item_{i}", context=[]) for i in range(1, tasks + 1)]
    aggregate = Task(AGGREGATE, name="aggregate", context=items)
    return Crew(
        tasks=[*items, aggregate],
        agents=[agent],
        process="parallel",
        max_concurrency=concurrency,
    )


async def measure(
    server: CountingServer, tasks: int, concurrency: int, repeats: int
) -> tuple[dict[str, tuple[list[float], list[int], list[int]]], dict[str, float]]:
    """Seconds, server in-flight peaks and request counts per runner, alternating runs after
    a warm-up of each; and the seconds of each warm-up."""
    from openai import AsyncOpenAI

    base_url = server.base_url
    crew = build_crew(base_url, tasks, concurrency)
    runs: dict[str, tuple[list[float], list[int], list[int]]] = {
        "floor": ([], [], []),
        "crewflow": ([], [], []),
        "floor, new client": ([], [], []),
    }
    async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
        runners = {
            "floor": lambda: bare_fanout(client, tasks, concurrency),
            "crewflow": lambda: timed_kickoff(crew),
            "floor, new client": lambda: bare_fanout_new_client(base_url, tasks, concurrency),
        }
        warmups = {name: await runner() for name, runner in runners.items()}
        for _ in range(repeats):
            for name, runner in runners.items():
                server.reset()
                seconds = await runner()
                stats = server.stats()
                runs[name][0].append(seconds)
                runs[name][1].append(stats.max_in_flight)
                runs[name][2].append(stats.requests)
    return runs, warmups


def first_run(which: str, base_url: str, tasks: int, concurrency: int) -> None:
    """One fresh interpreter's first run (``--probe``), after the imports both sides share."""
    import openai  # noqa: F401  (imported by both sides before the timing)

    def crewflow() -> None:
        result = asyncio.run(build_crew(base_url, tasks, concurrency).kickoff())
        assert len(result.outputs) == tasks + 1

    if which == "floor":
        probe(lambda: asyncio.run(bare_fanout_new_client(base_url, tasks, concurrency)))
    else:
        probe(crewflow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=5, help="fresh interpreters per side")
    parser.add_argument(PROBE, choices=("floor", "crewflow"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    if args.probe:
        first_run(args.probe, args.base_url, args.tasks, args.concurrency)
        return
    with counting_server(LATENCY) as server:
        runs, warmups = asyncio.run(measure(server, args.tasks, args.concurrency, args.repeats))
        arguments = ("--base-url", server.base_url, "--tasks", str(args.tasks))
        arguments += ("--concurrency", str(args.concurrency))
        firsts = fresh_first_runs(__file__, arguments, args.processes)
    bound = math.ceil(args.tasks / args.concurrency) * LATENCY + LATENCY
    floor = median(runs["floor"][0])
    rows = []
    for name, (seconds, peaks, requests) in runs.items():
        ours = median(seconds)
        rows.append(
            [
                name,
                ours,
                ours / bound,
                ours / floor,
                max(peaks),
                spread(requests),
            ]
        )
    print(
        table(
            f"fanout: {args.tasks} x {LATENCY * 1000:.0f} ms tasks + 1 aggregator, parallel, "
            f"max_concurrency={args.concurrency}, median of {args.repeats} (store: SQLite)",
            [
                "runner",
                "seconds",
                f"ratio to bound ({bound:.1f} s)",
                "ratio to floor",
                "server max in flight",
                "requests/run",
            ],
            rows,
        )
    )
    ratio = median(runs["crewflow"][0]) / floor
    peak = max(runs["crewflow"][1])
    print(
        f"goal: crewflow <= 1.05x the floor: {'met' if ratio <= 1.05 else 'MISSED'} "
        f"({ratio:.3f}x); server in flight <= {args.concurrency}: "
        f"{'met' if peak <= args.concurrency else 'MISSED'} (peak {peak})"
    )
    ours = median(runs["crewflow"][0])
    print(
        f"first kickoff in this fresh process (openai already imported): "
        f"{warmups['crewflow']:.3f} s; warm median {ours:.3f} s"
    )
    figures = Figures("fanout")
    case = f"{args.tasks}tasks_c{args.concurrency}"
    figures.add(f"{case}.ratio_to_floor", ratio)
    figures.add(f"{case}.ratio_to_bound", ours / bound)
    figures.add(f"{case}.first_kickoff_s", warmups["crewflow"])
    figures.add(f"{case}.in_flight_over_limit", max(0, peak - args.concurrency))
    print()
    print(first_kickoff_table(figures, case, firsts, goal=1.06))
    figures.write(args.json)


if __name__ == "__main__":
    main()
