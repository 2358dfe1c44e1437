"""A layered DAG of 30 tasks with seeded random durations (50-400 ms) and random dependencies.

Each task's reply takes its own duration: its description holds a key (``[[t07]]``) and the
loopback server, in its own process, sleeps for that key's duration (read from a JSON file)
before answering. The server runs in a subprocess rather than in a thread of this process so
that it does not share our GIL: in a thread, its per-request work would be timed as crewflow's
(or the floor's); `_common.counting_server` still lets us read its in-flight peak.

The graph: 6 layers of 5 tasks; each task after the first layer depends on one task of the layer
just before and 0-2 more of any earlier layer (seeded). Runners, alternating in the same run:

- floor: a bare ``openai.AsyncOpenAI`` client (made once, outside the timing); one coroutine per
  task awaits its dependencies' ``asyncio.Event``\\s, then makes its call with their answers as
  context (the messages crewflow sends), then sets its own event; ``asyncio.gather`` over all.
  With a concurrency limit, an ``asyncio.Semaphore`` around each call.
- crewflow: ``Crew(process="parallel", max_concurrency=...)`` with an ``OpenAIChat`` agent,
  ``kickoff`` (which opens and closes its own client: that is timed).

Bounds: unbounded, the critical path (the longest chain of durations); with ``max_concurrency=4``,
max(critical path, total work / 4). Goal: unbounded, crewflow <= 1.05x the floor. Also shown:
crewflow's first warm-up kickoff (unbounded), the first of this fresh process (after the floor's
warm-up has imported openai), apart from the warm runs; and each side's first run (unbounded) in
``--processes`` fresh interpreters, alternating (`_common.fresh_first_runs`): after the same
imports, crewflow builds its crew and store and runs ``asyncio.run(kickoff)``, the floor makes its
client and runs in ``asyncio.run``. Goal: crewflow's median <= 1.06x the floor's.

Run: ``python benchmarks/dag.py [--seed 7] [--repeats 5] [--concurrency 4] [--processes 5]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
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
ROLE, GOAL = "Analyst", "Build on the earlier steps"
SYSTEM = f"You are {ROLE}. Your goal: {GOAL}"
LAYERS, WIDTH = 6, 5


class Dag:
    """Names in declaration (topological) order, durations and dependencies."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.names: list[str] = []
        self.durations: dict[str, float] = {}
        self.deps: dict[str, list[str]] = {}
        layers: list[list[str]] = []
        for layer in range(LAYERS):
            current = []
            for _ in range(WIDTH):
                name = f"t{len(self.names) + 1:02d}"
                self.names.append(name)
                self.durations[name] = round(rng.uniform(0.05, 0.4), 3)
                deps: set[str] = set()
                if layer:
                    deps.add(rng.choice(layers[-1]))
                    earlier = [n for lay in layers for n in lay if n not in deps]
                    deps.update(rng.sample(earlier, rng.randint(0, 2)))
                self.deps[name] = sorted(deps, key=self.names.index)
                current.append(name)
            layers.append(current)

    def description(self, name: str) -> str:
        return f"[[{name}]] Step {name} of the analysis"

    @property
    def critical_path(self) -> float:
        finish: dict[str, float] = {}
        for name in self.names:
            start = max((finish[d] for d in self.deps[name]), default=0.0)
            finish[name] = start + self.durations[name]
        return max(finish.values())

    @property
    def work(self) -> float:
        return sum(self.durations.values())

    @property
    def edges(self) -> int:
        return sum(len(deps) for deps in self.deps.values())


async def bare_dag(client: AsyncOpenAI, dag: Dag, concurrency: int | None) -> float:
    """The floor: each task awaits its dependencies' events, then calls the client."""
    done = {name: asyncio.Event() for name in dag.names}
    answers: dict[str, str] = {}
    semaphore = asyncio.Semaphore(concurrency) if concurrency else None

    async def call(name: str) -> str:
        context = [(dep, answers[dep]) for dep in dag.deps[name]]
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user_message(dag.description(name), context)},
            ],
        )
        return response.choices[0].message.content or ""

    async def one(name: str) -> None:
        for dep in dag.deps[name]:
            await done[dep].wait()
        if semaphore is None:
            answers[name] = await call(name)
        else:
            async with semaphore:
                answers[name] = await call(name)
        done[name].set()

    started = time.perf_counter()
    await asyncio.gather(*(one(name) for name in dag.names))
    return time.perf_counter() - started


def build_crew(base_url: str, dag: Dag, concurrency: int | None) -> Crew:
    agent = Agent(role=ROLE, goal=GOAL, llm=OpenAIChat(MODEL, base_url=base_url, api_key="bench"))
    tasks: dict[str, Task] = {}
    for name in dag.names:
        context = [tasks[dep] for dep in dag.deps[name]]
        tasks[name] = Task(dag.description(name), name=name, context=context)
    return Crew(
        tasks=list(tasks.values()),
        agents=[agent],
        process="parallel",
        max_concurrency=concurrency,
    )


async def measure(
    server: CountingServer, dag: Dag, concurrency: int | None, repeats: int
) -> tuple[dict[str, tuple[list[float], list[int]]], dict[str, float]]:
    """Seconds and server in-flight peaks of the floor and crewflow, alternating after a
    warm-up of each; and the seconds of each warm-up."""
    from openai import AsyncOpenAI

    crew = build_crew(server.base_url, dag, concurrency)
    runs: dict[str, tuple[list[float], list[int]]] = {"floor": ([], []), "crewflow": ([], [])}
    async with AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0) as client:
        runners = {
            "floor": lambda: bare_dag(client, dag, concurrency),
            "crewflow": lambda: timed_kickoff(crew),
        }
        warmups = {name: await runner() for name, runner in runners.items()}
        for _ in range(repeats):
            for name, runner in runners.items():
                server.reset()
                seconds = await runner()
                runs[name][0].append(seconds)
                runs[name][1].append(server.stats().max_in_flight)
    return runs, warmups


def first_run(which: str, base_url: str, dag: Dag) -> None:
    """One fresh interpreter's first run (``--probe``), unbounded, after the shared imports."""
    from openai import AsyncOpenAI

    async def floor() -> None:
        async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
            await bare_dag(client, dag, None)

    def crewflow() -> None:
        result = asyncio.run(build_crew(base_url, dag, None).kickoff())
        assert len(result.outputs) == len(dag.names)

    probe((lambda: asyncio.run(floor())) if which == "floor" else crewflow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--processes", type=int, default=5, help="fresh interpreters per side")
    parser.add_argument(PROBE, choices=("floor", "crewflow"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    dag = Dag(args.seed)
    if args.probe:
        first_run(args.probe, args.base_url, dag)
        return
    path, work = dag.critical_path, dag.work
    rows = []
    ratios: dict[str | int, float] = {}
    figures = Figures("dag")
    with counting_server(0.0, dag.durations) as server:
        for concurrency in (None, args.concurrency):
            runs, warmups = asyncio.run(measure(server, dag, concurrency, args.repeats))
            if concurrency is None:
                arguments = ("--base-url", server.base_url, "--seed", str(args.seed))
                firsts = fresh_first_runs(__file__, arguments, args.processes)
            bound = path if concurrency is None else max(path, work / concurrency)
            bound_name = "critical path" if concurrency is None else f"max(cp, work/{concurrency})"
            floor = median(runs["floor"][0])
            case = f"seed{args.seed}_{'unbounded' if concurrency is None else f'c{concurrency}'}"
            if concurrency is None:
                first, warm = warmups["crewflow"], median(runs["crewflow"][0])
                figures.add(f"{case}.first_kickoff_s", first)
            else:
                peak = max(runs["crewflow"][1])
                figures.add(f"{case}.in_flight_over_limit", max(0, peak - concurrency))
            for name, (seconds, peaks) in runs.items():
                ours = median(seconds)
                if name == "crewflow":
                    ratios[concurrency or 0] = ours / floor
                    figures.add(f"{case}.ratio_to_floor", ours / floor)
                    figures.add(f"{case}.ratio_to_bound", ours / bound)
                rows.append(
                    [
                        name,
                        "unbounded" if concurrency is None else concurrency,
                        ours,
                        f"{bound:.3f} ({bound_name})",
                        ours / bound,
                        ours / floor,
                        max(peaks),
                    ]
                )
    print(
        table(
            f"dag: {len(dag.names)} tasks in {LAYERS} layers, {dag.edges} edges, 50-400 ms each "
            f"(seed {args.seed}; critical path {path:.3f} s, work {work:.3f} s), parallel, "
            f"median of {args.repeats} (store: SQLite, the default)",
            [
                "runner",
                "max_concurrency",
                "seconds",
                "bound s",
                "ratio to bound",
                "ratio to floor",
                "server max in flight",
            ],
            rows,
        )
    )
    unbounded = ratios[0]
    print(
        f"goal: unbounded, crewflow <= 1.05x the floor: "
        f"{'met' if unbounded <= 1.05 else 'MISSED'} ({unbounded:.3f}x)"
    )
    print(
        f"first kickoff in this fresh process (unbounded, openai already imported): "
        f"{first:.3f} s; warm median {warm:.3f} s"
    )
    print()
    print(first_kickoff_table(figures, f"seed{args.seed}_unbounded", firsts, goal=1.06))
    figures.write(args.json)


if __name__ == "__main__":
    main()
