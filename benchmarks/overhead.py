"""Framework overhead: a 50-task chain through crewflow vs the same 50 calls by a bare client.

Both talk to the loopback OpenAI-compatible server (`crewflow.testing.OpenAIServer`, in its own
process) over a real socket, in the same run, alternating, with the default configuration:

- floor: a bare ``openai.AsyncOpenAI`` loop with plain asyncio: each call sends a system prompt
  and the task with the previous answer as context, as a chain of agents would;
- crewflow: ``Crew(tasks=[50 chained tasks])`` with ``OpenAIChat`` agents, ``kickoff`` (each
  kickoff opens and closes its own client, and that is timed).

Reported per reply latency (0 ms: pure overhead; 20 ms: a fast model): per-task time, the ratio
to the floor (goal <= 1.15x at 0 ms) and to the bound (50 x latency; none at 0 ms); and the
first kickoff of this fresh process (the crewflow warm-up at 0 ms, after the floor's warm-up has
imported openai) apart from the warm runs.

Run: ``python benchmarks/overhead.py [--tasks 50] [--repeats 7] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, loopback_server, median, table, timed_kickoff

from crewflow import Agent, Crew, Task
from crewflow.llm.openai import OpenAIChat

if TYPE_CHECKING:
    from openai import AsyncOpenAI

MODEL = "bench-model"
ROLE, GOAL = "Analyst", "Turn the previous step into the next one"


async def bare_chain(client: AsyncOpenAI, tasks: int) -> float:
    """The floor: the same chain of calls with a bare AsyncOpenAI client (made once, outside
    the timing, which is the bare client's best case)."""
    started = time.perf_counter()
    previous = ""
    for index in range(1, tasks + 1):
        user = f"Step {index} of the chain"
        if previous:
            user += f'\n\nContext from earlier tasks:\n<context task="step_{index - 1}">\n'
            user += f"{previous}\n</context>"
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": f"You are {ROLE}. Your goal: {GOAL}"},
                {"role": "user", "content": user},
            ],
        )
        previous = response.choices[0].message.content or ""
    return time.perf_counter() - started


def build_crew(base_url: str, tasks: int) -> Crew:
    """A sequential chain: each task gets the previous one's output as context."""
    agent = Agent(role=ROLE, goal=GOAL, llm=OpenAIChat(MODEL, base_url=base_url, api_key="bench"))
    return Crew(
        tasks=[Task(f"Step {i} of the chain", name=f"step_{i}") for i in range(1, tasks + 1)],
        agents=[agent],
    )


async def measure(base_url: str, tasks: int, repeats: int) -> tuple[float, float, float]:
    """Median seconds of the floor and of crewflow, alternating runs after a warm-up, and the
    seconds of crewflow's warm-up kickoff (its first in this process, if none ran before)."""
    from openai import AsyncOpenAI

    crew = build_crew(base_url, tasks)
    floor, ours = [], []
    async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
        await bare_chain(client, tasks)
        first = await timed_kickoff(crew)
        for _ in range(repeats):
            floor.append(await bare_chain(client, tasks))
            ours.append(await timed_kickoff(crew))
    return median(floor), median(ours), first


async def in_process_overhead(tasks: int = 500, repeats: int = 5) -> float:
    """Microseconds per task of crewflow alone: a chained crew on an LLM that answers at once
    (no HTTP), so everything measured is the framework."""
    from crewflow.testing import FunctionLLM

    agent = Agent(role=ROLE, goal=GOAL, llm=FunctionLLM(lambda request: "an answer " * 8))
    crew = Crew(
        tasks=[Task(f"Step {i}", name=f"step_{i}") for i in range(1, tasks + 1)], agents=[agent]
    )
    await crew.kickoff()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        await crew.kickoff()
        runs.append(time.perf_counter() - started)
    return median(runs) / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    add_json_option(parser)
    args = parser.parse_args()
    figures = Figures("overhead")
    rows, firsts = [], []
    for latency in (0.0, 0.02):
        with loopback_server(latency) as base_url:
            floor, ours, first = asyncio.run(measure(base_url, args.tasks, args.repeats))
        firsts.append((first, ours))
        bound = args.tasks * latency
        case = f"chain{args.tasks}_{latency * 1000:.0f}ms"
        figures.add(f"{case}.ratio_to_floor", ours / floor)
        if bound:
            figures.add(f"{case}.ratio_to_bound", ours / bound)
        else:  # at 20 ms the difference is a small part of two large, noisy times
            figures.add(f"{case}.overhead_ms_per_task", (ours - floor) * 1000 / args.tasks)
        rows.append(
            [
                f"{latency * 1000:.0f} ms",
                floor * 1000 / args.tasks,
                ours * 1000 / args.tasks,
                (ours - floor) * 1000 / args.tasks,
                ours / floor,
                f"{ours / bound:.3f}" if bound else "n/a",
                f"{floor / bound:.3f}" if bound else "n/a",
            ]
        )
    print(
        table(
            f"overhead: {args.tasks}-task chain, median of {args.repeats} (store: SQLite)",
            [
                "reply latency",
                "floor ms/task",
                "crewflow ms/task",
                "overhead ms/task",
                "ratio to floor",
                "crewflow/bound",
                "floor/bound",
            ],
            rows,
        )
    )
    first, warm = firsts[0]
    figures.add(f"chain{args.tasks}_0ms.first_kickoff_s", first)
    print(
        f"first kickoff in this fresh process (0 ms, openai already imported): {first:.3f} s; "
        f"warm median {warm:.3f} s"
    )
    micros = asyncio.run(in_process_overhead())
    figures.add("in_process_chain500.us_per_task", micros)
    print()
    print(
        table(
            "framework alone: 500-task chain on an instant in-process LLM (no HTTP)",
            ["crewflow us/task", "goal"],
            [[micros, "a fraction of a millisecond"]],
        )
    )
    figures.write(args.json)


if __name__ == "__main__":
    main()
