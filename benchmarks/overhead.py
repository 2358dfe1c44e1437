"""Framework overhead: a 50-task chain through crewflow vs the same 50 calls by a bare client.

Both talk to the loopback OpenAI-compatible server (`crewflow.testing.OpenAIServer`, in its own
process) over a real socket, in the same run, alternating, with the default configuration:

- floor: a bare ``openai.AsyncOpenAI`` loop with plain asyncio: each call sends a system prompt
  and the task with the previous answer as context, as a chain of agents would (built by hand);
- exact floor: the same client sending, call by call, exactly the messages crewflow sent (read
  back from the server after crewflow's warm-up kickoff; the benchmark checks that the hand-built
  floor sends the same);
- crewflow: ``Crew(tasks=[50 chained tasks])`` with ``OpenAIChat`` agents, ``kickoff``.

Reported per reply latency (0 ms: pure overhead; 20 ms: a fast model): per-task time and CPU time
(``time.process_time``, every thread of the client process; the server's is its own) as medians
of ``--repeats`` warm runs, the ratio to the floor and to the exact floor (goal <= 1.15x at 0 ms)
and to the bound (50 x latency; none at 0 ms).

The first kickoff is measured apart, at 0 ms, in ``--processes`` fresh interpreters per side,
alternating: each imports the same modules (``crewflow``'s main names, ``OpenAIChat``,
``openai``) and gets an empty ``CREWFLOW_HOME``, then times, from there to the result in hand,
either crewflow (building the agent and the crew, creating the store, ``asyncio.run(kickoff)``)
or the exact floor's first run (``asyncio.run``: create the client, send the 50 calls, close it;
nothing else). Goal: crewflow's median <= 1.30x the floor's.

Run: ``python benchmarks/overhead.py [--tasks 50] [--repeats 7] [--processes 5] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
)

from crewflow import Agent, Crew, Task
from crewflow.llm.openai import OpenAIChat

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from openai import AsyncOpenAI

MODEL = "bench-model"
ROLE, GOAL = "Analyst", "Turn the previous step into the next one"
Messages = list[list[dict[str, Any]]]


async def bare_chain(client: AsyncOpenAI, tasks: int) -> None:
    """The floor: the same chain of calls with a bare AsyncOpenAI client (made once, outside
    the timing, which is the bare client's best case), its messages built by hand."""
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


async def exact_chain(client: AsyncOpenAI, messages: Messages) -> None:
    """The exact floor: each call sends the messages crewflow sent for that task, in order."""
    for sent in messages:
        response = await client.chat.completions.create(model=MODEL, messages=sent)  # type: ignore[arg-type]
        assert response.choices[0].message.content


def build_crew(base_url: str, tasks: int) -> Crew:
    """A sequential chain: each task gets the previous one's output as context."""
    agent = Agent(role=ROLE, goal=GOAL, llm=OpenAIChat(MODEL, base_url=base_url, api_key="bench"))
    return Crew(
        tasks=[Task(f"Step {i} of the chain", name=f"step_{i}") for i in range(1, tasks + 1)],
        agents=[agent],
    )


@dataclass
class Side:
    """Medians of one side's warm runs: wall seconds and CPU seconds per run."""

    seconds: float
    cpu: float


@dataclass
class Warm:
    """One latency's warm figures, and crewflow's warm-up (first) kickoff in this process."""

    floor: Side
    exact: Side
    crewflow: Side
    first: float
    messages: Messages
    same_messages: bool


async def _timed(run: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    await run()
    return time.perf_counter() - started, time.process_time() - cpu


async def measure(base_url: str, tasks: int, repeats: int, server: Any) -> Warm:
    """Median seconds (and CPU seconds) of the floor, the exact floor and crewflow, alternating
    runs after a warm-up, and the seconds of crewflow's warm-up kickoff."""
    from openai import AsyncOpenAI

    crew = build_crew(base_url, tasks)

    async def kickoff() -> None:
        result = await crew.kickoff()
        assert len(result.outputs) == tasks

    runs: dict[str, list[tuple[float, float]]] = {"floor": [], "exact": [], "crewflow": []}
    async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
        await bare_chain(client, tasks)
        server.reset()
        first, _ = await _timed(kickoff)
        messages = server.messages()
        server.reset()
        await bare_chain(client, tasks)
        same = server.messages() == messages
        for _ in range(repeats):
            runs["floor"].append(await _timed(lambda: bare_chain(client, tasks)))
            runs["exact"].append(await _timed(lambda: exact_chain(client, messages)))
            runs["crewflow"].append(await _timed(kickoff))

    def side(name: str) -> Side:
        return Side(median([w for w, _ in runs[name]]), median([c for _, c in runs[name]]))

    return Warm(side("floor"), side("exact"), side("crewflow"), first, messages, same)


# -- the first kickoff, in fresh interpreters ----------------------------------------------------


def first_run(which: str, base_url: str, tasks: int, messages_path: str) -> None:
    """One fresh interpreter's first run (``--probe``). The imports above (and ``openai``'s,
    below) are done by both sides before timing."""
    import openai

    messages = json.loads(Path(messages_path).read_text())

    async def floor() -> None:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
            await exact_chain(client, messages)

    def crewflow() -> None:
        result = asyncio.run(build_crew(base_url, tasks).kickoff())
        assert len(result.outputs) == tasks

    probe((lambda: asyncio.run(floor())) if which == "floor" else crewflow)


def first_runs(
    base_url: str, tasks: int, messages: Messages, processes: int
) -> dict[str, list[tuple[float, float]]]:
    """Each side's first run in ``processes`` fresh interpreters (`fresh_first_runs`)."""
    with tempfile.TemporaryDirectory(prefix="crewflow-messages-") as folder:
        path = Path(folder) / "messages.json"
        path.write_text(json.dumps(messages))
        arguments = ("--base-url", base_url, "--tasks", str(tasks), "--messages", str(path))
        return fresh_first_runs(__file__, arguments, processes)


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
    parser.add_argument("--processes", type=int, default=5, help="fresh interpreters per side")
    parser.add_argument(PROBE, choices=("floor", "crewflow"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--messages", help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    if args.probe:
        first_run(args.probe, args.base_url, args.tasks, args.messages)
        return
    figures = Figures("overhead")
    rows, warm0 = [], None
    for latency in (0.0, 0.02):
        with counting_server(latency) as server:
            warm = asyncio.run(measure(server.base_url, args.tasks, args.repeats, server))
            if latency == 0.0:
                warm0 = warm
                firsts = first_runs(server.base_url, args.tasks, warm.messages, args.processes)
        if not warm.same_messages:
            print("note: the hand-built floor does not send crewflow's messages", file=sys.stderr)
        floor, exact, ours = warm.floor.seconds, warm.exact.seconds, warm.crewflow.seconds
        bound = args.tasks * latency
        case = f"chain{args.tasks}_{latency * 1000:.0f}ms"
        figures.add(f"{case}.ratio_to_floor", ours / floor)
        figures.add(f"{case}.ratio_to_exact_floor", ours / exact)
        figures.add(f"{case}.cpu_ms_per_task", warm.crewflow.cpu * 1000 / args.tasks)
        if bound:
            figures.add(f"{case}.ratio_to_bound", ours / bound)
        else:  # at 20 ms the difference is a small part of two large, noisy times
            figures.add(f"{case}.overhead_ms_per_task", (ours - floor) * 1000 / args.tasks)
        per_task = 1000 / args.tasks
        rows.append(
            [
                f"{latency * 1000:.0f} ms",
                floor * per_task,
                exact * per_task,
                ours * per_task,
                warm.floor.cpu * per_task,
                warm.exact.cpu * per_task,
                warm.crewflow.cpu * per_task,
                ours / floor,
                ours / exact,
                f"{ours / bound:.3f}" if bound else "n/a",
            ]
        )
    print(
        table(
            f"overhead: {args.tasks}-task chain, warm, median of {args.repeats} (store: SQLite)",
            [
                "reply latency",
                "floor ms/task",
                "exact ms/task",
                "crewflow ms/task",
                "floor cpu",
                "exact cpu",
                "crewflow cpu",
                "to floor",
                "to exact",
                "crewflow/bound",
            ],
            rows,
        )
    )
    assert warm0 is not None
    print_first(args, figures, warm0, firsts)
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


def print_first(
    args: argparse.Namespace,
    figures: Figures,
    warm: Warm,
    firsts: dict[str, list[tuple[float, float]]],
) -> None:
    """The first-kickoff table and figures."""
    case = f"chain{args.tasks}_0ms"
    figures.add(f"{case}.first_kickoff_s", warm.first)

    print()
    print(first_kickoff_table(figures, case, firsts, goal=1.30))
    print(
        f"crewflow's first kickoff in the warm process (after the floor's warm-up): "
        f"{warm.first:.3f} s; warm median {warm.crewflow.seconds:.3f} s"
    )


if __name__ == "__main__":
    main()
